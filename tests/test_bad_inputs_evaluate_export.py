"""Bad inputs of ``python -m iedp_jax.evaluate`` and ``python -m iedp_jax.export``, one table each
(:mod:`tests.bad_inputs`). "Read-only" is a file where the output folder is expected (that stops
root too)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iedp_jax import evaluate, export
from iedp_jax.infra.checkpoint import resolve_checkpoint
from iedp_jax.infra.images import load_depth_png
from iedp_jax.run_files import read_config
from tests.bad_inputs import MARK, Case, check, cli, copy_run, sentence, table, tiny_run_path

pytestmark = MARK


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return tiny_run_path(tmp_path_factory)


def _run_copy(folder: Path, fx: dict) -> dict:
    return {"run": copy_run(fx["tiny_run"], folder)}


def _eval_is_a_file(folder: Path, fx: dict) -> dict:
    ctx = _run_copy(folder, fx)
    (ctx["run"] / "eval").write_text("a file where WORKDIR/eval should be")
    return ctx


def _evaluate(**fields):
    def run(ctx):
        cfg = read_config(ctx["run"])
        for key, value in fields.items():
            section, leaf = key.split(".")
            cfg[section][leaf] = value
        return sentence(lambda: evaluate.main(cfg, str(ctx["run"]), {}))
    return run


def _foreign_step(folder: Path, fx: dict) -> dict:
    ctx = _run_copy(folder, fx)
    (ctx["run"] / "checkpoints" / "12").mkdir()
    (ctx["run"] / "checkpoints" / "12" / "readme.txt").write_text("someone's notes")
    return ctx


def _resolve(ctx):
    err = io.StringIO()
    with redirect_stderr(err):
        folder, step = resolve_checkpoint(ctx["run"])
    return 0, f"{err.getvalue()} step {step}"


def _depth_8_bit(folder: Path, fx: dict) -> dict:
    Image.fromarray(np.full((6, 8), 120, np.uint8)).save(folder / "00001_depth.png")
    return {}


def _read_depth(ctx):
    return sentence(lambda: load_depth_png(ctx["folder"] / "00001_depth.png"))


EVALUATE_CASES = [
    Case("WORKDIR/eval is not writable", _eval_is_a_file, _evaluate(), 1, "a file is in the way of a folder",
         "one sentence before the checkpoint is read, naming the folder"),
    Case("eval.stride larger than eval.crop (evaluate)", _run_copy,
         _evaluate(**{"eval.crop": (32, 32), "eval.stride": (40, 24)}), 1,
         "eval.stride=(40, 24) is larger than eval.crop=(32, 32)", "refused before the model loads",
         "silently wrong"),
    Case("foreign digit-named folder (evaluate / predict / export)", _foreign_step, _resolve, 0,
         "12/state/_METADATA is missing: not a complete checkpoint",
         "skipped with one line, nothing renamed (they only read the workdir); the newest valid step is used"),
    Case("8-bit NYUv2 depth PNG", _depth_8_bit, _read_depth, 1, "00001_depth.png is an 8-bit depth map",
         "refused by name (the evaluation stops rather than skipping it as unreadable)", "silently wrong"),
]


def _stale_tmp(folder: Path, fx: dict) -> dict:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / f".export.tmp{dead.pid}" / "unet").mkdir(parents=True)
    (folder / f".export.tmp{dead.pid}" / "unet" / "half.safetensors").write_bytes(b"cut by SIGKILL")
    (folder / f".export.tmp{os.getppid()}").mkdir()  # a live process's: another export still writing
    (folder / f".export.tmp{os.getppid()}" / "x").write_text("busy")
    return {"dead": dead.pid}


def _clean(ctx):
    err = io.StringIO()
    with redirect_stderr(err):
        export.clean_stale_tmp(ctx["folder"] / "export")
    return 0, err.getvalue()


def _export_under_file(folder: Path, fx: dict) -> dict:
    (folder / "blocked").write_text("a file")
    return {"run": fx["tiny_run"]}


def _export(out: str):
    return lambda ctx: sentence(lambda: export.main(read_config(ctx["run"]), str(ctx["run"]),
                                                    {"out": str(ctx["folder"] / out)}))


EXPORT_CASES = [
    Case("unfinished .tmp folder of a killed export", _stale_tmp, _clean, 0,
         "the unfinished folder of an export that was killed",
         "the next export removes it with one line (one of a live export is left alone)", "data lost",
         changes=(".export.tmp[0-9]*",)),
    Case("--out under a file", _export_under_file, _export("blocked/export"), 1, "blocked is a file, not a folder",
         "refused before the checkpoint is read"),
]


@pytest.mark.parametrize("case", EVALUATE_CASES, ids=[c.name for c in EVALUATE_CASES])
def test_evaluate_bad_input(case, tmp_path, tiny_run):
    check(case, tmp_path, {"tiny_run": tiny_run})


@pytest.mark.parametrize("case", EXPORT_CASES, ids=[c.name for c in EXPORT_CASES])
def test_export_bad_input(case, tmp_path, tiny_run):
    ctx = check(case, tmp_path, {"tiny_run": tiny_run})
    if "dead" in ctx:
        assert not (tmp_path / f".export.tmp{ctx['dead']}").exists()
        assert (tmp_path / f".export.tmp{os.getppid()}" / "x").read_text() == "busy"


def test_evaluate_cli_with_an_unwritable_eval_folder(tmp_path, tiny_run):
    """The command-line case of evaluate: one line, before anything is restored."""
    run = copy_run(tiny_run, tmp_path)
    (run / "eval").write_text("in the way")
    status, last = cli("iedp_jax.evaluate", "--workdir", str(run))
    assert status == 1 and last.startswith("[iedp] cannot write the evaluation results into ") and \
        "a file is in the way of a folder" in last, last


def test_export_cli_with_a_file_as_out(tmp_path, tiny_run):
    (tmp_path / "model").write_text("a file")
    status, last = cli("iedp_jax.export", "--workdir", str(tiny_run), "--out", str(tmp_path / "model"))
    assert status == 1 and "is a file: pass a new or empty folder" in last, last
    assert (tmp_path / "model").read_text() == "a file"


def test_table_names():
    for cases in (EVALUATE_CASES, EXPORT_CASES):
        assert len({name for name, _, _ in table(cases)}) == len(cases)
