"""``python -m iedp_jax.evaluate``: the protocols over fake ADE20K / NYUv2 folders (dummy
predictors, against NumPy transcriptions of mmseg and VPD), and the checkpoint -> results.json
path on the smoke config with the real model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from iedp_jax.config import base_config
from iedp_jax.data import transforms
from iedp_jax.data.ade20k import ADE20KSource
from iedp_jax.data.nyu import NYUv2Source
from iedp_jax.data.pipeline import train_iterator
from iedp_jax.eval.plan import plan_groups, protocol_from_config
from iedp_jax.eval.runner import evaluate_checkpoint, run_protocol
from iedp_jax.infra import sharding
from iedp_jax.infra.checkpoint import Checkpointer, resolve_checkpoint
from iedp_jax.infra.errors import ConfigError, InputError
from iedp_jax.infra.metrics import segmentation_metrics
from iedp_jax.model import DEPTH, SEG, IEDPConfig
from iedp_jax.trainer import build_trainer
from tests.fakes import write_nyu, write_protocol_ade
from tests.helpers import ROOT, eval_cfg, small
from tests.reference.protocols import DummyModel, depth_dummy, np_aug_test, seg150


def ade_expected(src: ADE20KSource, crop, stride, img_scale, ratios, flip) -> dict:
    conf = np.zeros((150, 150), np.int64)
    for i in range(src.num_val):
        img_path, ann_path = src.val_files.open(i)
        image = np.asarray(Image.open(img_path).convert("RGB"))
        label = transforms.reduce_zero_label(np.asarray(Image.open(ann_path)))
        pred = np_aug_test(image, crop, stride, img_scale, ratios, flip, seg150).argmax(-1)
        ok = label != 255
        np.add.at(conf, (label[ok].astype(int), pred[ok]), 1)
    return segmentation_metrics(conf, src.class_names)


@pytest.mark.parametrize("mode", ["single", "multiscale"])
def test_ade_protocol_equals_mmseg_transcription(tmp_path, mode):
    src = ADE20KSource(write_protocol_ade(tmp_path / "ade"), (32, 32))
    crop, stride, img_scale, ratios = (32, 32), (21, 21), (128, 32), (1.0, 1.5)
    cfg = eval_cfg(crop, stride, img_scale=img_scale, scales=ratios, mode=mode, batch_size=2, num_visualizations=2)
    model = DummyModel(IEDPConfig(task=SEG, num_classes=150, num_queries=150), seg150)
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    got = run_protocol(model, {"scale": jnp.float32(1.0)}, {}, src, mesh, cfg, out_dir=tmp_path / "eval")
    multi = mode == "multiscale"
    want = ade_expected(src, crop, stride, img_scale, ratios if multi else (1.0,), multi)
    assert got["num_images"] == 3 and got["mode"] == mode
    assert got["protocol"]["scales"] == ([1.0, 1.5] if multi else [1.0]) and got["protocol"]["flip"] is multi
    assert abs(got["aAcc"] - want["aAcc"]) < 1e-4 and abs(got["mIoU"] - want["mIoU"]) < 1e-3
    assert got["aAcc"] > 0.5             # the dummy reads the colours (coarsely: 1/8 of a 32-high image)
    assert [got["IoU"][k] is None for k in src.class_names] == [want["IoU"][k] is None for k in src.class_names]
    # the portrait image is its own group; padding rows of the batches count for nothing
    groups = plan_groups([(60, 84), (84, 60), (60, 100)], protocol_from_config(cfg, SEG))
    assert [g.name for g in groups] == ["landscape", "portrait"] and groups[1].indices == [1]
    assert groups[0].indices == ([2, 0] if multi else [0, 2])   # most windows first (at 1.5: 8 vs 6)
    images = sorted(p.name for p in (tmp_path / "eval" / "images").iterdir())
    assert images == ["00000_ADE_val_00000000.png", "00001_ADE_val_00000001.png"]
    with Image.open(tmp_path / "eval" / "images" / images[1]) as im:
        assert im.size == (3 * 60 + 8, 84)


def np_depth(image, crop, stride, flip, predict):
    """mmseg's window grid with VPD's per-window flip average, overlaps averaged (NumPy)."""
    h, w = image.shape[:2]
    out, count = np.zeros((h, w)), np.zeros((h, w))
    for y in range(max(h - crop[0] + stride[0] - 1, 0) // stride[0] + 1):
        for x in range(max(w - crop[1] + stride[1] - 1, 0) // stride[1] + 1):
            y2, x2 = min(y * stride[0] + crop[0], h), min(x * stride[1] + crop[1], w)
            y1, x1 = max(y2 - crop[0], 0), max(x2 - crop[1], 0)
            win = image[None, y1:y2, x1:x2]
            p = predict(win)[0].astype(np.float64)
            if flip:
                p = (p + predict(win[:, :, ::-1])[0, :, ::-1]) / 2
            out[y1:y2, x1:x2] += p
            count[y1:y2, x1:x2] += 1
    return out / count


def test_nyu_protocol_equals_vpd_transcription_with_eigen_crop(tmp_path):
    write_nyu(tmp_path / "nyu")
    src = NYUv2Source(tmp_path / "nyu", (48, 48))
    crop, stride = (48, 48), (16, 16)
    cfg = eval_cfg(crop, stride, batch_size=2, num_visualizations=1)
    model = DummyModel(IEDPConfig(task=DEPTH, num_queries=8, explicit_maps="zeros"), depth_dummy)
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    got = run_protocol(model, {"scale": jnp.float32(1.0)}, {}, src, mesh, cfg, out_dir=tmp_path / "eval")
    per = []
    for i in range(src.num_val):
        rgb, dep = src.val_files.open(i)
        image = np.asarray(Image.open(rgb).convert("RGB"))
        gt = np.asarray(Image.open(dep)).astype(np.float32) / 1000.0
        pred = np.clip(np_depth(image, crop, stride, True, depth_dummy), 1e-3, 10.0)
        ok = (gt > 1e-3) & (gt < 10.0) & transforms.eigen_crop_mask(*gt.shape)
        d = pred[ok] - gt[ok]
        thresh = np.maximum(gt[ok] / pred[ok], pred[ok] / gt[ok])
        per.append({"rmse": np.sqrt(np.mean(d ** 2)), "abs_rel": np.mean(np.abs(d) / gt[ok]),
                    "delta1": np.mean(thresh < 1.25), "log10": np.mean(np.abs(np.log10(pred[ok]) - np.log10(gt[ok])))})
    for k in per[0]:
        assert got[k] == pytest.approx(np.mean([p[k] for p in per]), rel=1e-5), k
    assert got["num_images"] == 3
    assert got["protocol"] == {"crop": [48, 48], "stride": [16, 16], "flip": True, "clip_depth": True}
    assert [p.name for p in (tmp_path / "eval" / "images").iterdir()] == ["00000_bathroom_rgb_00045.png"]
    with pytest.raises(ConfigError, match="segmentation protocol"):
        protocol_from_config(eval_cfg(crop, stride, mode="multiscale"), DEPTH)


def test_protocol_defaults_follow_the_crop():
    cfg = base_config()
    cfg.data.crop_size = (512, 512)
    p = protocol_from_config(cfg, SEG)
    assert (p.crop, p.stride, p.img_scale, p.scales, p.flip) == ((512, 512), (341, 341), (2048, 512), (1.0,), False)
    cfg.eval.mode = "multiscale"
    assert protocol_from_config(cfg, SEG).passes == [(0, False), (0, True), (1, False), (1, True), (2, False),
                                                     (2, True)]
    cfg.eval.mode = "fast"
    with pytest.raises(ConfigError, match="single' or 'multiscale"):
        protocol_from_config(cfg, SEG)


# ----------------------------------------------------------------------------- the CLI path


@pytest.fixture(scope="module")
def smoke_workdir(tmp_path_factory):
    """A smoke-config workdir whose checkpoints/7 holds the trainer's state, saved the way
    ``train`` saves it (state + data iterator state); training itself would add a minute of
    train-step compilation on 2 cores."""
    workdir = tmp_path_factory.mktemp("smoke")
    cfg = small()
    t = build_trainer(cfg, workdir, sharding.make_mesh((1, 1), jax.devices()[:1]))
    state = dict(t.state, step=jnp.asarray(7, jnp.int32))
    ckpt = Checkpointer(workdir / "checkpoints", cfg.train.ckpt_every, cfg.train.keep_checkpoints)
    batches = train_iterator(t.dataset, cfg.train.batch_size, slice(None), num_steps=8, start_step=7,
                             num_threads=0)
    ckpt.save(7, state, batches, t.dataset.state(7), force=True)
    ckpt.close()
    return workdir


def test_evaluate_checkpoint_writes_results_and_images(smoke_workdir):
    cfg = small(**{"eval.num_visualizations": 2, "eval.batch_size": 4})
    results = evaluate_checkpoint(cfg, smoke_workdir, checkpoint=smoke_workdir / "checkpoints" / "7")
    saved = json.loads((smoke_workdir / "eval" / "results.json").read_text())
    assert saved == json.loads((smoke_workdir / "eval" / "results_single.json").read_text())
    assert saved["step"] == 7 and saved["checkpoint"] == str(smoke_workdir / "checkpoints" / "7")
    assert saved["mode"] == "single" and saved["num_images"] == 8
    assert saved["protocol"] == {"crop": [64, 64], "stride": [42, 42], "flip": False, "img_scale": [256, 64],
                                 "scales": [1.0]}
    assert set(saved["IoU"]) == {"background", "red square", "green stripes", "blue checkers", "yellow dots"}
    assert 0.0 <= saved["mIoU"] <= 1.0 and 0.0 <= saved["aAcc"] <= 1.0
    assert saved["mIoU"] == results["mIoU"]
    images = sorted((smoke_workdir / "eval" / "images").iterdir())
    assert [p.name for p in images] == ["00000_val_00000.png", "00001_val_00001.png"]
    with Image.open(images[0]) as im:
        assert im.size == (3 * 64 + 8, 64)


def test_missing_checkpoint_is_one_clear_sentence(smoke_workdir, tmp_path):
    cfg = small()
    with pytest.raises(InputError, match="does not exist") as e:
        evaluate_checkpoint(cfg, smoke_workdir, checkpoint=smoke_workdir / "checkpoints" / "123")
    assert str(e.value).count(". ") == 0 and str(e.value).endswith(".")
    with pytest.raises(InputError, match="there is no checkpoint in") as e:
        resolve_checkpoint(tmp_path)
    assert str(e.value).count(". ") == 0
    assert resolve_checkpoint(smoke_workdir) == (smoke_workdir / "checkpoints", 7)
    assert resolve_checkpoint(smoke_workdir, smoke_workdir / "checkpoints") == (smoke_workdir / "checkpoints", 7)
    # the command line: one line on stderr, exit status 1, nothing built
    res = subprocess.run([sys.executable, "-m", "iedp_jax.evaluate", "--config", "smoke_seg",
                          "--workdir", str(tmp_path), "--checkpoint", str(tmp_path / "nope")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip().splitlines() == [f"[iedp] the checkpoint folder {tmp_path / 'nope'} does not exist: "
                                               f"pass a step folder such as {tmp_path / 'checkpoints' / '2000'}, or "
                                               f"leave --checkpoint out to use the latest checkpoint in "
                                               f"{tmp_path / 'checkpoints'}."]


def test_protocol_sharded_over_8_devices(tmp_path):
    """Batches of 8 over a (8, 1) and a (2, 4) mesh: the metrics of the NumPy transcription, and
    the visualisations of this process's rows."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-m", "tests.scripts.sharded_eval", str(tmp_path)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    want = ade_expected(ADE20KSource(tmp_path, (32, 32)),
                        (32, 32), (21, 21), (128, 32), (1.0,), False)
    for name in ("data", "fsdp"):
        assert abs(got[name]["aAcc"] - want["aAcc"]) < 1e-4 and abs(got[name]["mIoU"] - want["mIoU"]) < 1e-3, name
        assert got[name]["images"] == [f"{i:05d}_ADE_val_{i:08d}.png" for i in range(3)]
