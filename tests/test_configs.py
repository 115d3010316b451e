"""The shipped IEDP configs through the README's commands, as a user runs them.

``iedp_jax/configs/ade.py`` and ``iedp_jax/configs/nyu.py`` as shipped, plus only what a user must give (the paths
of a Stable Diffusion folder, a CLIP folder and the dataset in its release layout) and sizes
that make the run small, through the default ``data.format=tfds``: ``python -m iedp_jax.train``,
then ``python -m iedp_jax.evaluate --workdir W`` alone (the run's saved config), in subprocesses,
checking the written ``results.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iedp_jax.sd.tiny import write_tiny_backbone
from tests.fakes import NYU_TEST, H, W, write_ade, write_nyu
from tests.helpers import ROOT, load_config

# Sizes only: a 64 px crop (the fakes are 60x80), two steps of two images, small heads.
SMALL = {"data.crop_size": "(64,64)", "train.total_steps": 2, "train.batch_size": 2, "train.eval_batch_size": 2,
         "train.ckpt_every": 2, "train.log_every": 1, "optim.warmup_steps": 1, "model.fpn_channels": 32,
         "model.head_channels": 32, "model.head_groups": 8, "model.neck_channels": 64, "model.decoder_heads": 4,
         "eval.crop": "(64,64)", "eval.stride": "(32,32)", "eval.num_visualizations": 1,
         "loss.silog_group": 1}  # NYUv2: VPD's groups of 3 images need a batch of 3k


def _run(module: str, config: str | None, workdir: Path, overrides: dict) -> None:
    """``python -m module [--config <name>] --workdir W --config.k=v ...``."""
    cmd = [sys.executable, "-m", module, *(["--config", config] if config else []),
           "--workdir", str(workdir), *(f"--config.{k}={v}" for k, v in overrides.items())]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    """A diffusers pipeline folder with its CLIP image encoder, as users keep them."""
    return write_tiny_backbone(tmp_path_factory.mktemp("models") / "stable-diffusion")


def _paths(backbone: Path, data: Path, tmp_path: Path) -> dict:
    return {"model.pretrained": str(backbone), "model.clip_vision": str(backbone / "image_encoder"),
            "data.data_dir": str(data), "data.tfds_dir": str(tmp_path / "tensorflow_datasets")}


@pytest.mark.xdist_group("ade_config")
def test_ade_config_trains_and_evaluates_through_tfds(backbone, tmp_path):
    assert load_config("ade").data.format == "tfds"  # the default path, not an override
    data = write_ade(tmp_path / "ade20k", n_train=4)
    overrides = {**_paths(backbone, data.parent, tmp_path), **SMALL, "eval.img_scale": "(256,64)"}
    _run("iedp_jax.train", "ade", tmp_path / "run", overrides)
    trained = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(trained["IoU"]) == 150 and trained["num_images"] == 3 and trained["step"] == 2
    assert list((tmp_path / "tensorflow_datasets" / "iedp_ade20k").glob("*/*.array_record-*"))

    _run("iedp_jax.evaluate", None, tmp_path / "run", {})  # the run's own config.json: no --config
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert results["step"] == 2 and results["mode"] == "single" and results["num_images"] == 3
    assert results["protocol"] == {"crop": [64, 64], "stride": [32, 32], "flip": False, "img_scale": [256, 64],
                                   "scales": [1.0]}
    assert len(results["IoU"]) == 150 and 0.0 <= results["mIoU"] <= 1.0 and 0.0 <= results["aAcc"] <= 1.0
    images = sorted(p.name for p in (tmp_path / "run" / "eval" / "images").iterdir())
    assert images == ["00000_ADE_val_00000000.png"]


@pytest.mark.xdist_group("nyu_config")
def test_nyu_config_trains_and_evaluates_through_tfds(backbone, tmp_path):
    assert load_config("nyu").data.format == "tfds"
    write_nyu(tmp_path / "nyu")
    overrides = {**_paths(backbone, tmp_path / "nyu", tmp_path), **SMALL,
                 "data.crop_size": f"({H},{H})", "eval.crop": f"({H},{H})", "eval.stride": f"({W - H},{W - H})"}
    _run("iedp_jax.train", "nyu", tmp_path / "run", overrides)
    trained = json.loads((tmp_path / "run" / "results.json").read_text())
    assert trained["num_images"] == 3 and trained["rmse"] > 0.0

    _run("iedp_jax.evaluate", None, tmp_path / "run", {})
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert results["step"] == 2 and results["num_images"] == 3
    assert results["protocol"] == {"crop": [H, H], "stride": [W - H, W - H], "flip": True, "clip_depth": False}
    assert results["rmse"] > 0.0 and 0.0 <= results["delta1"] <= 1.0
    images = sorted(p.name for p in (tmp_path / "run" / "eval" / "images").iterdir())
    assert images == [f"00000_{NYU_TEST[0]}_rgb_00045.png"]
