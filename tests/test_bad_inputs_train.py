"""Bad inputs of ``python -m iedp_jax.train``, one table (:mod:`tests.bad_inputs`): each ends in
one sentence with exit status 1 or is done right, and leaves every file that was there as it was.

Read-only cases hold as root too: the lock write is monkeypatched to fail as a read-only or full
file system does (``chmod`` does not stop root), and "a file where a folder is expected" stands
for a folder that cannot be created."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iedp_jax import train
from iedp_jax.infra import lock
from iedp_jax.infra import tfds as infra_tfds
from iedp_jax.infra.checkpoint import MANIFEST, Checkpointer
from iedp_jax.infra.cli import normalise_pairs
from iedp_jax.infra.errors import UserError
from tests.bad_inputs import MARK, Case, check, cli, copy_run, sentence, table, tiny_run_path
from tests.fakes import write_ade
from tests.helpers import small

pytestmark = MARK


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return tiny_run_path(tmp_path_factory)


def _train(fields: dict, workdir: Path | None = None):
    return lambda ctx: sentence(lambda: train.main(small(**fields), str(workdir or ctx["folder"] / "run"), {}))


def _nothing(folder: Path, fx: dict) -> dict:
    return {}


# ------------------------------------------------------------------------------ resume


def _resume_setup(folder: Path, fx: dict) -> dict:
    return {"run": copy_run(fx["tiny_run"], folder)}


def _resume_changed(ctx):
    # The run's checkpoint has 5 classes; this config has 6 (another head): refused before compiling.
    return sentence(lambda: train.main(small(**{"data.num_classes": 6}), str(ctx["run"]), {}))


# ------------------------------------------------------------------------------ the lock


def _read_only_lock(ctx):
    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", a[0])

    with pytest.MonkeyPatch.context() as mp:  # as a read-only mount does (root ignores chmod)
        mp.setattr(lock.os, "open", refuse)
        return sentence(lambda: lock.acquire(ctx["folder"] / "run"))


def _workdir_is_a_file(folder: Path, fx: dict) -> dict:
    (folder / "run").write_text("a file where the workdir should be")
    return {}


def _own_pid_lock(folder: Path, fx: dict) -> dict:
    (folder / "run").mkdir()
    record = {"host": os.uname().nodename, "pid": os.getpid(), "processes": 1, "started": "yesterday"}
    (folder / "run" / "run.lock").write_text(json.dumps(record))
    return {}


def _acquire(ctx):
    import io
    from contextlib import redirect_stderr

    err = io.StringIO()
    with redirect_stderr(err):
        path = lock.acquire(ctx["folder"] / "run")
    lock.release(path)
    return 0, err.getvalue()


def _reused_pid_lock(folder: Path, fx: dict) -> dict:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live non-training process
    (folder / "run").mkdir()
    record = {"host": os.uname().nodename, "pid": other.pid, "processes": 1, "started": "last week"}
    (folder / "run" / "run.lock").write_text(json.dumps(record))
    return {"other": other}


def _acquire_held(ctx):
    try:
        return sentence(lambda: lock.acquire(ctx["folder"] / "run"))
    finally:
        ctx["other"].kill()
        ctx["other"].wait()


# ------------------------------------------------------------------------------ checkpoints


def _foreign_step(folder: Path, fx: dict) -> dict:
    run = copy_run(fx["tiny_run"], folder)
    (run / "checkpoints" / "99").mkdir()
    (run / "checkpoints" / "99" / "notes.txt").write_text("not a checkpoint")
    return {"run": run}


def _partial_copy(folder: Path, fx: dict) -> dict:
    run = copy_run(fx["tiny_run"], folder)
    import shutil

    shutil.copytree(run / "checkpoints" / "7", run / "checkpoints" / "9")
    (run / "checkpoints" / "9" / MANIFEST).unlink()  # no manifest, and the copy stopped before state/_METADATA
    (run / "checkpoints" / "9" / "state" / "_METADATA").unlink()
    return {"run": run}


def _latest(ctx):
    import io
    from contextlib import redirect_stderr

    err = io.StringIO()
    ckpt = Checkpointer(ctx["run"] / "checkpoints", 2)
    with redirect_stderr(err):
        step = ckpt.latest_step()
    ckpt.close()
    return 0, f"{err.getvalue()} resumes from step {step}"


# ------------------------------------------------------------------------------ config values


def _pair(override: dict):
    def run(ctx):
        cfg = small(**override)
        try:
            normalise_pairs(cfg)
        except UserError as e:
            return 1, f"[iedp] {e}"
        return 0, f"data.crop_size={cfg.data.crop_size} eval.stride={cfg.eval.stride}"
    return run


# ------------------------------------------------------------------------------ tfds


def _two_folders(folder: Path, fx: dict) -> dict:
    a, b = write_ade(folder / "a", n_train=2, val_values=(0, 3)), write_ade(folder / "b", n_train=3, seed=1)
    infra_tfds.prepare(infra_tfds_ade(), a, folder / "prepared")
    return {"b": b}


def infra_tfds_ade():
    from iedp_jax.data.ade20k import IedpAde20k

    return IedpAde20k


def _prepare_other(ctx):
    return sentence(lambda: infra_tfds.prepare(infra_tfds_ade(), ctx["b"], ctx["folder"] / "prepared"))


def _truncated_record(folder: Path, fx: dict) -> dict:
    infra_tfds.prepare(infra_tfds_ade(), write_ade(folder / "ade", n_train=3), folder / "prepared")
    shard = next((folder / "prepared").rglob("*-train.array_record-*"))
    os.truncate(shard, shard.stat().st_size // 2)
    return {"shard": shard}


def _read_records(ctx):
    from iedp_jax.data.ade20k import ADE20KSource

    def read():
        src = ADE20KSource.from_prepared(infra_tfds.prepare(infra_tfds_ade(), "", ctx["folder"] / "prepared"), (32, 32))
        for i in range(len(src.train_files)):
            src.train_files.open(i)
    return sentence(read)


def _label_above(folder: Path, fx: dict) -> dict:
    root = write_ade(folder / "ade", n_train=2, val_values=(0, 3))
    label = sorted((root / "annotations" / "training").glob("*.png"))[1]
    arr = np.asarray(Image.open(label)).copy()
    arr[0, 0] = 151
    Image.fromarray(arr).save(label)
    return {"root": root}


def _read_ade(ctx):
    from iedp_jax.data.ade20k import ADE20KSource

    def read():
        src = ADE20KSource(ctx["root"], (32, 32), num_workers=0)
        for step in range(2):
            for row in range(2):
                src.train_example(step, row, 2)
    return sentence(read)


CASES = [
    Case("resume with a changed model", _resume_setup, _resume_changed, 1,
         "is of another model (its parameter params['head']",
         "refused before compiling, naming the parameter and both shapes; config.json keeps describing the run",
         "data lost"),
    Case("learning rate NaN", _nothing, _train({"optim.lr": float("nan")}), 1,
         "--config.optim.lr=nan must be a positive finite number", "refused before anything loads or compiles",
         "silently wrong"),
    Case("learning rate zero", _nothing, _train({"optim.lr": 0.0}), 1,
         "--config.optim.lr=0.0 must be a positive finite number", "refused before anything loads", "silently wrong"),
    Case("learning rate negative", _nothing, _train({"optim.lr": -1e-4}), 1,
         "--config.optim.lr=-0.0001 must be a positive finite number", "refused before anything loads",
         "silently wrong"),
    Case("eval.stride larger than eval.crop", _nothing, _train({"eval.crop": (32, 32), "eval.stride": (48, 48)}),
         1, "eval.stride=(48, 48) is larger than eval.crop=(32, 32)",
         "refused (the windows would leave pixels unpredicted), in train before compiling and in evaluate / predict",
         "silently wrong"),
    Case("one number for a (height, width) field", _nothing, _pair({"data.crop_size": (512,), "eval.stride": (8,)}),
         0, "data.crop_size=(512, 512) eval.stride=(8, 8)",
         "--config.data.crop_size=512 (and eval.crop / stride / img_scale) is the square (512, 512)"),
    Case("a fixed-length tuple of another length", _nothing, _pair({"mesh.shape": (4,)}), 1,
         "--config.mesh.shape=(4,) must have 2 entries", "refused in one sentence naming the flag"),
    Case("read-only workdir (the lock write)", _nothing, _read_only_lock, 1,
         "cannot write the lock file run.lock into the workdir",
         "one sentence: the file system is read-only / full, free space or pass a writable folder"),
    Case("workdir is a file", _workdir_is_a_file, _train({}), 1, "cannot create the workdir",
         "one sentence naming the path"),
    Case("stale lock with this process's pid", _own_pid_lock, _acquire, 0, "is gone; taking the lock over",
         "a lock naming this very pid that this process does not hold is stale: taken over with a warning",
         "silently wrong", changes=("run/run.lock",)),
    Case("lock whose pid was reused", _reused_pid_lock, _acquire_held, 1,
         "if that is not the training run (its pid was reused) delete",
         "says which process holds the pid now and how to clear the lock", "silently wrong"),
    Case("foreign digit-named folder in checkpoints/", _foreign_step, _latest, 0,
         "99/state/_METADATA is missing: not a complete checkpoint",
         "skipped with one line (kept as 99.damaged); resumes from the newest valid step",
         moves=(("run/checkpoints/99", "run/checkpoints/99.damaged"),)),
    Case("partial checkpoint copy without its manifest", _partial_copy, _latest, 0,
         "the checkpoint of step 9 is damaged", "skipped with one line (kept as 9.damaged); resumes from step 7",
         moves=(("run/checkpoints/9", "run/checkpoints/9.damaged"),)),
    Case("ADE20K label above 150", _label_above, _read_ade, 1, "ADE_train_00000001.png holds the label value 151, "
         "outside 0..150", "refused by file name with the value when the example is read (training stops; "
         "evaluation stops rather than skipping it)"),
    Case("truncated tfds record", _truncated_record, _read_records, 1,
         "array_record files are truncated or damaged; delete that folder and rerun to prepare it again",
         "one sentence naming the record, the split and its folder"),
    Case("prepared tfds copy of another folder", _two_folders, _prepare_other, 1, "was built from",
         "the prepared copy records its source (path, listing fingerprint): another data.data_dir is refused",
         "silently wrong"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_train_bad_input(case, tmp_path, tiny_run):
    ctx = check(case, tmp_path, {"tiny_run": tiny_run})
    if case.name == "resume with a changed model":
        assert "(5, 64)" in ctx["message"] or "shape" in ctx["message"], ctx["message"]
        assert not (ctx["run"] / "run.lock").exists()
    if case.name.startswith("foreign"):
        assert "resumes from step 7" in ctx["message"]


def test_train_cli_refuses_a_nan_learning_rate(tmp_path):
    """The one command-line case: the sentence is the last line, no traceback, nothing written."""
    status, last = cli("iedp_jax.train", "--config", "smoke_seg", "--workdir", str(tmp_path / "run"),
                       "--config.optim.lr=nan")
    assert status == 1 and "--config.optim.lr=nan must be a positive finite number" in last, last
    assert not (tmp_path / "run").exists()


def test_table_names():
    assert len({name for name, _, _ in table(CASES)}) == len(CASES)
