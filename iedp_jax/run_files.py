"""A workdir describes its run: the resolved config and what the dataset told the model.

At start, process 0 writes ``WORKDIR/config.json`` (the resolved config, every override
included) and ``WORKDIR/run.json`` (task, class or scene names, package versions, git commit).
``python -m iedp_jax.evaluate`` / ``predict`` / ``export`` and :func:`iedp_jax.load_trained`
rebuild the model from these alone: no ``--config`` and no dataset on disk. The workdir may be a
``gs://`` URL (:mod:`iedp_jax.infra.paths`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import jax
from etils import epath
from ml_collections import ConfigDict

from iedp_jax.config import base_config
from iedp_jax.infra.errors import InputError
from iedp_jax.infra.paths import as_path

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
_PACKAGES = ("iedp-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model needs to know of its dataset (a data source answers the same questions)."""

    task: str
    class_names: tuple[str, ...] = ()
    scene_names: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def _write_atomic(path: epath.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def write_run_files(workdir: str | os.PathLike, cfg: ConfigDict, dataset: Any) -> None:
    """Writes ``config.json`` and ``run.json`` into ``workdir`` (process 0 only, atomically)."""
    if jax.process_index() != 0:
        return
    workdir = as_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _write_atomic(workdir / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
    run = {"task": dataset.task, "class_names": list(dataset.class_names), "scene_names": list(dataset.scene_names),
           "versions": _versions(), "git_commit": _git_commit(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "processes": jax.process_count(), "devices": jax.device_count()}
    _write_atomic(workdir / RUN_FILE, json.dumps(run, indent=2) + "\n")


def _merge(into: ConfigDict, saved: dict, path: epath.Path, prefix: str = "") -> None:
    for key, value in saved.items():
        if key not in into:
            raise InputError(f"{path} has the key {prefix}{key}, which this version's config does not know: use "
                             "the iedp_jax version that trained it, or pass --config explicitly.")
        current = into[key]
        if isinstance(current, ConfigDict):
            _merge(current, value, path, f"{prefix}{key}.")
        elif isinstance(current, tuple):
            into[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            into[key] = value


def read_config(workdir: str | os.PathLike) -> ConfigDict:
    """The config a run saved in ``workdir``, on the current schema."""
    path = as_path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{path} does not exist: pass the workdir of a training run (it writes {CONFIG_FILE} "
                         "at start), or give --config with the training overrides.")
    cfg = base_config()
    _merge(cfg, json.loads(path.read_text()), path)
    return cfg


def read_dataset_info(workdir: str | os.PathLike) -> DatasetInfo:
    """The task and class / scene names the run trained on."""
    path = as_path(workdir) / RUN_FILE
    if not path.is_file():
        raise InputError(f"{path} does not exist: pass the workdir of a training run (it writes {RUN_FILE} at "
                         "start).")
    run = json.loads(path.read_text())
    return DatasetInfo(run["task"], tuple(run["class_names"]), tuple(run["scene_names"]))
