"""Kill-anywhere resume: a real training process (``python -m iedp_jax.train``) is killed with
SIGKILL before its first checkpoint, during a save and right after one; a damaged latest
checkpoint (a truncated file) is skipped for the one before it. Each rerun resumes, and the
final parameters equal those of an uninterrupted run bit for bit.

The uninterrupted run is the third one: the save of step 2 it follows never completed, so it
trains from step 0 and is killed only after committing step 4 (launches cost ~45 s of CPU each,
mostly tracing the train step, so the test makes no separate reference run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

from iedp_jax.infra.checkpoint import ITEMS, MANIFEST
from tests.helpers import ROOT

# 8 scheduled steps (no final evaluation to compile), checkpoints every 2; the last run stops at 4.
OVERRIDES = {"train.total_steps": 8, "train.ckpt_every": 2, "train.keep_checkpoints": 3, "train.log_every": 1,
             "train.batch_size": 2, "data.val_size": 2, "data.crop_size": "(32,32)", "data.num_workers": 0}
STOP = 4


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IEDP_", "JAX_COORDINATOR", "JAX_NUM_PROC",
                                                                      "JAX_PROCESS_ID"))}
    fast = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=fast, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_DISABLE_MOST_OPTIMIZATIONS="1", PYTHONPATH=str(ROOT))
    return env


def _cmd(workdir: Path, stop_after: int) -> list[str]:
    return [sys.executable, "-m", "iedp_jax.train", "--config", "smoke_seg", "--workdir", str(workdir),
            f"--stop_after={stop_after}", *(f"--config.{k}={v}" for k, v in OVERRIDES.items())]


def _train(workdir: Path) -> str:
    res = subprocess.run(_cmd(workdir, STOP), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return res.stderr


def _kill_when(workdir: Path, ready: Callable[[list[str]], bool]) -> list[str]:
    """Starts a training run and SIGKILLs it as soon as ``ready(log lines so far)`` holds
    (checked every millisecond); returns the log lines."""
    proc = subprocess.Popen(_cmd(workdir, 8), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not ready(lines):
        assert proc.poll() is None, "the run ended before the kill point:\n" + "".join(lines[-30:])
        assert time.monotonic() < deadline, "no kill point within 300 s:\n" + "".join(lines[-30:])
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    return lines


def _entries(workdir: Path) -> list[str]:
    folder = workdir / "checkpoints"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def _state(workdir: Path, step: int) -> dict:
    manager = ocp.CheckpointManager(workdir / "checkpoints", item_names=ITEMS,
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    manager.close()
    return state


def test_sigkill_anywhere_then_resume_equals_an_uninterrupted_run(tmp_path):
    run = tmp_path / "run"
    # 1. before the first checkpoint: the memory plan is printed after building, before step 1
    _kill_when(run, lambda lines: any("params " in x and "GiB" in x for x in lines))
    assert not [e for e in _entries(run) if e.isdigit()]
    assert json.loads((run / "run.lock").read_text())["pid"] > 0  # left behind by the killed run

    # 2. during the save of step 2: its temporary folder exists, the step is not committed yet
    #    (unless orbax renamed it in the millisecond between seeing the folder and the kill)
    _kill_when(run, lambda lines: any("orbax-checkpoint-tmp" in e for e in _entries(run)))
    committed = "2" in _entries(run)

    # 3. right after the save of step 4 (committed, manifest written): starts from scratch, as
    #    the half-written step 2 is no checkpoint
    log = _kill_when(run, lambda lines: (run / "checkpoints" / "4" / MANIFEST).exists())
    assert any("resumed from" in x for x in log) == committed
    assert any("taking the lock over" in x for x in log)  # the killed run's stale lock
    uninterrupted = _state(run, STOP)  # (from step 0 unless step 2 was committed after all)

    # 4. the latest checkpoint is damaged (a truncated file): skipped with a warning naming the
    #    file, kept aside, and training resumes from step 2
    step4 = run / "checkpoints" / "4"
    sizes = json.loads((step4 / MANIFEST).read_text())["files"]
    victim = max(sizes, key=sizes.get)
    os.truncate(step4 / victim, sizes[victim] // 2)
    log = _train(run)
    assert f"the checkpoint of step 4 is damaged ({step4 / victim} has {sizes[victim] // 2} bytes" in log, log
    assert "at step 2" in log and "resumed from" in log
    assert "4.damaged" in _entries(run) and (run / "checkpoints" / "4.damaged" / victim).stat().st_size == \
        sizes[victim] // 2  # nothing deleted
    assert not (run / "run.lock").exists()  # released at a normal exit

    a, b = uninterrupted, _state(run, STOP)  # step 4 again, trained from step 2's checkpoint
    assert int(a["step"]) == int(b["step"]) == STOP
    leaves_a, leaves_b = (sorted(_flatten(x).items()) for x in (a, b))
    assert [k for k, _ in leaves_a] == [k for k, _ in leaves_b]
    for (name, x), (_, y) in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _flatten(sub, f"{prefix}/{i}").items()}
    return {prefix: tree}
