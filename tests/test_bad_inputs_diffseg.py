"""Bad inputs of DiffSegmenter's entry points, one table each (:mod:`tests.bad_inputs`): the
``segment`` and ``captions`` command lines (in-process: ``main(argv)`` is the command line) and the
Python API / ``evaluate``. No model is built: every refusal comes before one is needed (BLIP is
a stand-in captioner). "Read-only" is a file where the output folder is expected (that stops root
too)."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from diffseg_jax import captions, segment
from diffseg_jax.config import DiffSegConfig, default_config
from diffseg_jax.evaluate import evaluate, open_dataset
from diffseg_jax.images import read_image
from diffseg_jax.pipeline import PretrainedDiffSegmenter
from iedp_jax.infra.errors import MissingDependency, UserError
from tests.bad_inputs import MARK, Case, check, table
from tests.fakes import write_voc

pytestmark = MARK


def _main(fn, argv):
    err = io.StringIO()
    with redirect_stderr(err):
        status = fn(argv)
    return status, err.getvalue().strip()


def _api(fn):
    def run(ctx):
        try:
            out = fn(ctx)
        except UserError as e:
            return 1, f"error: {e}"
        return 0, str(out)
    return run


def _photo(folder: Path, name="photo.jpg", orientation=None) -> Path:
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    if orientation is None:
        im.save(folder / name)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(folder / name, exif=exif.tobytes())
    return folder / name


# ------------------------------------------------------------------------------ segment


def _segment_under_file(folder: Path, fx: dict) -> dict:
    _photo(folder)
    (folder / "blocked").write_text("a file")
    return {}


def _segment(*extra, out="blocked/o.png"):
    return lambda ctx: _main(segment.main, ["--image", str(ctx["folder"] / "photo.jpg"), "--classes", "cat,dog",
                                            "--pretrained", str(ctx["folder"] / "no_model"), "--out",
                                            str(ctx["folder"] / out), *extra])


def _phone(folder: Path, fx: dict) -> dict:
    _photo(folder, orientation=8)
    return {}


SEGMENT_CASES = [
    Case("--out under a file", _segment_under_file, _segment(), 1, "a file is in the way of a folder",
         "one sentence naming --out, before the model loads"),
    Case("--threshold outside [0, 1]", _segment_under_file, _segment("--threshold", "1.5"), 1,
         "--threshold 1.5 is outside [0, 1]", "refused before anything loads", "silently wrong"),
    Case("a phone photo (EXIF orientation)", _phone, _api(lambda ctx: read_image(ctx["folder"] / "photo.jpg").shape),
         0, "(56, 40, 3)", "turned upright by the one shared decoder (iedp_jax.infra.images.oriented) before it "
         "is segmented", "silently wrong"),
]


# ------------------------------------------------------------------------------ the Python API


def _stub_segment(classes, image=None, **kw):
    """``PretrainedDiffSegmenter.segment`` up to its checks (they come before the model is used)."""
    stub = SimpleNamespace(config=DiffSegConfig())
    image = np.zeros((8, 8, 3), np.uint8) if image is None else image

    def fn(ctx):
        try:
            return PretrainedDiffSegmenter.segment(stub, image, classes, **kw)
        except AttributeError:  # past the checks: the stub has no model
            return "accepted"
    return _api(fn)


def _nothing(folder: Path, fx: dict) -> dict:
    return {}


def _voc_config(folder: Path, **over):
    c = default_config("voc")
    c.pretrained, c.data.data_dir, c.data.format, c.filtering.mode = "/nowhere/sd", str(folder / "voc"), \
        "folders", "all"
    for key, value in over.items():
        section, leaf = key.split(".")
        c[section][leaf] = value
    return c


def _voc(folder: Path, fx: dict) -> dict:
    write_voc(folder / "voc", 2, (24, 32))
    label = folder / "voc" / "VOCdevkit" / "VOC2012" / "SegmentationClassAug" / "2007_000001.png"
    arr = np.asarray(Image.open(label)).copy()
    arr[3, 4] = 77
    Image.fromarray(arr).save(label)
    return {}


def _load_all(ctx):
    ds = open_dataset(_voc_config(ctx["folder"]).data)
    return [ds.load(i)[2] for i in range(ds.num_images)]


API_CASES = [
    Case("classes as one string", _nothing,
         _stub_segment("cat,dog"), 1, "classes='cat,dog' is one string: pass a list of class names, e.g. ['cat', "
         "'dog']", "refused (iterating it would segment one letter per class)", "silently wrong"),
    Case("duplicate class names", _nothing, _stub_segment(["cat", "dog", "cat"]), 1,
         "classes lists 'cat' more than once", "refused: a label is a position in the list", "silently wrong"),
    Case("float image with 0..255 values", _nothing,
         _stub_segment(["cat"], np.full((8, 8, 3), 200.0, np.float32)), 1,
         "a float image must hold values in [0, 1], this one reaches 200", "refused (it would clip to white)",
         "silently wrong"),
    Case("threshold outside [0, 1]", _nothing, _api(lambda ctx: DiffSegConfig(threshold=1.5)), 1,
         "threshold 1.5 is outside [0, 1]", "refused in DiffSegConfig (every entry point builds one)",
         "silently wrong"),
    Case("sweep thresholds outside [0, 1]", _voc, _api(lambda ctx: evaluate(
        _voc_config(ctx["folder"], **{"eval.sweep_thresholds": (0.3, 1.5)}))), 1,
         "eval.sweep_thresholds holds [1.5], outside [0, 1]", "refused before the model loads", "silently wrong"),
    Case("VOC label value outside its classes", _voc, _api(_load_all), 1,
         "SegmentationClassAug/2007_000001.png holds the value 77, outside its classes 0..20 and the ignore value 255",
         "refused by file name (evaluate stops: it is a wrong copy, not an unreadable image)", "silently wrong"),
]


# ------------------------------------------------------------------------------ captions


def _fake_blip(fail_after: int | None = None):
    calls = []

    def make(model_path, device=None, max_new_tokens=None):
        def caption(images, texts):
            calls.append(len(images))
            if fail_after is not None and len(calls) > fail_after:
                raise MissingDependency("BLIP stopped (a stand-in for any failure mid-run).")
            return [f"a picture {i}" for i in range(len(images))]
        return caption
    return make


def _caption_folder(folder: Path, fx: dict) -> dict:
    (folder / "imgs").mkdir()
    for name in ("a.jpg", "c.jpg"):
        _photo(folder / "imgs", name)
    (folder / "imgs" / "b.jpg").write_bytes(b"not a jpeg")
    (folder / "c.jsonl").write_text('{"image": "old.jpg", "caption": "an earlier run"}\n')
    return {}


def _captions(fail_after=None, out="c.jsonl"):
    def run(ctx):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(captions, "blip_captioner", _fake_blip(fail_after))
            return _main(captions.main, ["--images", str(ctx["folder"] / "imgs"), "--out", str(ctx["folder"] / out),
                                         "--model", str(ctx["folder"] / "blip"), "--batch-size", "1"])
    return run


CAPTIONS_CASES = [
    Case("an undecodable image among others", _caption_folder, _captions(), 0, "skipped: the image",
         "skipped with one line; the others are captioned and the file is replaced only at the end", "data lost",
         changes=("c.jsonl",)),
    Case("a run that stops midway", _caption_folder, _captions(fail_after=1), 1, "BLIP stopped",
         "the existing output file is untouched (written to a temporary file, renamed on success)", "data lost"),
    Case("--out under a file", _caption_folder, _captions(out="c.jsonl/new.jsonl"), 1,
         "a file is in the way of a folder", "one sentence naming --out"),
]


@pytest.mark.parametrize("case", SEGMENT_CASES, ids=[c.name for c in SEGMENT_CASES])
def test_segment_bad_input(case, tmp_path):
    check(case, tmp_path, {})


@pytest.mark.parametrize("case", API_CASES, ids=[c.name for c in API_CASES])
def test_api_bad_input(case, tmp_path):
    check(case, tmp_path, {})


@pytest.mark.parametrize("case", CAPTIONS_CASES, ids=[c.name for c in CAPTIONS_CASES])
def test_captions_bad_input(case, tmp_path):
    ctx = check(case, tmp_path, {})
    if ctx["status"] == 0:
        lines = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
        assert [x["image"] for x in lines] == ["a.jpg", "c.jpg"]
    assert not list(tmp_path.glob(".c.jsonl.tmp*"))  # no temporary file left behind


def test_tables_have_unique_names():
    for cases in (SEGMENT_CASES, API_CASES, CAPTIONS_CASES):
        assert len({name for name, _, _ in table(cases)}) == len(cases)
