"""``python -m diffseg_jax.segment`` on the tiny backbone: the two PNGs, the legend, the error sentences."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from diffseg_jax import captions, segment
from diffseg_jax.segment import class_colours, legend_strip, main, overlay_with_legend, parse_classes
from iedp_jax.infra.errors import ConfigError, DatasetError, InputError, MissingDependency
from iedp_jax.sd.tiny import write_tiny_backbone


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return write_tiny_backbone(tmp_path_factory.getbasetemp() / "diffseg_tiny_sd")


@pytest.fixture()
def photo(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    img[8:30, 6:30] = (230, 20, 20)
    img[20:38, 34:54] = (20, 20, 230)
    path = tmp_path / "photo.jpg"
    Image.fromarray(img).save(path, quality=95)
    return path


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_segment_writes_label_map_and_overlay_with_legend(backbone, photo, tmp_path, capsys):
    out = tmp_path / "res" / "out.png"
    classes = ["red square", "blue", "cat"]
    assert main(["--image", str(photo), "--classes", " red square, blue ,cat", "--pretrained", str(backbone),
                 "--out", str(out), "--image-size", "64", "--threshold", "0.4", "--caption", "a photo"]) == 0
    assert "wrote" in capsys.readouterr().out

    with Image.open(out) as im:
        assert im.mode == "L" and im.size == (56, 40)
        labels = np.asarray(im)
    assert labels.max() <= 3 and labels.dtype == np.uint8
    with Image.open(tmp_path / "res" / "out_overlay.png") as im:
        overlay = np.asarray(im.convert("RGB"))
    image = np.asarray(Image.open(photo).convert("RGB"))
    # Top: the blended image, exactly as overlay_with_legend draws it; background pixels unchanged.
    h = 40
    assert overlay.shape[0] > h and overlay.shape[1] >= 56
    np.testing.assert_array_equal(overlay, overlay_with_legend(image, labels, classes))
    bg = labels == 0
    np.testing.assert_array_equal(overlay[:h, :56][bg], image[bg])
    # Bottom: the legend strip holds every class's swatch colour and some dark text pixels.
    strip = overlay[h:]
    colours = class_colours(3)
    for k in range(1, 4):
        assert (strip == colours[k]).all(-1).sum() >= 50, f"no swatch for class {k}"
    assert (strip.sum(-1) < 200).sum() > 30  # text (and swatch outlines)
    assert (strip == 255).all(-1).mean() > 0.5  # mostly white


def test_legend_wraps_to_the_image_width():
    colours = class_colours(6)
    names = ["cat", "sofa", "potted plant", "dog", "tv monitor", "bird"]
    wide = legend_strip(names, colours, 1000)
    narrow = legend_strip(names, colours, 120)
    assert wide.shape[1] == 1000 and narrow.shape[1] == 120
    assert narrow.shape[0] > wide.shape[0]  # more rows
    tiny = legend_strip(["a very long class name indeed"], class_colours(1), 20)
    assert tiny.shape[1] > 20  # widened to fit the widest entry


def test_error_sentences(backbone, photo, tmp_path, capsys, monkeypatch):
    base = ["--pretrained", str(backbone), "--out", str(tmp_path / "o.png"), "--image-size", "64"]
    assert main(["--image", str(photo), "--classes", " , "] + base) == 1
    assert "--classes is empty" in _one_error(capsys)
    assert main(["--image", str(photo), "--classes", "cat,,sofa"] + base) == 1
    assert "class 2 of --classes" in _one_error(capsys)
    assert main(["--image", str(tmp_path / "missing.jpg"), "--classes", "cat"] + base) == 1
    assert "missing.jpg' does not exist" in _one_error(capsys)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert main(["--image", str(tmp_path / "broken.jpg"), "--classes", "cat"] + base) == 1
    assert "cannot be read" in _one_error(capsys)
    assert main(["--image", str(photo), "--classes", "cat", "--pretrained", str(tmp_path / "no_sd"),
                 "--out", str(tmp_path / "o.png")]) == 1
    assert "no_sd' does not exist" in _one_error(capsys)
    # A class name longer than the tokenizer's 77 tokens cannot be placed in the prompt.
    assert main(["--image", str(photo), "--classes", "cat," + "red " * 80] + base) == 1
    assert "cut off by the tokenizer" in _one_error(capsys)
    assert not (tmp_path / "o.png").exists()
    with pytest.raises(ConfigError, match="listed twice"):
        parse_classes("cat,Cat")
    # Anything that is not a user error is a bug: it keeps its traceback.
    monkeypatch.setattr(segment, "read_image", lambda path: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["--image", str(photo), "--classes", "cat"] + base)


def test_captions_error_paths(tmp_path, monkeypatch, capsys):
    with pytest.raises(DatasetError, match="the image folder .* does not exist"):
        captions.write_captions(tmp_path / "nope", tmp_path / "c.jsonl", tmp_path / "blip")
    (tmp_path / "imgs").mkdir()
    with pytest.raises(DatasetError, match="holds no image"):
        captions.write_captions(tmp_path / "imgs", tmp_path / "c.jsonl", tmp_path / "blip")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "a.jpg")
    with pytest.raises(InputError, match="BLIP model folder .*blip' does not exist"):
        captions.write_captions(tmp_path / "imgs", tmp_path / "c.jsonl", tmp_path / "blip")
    with pytest.raises(DatasetError, match="1 listed image"):
        captions.write_captions(tmp_path / "imgs", tmp_path / "c.jsonl", tmp_path / "blip", names=["a", "b"])
    (tmp_path / "blip").mkdir()
    (tmp_path / "blip" / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(MissingDependency, match="captioning needs transformers and torch"):
        captions.write_captions(tmp_path / "imgs", tmp_path / "c.jsonl", tmp_path / "blip")
    assert captions.main(["--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "c.jsonl"),
                          "--model", str(tmp_path / "blip")]) == 1
    assert "captioning needs transformers" in _one_error(capsys)
    assert not (tmp_path / "c.jsonl").exists()
