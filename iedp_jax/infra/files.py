"""Lists of (image, target) file pairs, on disk or stored as bytes in prepared records.

A dataset reader keeps one :class:`PairFiles` per split and decodes ``open(i)`` with
:mod:`iedp_jax.infra.images`; whether the bytes come from a folder (:class:`DiskPairs`) or from
a prepared tfds split (:class:`iedp_jax.infra.tfds.RecordPairs`) is invisible to it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

File = str | os.PathLike | BinaryIO


class PairFiles(Protocol):
    """The encoded files of a split, pair ``i`` = (image, target)."""

    def __len__(self) -> int: ...

    def name(self, i: int) -> str:
        """A stable name of pair ``i`` (its file name or relative path), for outputs and errors."""

    def open(self, i: int) -> tuple[File, File]:
        """The two encoded files of pair ``i`` (paths or file objects)."""


class DiskPairs:
    """:class:`PairFiles` over paths on disk."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], names: Sequence[str] | None = None) -> None:
        self.pairs = [(Path(a), Path(b)) for a, b in pairs]
        self.names = list(names) if names is not None else [a.name for a, _ in self.pairs]
        if len(self.names) != len(self.pairs):
            raise ValueError(f"{len(self.pairs)} pairs but {len(self.names)} names.")

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, i: int) -> str:
        return self.names[i]

    def open(self, i: int) -> tuple[Path, Path]:
        return self.pairs[i]

    def head(self, n: int | None) -> DiskPairs:
        """The first ``n`` pairs (all for None)."""
        return self if n is None else DiskPairs(self.pairs[:n], self.names[:n])
