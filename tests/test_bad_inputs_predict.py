"""Bad inputs of ``python -m iedp_jax.predict``, one table (:mod:`tests.bad_inputs`): each ends in
one sentence with exit status 1 or is done right, and no file that was there is replaced
(unless ``--overwrite``). A full disk is monkeypatched (the first write into ``--out`` fails with
ENOSPC); "read-only" is a file where the folder is expected, which stops root too."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from iedp_jax import predict
from iedp_jax.infra.images import load_rgb
from iedp_jax.run_files import read_config
from tests.bad_inputs import MARK, Case, check, cli, copy_run, sentence, table, tiny_run_path

pytestmark = MARK


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return tiny_run_path(tmp_path_factory)

# What predict reads of the trained model before it predicts (the refusals come before that).
STUB = SimpleNamespace(task="seg", class_names=("a", "b"),
                       model=SimpleNamespace(config=SimpleNamespace(ignore_index=255)))


def _photo(path: Path, size=(40, 56), orientation: int | None = None) -> np.ndarray:
    rgb = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    if orientation is None:
        im.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(path, exif=exif.tobytes(), quality=95)
    return rgb


def _predict(image: str = "images", out: str = "out", **flags):
    def run(ctx):
        values = {"image": str(ctx["folder"] / image), "out": str(ctx["folder"] / out), **flags}
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(predict, "load_trained", lambda *a, **k: ctx["trained"])  # loaded once for the module
            for name, fn in ctx.get("patch", {}).items():
                mp.setattr(predict, name, fn)
            return sentence(lambda: predict.main(read_config(ctx["run"]), str(ctx["run"]), values))
    return run


def _images(*names, out_files=(), **extra):
    def setup(folder: Path, fx: dict) -> dict:
        (folder / "images").mkdir()
        for name in names:
            _photo(folder / "images" / name)
        for name in out_files:
            (folder / "out").mkdir(exist_ok=True)
            (folder / "out" / name).write_bytes(b"someone else's file")
        return {"trained": STUB, "run": fx["tiny_run"], **extra}
    return setup


def _out_is_file(folder: Path, fx: dict) -> dict:
    ctx = _images("a.jpg")(folder, fx)
    (folder / "out").write_text("a file")
    return ctx


def _out_under_file(folder: Path, fx: dict) -> dict:
    ctx = _images("a.jpg")(folder, fx)
    (folder / "blocked").write_text("a file")
    return ctx


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "out/.iedp_predict.json")


def _another_runs_checkpoint(folder: Path, fx: dict) -> dict:
    ctx = _images("a.jpg")(folder, fx)
    run = copy_run(fx["tiny_run"], folder)  # this workdir's run.json says 6 classes, its checkpoint has 5
    info = json.loads((run / "run.json").read_text())
    info["class_names"] = [*info["class_names"], "sixth"]
    (run / "run.json").write_text(json.dumps(info))
    return dict(ctx, run=run)


def _with_checkpoint_of_another_run(ctx):
    from iedp_jax import load_trained

    return sentence(lambda: load_trained(ctx["run"]))


CASES = [
    Case("--out is the --image folder", _images("a.png", "b.jpg"), _predict(out="images"), 1,
         "would replace the input image", "refused before the model loads; the photos are untouched", "data lost"),
    Case("--out holds a file predict did not write", _images("a.jpg", out_files=("a_overlay.png",)), _predict(), 1,
         "already holds a_overlay.png, which predict did not write: pass another --out folder, or --overwrite",
         "refused unless --overwrite (predict records what it wrote in OUT/.iedp_predict.json)", "data lost"),
    Case("--out is a file", _out_is_file, _predict(), 1, "is a file: pass a folder",
         "refused before the model loads"),
    Case("--out under a file (not writable)", _out_under_file, _predict(out="blocked/out"), 1,
         "a file is in the way of a folder", "one sentence before the model loads, naming --out"),
    Case("--out on a full disk", _images("a.jpg", patch={"_record_written": _disk_full}), _predict(), 1,
         "the disk is full", "one sentence naming --out; nothing of the input is touched"),
    Case("checkpoint of another run (other classes)", _another_runs_checkpoint, _with_checkpoint_of_another_run, 1,
         "is of another model (its parameter params['head']",
         "one sentence naming the parameter and both shapes, before orbax restores anything"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_predict_bad_input(case, tmp_path, tiny_run):
    ctx = check(case, tmp_path, {"tiny_run": tiny_run})
    if "shapes" in case.behaviour:
        assert "has shape (" in ctx["message"] and "this config's model (" in ctx["message"], ctx["message"]


def test_a_phone_photo_is_read_upright_and_reruns_replace_only_predicts_files(tmp_path):
    """EXIF orientation 6 (stored landscape, shown portrait): predict's decoder (the one every
    image of predict goes through) gives the upright picture, so the label map has that size. A
    second run into the same --out may replace only its own files; --overwrite another's."""
    (tmp_path / "images").mkdir()
    stored = _photo(tmp_path / "images" / "phone.jpg", (40, 56), orientation=6)
    good, sizes, bad = predict.readable_images([tmp_path / "images" / "phone.jpg"])
    assert sizes == [(56, 40)] and not bad
    upright = load_rgb(tmp_path / "images" / "phone.jpg", orient=True)
    as_stored = load_rgb(tmp_path / "images" / "phone.jpg")  # a dataset's image keeps its stored pixels
    assert as_stored.shape == stored.shape
    np.testing.assert_array_equal(upright, np.rot90(as_stored, -1))  # orientation 6: turned 90 degrees clockwise
    out = tmp_path / "out"
    out.mkdir()
    predict._record_written(out, ["phone.png", "phone_overlay.png"])
    for name in ("phone.png", "phone_overlay.png"):
        (out / name).write_bytes(b"an earlier prediction")
    predict.check_outputs(out, ["phone.png", "phone_overlay.png"], [tmp_path / "images" / "phone.jpg"])
    (out / "x.png").write_bytes(b"mine")
    with pytest.raises(predict.InputError, match="which predict did not write"):
        predict.check_outputs(out, ["x.png"], [])
    predict.check_outputs(out, ["x.png"], [], overwrite=True)
    with pytest.raises(predict.InputError, match="would replace the input image"):  # even with --overwrite
        predict.check_outputs(tmp_path / "images", ["phone.jpg"], [tmp_path / "images" / "phone.jpg"], True)


def test_predict_cli_refuses_to_write_over_its_input(tmp_path, tiny_run):
    """The one command-line case: --out = the --image folder stops with one line; the photo stays."""
    (tmp_path / "images").mkdir()
    _photo(tmp_path / "images" / "a.png")
    before = (tmp_path / "images" / "a.png").read_bytes()
    status, last = cli("iedp_jax.predict", "--workdir", str(tiny_run), "--image", str(tmp_path / "images"),
                       "--out", str(tmp_path / "images"))
    assert status == 1 and "would replace the input image" in last, last
    assert (tmp_path / "images" / "a.png").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["a.png"]


def test_table_names():
    assert len({name for name, _, _ in table(CASES)}) == len(CASES)
