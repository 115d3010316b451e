"""The machinery of the bad-input tables (``tests/test_bad_inputs_*.py``, one per entry point).

A :class:`Case` is an input (``setup`` prepares it in a fresh folder, ``run`` feeds it to the
entry point and returns ``(exit status, what it printed)``), the expected exit status, a phrase
the one sentence must contain, and what the case guarantees (``behaviour``, the line of the table
in ``docs/reliability.md``). :func:`check` runs one: every file that existed before is
byte-identical afterwards (``changes`` names the ones the command is meant to write, ``moves``
the ones it is meant to rename), and a refusal is one line. ``docs/reliability.md`` lists every
case; ``tests/test_bad_inputs_docs.py`` checks the two agree.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from iedp_jax.infra.cli import _exit_on_user_error
from iedp_jax.sd.weights import WeightsError
from tests.helpers import ROOT

MARK = pytest.mark.xdist_group("bad_inputs")  # one worker: the tiny run below is built once


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Path, dict], dict]    # (folder, fixtures) -> what run needs; writes the input files
    run: Callable[[dict], tuple[int, str]]  # -> (exit status, what it printed)
    status: int
    phrase: str
    behaviour: str
    kind: str = "traceback"            # the heading: data lost | silently wrong | traceback
    changes: tuple[str, ...] = ()      # relative paths (fnmatch patterns) the command is meant to rewrite
    moves: tuple[tuple[str, str], ...] = ()  # (from, to): folders the command is meant to rename


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def check(case: Case, folder: Path, fixtures: dict) -> dict:
    """Runs ``case`` in ``folder``: the exit status, the phrase in one line (no traceback), and
    every file that existed before byte-identical afterwards (but ``changes``; ``moves`` followed).
    Returns the case's context (with ``status`` and ``message``) for extra checks."""
    folder.mkdir(parents=True, exist_ok=True)
    ctx = dict(case.setup(folder, fixtures) or {}, folder=folder)
    before = snapshot(folder)
    status, message = case.run(ctx)
    assert status == case.status, (case.name, status, message)
    assert case.phrase in message, (case.name, message)
    assert "Traceback" not in message, message
    if status != 0:  # the refusal is its last line, one sentence (warnings such as a skipped file may precede it)
        assert case.phrase in message.strip().splitlines()[-1], message
    after = snapshot(folder)
    for name, digest in before.items():
        if any(fnmatch.fnmatch(name, c) or fnmatch.fnmatch(name, c.rstrip("/") + "/*") for c in case.changes):
            continue
        for old, new in case.moves:
            if name.startswith(old + "/"):
                name = new + name[len(old):]
        assert after.get(name) == digest, f"{case.name}: {name} was changed or removed"
    return dict(ctx, status=status, message=message)


def table(cases: list[Case]) -> list[tuple[str, int, str]]:
    """``(name, status, phrase)`` of each case: what docs/reliability.md must list."""
    return [(c.name, c.status, c.phrase) for c in cases]


def sentence(fn: Callable[[], object], prefix: str = "iedp") -> tuple[int, str]:
    """An IEDP entry point's ``main`` run through the CLI's own handler: ``(1, '[iedp] ...')`` on a
    user's mistake, ``(0, '')`` when it goes through (a bug raises: its traceback stays)."""
    try:
        _exit_on_user_error(prefix, (WeightsError,), fn)
    except SystemExit as e:
        return (1 if e.code else 0), str(e.code or "")
    return 0, ""


def cli(module: str, *args: str, timeout: int = 120) -> tuple[int, str]:
    """``python -m module args`` in a subprocess: ``(status, last line of stderr)``."""
    res = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
                                               "HOME": str(Path.home())})
    lines = [x for x in res.stderr.strip().splitlines() if x.strip()]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    return res.returncode, lines[-1] if lines else ""


def copy_run(run: Path, folder: Path) -> Path:
    """A copy of the tiny trained workdir (the tiny backbone linked, not copied)."""
    dst = folder / "run"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("tiny_backbone"))
    (dst / "tiny_backbone").symlink_to(run / "tiny_backbone")
    return dst


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2))


_BUILT: dict[str, Path] = {}


def tiny_run_path(tmp_path_factory) -> Path:
    """A tiny trained workdir (smoke_seg, checkpoint of step 7; :func:`tests.test_predict.make_workdir`),
    built once per test process: each module's ``tiny_run`` fixture returns this one."""
    if "run" not in _BUILT:
        from tests.test_predict import make_workdir

        _BUILT["run"] = make_workdir(tmp_path_factory.mktemp("bad_inputs_run"), "smoke_seg", "synthetic_seg")
    return _BUILT["run"]
