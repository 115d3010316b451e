"""Two local CPU processes (two simulated devices each; mesh (2, 2): the batch split over the
processes, the model sharded over each process's two devices) train, checkpoint (each process
its own data-iterator state) and evaluate like one process with the same global batch (resuming
after SIGKILL: tests/test_reliability_kill.py): started through
launch/local_multiprocess.sh, as users do, which sets JAX's own JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from iedp_jax.eval.runner import evaluate_checkpoint
from iedp_jax.infra.compile import Synchronized
from iedp_jax.trainer import train
from tests.helpers import ROOT, params_of, quick_compile, small

LAUNCH = ROOT / "launch" / "local_multiprocess.sh"
# A short smoke run. Adam's first steps are ~lr * sign(g), which turns rounding-level gradient
# differences (cross-process reductions sum in another order) into O(lr) ones; a large eps makes
# the update proportional to the gradient, so the comparison measures the training itself.
OVERRIDES = {"train.total_steps": 4, "train.ckpt_every": 2, "train.log_every": 1, "train.batch_size": 4,
             "train.eval_batch_size": 4, "data.val_size": 6, "data.crop_size": (32, 32),
             "optim.eps": 1.0, "mesh.shape": (2, 2)}


def _flags(**extra) -> list[str]:
    out = [f"--config.{k}={v}" for k, v in {**OVERRIDES, **extra}.items()]
    return [a.replace(" ", "") for a in out]


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IEDP_", "JAX_COORDINATOR", "JAX_NUM_PROC",
                                                                      "JAX_PROCESS_ID"))}
    # Cheaper XLA:CPU compilation (a 4-step run is compile-bound); numerics are unchanged.
    fast = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {fast}",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
               PYTHONPATH=str(ROOT))
    return env


def _run(cmd: list[str], env: dict[str, str]) -> str:
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return res.stdout + res.stderr


def _train(workdir: Path, processes: int, *extra: str) -> str:
    cmd = [sys.executable, "-m", "iedp_jax.train", "--config", "smoke_seg", "--workdir", str(workdir),
           *_flags(), *extra]
    return _run(["bash", str(LAUNCH), "-n", str(processes), "-d", "2", "--", *cmd], _env(2))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    single, multi = root / "single", root / "multi"
    with quick_compile():  # the reference: this process, one device
        train(small(**{**OVERRIDES, "mesh.shape": (1, 1)}), single)
    log = _train(multi, 2)  # checkpoints at steps 2 and 4, evaluates
    return single, multi, log


def test_two_processes_train_and_match_one(runs):
    single, multi, log = runs
    assert "[p 0]" in log and "[p 1]" in log
    assert not (multi / "run.lock").exists()  # process 0 took the workdir lock and released it
    # one process wrote the logs: one progress writer, one results file, one metrics line per step
    steps = [json.loads(x)["step"] for x in (multi / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [1, 2, 3, 4], steps
    # every process saved its own data-iterator state, at the checkpoint's step
    for step in (2, 4):
        for p in range(2):
            state = json.loads((multi / "checkpoints" / str(step) / "data" / f"process_{p}-of-2.json").read_text())
            assert state["next_index"] == step * 2  # 2 rows per process per step
    assert (multi / "checkpoints" / "4" / "iedp_manifest.json").is_file()  # written by process 0
    cfg = small(**OVERRIDES)
    a, b = params_of(single, cfg), params_of(multi, cfg)
    assert int(a["step"]) == int(b["step"]) == 4
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (single, multi))
    assert ra["num_images"] == rb["num_images"] == 6
    assert abs(ra["mIoU"] - rb["mIoU"]) < 1e-3 and abs(ra["aAcc"] - rb["aAcc"]) < 1e-3


def test_evaluation_over_two_processes_equals_one(runs):
    single = runs[0]
    cmd = [sys.executable, "-m", "iedp_jax.evaluate", "--config", "smoke_seg", "--workdir",
           str(single), *_flags(**{"eval.num_visualizations": 2})]
    _run(["bash", str(LAUNCH), "-n", "2", "-d", "2", "--", *cmd], _env(2))
    two = json.loads((single / "eval" / "results.json").read_text())
    with quick_compile():
        one = evaluate_checkpoint(small(**{**OVERRIDES, "mesh.shape": (1, 1), "eval.num_visualizations": 0}),
                                  single)
    assert two["num_images"] == one["num_images"] == 6 and two["step"] == one["step"] == 4
    for key in ("mIoU", "aAcc", "mAcc"):
        assert abs(two[key] - one[key]) < 1e-6, (key, two[key], one[key])
    assert two["IoU"].keys() == one["IoU"].keys()
    for name, iou in one["IoU"].items():
        assert (iou is None and two["IoU"][name] is None) or abs(two["IoU"][name] - iou) < 1e-6, name


def test_memory_plan_counts_shards():
    """fsdp=4 splits a [1024, 8] float32 leaf four ways; small leaves stay whole on every device."""
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from iedp_jax.infra import memory

    mesh = jax.make_mesh((1, 1), ("data", "fsdp"))
    big = jax.ShapeDtypeStruct((1024, 8), jnp.float32)
    assert memory.per_device_bytes([big], [NamedSharding(mesh, P())]) == 1024 * 8 * 4

    class Quarter:  # a stand-in for a 4-way fsdp sharding on a 1-device machine
        def shard_shape(self, shape):
            return (shape[0] // 4,) + tuple(shape[1:])

    assert memory.per_device_bytes([big, jax.ShapeDtypeStruct((3,), jnp.bfloat16)],
                                        [Quarter(), NamedSharding(mesh, P())]) == 256 * 8 * 4 + 3 * 2
    state = {"params": {"w": jnp.zeros((1024, 8))},
             "opt_state": ({"mu": jnp.zeros((1024, 8)), "nu": jnp.zeros((1024, 8))},)}
    p = memory.plan(state, {"vae": jnp.zeros((10,), jnp.bfloat16)})
    assert p["params"] == p["params_full"] == 32768 / memory.GIB
    assert p["optimizer"] == 2 * 32768 / memory.GIB and p["frozen"] == 20 / memory.GIB
    assert "params 0.000 GiB" in memory.describe(p, {"data": 1, "fsdp": 1})


def test_synchronized_compiles_once_per_signature():
    import jax.numpy as jnp

    calls = []

    def f(x, y):
        calls.append(1)  # runs only while tracing
        return x * 2 + y

    fn = Synchronized(jax.jit(f), "test")
    assert fn.memory_analysis() is None
    np.testing.assert_array_equal(fn(jnp.ones(3), 1.0), [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(fn(jnp.arange(3.0), 2.0), [2.0, 4.0, 6.0])  # new values, same program
    assert fn.cache_size() == 1 and len(calls) == 1
    fn(jnp.ones(4), 1.0)
    assert fn.cache_size() == 2 and len(calls) == 2
    assert fn.memory_analysis().temp_size_in_bytes >= 0
