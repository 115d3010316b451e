"""What a run tells its user: progress lines on stderr (process 0), and metrics to plot
(TensorBoard event files and a JSON-lines log in the workdir)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import jax


def log_line(msg: str) -> None:
    """One line of progress on stderr, from process 0 only."""
    if jax.process_index() == 0:
        print(f"[iedp] {msg}", file=sys.stderr, flush=True)


class MetricWriter:
    """Writes scalars to ``workdir/tensorboard`` and appends them to ``workdir/metrics.jsonl``.

    Only process 0 writes (``enabled``); other processes get a no-op writer.
    """

    def __init__(self, workdir: str | os.PathLike, enabled: bool = True) -> None:
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if enabled:
            from tensorboardX import SummaryWriter  # noqa: PLC0415 - only on the writing process

            workdir = Path(workdir)
            self._tb = SummaryWriter(str(workdir / "tensorboard"))
            self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        for k, v in scalars.items():
            self._tb.add_scalar(k, float(v), step)
        self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._jsonl.flush()
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
