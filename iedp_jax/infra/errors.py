"""The user-error family: mistakes a user fixes by changing a path, a flag or an input.

An entry point prints such an error as its one sentence (:func:`iedp_jax.infra.cli.run`);
anything else is a bug and keeps its traceback. Each class also derives from the built-in
exception it replaces, so ``except ValueError`` around library calls keeps working.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class UserError(Exception):
    """Base: the message is one sentence that says what to do."""


class ConfigError(UserError, ValueError):
    """A config value, flag or environment variable is wrong."""


class DatasetError(UserError, FileNotFoundError):
    """A dataset folder or prepared dataset is missing or not in the expected layout."""


class InputError(UserError, ValueError):
    """A user-supplied file (image, caption file, checkpoint) cannot be used."""


class DataValueError(UserError, ValueError):
    """A dataset file decodes but holds values its dataset cannot have (a label above the class
    count, depth in another unit): the copy is wrong, so it stops the run rather than being skipped
    as one unreadable image."""


class NonFiniteLoss(UserError, FloatingPointError):
    """Training diverged (the loss became NaN or infinite)."""


class MissingDependency(UserError, ImportError):
    """An optional dependency needed by the chosen path is not installed."""


class MemoryPlanError(ConfigError, MemoryError):
    """A run would not fit in the memory of its devices or host (refused before it starts)."""


class OutputError(UserError, OSError):
    """An output folder (or the workdir) cannot be written: read-only, full, or a file in the way."""


# The write failures that are the machine's or the user's (a folder, a disk), not a bug.
_WRITE_FAILURES = {errno.EROFS: "the file system is read-only", errno.ENOSPC: "the disk is full",
                   errno.EDQUOT: "the disk quota is exceeded", errno.EACCES: "permission denied",
                   errno.EPERM: "permission denied", errno.ENOTDIR: "a file is in the way of a folder",
                   errno.EEXIST: "a file is in the way of a folder", errno.EISDIR: "a folder is in the way of a file"}


def output_error(e: OSError, target: object, what: str) -> OutputError | None:
    """The one sentence for a failed write of ``what`` into ``target`` (a path or flag), or None
    when ``e`` is not a read-only / full / permission / file-in-the-way failure (a bug: re-raise)."""
    why = _WRITE_FAILURES.get(getattr(e, "errno", None) or -1)
    if why is None:
        return None
    where = f" ({e.filename})" if getattr(e, "filename", None) and str(e.filename) != str(target) else ""
    return OutputError(f"cannot write {what} into {target}: {why}{where}; free space or pass a writable folder.")


def check_writable(folder, what: str, flag: str | None = None) -> None:
    """Creates ``folder`` and writes (then removes) a probe file in it, so that a read-only, full
    or blocked output folder is one :class:`OutputError` before any work, not a traceback after."""
    folder = Path(folder)
    probe = folder / f".iedp_write_probe{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as e:
        if (err := output_error(e, flag or folder, what)) is None:
            raise
        raise err from e
