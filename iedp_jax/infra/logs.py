"""What a run tells its user: progress lines on stderr (process 0), and metrics to plot
(TensorBoard event files and a JSON-lines log in the workdir)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from iedp_jax.infra.paths import as_path, is_local


def log_line(msg: str) -> None:
    """One line of progress on stderr, from process 0 only."""
    if jax.process_index() == 0:
        print(f"[iedp] {msg}", file=sys.stderr, flush=True)


def progress(total: int, desc: str, unit: str, initial: int = 0) -> tqdm:
    """A progress bar on a terminal (process 0 only); disabled in batch logs, where it would only
    write carriage returns (the trainer prints plain lines there instead)."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                disable=jax.process_index() != 0 or not sys.stderr.isatty())


def write_results(results: Mapping[str, Any], paths: Sequence[str | os.PathLike], headline: Sequence[str],
                  label: str) -> None:
    """Writes ``results`` as JSON to every path (process 0 only) and logs one headline line:
    ``<label>: k1=v1, k2=v2 -> <first path>``."""
    if jax.process_index() == 0:
        text = json.dumps(results, indent=2)
        for path in map(as_path, paths):  # local or gs://
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    log_line(f"{label}: " + ", ".join(f"{k}={results[k]:.4f}" for k in headline) + f" -> {paths[0]}")


def _rows_up_to(text: str, last_step: int) -> str:
    """The lines of a JSON-lines log whose ``step`` is at most ``last_step`` (unparsable lines,
    e.g. a line cut by a kill, are dropped)."""
    kept = []
    for line in text.splitlines():
        try:
            if int(json.loads(line)["step"]) <= last_step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    return "".join(kept)


class _JsonLines:
    """``metrics.jsonl``: appended in place on a local file system; on an object store
    (``gs://``), which cannot append, the file is rewritten whole at each write.

    With ``resume_step``, rows of later steps (written by a run killed after its last checkpoint,
    and about to be written again) are removed first, so every step appears once."""

    def __init__(self, path: epath.Path, resume_step: int | None = None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            text = path.read_text()
            kept = _rows_up_to(text, resume_step)
            if kept != text:
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(kept)
                tmp.replace(path)  # atomic: a kill here leaves the old or the new file
        if is_local(path):
            self._file, self._lines = open(os.fspath(path), "a", encoding="utf-8"), None  # noqa: SIM115
        else:
            self._file, self._lines = None, path.read_text() if path.exists() else ""

    def write(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        else:
            self._lines += line
            self.path.write_text(self._lines)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class MetricWriter:
    """Writes scalars to ``workdir/tensorboard`` and appends them to ``workdir/metrics.jsonl``
    (local or ``gs://``: tensorboardX writes ``gs://`` itself, with google-cloud-storage).

    Only process 0 writes (``enabled``); other processes get a no-op writer. A run resumed at
    ``resume_step`` first drops what an earlier run logged after that step (TensorBoard's
    ``purge_step``; the rows of ``metrics.jsonl``): those steps are trained and logged again.
    """

    def __init__(self, workdir: str | os.PathLike, enabled: bool = True, resume_step: int | None = None) -> None:
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if enabled:
            workdir = as_path(workdir)
            purge = None if resume_step is None else int(resume_step) + 1
            self._tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=purge)
            self._jsonl = _JsonLines(workdir / "metrics.jsonl", resume_step)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        for k, v in scalars.items():
            self._tb.add_scalar(k, float(v), step)
        self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._tb.flush()

    def write_text(self, tag: str, text: str, step: int = 0) -> None:
        """Text in TensorBoard's text tab (e.g. the run's config)."""
        if self.enabled:
            self._tb.add_text(tag, text, step)
            self._tb.flush()

    def write_images(self, step: int, tag: str, images: Sequence[np.ndarray]) -> None:
        """uint8 [H, W, 3] images in TensorBoard's image tab, as ``tag/0``, ``tag/1``, ..."""
        if self.enabled:
            for i, image in enumerate(images):
                self._tb.add_image(f"{tag}/{i}", np.asarray(image), step, dataformats="HWC")
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
