"""The paper's protocol: prompts from BLIP captions that pluralise or extend the class word (with a
tokenizer whose words are single tokens, as in CLIP's vocabulary), per-class captions written as
the original makes them and read back into prompts, the original's candidate file replayed,
packed (image, class) rows equal to the per-class result, and one evaluation with all of it
(plus a prompt that falls back, an unreadable image, overlays and a threshold picked on held-out
data)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from PIL import Image

from diffseg_jax import DiffSegConfig, load_diffsegmenter, pad_class_prompts, prompts
from diffseg_jax.captions import class_prompt, write_class_captions
from diffseg_jax.config import default_config
from diffseg_jax.datasets import BENCHMARKS, VOC_OFFICIAL_NAMES
from diffseg_jax.evaluate import evaluate, pack_rows
from diffseg_jax.filtering import image_key, read_given_file
from diffseg_jax.prompts import build_prompt, caption_for, encode_with_fallback, read_captions
from iedp_jax.infra.errors import ConfigError, InputError
from iedp_jax.sd import load_tokenizer
from iedp_jax.sd.tiny import write_tiny_backbone
from tests.fakes import write_voc, write_word_tokenizer
from tests.helpers import rel_err

TEMPLATE = "a photograph of {}"


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    return load_tokenizer(write_word_tokenizer(tmp_path_factory.mktemp("clip_words")))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return write_tiny_backbone(tmp_path_factory.getbasetemp() / "diffseg_tiny_sd")


def _placed(tokenizer, p, row=0):
    toks = tokenizer.hf.convert_ids_to_tokens([int(i) for i in p.ids[row]])
    return ([toks[i] for i in np.flatnonzero(p.token_weights[row])],
            [toks[i] for i in np.flatnonzero(p.class_positions[row])])


def test_plural_and_longer_words_after_the_class(words):
    """BLIP continues "a photograph of cow" with "cows grazing": the class keeps its own token
    (the rest of the word is dropped, as the original does for Context / COCO); "cattle" after
    "cat" too. Before, "cows" was one token and the whole evaluation stopped."""
    assert words.tokens("cows cattle")[1:3] == ["cows</w>", "cattle</w>"]  # single tokens, as in CLIP's vocab
    cases = {
        ("cow", "a photograph of cows grazing in the field"): ("a photograph of cow grazing in the field",
                                                               ["cow</w>", "grazing</w>"]),
        ("dog", "A photograph of dogs running on the grass"): ("a photograph of dog running on the grass",
                                                               ["dog</w>", "running</w>"]),
        ("cat", "a photograph of cattle in a field"): ("a photograph of cat in a field", ["cat</w>"]),
        ("cat", "a photograph of cats++ sitting on a couch"): ("a photograph of cat sitting on a couch",
                                                               ["cat</w>", "sitting</w>"]),
        ("cow", "a photograph of cow++s grazing"): ("a photograph of cow grazing", ["cow</w>", "grazing</w>"]),
    }
    for (cls, caption), (text, weighted) in cases.items():
        assert build_prompt(TEMPLATE, cls, caption) == text
        p, reasons = encode_with_fallback(words, [cls], TEMPLATE, caption)
        assert reasons == [None]
        np.testing.assert_array_equal(p.ids[0], words([text])[0])
        assert _placed(words, p) == (weighted, [f"{cls}</w>"])
    # A multi-word class: the weight on its last token, the up-weighting on its last word only.
    p, _ = encode_with_fallback(words, ["traffic light", "potted plant"], TEMPLATE,
                                [None, "a photograph of potted plants on the table"])
    assert _placed(words, p, 0) == (["light</w>"], ["light</w>"])
    assert _placed(words, p, 1) == (["plant</w>"], ["plant</w>"])
    assert build_prompt(TEMPLATE, "potted plant", "a photograph of potted plants on the table") == \
        "a photograph of potted plant on the table"


def test_a_prompt_that_cannot_place_its_class_falls_back(words, monkeypatch):
    """A captioned prompt whose class token cannot be found gets the plain template (with the
    reason), never an error; a class that cannot be placed even alone is still an error."""
    real = prompts.class_token_weights

    def glued(tokenizer, template, name, caption=None, *args):
        if caption and "glued" in caption:
            raise InputError(f"the class name {name!r} does not tokenize on its own.")
        return real(tokenizer, template, name, caption, *args)

    monkeypatch.setattr(prompts, "class_token_weights", glued)
    p, reasons = encode_with_fallback(words, ["cow", "dog"], TEMPLATE, ["a photograph of cow glued", "a dog"])
    assert reasons[0] == "the class name 'cow' does not tokenize on its own." and reasons[1] is None
    np.testing.assert_array_equal(p.ids[0], words([TEMPLATE.format("cow")])[0])
    np.testing.assert_array_equal(p.ids[1], words(["a photograph of dog, a dog"])[0])
    with pytest.raises(InputError, match="empty"):
        encode_with_fallback(words, ["  "], TEMPLATE, ["a photograph of cow glued"])


def test_per_class_captions_are_written_and_read_back_into_prompts(words, tmp_path):
    """captions.py's per-class mode (BLIP continuing each candidate's prompt, as the original)
    with a stand-in captioner; the JSON lines come back as (image, class) captions and prompts."""
    imgs = tmp_path / "JPEGImages"
    imgs.mkdir()
    for name in ("2007_000001", "2007_000002"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(imgs / f"{name}.jpg")
    given = tmp_path / "given.json"  # the original's candidate file: absolute paths, official names
    root = "/root/autodl-tmp/dataset/VOCdevkit/VOC2012/JPEGImages"
    given.write_text(json.dumps({"synonym_matching": {}, "image_similarity": {f"{root}/2007_000001.jpg": ["cow"],
                                                                              f"{root}/2007_000002.jpg": ["people"]},
                                 "text_similarity": {f"{root}/2007_000001.jpg": ["plant"],
                                                     f"{root}/2007_000002.jpg": []}}))
    continuation = {"cow": "s grazing in the field", "plant": " on the table", "people": " sitting on the grass"}
    seen = []

    def captioner(images, texts):  # BLIP echoes the prompt it continues (lower case)
        seen.extend(texts)
        return [t + continuation[t.rsplit(" ", 1)[1]] for t in texts]

    out = tmp_path / "captions.jsonl"
    assert write_class_captions(imgs, out, dataset="voc", candidates=given, captioner=captioner) == 3
    assert seen == ["a photograph of cow", "a photograph of plant", "a photograph of people"]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0] == {"image": "2007_000001.jpg", "class": "cow", "caption": "a photograph of cows grazing in the "
                        "field", "prompt": "a photograph of cow++ grazing in the field"}
    assert class_prompt("a photography of {}", "traffic light", "a photography of traffic lights at night") == \
        "a photography of traffic light++ at night"

    caps = read_captions(out)
    assert caps[("2007_000001.jpg", "plant")] == "a photograph of plant on the table"
    keys = ["2007_000001.jpg", "2007_000001"]  # the evaluator looks up the file name and the id ...
    cap = caption_for(caps, keys, ["cow", "cow"])  # ... and the prompt name, then the class name
    assert cap == "a photograph of cows grazing in the field" and caption_for(caps, keys, ["dog"]) is None
    p, reasons = encode_with_fallback(words, ["cow", "plant"], TEMPLATE, [cap, caption_for(caps, keys, ["plant"])])
    assert reasons == [None, None]
    np.testing.assert_array_equal(p.ids[0], words(["a photograph of cow grazing in the field"])[0])
    np.testing.assert_array_equal(p.ids[1], words(["a photograph of plant on the table"])[0])
    # A per-image caption serves every class of its image; a (image, class) key listed twice is an error.
    (tmp_path / "both.jsonl").write_text('{"image": "a.jpg", "caption": "a cow"}\n'
                                         '{"image": "a.jpg", "class": "cow", "caption": "x"}\n'
                                         '{"image": "a.jpg", "class": "cow", "caption": "y"}\n')
    with pytest.raises(InputError, match=r":3: image 'a.jpg' and class 'cow' already has a caption \(line 2\)"):
        read_captions(tmp_path / "both.jsonl")


def test_the_original_candidate_file_is_replayed(tmp_path):
    voc, coco = BENCHMARKS["voc"], BENCHMARKS["coco"]
    assert VOC_OFFICIAL_NAMES[0] == "plane" and voc.label_of("buses") == voc.class_names.index("bus")
    assert voc.label_of("people") == voc.label_of("person") == 15 and voc.label_of("background") is None
    f = tmp_path / "predict_syn_txt_0.8_img_0.97.json"
    f.write_text(json.dumps({
        "synonym_matching": {"COCO_val2014_000000000139.jpg": ["person"]},
        "image_similarity": {"COCO_val2014_000000000139.jpg": ["tvmonitor", "sofa"],
                             "COCO_val2014_000000000285.jpg": []},
        "text_similarity": {"COCO_val2014_000000000139.jpg": ["sofa", "toothbrus"],
                            "COCO_val2014_000000000285.jpg": ["bear"]}}))
    got = read_given_file(f, coco)
    lab = coco.class_names.index
    assert got == {"000000000139": sorted([lab("tv"), lab("couch"), lab("toothbrush")]), "000000000285": [lab("bear")]}
    assert image_key("COCO_val2014_000000000139.jpg") == image_key("000000000139.jpg") == "000000000139"
    assert image_key("/a/b/VOC2012/JPEGImages/2007_000033.jpg") == "2007_000033"
    # Our own candidates.jsonl (dataset names) is read too; a section or a class that is not there is one sentence.
    (tmp_path / "c.jsonl").write_text('{"image": "000000000139", "classes": ["couch", "tv"]}\n')
    assert read_given_file(tmp_path / "c.jsonl", coco) == {"000000000139": sorted([lab("tv"), lab("couch")])}
    with pytest.raises(InputError, match="has no section 'text' .*set filtering.given_keys"):
        read_given_file(f, coco, keys=("text",))
    with pytest.raises(InputError, match="names the class 'toothbrus' .*which PASCAL VOC 2012 does not have"):
        read_given_file(f, voc)


def test_pack_rows():
    assert pack_rows(11, 8, unit=1) == [8, 4] and pack_rows(11, 8, unit=1, bucket=False) == [8, 8]
    assert pack_rows(2, 8, unit=2) == [2] and pack_rows(3, 8, unit=2) == [4] and pack_rows(0, 8) == []
    assert pack_rows(16, 8) == [8, 8] and pack_rows(9, 8, unit=4) == [8, 4]


def test_packed_rows_equal_the_per_class_result(backbone):
    """Rows of two images packed into one UNet call (each row gathering its image's latent, in
    any order) give each class's map as a call with that class alone does (the original's one
    UNet call per class; the other rows of that call are padding on the other image)."""
    seg, params = load_diffsegmenter(backbone, DiffSegConfig(image_size=64))
    names = [["red square", "cat", "blue"], ["green", "dots", "cat", "magenta"]]
    enc = [seg.encode_prompts(n, caption=f"a photograph of {n[0]} sitting" if i == 0 else None)
           for i, n in enumerate(names)]
    ids, tw, pos, valid = pad_class_prompts(enc, seg.tokenizer)  # [2, 4, L]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
    images[:, 10:30, 8:24] = (250, 20, 20)

    @jax.jit
    def packed(params, images, row_image, ids, tw, pos):
        lat = seg.noised_latents(params, images, 7)
        return seg.row_maps(params, lat, row_image, ids, tw, pos, images.shape[1:3])

    def run(order):
        sel = tuple(np.asarray(x) for x in zip(*order))
        return np.asarray(packed(params, images, np.asarray([b for b, _ in order], np.int32), ids[sel], tw[sel],
                                 pos[sel]))

    pairs = [(b, k) for b in range(2) for k in range(4) if valid[b, k]]  # 7 rows, packed into one block of 8
    order = pairs[::-1] + [(1, 3)]
    maps = run(order)
    assert maps.shape == (8, 48, 40) and packed._cache_size() == 1
    for r, (b, k) in enumerate(order[:-1]):
        other = 1 - b  # the class alone, the rest of the call on the other image with an empty prompt
        alone = run([(b, k)] + [(other, 3 if other == 0 else 0)] * 7)
        assert rel_err(maps[r], alone[0]) < 1e-5, (b, k)
        assert maps[r].min() == 0 and abs(maps[r].max() - 1) < 1e-6
    assert packed._cache_size() == 1
    assert rel_err(maps[0], maps[1]) > 1e-3  # different classes, different maps


def test_evaluate_the_paper_protocol(backbone, tmp_path, monkeypatch):
    """evaluate with the original's candidate file, per-class captions (a plural among them), one
    prompt that falls back, one unreadable image, overlays and heat maps of the first image, and
    the fixed threshold picked on a held-out split."""
    data = write_voc(tmp_path / "voc", 4, (48, 64), seed=5)
    jpg = data / "VOCdevkit/VOC2012/JPEGImages/2007_000002.jpg"
    jpg.write_bytes(jpg.read_bytes()[:400])  # truncated: its header reads, its pixels do not
    root = "/root/autodl-tmp/dataset/VOCdevkit/VOC2012/JPEGImages"
    given = tmp_path / "predict_syn_txt_0.8_img_0.97.json"
    given.write_text(json.dumps({
        "synonym_matching": {},
        "image_similarity": {f"{root}/2007_000000.jpg": ["people"], f"{root}/2007_000001.jpg": ["plane", "buses"],
                             f"{root}/2007_000002.jpg": ["dog"], f"{root}/2007_000003.jpg": ["cat", "plant"]},
        "text_similarity": {f"{root}/2007_000000.jpg": ["cow", "people"], f"{root}/2007_000001.jpg": [],
                            f"{root}/2007_000002.jpg": [], f"{root}/2007_000003.jpg": ["table", "monitor"]}}))
    caps = tmp_path / "captions.jsonl"
    caps.write_text("".join(json.dumps(x) + "\n" for x in [
        {"image": "2007_000000.jpg", "class": "cow", "caption": "a photograph of cows grazing"},
        {"image": "2007_000000.jpg", "class": "people", "caption": "a photograph of people glued"},
        {"image": "2007_000001.jpg", "caption": "a plane and a bus"}]))
    held = tmp_path / "held_out.json"
    held.write_text(json.dumps({"dataset": "voc", "split": "train", "num_images": 100,
                                "threshold_sweep": {"best_threshold": 0.42, "best_mIoU": 0.5}}))

    seen = []
    real = prompts.class_token_weights

    def recording(tokenizer, template, name, caption=None, *args):
        seen.append((name, caption))
        if caption and "glued" in caption:
            raise InputError(f"the class name {name!r} does not tokenize on its own.")
        return real(tokenizer, template, name, caption, *args)

    monkeypatch.setattr(prompts, "class_token_weights", recording)
    c = default_config("voc")
    c.pretrained, c.data.data_dir, c.data.format = str(backbone), str(data), "folders"
    c.filtering.mode, c.filtering.given_file = "given", str(given)
    c.captions, c.eval.threshold_from, c.eval.save_images = str(caps), str(held), 1
    c.eval.batch_size, c.eval.rows_per_call = 2, 4  # 4 + 4 pairs: one block of 4 per batch
    c.eval.sweep_thresholds = (0.4, 0.5)
    r = evaluate(c, tmp_path / "w")

    assert r["filtering"] == "given" and "filtering_note" not in r and r["given_file"] == str(given)
    assert "candidate classes: the candidate file predict_syn_txt_0.8_img_0.97.json" in r["protocol"]
    assert r["rows_useful"] == 8 and r["rows_computed"] == 8 and r["images_without_candidates"] == 0
    assert r["threshold"] == 0.42 and r["threshold_source"]["split"] == "train"
    assert "the constant threshold 0.42 picked on voc train" in r["protocol"]
    assert r["num_skipped_images"] == 1 and r["skipped_images"][0]["image"] == "2007_000002.jpg"
    assert "cannot be read" in r["skipped_images"][0]["reason"]
    assert r["prompt_fallbacks"] == 1 and r["prompt_fallback_examples"][0]["class"] == "person"
    got = [json.loads(line) for line in (tmp_path / "w" / "candidates.jsonl").read_text().splitlines()]
    assert got[0] == {"image": "2007_000000", "classes": ["cow", "person"], "fallbacks": ["person"]}
    assert [g["image"] for g in got] == ["2007_000000", "2007_000001", "2007_000003"]
    assert got[2]["classes"] == ["cat", "diningtable", "pottedplant", "tvmonitor"]
    # The prompts: the original's names, the per-class caption (its plural fixed), the per-image one.
    assert ("cow", "a photograph of cows grazing") in seen and ("people", "a photograph of people glued") in seen
    assert ("plane", "a plane and a bus") in seen and ("buses", "a plane and a bus") in seen
    assert ("monitor", None) in seen and ("table", None) in seen
    # What users look at: the first image's overlay and one heat map per candidate.
    shots = sorted(p.name for p in (tmp_path / "w" / "images").iterdir())
    assert shots == ["2007_000000_heat_cow.png", "2007_000000_heat_person.png", "2007_000000_overlay.png"]
    with Image.open(tmp_path / "w" / "images" / "2007_000000_overlay.png") as im:
        assert im.size[0] >= 64 and im.size[1] > 48  # the legend may be wider than the image

    # A threshold picked on the split being evaluated is refused.
    held.write_text(json.dumps({"dataset": "voc", "split": "val", "threshold_sweep": {"best_threshold": 0.4}}))
    with pytest.raises(ConfigError, match="picked its threshold on voc val, the split evaluated now"):
        evaluate(c)
