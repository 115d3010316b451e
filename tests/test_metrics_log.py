"""What the trainer logs: honest throughput (compilation and saves left out, enough digits for
a full-size step of tens of seconds) and one row per step in metrics.jsonl after a resume."""

from __future__ import annotations

import json

import pytest

from iedp_jax import trainer
from iedp_jax.trainer import train
from tests.helpers import quick_compile, small


class _Writer:
    def __init__(self):
        self.rows = []

    def write(self, step, m):
        self.rows.append((step, dict(m)))


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_throughput_leaves_out_compilation_and_saves(monkeypatch, capsys):
    """Steps of 35 s (a full-size step on 2 cores) after a 300 s first step (compilation), with a
    60 s checkpoint save in between: 0.0571 img/s and 35 s/step, not "0.0 img/s"; the ETA is the
    training time left."""
    clock = _Clock()
    monkeypatch.setattr(trainer.time, "perf_counter", clock)
    monkeypatch.setattr(trainer, "_check_finite", lambda step, m, saved: dict(m))
    writer = _Writer()
    log = trainer._MetricLog(writer, log_every=2, batch_size=2, start=0, end=5, total=10)
    log.plain = True
    metrics = {"loss": 1.0, "lr": 1e-4}
    clock.now = 300.0  # compile + first step
    log.push(1, metrics)
    for step in range(2, 6):
        log.flush()  # step - 1 finished now
        clock.now += 35.0
        if step == 3:
            with log.paused():
                clock.now += 60.0
        log.push(step, metrics)
    log.close()
    timed = {step: m for step, m in writer.rows if "images_per_s" in m}
    assert set(timed) == {2, 4, 5}
    for m in timed.values():
        assert m["seconds_per_step"] == pytest.approx(35.0) and m["images_per_s"] == pytest.approx(2 / 35.0)
    out = capsys.readouterr().err
    assert "step 4/10 loss=1.0000 lr=1.00e-04 0.0571 img/s 35 s/step ETA 3m30s" in out, out  # 6 x 35 s
    assert "step 5/10 loss=1.0000 lr=1.00e-04 0.0571 img/s 35 s/step ETA 2m55s" in out, out


@pytest.fixture
def quick():
    with quick_compile():
        yield


@pytest.mark.xdist_group("test_train")
def test_no_duplicate_rows_after_resume(quick, tmp_path):
    """A run killed after logging a step it had not checkpointed leaves that row behind; the
    resumed run trains the step again and logs it once (its own value), in metrics.jsonl and in
    TensorBoard (purge_step)."""
    cfg = small("smoke_seg", **{"train.total_steps": 4, "train.ckpt_every": 2, "train.log_every": 1,
                                "train.eval_every": 0})
    train(cfg, tmp_path, stop_after=2)
    log = tmp_path / "metrics.jsonl"
    with log.open("a") as f:  # what a run killed after step 3 (checkpoint at 2) leaves
        f.write(json.dumps({"step": 3, "loss": 999.0}) + "\n" + '{"step": 4, "lo')
    train(cfg, tmp_path)
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [1, 2, 3, 4], steps
    assert all(r.get("loss") != 999.0 for r in rows)
