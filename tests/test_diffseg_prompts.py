"""DiffSegmenter prompts: class-token weights, the "-ing" rule, up-weighting, captions."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from diffseg_jax.config import DiffSegConfig
from diffseg_jax.prompts import (
    build_prompt,
    empty_prompt_ids,
    encode_class_prompts,
    pad_class_prompts,
    read_captions,
    upweight_class_tokens,
)
from iedp_jax.infra.errors import ConfigError, InputError
from iedp_jax.sd import load_tokenizer
from iedp_jax.sd.tiny import write_tiny_backbone

TEMPLATE = "a photograph of {}"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    # A fixed folder under the session's base temp: write_tiny_backbone is idempotent, so the
    # DiffSegmenter test modules share one copy.
    return load_tokenizer(write_tiny_backbone(tmp_path_factory.getbasetemp() / "diffseg_tiny_sd"))


def _tokens(tokenizer, text):
    return tokenizer.tokens(text)


def test_build_prompt_strings():
    assert build_prompt(TEMPLATE, "cat") == "a photograph of cat"
    assert build_prompt(TEMPLATE, "potted_plant") == "a photograph of potted plant"
    assert build_prompt("a photography of {}", "cat", "  ") == "a photography of cat"
    # A class-conditioned caption continues the prompt (the original's BLIP captions).
    assert build_prompt(TEMPLATE, "cat", "A photograph of cat  sitting on a couch") == \
        "a photograph of cat sitting on a couch"
    # Any other caption is appended after a comma.
    assert build_prompt(TEMPLATE, "cat", "a cat on a couch") == "a photograph of cat, a cat on a couch"
    assert DiffSegConfig().template() == TEMPLATE
    assert DiffSegConfig().template("context") == "a photography of {}"
    assert DiffSegConfig().template("coco") == "a photography of {}"


def test_weight_on_last_subtoken_of_multitoken_class(tokenizer):
    ids, weights, pos = encode_class_prompts(tokenizer, ["cat", "red square", "blue"], TEMPLATE)
    assert ids.shape == weights.shape == pos.shape == (3, 77)
    assert ids.dtype == np.int32 and weights.dtype == np.float32 and pos.dtype == bool
    np.testing.assert_allclose(weights.sum(1), 1.0)
    for row, name in enumerate(["cat", "red square", "blue"]):
        text = f"a photograph of {name}"
        np.testing.assert_array_equal(ids[row], tokenizer([text])[0])
        start, end = tokenizer.token_spans(text, [name])[0]
        assert np.flatnonzero(weights[row]).tolist() == [end - 1]
        last = name.split()[-1]  # compel's "name++" up-weights the last word (all of its sub-tokens)
        lstart, lend = tokenizer.token_spans(text, [last])[0]
        assert lend == end and np.flatnonzero(pos[row]).tolist() == list(range(lstart, lend))
    # "cat" is three sub-tokens in the tiny vocabulary; the weight is on the last one, "t</w>".
    toks = _tokens(tokenizer, "a photograph of cat")
    assert toks[8:11] == ["c", "a", "t</w>"]
    assert weights[0, 10] == 1.0 and pos[0, 8:11].all() and pos[0].sum() == 3
    # "red square" is two words, one token each: the weight goes to "square", and only "square" is
    # up-weighted (the last word); with upweight='all_words' both are.
    assert weights[1, 9] == 1.0 and pos[1, 9] and pos[1].sum() == 1
    _, _, pos_all = encode_class_prompts(tokenizer, ["red square"], TEMPLATE, upweight="all_words")
    assert pos_all[0, 8:10].all() and pos_all[0].sum() == 2
    with pytest.raises(ConfigError, match="upweight 'first' is not one of last_word, all_words"):
        encode_class_prompts(tokenizer, ["cat"], TEMPLATE, upweight="first")


def test_ing_rule(tokenizer):
    caption = "a photograph of cat sitting on a couch"
    ids, weights, _ = encode_class_prompts(tokenizer, ["cat"], TEMPLATE, caption)
    np.testing.assert_array_equal(ids[0], tokenizer([caption])[0])
    # "cat" ends at 10, the next token (11) starts "sitting": half each.
    assert np.flatnonzero(weights[0]).tolist() == [10, 11]
    np.testing.assert_allclose(weights[0, [10, 11]], [0.5, 0.5])
    # Turned off: the class token alone.
    _, weights_off, _ = encode_class_prompts(tokenizer, ["cat"], TEMPLATE, caption, ing_rule=False)
    assert np.flatnonzero(weights_off[0]).tolist() == [10]
    # Multi-word class followed by an -ing word.
    _, w2, _ = encode_class_prompts(tokenizer, ["red square"], TEMPLATE, "a photograph of red square floating")
    np.testing.assert_allclose(w2[0, [9, 10]], [0.5, 0.5])
    # Not an -ing word, or a comma in between (an appended caption): no averaging.
    _, w3, _ = encode_class_prompts(tokenizer, ["cat"], TEMPLATE, "a photograph of cat on a ring")
    assert np.flatnonzero(w3[0]).tolist() == [10]
    _, w4, _ = encode_class_prompts(tokenizer, ["cat"], TEMPLATE, "sitting cat")
    assert build_prompt(TEMPLATE, "cat", "sitting cat") == "a photograph of cat, sitting cat"
    assert np.flatnonzero(w4[0]).tolist() == [10]


def test_prompt_errors(tokenizer):
    with pytest.raises(ConfigError, match="exactly once"):
        encode_class_prompts(tokenizer, ["cat"], "a photo")
    with pytest.raises(InputError, match="cut off"):
        encode_class_prompts(tokenizer, ["cat"], "a " * 80 + "{}")
    with pytest.raises(InputError, match="empty"):
        encode_class_prompts(tokenizer, ["  "], TEMPLATE)
    with pytest.raises(InputError, match="tokenize on its own"):
        encode_class_prompts(tokenizer, ["at"], "a photograph of c{}")


def test_upweighting_formula_on_known_arrays():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 6, 4)).astype(np.float32)
    z_empty = rng.normal(size=(6, 4)).astype(np.float32)
    pos = np.zeros((2, 6), bool)
    pos[0, 2:4] = True
    pos[1, 5] = True
    out = np.asarray(jax.jit(upweight_class_tokens, static_argnums=3)(z, z_empty, pos, 1.21))
    want = z.copy()
    for b, t in zip(*np.nonzero(pos)):
        want[b, t] = z_empty[t] + 1.21 * (z[b, t] - z_empty[t])
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[~pos], z[~pos])  # only class positions change
    assert np.abs(out[pos] - z[pos]).min() > 0
    np.testing.assert_allclose(np.asarray(upweight_class_tokens(z, z_empty, pos, 1.0)), z, atol=1e-6)


def test_pad_class_prompts(tokenizer):
    a = encode_class_prompts(tokenizer, ["cat", "blue"], TEMPLATE)
    b = encode_class_prompts(tokenizer, ["red"], TEMPLATE)
    ids, w, pos, valid = pad_class_prompts([a, b], tokenizer, num_classes=3)
    assert ids.shape == w.shape == pos.shape == (2, 3, 77)
    np.testing.assert_array_equal(valid, [[1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(ids[0, :2], a.ids)
    np.testing.assert_array_equal(ids[1, 1], empty_prompt_ids(tokenizer))
    assert w[1, 1:].sum() == 0 and not pos[1, 1:].any()
    with pytest.raises(ValueError, match="num_classes"):
        pad_class_prompts([a, b], tokenizer, num_classes=1)


def test_read_captions(tmp_path):
    good = tmp_path / "captions.jsonl"
    good.write_text(json.dumps({"image": "2007_000032.jpg", "caption": "a plane on the ground"}) + "\n\n"
                    + json.dumps({"image": "b.jpg", "caption": "a cat", "score": 0.3}) + "\n")
    assert read_captions(good) == {"2007_000032.jpg": "a plane on the ground", "b.jpg": "a cat"}

    cases = {
        "bad_json": ('{"image": "a.jpg", "caption": "x"}\n{"image": "b.jpg", caption}\n', r":2: not valid JSON"),
        "missing": ('{"image": "a.jpg"}\n', r":1: missing or non-string 'caption'"),
        "not_str": ('{"image": 3, "caption": "x"}\n', r":1: missing or non-string 'image'"),
        "list": ('["a.jpg", "x"]\n', r":1: expected a JSON object"),
        "dup": ('{"image": "a.jpg", "caption": "x"}\n{"image": "a.jpg", "caption": "y"}\n',
                r":2: image 'a.jpg' already has a caption \(line 1\)"),
    }
    for name, (text, msg) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(text)
        with pytest.raises(InputError, match=msg):
            read_captions(path)
    with pytest.raises(FileNotFoundError):
        read_captions(tmp_path / "none.jsonl")
