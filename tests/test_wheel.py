"""The library as users install it: the wheel built from this tree, installed into a fresh virtual
environment (``--system-site-packages``, so the dependencies already here are used and nothing is
downloaded), run from a folder outside the checkout through its console scripts.

Checks that the shipped configs travel in the wheel (``--config NAME`` finds them, overrides
apply), that ``--list-configs`` and ``--help`` print what a user needs in plain text, and that
the console scripts are the same programs as ``python -m``. Each command stops before compiling
anything, so the whole module takes about half a minute.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

SOURCES = ("pyproject.toml", "README.md", "LICENSE", "iedp_jax", "diffseg_jax")
SCRIPTS = ("iedp-train", "iedp-evaluate", "iedp-predict", "iedp-export", "diffseg-segment", "diffseg-evaluate",
           "diffseg-captions")


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment holding only the wheel of this tree (built from a copy, so the
    checkout gets no build/ folder)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # noqa: E731
    built = run(sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                "-w", str(base / "dist"))
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (base / "dist").glob("iedp_jax-*.whl")
    env_dir = base / "venv"
    made = run(sys.executable, "-m", "venv", "--system-site-packages", str(env_dir))
    assert made.returncode == 0, made.stderr[-3000:]
    installed = run(str(env_dir / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    str(wheel))
    assert installed.returncode == 0, installed.stderr[-3000:]
    return env_dir


def _run(venv: Path, cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    """``cmd`` (a console script of ``venv`` or its python) from ``cwd``, as a user's shell runs it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env.update(JAX_PLATFORMS="cpu", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}", VIRTUAL_ENV=str(venv))
    return subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_wheel_ships_configs_and_console_scripts(venv, tmp_path):
    where = _run(venv, tmp_path, "python", "-c", "import iedp_jax, diffseg_jax.configs as d, iedp_jax.configs as c; "
                 "print(iedp_jax.__file__, c.FOLDER, d.FOLDER)")
    assert where.returncode == 0, where.stderr[-3000:]
    assert all(str(venv) in p for p in where.stdout.split()), where.stdout  # the wheel, not the checkout
    assert str(ROOT) not in where.stdout
    for script in SCRIPTS:
        assert (venv / "bin" / script).is_file(), script

    listed = _run(venv, tmp_path, "iedp-train", "--list-configs")
    assert listed.returncode == 0, listed.stderr[-3000:]
    names = {line.split()[0]: line for line in listed.stdout.splitlines()}
    shipped = {p.stem for p in (ROOT / "iedp_jax" / "configs").glob("[!_]*.py")}
    assert set(names) == shipped and {"smoke_seg", "ade", "nyu", "vpd_ade"} <= shipped
    assert "Smoke run: a tiny random backbone on synthetic segmentation" in names["smoke_seg"]
    diffseg = _run(venv, tmp_path, "diffseg-evaluate", "--list-configs")
    assert diffseg.returncode == 0, diffseg.stderr[-3000:]
    assert [line.split()[0] for line in diffseg.stdout.splitlines()] == \
        ["diffseg_coco", "diffseg_context", "diffseg_voc"]

    # a shipped config by name, with an override: refused on its value, so the file was found and read
    refused = _run(venv, tmp_path, "iedp-train", "--config", "smoke_seg", "--workdir", str(tmp_path / "run"),
                   "--config.train.total_steps=0")
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines()[-1] == \
        "[iedp] --config.train.total_steps=0 must be positive (whole numbers).", refused.stderr[-3000:]
    unknown = _run(venv, tmp_path, "iedp-train", "--config", "smoke", "--workdir", str(tmp_path / "run"))
    assert unknown.returncode == 1 and "--config smoke is neither a config file nor a shipped config" in \
        unknown.stderr and "smoke_seg" in unknown.stderr and "Traceback" not in unknown.stderr, unknown.stderr
    assert not (tmp_path / "run").exists()


def test_help_is_plain_and_lists_the_flags_users_need(venv, tmp_path):
    shown = _run(venv, tmp_path, "iedp-train", "--help")
    assert shown.returncode == 0, shown.stderr[-3000:]
    text = shown.stdout
    assert text.startswith("usage: iedp-train --config NAME|FILE --workdir DIR [flags]"), text[:300]
    for flag in ("--config NAME|FILE", "--workdir DIR", "--stop_after STEP (also --stop-after)", "--list-configs",
                 "--config.a.b=VALUE"):
        assert f"\n  {flag}\n" in text, (flag, text)
    assert "``" not in text and ":func:" not in text and ":mod:" not in text, text
    predict = _run(venv, tmp_path, "iedp-predict", "--help")
    assert predict.returncode == 0 and predict.stdout.startswith(
        "usage: iedp-predict --workdir DIR --image PATH --out DIR [flags]"), predict.stdout[:300]
    assert "\n  --checkpoint PATH\n" in predict.stdout and "``" not in predict.stdout
    segment = _run(venv, tmp_path, "diffseg-segment", "--help")
    assert segment.returncode == 0 and segment.stdout.startswith("usage: diffseg-segment"), segment.stdout[:300]
    # python -m is the same program
    same = _run(venv, tmp_path, "python", "-m", "iedp_jax.train", "--help")
    assert same.returncode == 0
    assert same.stdout.replace("python -m iedp_jax.train", "iedp-train", 1) == text
