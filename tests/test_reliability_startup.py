"""Start-up that cannot split a run: which environment starts JAX's distributed runtime (JAX's
own variables, the IEDP_* aliases, the launchers JAX detects), one sentence when start-up fails,
the topology-aware mesh, and the workdir lock that stops a second run on the same workdir.
(Two real processes started through the JAX_* variables: tests/test_multiprocess.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import pytest
from jax.sharding import AxisType

from iedp_jax.infra import distributed, lock, sharding
from iedp_jax.infra.errors import ConfigError
from tests.helpers import ROOT

JAX_ENV = {"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
ALIAS_ENV = {k.replace("JAX_", "IEDP_"): v for k, v in JAX_ENV.items()}


def test_settings_from_jax_variables_and_iedp_aliases():
    assert distributed.explicit_settings({}) is None
    assert distributed.explicit_settings(JAX_ENV) == ("h:1234", 4, 3)
    assert distributed.explicit_settings(ALIAS_ENV) == ("h:1234", 4, 3)
    assert distributed.explicit_settings({**JAX_ENV, **ALIAS_ENV}) == ("h:1234", 4, 3)  # agreeing: fine
    mixed = {**{k: v for k, v in JAX_ENV.items() if k != "JAX_PROCESS_ID"}, "IEDP_PROCESS_ID": "1"}
    assert distributed.explicit_settings(mixed) == ("h:1234", 4, 1)
    with pytest.raises(ConfigError, match="JAX_PROCESS_ID=3 and its alias IEDP_PROCESS_ID=2 disagree"):
        distributed.explicit_settings({**JAX_ENV, "IEDP_PROCESS_ID": "2"})
    with pytest.raises(ConfigError, match="JAX_PROCESS_ID not: set all three"):
        distributed.explicit_settings({k: v for k, v in JAX_ENV.items() if k != "JAX_PROCESS_ID"})
    with pytest.raises(ConfigError, match=r"JAX_PROCESS_ID=4 must lie in \[0, JAX_NUM_PROCESSES=4\)"):
        distributed.explicit_settings({**JAX_ENV, "JAX_PROCESS_ID": "4"})
    with pytest.raises(ConfigError, match="must be integers"):
        distributed.explicit_settings({**JAX_ENV, "JAX_NUM_PROCESSES": "four"})


def test_launchers_that_jax_detects():
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-4]", "SLURM_NTASKS": "16"}
    assert distributed.detect_launcher(slurm) == ("SLURM (srun)", 16)
    assert distributed.detect_launcher({**slurm, "SLURM_NTASKS": "1"}) is None
    assert distributed.detect_launcher({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}) is None  # sbatch shell, no srun
    ompi = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.0.0.1:34911", "OMPI_COMM_WORLD_SIZE": "8"}
    assert distributed.detect_launcher(ompi) == ("Open MPI (mpirun)", 8)
    assert distributed.detect_launcher({**ompi, "OMPI_COMM_WORLD_SIZE": "1"}) is None
    k8s = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "2"}
    assert distributed.detect_launcher(k8s) == ("a Kubernetes indexed Job", None)
    assert distributed.detect_launcher({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None  # a lone pod
    assert distributed.detect_launcher({"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3"}) == (
        "a multi-host Cloud TPU slice", 4)
    assert distributed.detect_launcher({"TPU_WORKER_HOSTNAMES": "localhost"}) is None
    assert distributed.detect_launcher({"IEDP_DISTRIBUTED": "1"}) == ("IEDP_DISTRIBUTED=1", None)
    assert distributed.initialize({}) is False  # one process: nothing started
    assert distributed.initialize({**slurm, "IEDP_DISTRIBUTED": "0"}) is False
    assert distributed.initialize({**JAX_ENV, "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}) is False


def test_start_up_failure_and_a_short_join_are_one_sentence(monkeypatch):
    calls = []

    def failing(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out\nlong C++ trace")

    monkeypatch.setattr(distributed, "_initialized", False)
    monkeypatch.setattr(jax.distributed, "initialize", failing)
    with pytest.raises(ConfigError) as e:
        distributed.initialize(JAX_ENV)
    assert calls == [{"coordinator_address": "h:1234", "num_processes": 4, "process_id": 3}]
    msg = str(e.value)
    assert msg.startswith("JAX_COORDINATOR_ADDRESS=h:1234 says this run spans processes")
    assert "RuntimeError: DEADLINE_EXCEEDED: Barrier timed out)" in msg and "\n" not in msg
    assert "IEDP_DISTRIBUTED=0" in msg
    # JAX started but joined fewer processes than the launcher started: never train alone
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    with pytest.raises(ConfigError, match=r"SLURM \(srun\) started 16 processes but JAX joined 1"):
        distributed.initialize({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "16"})
    assert calls[-1] == {}  # JAX reads the cluster itself


def test_mesh_is_jax_make_mesh_with_auto_axes():
    mesh = sharding.make_mesh((1, -1), jax.devices()[:1])
    assert mesh.axis_names == ("data", "fsdp") and mesh.axis_types == (AxisType.Auto, AxisType.Auto)
    assert mesh.devices.tolist() == jax.make_mesh((1, 1), ("data", "fsdp"), devices=jax.devices()[:1]).devices.tolist()
    with pytest.raises(ConfigError, match="needs 2 devices but 1 are available"):
        sharding.make_mesh((2, 1), jax.devices()[:1])


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_workdir_lock(tmp_path):
    path = lock.acquire(tmp_path / "run")
    held = json.loads(path.read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["processes"] == 1
    with pytest.raises(lock.WorkdirLocked) as e:  # a live run on this host
        lock.acquire(tmp_path / "run")
    assert f"(pid {os.getpid()}, 1 processes)" in str(e.value) and "stop that run" in str(e.value)
    lock.release(path)
    assert not path.exists()
    # stale: the pid is dead on this host, so the lock is taken over
    path.write_text(json.dumps({**held, "pid": _dead_pid()}))
    assert lock.acquire(tmp_path / "run") == path and json.loads(path.read_text())["pid"] == os.getpid()
    # another host: never guessed stale; the sentence says how to break it
    path.write_text(json.dumps({**held, "host": "other-node", "pid": 1}))
    with pytest.raises(lock.WorkdirLocked, match=f"on host other-node .*delete {path}"):
        lock.acquire(tmp_path / "run")
    lock.release(path)  # not ours: kept
    assert path.exists()
    path.write_text("{half")
    with pytest.raises(lock.WorkdirLocked, match="an unknown run"):
        lock.acquire(tmp_path / "run")


def test_a_second_independent_run_on_one_workdir_stops(tmp_path):
    """Two copies of the train command that each believe they are alone (a launcher nobody
    recognised): the second stops at once with a sentence naming the first, before writing."""
    workdir = tmp_path / "run"
    first = lock.acquire(workdir)  # the first run (this process) holds the workdir
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IEDP_", "JAX_COORDINATOR", "JAX_NUM", "JAX_PROC"))}
    res = subprocess.run([sys.executable, "-m", "iedp_jax.train", "--config", "smoke_seg", "--workdir",
                          str(workdir)], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"[iedp] {workdir} is in use by the run started") and f"(pid {os.getpid()}, " in last
    assert sorted(p.name for p in workdir.iterdir()) == ["run.lock"]  # nothing else written
    lock.release(first)
