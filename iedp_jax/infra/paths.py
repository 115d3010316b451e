"""Paths that may be cloud URLs: ``etils.epath`` for workdirs, data folders and outputs.

``gs://bucket/run`` stays a URL (``epath.Path`` reads and writes it through the cloud file
system that orbax and tfds use); a local path becomes an absolute ``epath.Path``. Functions that
take a folder accept ``str``, ``os.PathLike`` or ``epath.Path``.
"""

from __future__ import annotations

import os

from etils import epath

PathLike = str | os.PathLike


def is_url(path: PathLike) -> bool:
    """True for ``scheme://...`` (``gs://``, ``s3://``, ...)."""
    return "://" in os.fspath(path) if not isinstance(path, epath.Path) else "://" in str(path)


def as_path(path: PathLike) -> epath.Path:
    """``path`` as an ``epath.Path``: URLs unchanged, local paths made absolute (``~`` expanded)."""
    if is_url(path):
        return epath.Path(str(path))
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def is_local(path: PathLike) -> bool:
    """True when ``path`` is on a local (or mounted) file system, where ``os`` calls work."""
    return not is_url(path)
