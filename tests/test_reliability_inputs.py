"""Corrupt and odd inputs for the IEDP entry points (train, evaluate, predict, export): each bad
input ends with one sentence and a non-zero exit (run in-process through each entry point's
``main`` and the CLI's own error handler, so no model compiles); RGBA and 16-bit PNGs are read,
converted; one unreadable validation image is skipped and counted, not fatal."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from iedp_jax import evaluate, export, predict, train
from iedp_jax.data.ade20k import ADE20KSource
from iedp_jax.eval.runner import run_protocol
from iedp_jax.infra import sharding
from iedp_jax.infra.checkpoint import MANIFEST, resolve_checkpoint
from iedp_jax.infra.cli import _exit_on_user_error
from iedp_jax.infra.errors import InputError
from iedp_jax.infra.images import load_rgb
from iedp_jax.model import SEG, IEDPConfig
from iedp_jax.sd.tiny import write_tiny_backbone
from iedp_jax.sd.weights import WeightsError
from tests.fakes import write_protocol_ade
from tests.helpers import ROOT, eval_cfg, small
from tests.reference.protocols import DummyModel, seg150

UNET = Path("unet") / "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    return write_tiny_backbone(tmp_path_factory.mktemp("sd") / "sd")


def _exit_sentence(fn: Callable[[], None]) -> str:
    """What the entry point prints when it stops: the CLI's handler turns a user error into
    ``SystemExit("[iedp] sentence")`` (exit status 1)."""
    with pytest.raises(SystemExit) as e:
        _exit_on_user_error("iedp", (WeightsError,), fn)
    msg = e.value.code
    assert isinstance(msg, str) and msg.startswith("[iedp] ") and "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------ damaged backbones


def _truncate(sd: Path) -> None:
    f = sd / UNET
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _corrupt_header(sd: Path) -> None:
    f = sd / UNET
    data = bytearray(f.read_bytes())
    data[8:40] = b"\x00garbage, not a JSON header....."
    f.write_bytes(bytes(data))


def _huge_header(sd: Path) -> None:
    f = sd / UNET
    f.write_bytes((10**12).to_bytes(8, "little") + f.read_bytes()[8:])


def _shard_missing(sd: Path) -> None:
    """The UNet split into two shards with an index, as large checkpoints ship; the second is lost."""
    import json

    from safetensors.numpy import load_file, save_file

    f = sd / UNET
    tensors = load_file(f)
    names = sorted(tensors)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[: len(names) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(f.parent / shard))
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (f.parent / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    f.unlink()
    (f.parent / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()


BACKBONE_CASES = {  # name: (how the copy is damaged, config changes, what the sentence must say)
    "truncated safetensors": (_truncate, {}, "the file is truncated or partly copied"),
    "header-corrupt safetensors": (_corrupt_header, {}, "has an unreadable header"),
    "header longer than the file": (_huge_header, {}, "is shorter than its"),
    "sharded index, a shard missing": (_shard_missing, {}, "00002-of-00002.safetensors is missing"),
    "CLIP folder as the SD folder": (None, {"model.pretrained": "{sd}/image_encoder"}, "is not a Stable Diffusion"),
    "SD folder as the CLIP folder": (None, {"model.clip_vision": "{sd}"}, "is not a CLIP folder"),
}


@pytest.mark.parametrize("case", list(BACKBONE_CASES))
def test_train_with_a_damaged_backbone_stops_with_one_sentence(case, backbone, tmp_path):
    damage, changes, expected = BACKBONE_CASES[case]
    sd = Path(shutil.copytree(backbone, tmp_path / "sd"))
    if damage:
        damage(sd)
    fields = {"model.tiny_backbone": False, "model.pretrained": str(sd), "model.clip_vision": str(sd / "image_encoder"),
              **{k: v.format(sd=sd) for k, v in changes.items()}}
    msg = _exit_sentence(lambda: train.main(small(**fields), str(tmp_path / "run"), {}))
    assert expected in msg, msg
    if damage:
        assert str(sd / "unet") in msg, msg  # the file (or its folder) is named
    assert not (tmp_path / "run" / "run.lock").exists()  # released on the way out


@pytest.mark.parametrize("fields, expected", [
    ({"train.batch_size": 0}, "--config.train.batch_size=0 must be positive"),
    ({"train.total_steps": -5}, "--config.train.total_steps=-5 must be positive"),
    ({"data.crop_size": (0, 32)}, "--config.data.crop_size=(0, 32) must be positive"),
    ({"train.eval_every": -1}, "--config.train.eval_every=-1 must be zero or positive"),
    ({"data.name": "ade20k", "data.format": "folders", "data.data_dir": "{tmp}"}, "ADE"),
], ids=["zero-batch", "negative-steps", "zero-crop", "negative-eval-every", "unknown-layout"])
def test_train_rejects_bad_sizes_and_unknown_layouts(fields, expected, tmp_path):
    (tmp_path / "some_images").mkdir()
    (tmp_path / "some_images" / "a.jpg").write_bytes(b"not a dataset")
    cfg = small(**{k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in fields.items()})
    msg = _exit_sentence(lambda: train.main(cfg, str(tmp_path / "run"), {}))
    assert expected in msg, msg


def test_an_unknown_config_key_is_one_line():
    res = subprocess.run([sys.executable, "-m", "iedp_jax.evaluate", "--workdir", "/nonexistent",
                          "--config", "smoke_seg", "--config.train.bacth_size=8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                                                      "PYTHONPATH": str(ROOT)})
    assert res.returncode != 0
    lines = [x for x in res.stderr.strip().splitlines() if x.strip()]
    assert "bacth_size" in lines[-1] and "Traceback" not in res.stderr, res.stderr[-2000:]


# ------------------------------------------------------------------------------ evaluate / predict / export


def test_evaluate_predict_export_without_a_trained_run(tmp_path):
    cfg = small()
    assert "there is no checkpoint in" in _exit_sentence(lambda: evaluate.main(cfg, str(tmp_path), {}))
    assert "run.json does not exist" in _exit_sentence(
        lambda: export.main(cfg, str(tmp_path), {"out": str(tmp_path / "export")}))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(_encoded("JPEG")[:200])  # a JPEG cut short
    assert "cannot be read" in _exit_sentence(
        lambda: predict.main(cfg, str(tmp_path), {"image": str(bad), "out": str(tmp_path / "out")}))


def _encoded(fmt: str) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def test_every_checkpoint_damaged_is_one_sentence(tmp_path):
    step = tmp_path / "checkpoints" / "4"
    (step / "state").mkdir(parents=True)
    (step / "state" / "data").write_bytes(b"12")
    (step / MANIFEST).write_text(json.dumps({"files": {"state/data": 100}}))
    with pytest.raises(InputError, match=r"every checkpoint in .* is damaged"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(InputError, match=r"state/data has 2 bytes, 100 when saved\): pass an earlier step"):
        resolve_checkpoint(tmp_path, step)


def test_rgba_and_16_bit_png_are_read_converted(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 3] = 200, 7, np.arange(6, dtype=np.uint8)[None] * 40
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    wide = (np.arange(24, dtype=np.uint16).reshape(4, 6) * 2849)  # 0 .. 65527
    Image.fromarray(wide).save(tmp_path / "grey16.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "rgba.png"), rgba[..., :3])  # alpha dropped
    got = load_rgb(tmp_path / "grey16.png")
    assert got.shape == (4, 6, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 1], np.rint(wide / 257.0).astype(np.uint8))  # not clipped to 255
    good, sizes, bad = predict.readable_images([tmp_path / "rgba.png", tmp_path / "grey16.png"])
    assert sizes == [(4, 6), (4, 6)] and not bad


def test_one_unreadable_validation_image_is_skipped_and_counted(tmp_path):
    """The protocol over 3 images with the first one's JPEG cut short equals the protocol over
    the 2 readable ones; results say which image was skipped."""
    full, reduced = write_protocol_ade(tmp_path / "full"), write_protocol_ade(tmp_path / "reduced")
    broken = full / "ADEChallengeData2016" / "images" / "validation" / "ADE_val_00000001.jpg"
    broken.write_bytes(broken.read_bytes()[:300])
    for sub, ext in (("images", "jpg"), ("annotations", "png")):
        (reduced / "ADEChallengeData2016" / sub / "validation" / f"ADE_val_00000001.{ext}").unlink()
    cfg = eval_cfg((32, 32), (21, 21), img_scale=(128, 32), mode="single", batch_size=2, num_visualizations=3)
    model = DummyModel(IEDPConfig(task=SEG, num_classes=150, num_queries=150), seg150)
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    got, want = (run_protocol(model, {"scale": jnp.float32(1.0)}, {}, ADE20KSource(root, (32, 32)), mesh, cfg,
                              out_dir=tmp_path / f"eval_{root.name}") for root in (full, reduced))
    assert got["num_unreadable"] == 1 and got["unreadable"] == ["ADE_val_00000001"]
    assert got["num_images"] == want["num_images"] == 2 and want["num_unreadable"] == 0
    for key in ("aAcc", "mIoU", "mAcc"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert sorted(p.name for p in (tmp_path / "eval_full" / "images").iterdir()) == [
        "00000_ADE_val_00000000.png", "00002_ADE_val_00000002.png"]  # no panel for the skipped image
