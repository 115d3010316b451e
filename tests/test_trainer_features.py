"""Trainer features for long runs: gradient accumulation, validation every N steps with the best
checkpoint kept, plain progress lines in batch logs, the profiler window, and the workdir's run
files that evaluation reads instead of a config."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest

from iedp_jax.eval.runner import evaluate_checkpoint
from iedp_jax.infra import sharding
from iedp_jax.infra.errors import ConfigError
from iedp_jax.run_files import read_config, read_dataset_info
from iedp_jax.trainer import build_trainer, train
from tests.helpers import quick_compile, small, train_batch

pytestmark = pytest.mark.xdist_group("trainer_features")


@pytest.fixture(autouse=True)
def quick():
    with quick_compile():
        yield


def test_accumulated_micro_batches_equal_one_large_batch(tmp_path):
    """Two micro-batches of 4 give the update of one batch of 8 (no dropout; a large Adam eps
    makes the update proportional to the gradient, so a difference would show)."""
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    out = {}
    for k in (1, 2):
        cfg = small(**{"train.batch_size": 8, "train.grad_accum_steps": k, "optim.eps": 1.0})
        t = build_trainer(cfg, tmp_path, mesh)
        batch = sharding.global_batch(mesh, train_batch(t.dataset, 0, 8))
        state, metrics = t.step_fn(t.state, t.frozen, batch)
        out[k] = (jax.device_get(metrics), [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state["params"]))])
    (m1, p1), (m2, p2) = out[1], out[2]
    assert abs(float(m1["loss"]) - float(m2["loss"])) <= 1e-5 * abs(float(m1["loss"]))
    assert abs(float(m1["grad_norm"]) - float(m2["grad_norm"])) <= 1e-4 * float(m1["grad_norm"])
    err = max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(p1, p2, strict=True))
    assert err < 1e-4
    with pytest.raises(ConfigError, match="grad_accum_steps=3 must divide train.batch_size=8"):
        build_trainer(small(**{"train.batch_size": 8, "train.grad_accum_steps": 3}), tmp_path, mesh)


def test_validation_best_checkpoint_plain_log_and_profile(tmp_path, capfd):
    """eval_every=2 over 4 steps: val/* lines in metrics.jsonl, the best of them kept in best/
    (and evaluable), plain progress lines (stderr is not a terminal here), a profiler trace, and
    the run files from which evaluation rebuilds the config."""
    cfg = small(**{"train.total_steps": 4, "train.eval_every": 2, "train.ckpt_every": 2, "train.log_every": 1,
                   "train.profile_steps": (1, 2), "train.num_panels": 2})
    results = train(cfg, tmp_path)
    err = capfd.readouterr().err
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = {x["step"]: x["val/mIoU"] for x in lines if "val/mIoU" in x}
    assert sorted(val) == [2, 4] and results["protocol"] == "center-crop proxy"
    best = [int(p.name) for p in (tmp_path / "best").iterdir() if p.name.isdigit()]
    assert len(best) == 1 and val[best[0]] == max(val.values())
    # plain lines: step/total, every loss, throughput and ETA; no carriage-return progress bar
    plain = [x for x in err.splitlines() if re.match(r"\[iedp\] step \d+/4 loss=", x)]
    assert len(plain) == 4 and all("loss_implicit=" in x for x in plain), err[-2000:]
    # the first step (compilation) is not timed; the others give img/s, s/step and an ETA
    assert "first step (warm-up, not timed)" in plain[0] and "img/s" not in plain[0], plain[0]
    assert all(re.search(r" img/s [0-9.e+-]+ s/step ETA \d+m\d\ds$", x) for x in plain[1:]), plain
    assert "\r" not in err
    assert "validation at step 2 (center-crop proxy)" in err and "python -m iedp_jax.evaluate --workdir" in err
    assert list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert any(p.name.startswith("events") for p in (tmp_path / "tensorboard").iterdir())
    # the workdir describes the run: evaluation needs no config file and no flag
    saved = read_config(tmp_path)
    assert saved == cfg and read_dataset_info(tmp_path).class_names == tuple(results["IoU"])
    saved.eval.num_visualizations = 0
    again = evaluate_checkpoint(saved, tmp_path, checkpoint=tmp_path / "best" / str(best[0]),
                                mesh=sharding.make_mesh((1, 1), jax.devices()[:1]))
    assert again["step"] == best[0] and again["num_images"] == cfg.data.val_size
