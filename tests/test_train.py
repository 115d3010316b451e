"""The IEDP trainer: learning, resumption, no recompilation, label-free inference, NaN stop, fsdp."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iedp_jax.infra import sharding
from iedp_jax.infra.checkpoint import Checkpointer
from iedp_jax.infra.errors import ConfigError, NonFiniteLoss
from iedp_jax.prompts import class_prompt_table
from iedp_jax.sd import load_tokenizer
from iedp_jax.trainer import build_trainer, train
from tests.helpers import ROOT, load_config, quick_compile, small, train_batch


@pytest.mark.xdist_group("seg_learns")
def test_smoke_seg_learns(tmp_path):
    """The README's first command, whole: iedp_jax/configs/smoke_seg.py as shipped trains both branches
    from the tiny backbone written in the real folder layout and reaches mIoU >= 0.9 on the
    synthetic validation split (centre-crop proxy; measured numbers in benchmarks/RESULTS.md)."""
    cfg = load_config("smoke_seg")
    results = train(cfg, tmp_path)
    assert results["mIoU"] >= 0.9, results
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["mIoU"] == results["mIoU"] and len(saved["IoU"]) == cfg.data.num_classes
    assert saved["protocol"] == "center-crop proxy"
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert {"step", "loss", "lr", "images_per_s", "loss_implicit", "loss_explicit"} <= set(train_lines[0])
    assert train_lines[-1]["loss"] < 0.5 * train_lines[0]["loss"]
    assert any(p.name.startswith("events") for p in (tmp_path / "tensorboard").iterdir())


@pytest.fixture
def quick():
    """Tests of a few steps compile with most XLA optimisations off (:func:`quick_compile`)."""
    with quick_compile():
        yield


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A 6-step run (checkpoints at 2, 4, 6), the last good state of the NaN test. (Resumption after a
    kill, bit for bit: tests/test_reliability_kill.py.)"""
    cfg = small()
    workdir = tmp_path_factory.mktemp("straight")
    with quick_compile():
        train(cfg, workdir)
    return cfg, workdir


@pytest.mark.usefixtures("quick")
def test_no_recompilation_and_label_free_inference(tmp_path):
    cfg = small()
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    t = build_trainer(cfg, tmp_path, mesh)
    dataset, model, frozen, state, step = t.dataset, t.model, t.frozen, t.state, t.step_fn
    for s in range(3):
        state, metrics = step(state, frozen, sharding.global_batch(mesh, train_batch(dataset, s, 4, slice(None))))
    assert step.cache_size() == 1
    assert int(state["step"]) == 3
    # Inference takes images only and does not touch the explicit branch: a model whose class
    # prompts are different (or absent) predicts exactly the same thing.
    images = jnp.asarray(train_batch(dataset, 9, 4, slice(None))["image"])
    pred = jax.jit(model.predict)(state["params"], frozen, images)
    tok = load_tokenizer(tmp_path / "tiny_backbone")
    other = model.__class__(**{**model.__dict__, "prompts": class_prompt_table(tok, ["cat", "dog", "x", "y", "z"])})
    np.testing.assert_array_equal(pred, jax.jit(other.predict)(state["params"], frozen, images))
    none = model.__class__(**{**model.__dict__, "prompts": None})
    np.testing.assert_array_equal(pred, jax.jit(none.predict)(state["params"], frozen, images))
    # ...while the training loss does depend on the labels through the explicit branch.
    batch = train_batch(dataset, 9, 4, slice(None))
    loss = jax.jit(model.loss)
    l1 = loss(state["params"], frozen, batch, jax.random.PRNGKey(0))[1]["loss_explicit"]
    batch["label"] = np.zeros_like(batch["label"])
    l2 = loss(state["params"], frozen, batch, jax.random.PRNGKey(0))[1]["loss_explicit"]
    assert float(l1) != float(l2)


@pytest.mark.usefixtures("quick")
def test_nonfinite_loss_stops_and_keeps_last_checkpoint(straight, tmp_path):
    import shutil

    shutil.copytree(straight[1], tmp_path, dirs_exist_ok=True)  # checkpoints up to step 6
    cfg = small(**{"train.total_steps": 10, "optim.lr": float("inf")})
    with pytest.raises(NonFiniteLoss, match="checkpoint of step 6 is kept"):
        train(cfg, tmp_path)
    assert Checkpointer(tmp_path / "checkpoints", 2).latest_step() == 6


def test_missing_pretrained_folder_is_one_clear_sentence(tmp_path):
    cfg = small(**{"model.tiny_backbone": False, "model.pretrained": str(tmp_path / "sd15")})
    with pytest.raises(ConfigError, match="stable-diffusion-v1-5 in diffusers format"):
        train(cfg, tmp_path)


@pytest.mark.xdist_group("fsdp")
def test_fsdp_step_on_8_devices_matches_one_device(tmp_path):
    # Cheaper XLA:CPU compilation (two steps are compile-bound); both meshes get the same flags.
    fast = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {fast}", JAX_PLATFORMS="cpu",
               JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    res = subprocess.run([sys.executable, "-m", "tests.scripts.fsdp_equivalence", str(tmp_path)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert abs(got["loss_one"] - got["loss_mesh"]) <= 1e-5 * abs(got["loss_one"])
    assert abs(got["grad_one"] - got["grad_mesh"]) <= 1e-4 * got["grad_one"]
    assert got["param_rel_err"] < 1e-4


@pytest.mark.xdist_group("depth_learns")
def test_smoke_depth_learns(tmp_path):
    """Half of iedp_jax/configs/smoke_depth.py's schedule (150 steps) reaches RMSE 0.47 m, delta1 0.92
    (measured)."""
    cfg = load_config("smoke_depth", **{"train.total_steps": 150, "train.ckpt_every": 150})
    results = train(cfg, tmp_path)
    # Predicting the training mean depth everywhere gives an RMSE of 1.50 m on this split.
    assert results["rmse"] < 0.6 and results["delta1"] > 0.8, results


@pytest.mark.parametrize("flag, sentence", [
    ("--workdir=gs://bucket/run", "[iedp] --workdir=gs://bucket/run is a URL, but model.tiny_backbone writes a "
                                  "backbone folder into the workdir: use a local workdir for the tiny backbone."),
    ("--config.model.dtype=float64", "[iedp] model.dtype must be one of ['bfloat16', 'float16', 'float32'], "
                                     "got 'float64'."),
])
def test_cli_user_errors_are_one_line(tmp_path, flag, sentence):
    """A wrong --workdir or config value ends the command with its sentence, not a traceback."""
    args = [sys.executable, "-m", "iedp_jax.train", "--config", "smoke_seg",
            f"--workdir={tmp_path}", flag]
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert res.returncode == 1, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1] == sentence, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
