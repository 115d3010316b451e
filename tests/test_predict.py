"""A trained workdir as an artifact: :func:`iedp_jax.load_trained` without the dataset,
``TrainedModel.predict`` = the evaluation protocol, and ``python -m iedp_jax.predict``."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from iedp_jax import load_trained, trainer
from iedp_jax import predict as predict_cli
from iedp_jax.data import catalog
from iedp_jax.data.pipeline import train_iterator
from iedp_jax.eval import runner
from iedp_jax.eval.runner import protocol_batches, run_protocol
from iedp_jax.infra import sharding, visualize
from iedp_jax.infra.checkpoint import Checkpointer
from iedp_jax.infra.errors import InputError
from iedp_jax.infra.metrics import segmentation_metrics
from iedp_jax.run_files import read_config, write_run_files
from iedp_jax.trainer import build_trainer
from tests.helpers import ROOT, small

pytestmark = pytest.mark.xdist_group("predict")

MAKE_DATASET = catalog.make_dataset
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def make_workdir(workdir: Path, name: str, on_disk: str) -> Path:
    """A workdir of config ``name`` as training leaves it (``config.json``, ``run.json``,
    ``checkpoints/7``: the initial state with the UNet scaled by 1.02, so it differs from the
    pretrained one; no training). The saved data section then names ``on_disk`` in a folder
    that does not exist: nothing after training may read the dataset."""
    cfg = small(name)
    t = build_trainer(cfg, workdir, sharding.make_mesh((1, 1), jax.devices()[:1]))
    params = dict(t.state["params"], unet=jax.tree.map(lambda x: x * 1.02, t.state["params"]["unet"]))
    state = dict(t.state, params=params, step=jnp.asarray(7, jnp.int32))
    ckpt = Checkpointer(workdir / "checkpoints", cfg.train.ckpt_every, cfg.train.keep_checkpoints)
    batches = train_iterator(t.dataset, cfg.train.batch_size, slice(None), num_steps=8, start_step=7, num_threads=0)
    ckpt.save(7, state, batches, t.dataset.state(7), force=True)
    ckpt.close()
    write_run_files(workdir, cfg, t.dataset)
    saved = json.loads((workdir / "config.json").read_text())
    saved["data"].update(name=on_disk, data_dir=str(workdir / "no_dataset_here"), format="folders")
    (workdir / "config.json").write_text(json.dumps(saved, indent=2))
    return workdir


@contextlib.contextmanager
def no_dataset():
    """Opening any dataset fails while inside."""
    def refuse(*args, **kwargs):
        raise AssertionError("a dataset was opened")

    with pytest.MonkeyPatch.context() as mp:
        for module in (catalog, runner, trainer):
            mp.setattr(module, "make_dataset", refuse)
        yield


@pytest.fixture(scope="session")
def seg_workdir(tmp_path_factory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("seg_run"), "smoke_seg", "ade20k")


@pytest.fixture(scope="module")
def seg_model(seg_workdir):
    with no_dataset():
        return load_trained(seg_workdir)


def test_load_trained_needs_no_dataset(seg_model, seg_workdir):
    m = seg_model
    assert (m.task, m.step, m.checkpoint) == ("seg", 7, seg_workdir / "checkpoints" / "7")
    assert m.class_names == ("background", "red square", "green stripes", "blue checkers", "yellow dots")
    assert m.config.data.name == "ade20k" and not Path(m.config.data.data_dir).exists()  # the saved config
    assert (m.protocol.mode, m.protocol.crop, m.protocol.stride) == ("single", (64, 64), (42, 42))


def test_odd_sized_images_get_maps_of_their_size_with_one_compile_per_group(seg_model):
    rng = np.random.default_rng(0)
    landscape, portrait = rng.integers(0, 256, (75, 101, 3), np.uint8), rng.integers(0, 256, (101, 75, 3), np.uint8)
    with no_dataset():
        first = seg_model.predict([landscape, portrait])
        compiled = seg_model.steps.seg_pass.cache_size()
        again = seg_model.predict([landscape[::-1].copy(), portrait])  # another image, the same shapes
    assert [p.shape for p in first] == [(75, 101), (101, 75)] and first[0].dtype == np.uint8
    assert all(p.max() < 5 for p in first)
    np.testing.assert_array_equal(again[1], first[1])
    assert compiled == 2 and seg_model.steps.seg_pass.cache_size() == 2  # landscape + portrait, no recompile
    assert seg_model.predict([]) == []
    with pytest.raises(InputError, match=r"image 0 must be a uint8 \[H, W, 3\] RGB array, got float32"):
        seg_model.predict([np.zeros((8, 8, 3), np.float32)])


def test_predict_is_the_evaluation_protocol(seg_model):
    """On the labelled validation images: the same class ids as the protocol's batches, and the
    same metrics as run_protocol."""
    m = seg_model
    source = MAKE_DATASET(small().data, seed=0)
    with no_dataset():
        preds = m.predict([source.val_image(i)["image"] for i in range(source.num_val)])
    conf = np.zeros((5, 5), np.int64)
    for i, pred in enumerate(preds):
        label = source.val_image(i)["label"].astype(np.int64)
        ok = label != 255
        np.add.at(conf, (label[ok], pred[ok].astype(np.int64)), 1)
    got = segmentation_metrics(conf, m.class_names)
    want = run_protocol(m.model, m.params, m.frozen, source, m.mesh, m.config)
    assert want["num_images"] == 8
    assert (got["mIoU"], got["aAcc"], got["IoU"]) == (want["mIoU"], want["aAcc"], want["IoU"])
    assert len({int(k) for p in preds for k in np.unique(p)}) > 1  # not a constant map
    for batch in protocol_batches(m.model, m.params, m.frozen, source, source.num_val, m.mesh, m.config):
        rows = np.asarray(batch.pred)
        for r, i in enumerate(batch.indices):
            if i >= 0:
                np.testing.assert_array_equal(rows[r, :64, :64], preds[i])


def _write_images(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (75, 101, 3), np.uint8)).save(folder / "b.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not an image")


def test_cli_on_a_folder_skips_the_broken_image(seg_workdir, seg_model, tmp_path):
    """2 good images (one odd-sized) and a corrupt one, with --config.eval overrides: the two label
    maps (palette PNGs at the images' sizes, as predict gives with that protocol) and overlays."""
    images, out = tmp_path / "images", tmp_path / "out"
    _write_images(images)
    res = subprocess.run([sys.executable, "-m", "iedp_jax.predict", "--workdir", str(seg_workdir), "--image",
                          str(images), "--out", str(out), "--config.eval.mode=multiscale",
                          "--config.eval.scales=(1.0,)"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("[iedp] ")]
    assert [ln for ln in lines if "skipped" in ln] == [
        f"[iedp] skipped {images / 'broken.jpg'}: cannot identify image file {str(images / 'broken.jpg')!r}"]
    assert "(step 7, multiscale)" in lines[-1] and "Traceback" not in res.stderr
    assert sorted(p.name for p in out.iterdir()) == [".iedp_predict.json", "a.png", "a_overlay.png", "b.png",
                                                     "b_overlay.png"]  # and the record of what predict wrote
    cfg = read_config(seg_workdir)
    cfg.eval.mode, cfg.eval.scales = "multiscale", (1.0,)
    flipped = load_trained(seg_workdir, mesh=seg_model.mesh, config=cfg)
    inputs = [np.asarray(Image.open(images / n).convert("RGB")) for n in ("a.png", "b.jpg")]
    for name, image, want in zip("ab", inputs, flipped.predict(inputs)):
        with Image.open(out / f"{name}.png") as im:
            assert im.mode == "P" and im.size == (image.shape[1], image.shape[0])
            np.testing.assert_array_equal(np.asarray(im), want)
            np.testing.assert_array_equal(np.asarray(im.getpalette()[:15]).reshape(5, 3), visualize.palette(5))
        with Image.open(out / f"{name}_overlay.png") as im:  # the image above a legend strip
            w, h = im.size
            assert h > image.shape[0] and w >= image.shape[1]
            np.testing.assert_array_equal(np.asarray(im.convert("RGB"))[: image.shape[0], : image.shape[1]],
                                          visualize.overlay_labels(image, want, visualize.palette(5), 0.5, -1))


def test_missing_or_unreadable_input_is_one_line(seg_workdir, tmp_path):
    res = subprocess.run([sys.executable, "-m", "iedp_jax.predict", "--workdir", str(seg_workdir), "--image",
                          str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=ENV)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [f"[iedp] --image {tmp_path / 'nope.jpg'} does not exist: pass an "
                                               "image file or a folder of images."]
    assert not (tmp_path / "out").exists()
    # in process: a corrupt file given alone, a folder of only corrupt files, a folder without images
    cfg = read_config(seg_workdir)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "empty").mkdir()
    cases = {bad / "x.png": "the image .* cannot be read", bad: "none of the 1 images in .* can be read",
             tmp_path / "empty": "holds no image"}
    for path, message in cases.items():
        with pytest.raises(InputError, match=message):
            predict_cli.main(cfg, str(seg_workdir), {"image": str(path), "out": str(tmp_path / "out")})
    assert not (tmp_path / "out").exists()


def test_depth_writes_millimetres_at_the_image_size(tmp_path_factory):
    workdir = make_workdir(tmp_path_factory.mktemp("depth_run"), "smoke_depth", "nyu")
    images, out = tmp_path_factory.mktemp("depth_images"), tmp_path_factory.mktemp("depth_out") / "out"
    image = np.random.default_rng(2).integers(0, 256, (75, 101, 3), np.uint8)
    Image.fromarray(image).save(images / "room.png")
    with no_dataset():
        predict_cli.main(read_config(workdir), str(workdir), {"image": str(images / "room.png"), "out": str(out)})
        trained = load_trained(workdir)
        want = trained.predict([image])[0]
    assert trained.task == "depth" and trained.scene_names and want.dtype == np.float32
    assert sorted(p.name for p in out.iterdir()) == [".iedp_predict.json", "room.png", "room_preview.png"]
    with Image.open(out / "room.png") as im:
        mm = np.asarray(im)
        assert im.size == (101, 75) and mm.dtype == np.uint16
    np.testing.assert_array_equal(mm, np.rint(want.astype(np.float64) * 1000).astype(np.uint16))
    assert mm.min() > 0 and mm.max() <= 10000  # metres -> millimetres, within max_depth
    with Image.open(out / "room_preview.png") as im:
        assert im.size == (101, 75) and im.mode == "RGB"
