"""DiffSegmenter category filtering: the ratio rule, caption nouns, and CLIP logits vs transformers."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax.filtering import (
    candidate_classes,
    caption_nouns,
    clip_crop,
    clip_logits,
    keep_by_ratio,
    load_clip_filter,
    similar_labels,
)
from iedp_jax.infra.errors import ConfigError
from iedp_jax.sd.tiny import write_tiny_backbone
from iedp_jax.sd.weights import WeightsError
from tests.fakes import write_tiny_clip
from tests.helpers import rel_err


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    backbone = write_tiny_backbone(tmp_path_factory.getbasetemp() / "diffseg_tiny_sd")
    folder = write_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), backbone)
    return folder, backbone


# ----------------------------------------------------------------------------------------------
# Pure rules on known embeddings.


def test_ratio_rule_keeps_labels_within_three_percent_of_the_best():
    logits = jnp.asarray([[30.0, 29.2, 29.0, 10.0],     # 0.97 * 30 = 29.1: keeps 0 and 1
                          [20.0, 25.0, 24.26, 24.24],   # 0.97 * 25 = 24.25: keeps 1 and 2
                          [-5.0, -4.0, -4.1, -9.0]])    # negative: the best (and within 3% of |max|)
    keep = np.asarray(keep_by_ratio(logits, 0.97))
    np.testing.assert_array_equal(keep, [[1, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0]])
    # Invalid labels never count, not even as the max.
    valid = jnp.asarray([[False, True, True, True]] * 3)
    np.testing.assert_array_equal(np.asarray(keep_by_ratio(logits, 0.97, valid))[0], [0, 1, 1, 0])

    # 100 * cosine on known embeddings: label 0 parallel, label 1 at cos 0.98, label 2 at 0.9.
    img = jnp.asarray([[2.0, 0.0, 0.0]])
    txt = jnp.asarray([[1.0, 0.0, 0.0], [0.98, np.sqrt(1 - 0.98 ** 2), 0.0], [0.9, 0.0, np.sqrt(1 - 0.81)]]) * 3
    lg = np.asarray(clip_logits(img, txt))
    np.testing.assert_allclose(lg, [[100.0, 98.0, 90.0]], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(keep_by_ratio(lg)), [[True, True, False]])


def test_caption_nouns_and_noun_similarity_union():
    assert caption_nouns("A photo of a cat sitting on the red Sofa, next to a cat.") == \
        ["cat", "sitting", "red", "sofa"]
    assert caption_nouns(None) == [] and caption_nouns("a the of") == []
    labels = jnp.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    nouns = jnp.asarray([[0.9, 0.1, 0.0],    # cos 0.994 with label 0
                         [0.0, 0.7, 0.7],    # cos 0.707 with labels 1 and 2: below 0.8
                         [0.0, 0.0, 1.0]])   # label 2, but marked invalid (padding)
    got = np.asarray(similar_labels(nouns, jnp.asarray([True, True, False]), labels, 0.8))
    np.testing.assert_array_equal(got, [True, False, False])
    got = np.asarray(similar_labels(nouns, jnp.asarray([True, True, True]), labels, 0.8))
    np.testing.assert_array_equal(got, [True, False, True])
    # Batched over images.
    got = np.asarray(similar_labels(jnp.stack([nouns, nouns[::-1]]), jnp.ones((2, 3), bool), labels))
    np.testing.assert_array_equal(got, [[True, False, True], [True, False, True]])


def test_all_and_given_modes():
    names = ["cat", "dog", "sofa"]
    assert candidate_classes("all", names, 2) == [[0, 1, 2], [0, 1, 2]]
    assert candidate_classes("given", names, 2, given=["sofa", "cat"]) == [[0, 2], [0, 2]]
    assert candidate_classes("given", names, 2, given=[["dog"], ["sofa", "dog"]]) == [[1], [1, 2]]
    # Indices (what the evaluator gives: each image's ground-truth classes), per image or shared.
    assert candidate_classes("given", names, 3, given=[[2, 0], [], [np.int64(1)]]) == [[0, 2], [], [1]]
    assert candidate_classes("given", names, 2, given=[2]) == [[2], [2]]
    with pytest.raises(ConfigError, match="'horse' is not in the vocabulary"):
        candidate_classes("given", names, 1, given=["horse"])
    with pytest.raises(ConfigError, match="index 3 is outside the vocabulary of 3 classes"):
        candidate_classes("given", names, 1, given=[[3]])
    with pytest.raises(ConfigError, match="filtering.mode 'gt' is not one of clip, all, given"):
        candidate_classes("gt", names, 1)
    with pytest.raises(ValueError, match="needs the images"):
        candidate_classes("clip", names, 1)


# ----------------------------------------------------------------------------------------------
# The Flax CLIP against transformers.


def test_clip_crop_matches_clip_image_processor():
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                              do_normalize=False, do_rescale=False, do_convert_rgb=True)
    rng = np.random.default_rng(0)
    for hw in [(48, 64), (70, 45), (32, 32)]:
        img = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
        want = np.asarray(proc(images=img, return_tensors="np")["pixel_values"][0]).transpose(1, 2, 0)
        np.testing.assert_allclose(clip_crop(img, 32).astype(np.float32), want, atol=1.0)


def test_flax_clip_logits_equal_transformers(tiny_clip):
    import torch
    import transformers

    folder, _ = tiny_clip
    filt, params = load_clip_filter(folder)
    hf = transformers.CLIPModel.from_pretrained(folder).eval()
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in [(48, 64), (40, 40), (64, 30)]]
    names = ["cat", "red square", "blue", "sofa", "potted plant"]
    ours = filt.logits(params, images, names)

    pixels = filt.pixels(images).astype(np.float32) / 255.0
    pixels = (pixels - np.asarray([0.48145466, 0.4578275, 0.40821073])) / np.asarray([0.26862954, 0.26130258,
                                                                                        0.27577711])
    ids = filt.tokenizer([f"A photo of a {n}" for n in names])
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(ids.astype(np.int64)),
                 pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).astype(np.float32)))
        want = 100.0 * out.logits_per_image.numpy() / hf.logit_scale.exp().item()
    assert ours.shape == (3, 5)
    assert rel_err(ours, want) < 1e-5

    # The filter keeps exactly the labels within 3% of each image's best logit.
    kept = filt.select(params, images, names)
    for b in range(3):
        assert kept[b] == np.flatnonzero(want[b] >= 0.97 * want[b].max()).tolist()
    assert candidate_classes("clip", names, 3, images=images, clip_filter=filt, params=params) == kept

    # Caption nouns: a noun equal to a label is similar to it (cosine 1 > 0.8), so the label joins
    # the candidates; a caption without nouns changes nothing.
    assert 3 not in kept[0]  # "sofa"
    with_caption = filt.select(params, images, names, captions=["a sofa on the floor", None, "a the"])
    assert 3 in with_caption[0] and set(kept[0]) <= set(with_caption[0])
    assert with_caption[1:] == kept[1:]
    # The noun states are the mean of the last token states over the word's tokens.
    words = ["red square", "cat"]
    toks = [filt.tokenizer.encode_words(w) for w in words]
    with torch.no_grad():
        states = hf.text_model(input_ids=torch.from_numpy(filt.tokenizer(words).astype(np.int64))).last_hidden_state
    want_states = np.stack([states[r, 1:1 + len(t)].mean(0).numpy() for r, t in enumerate(toks)])
    assert rel_err(filt.word_states(params, words), want_states) < 1e-5


def test_filter_needs_a_full_clip(tiny_clip):
    _, backbone = tiny_clip
    with pytest.raises(WeightsError, match="does not exist"):
        load_clip_filter(backbone / "no_such_clip")
    # A pipeline root: its text encoder has no projection.
    with pytest.raises(WeightsError, match="not a full CLIP model"):
        load_clip_filter(backbone)
