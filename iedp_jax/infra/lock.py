"""The workdir lock: one training run per workdir.

Process 0 writes ``WORKDIR/run.lock`` (host, pid, process count, start time) before the run
touches the workdir and removes it at exit, after an error too. A second run on the same workdir
(another job, or N copies that each believe they are alone because the launcher was not
recognised) stops with one sentence naming the run that holds it. A lock left by a killed run is
stale when its pid is dead on this host; it is then taken over. A lock from another host is
never guessed stale: its sentence says how to break it.

On a local or network file system the lock is created atomically (``O_EXCL``); on object
stores (``gs://``) the check and the write are separate, which still stops a second run that
starts after the first.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from iedp_jax.infra.errors import ConfigError, output_error
from iedp_jax.infra.logs import log_line
from iedp_jax.infra.paths import as_path, is_local

LOCK_FILE = "run.lock"
_HELD: set[str] = set()  # the locks this process holds (a lock naming this pid but not here is stale)


class WorkdirLocked(ConfigError):
    """Another run holds the workdir."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _record() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "processes": jax.process_count(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _create(path: epath.Path, text: str) -> bool:
    """Writes ``text`` to ``path`` unless it exists; False when it did."""
    try:
        if is_local(path):
            try:
                fd = os.open(os.fspath(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return True
        if path.exists():
            return False
        path.write_text(text)
        return True
    except FileExistsError:
        raise
    except OSError as e:  # a read-only or full workdir: the machine's, not a bug
        if (err := output_error(e, f"the workdir {path.parent}", f"the lock file {path.name}")) is None:
            raise
        raise err from e


def _command(pid: int) -> str | None:
    """The command line of a local process (Linux ``/proc``), to tell a reused pid from a run."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return None
    text = " ".join(w.decode(errors="replace") for w in words if w)
    return text[:120] or None


def _read(path: epath.Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return {}  # unreadable or half written: treated as held by an unknown run


def acquire(workdir: str | os.PathLike) -> epath.Path:
    """Takes the lock of ``workdir`` for this process (call on process 0 only); returns its path.

    Raises :class:`WorkdirLocked` when a live run holds it.
    """
    workdir = as_path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a bucket that cannot be reached, a read-only or missing mount, ...
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"cannot create the workdir {workdir} ({why}): check the path, its permissions and, "
                          "for gs://, the credentials and network.") from e
    path = workdir / LOCK_FILE
    mine = _record()
    for _ in range(3):  # a stale lock taken over by two runs at once: one of them loses the retry
        if _create(path, json.dumps(mine) + "\n"):
            _HELD.add(str(path))
            return path
        held = _read(path)
        if held is None:
            continue  # released in between
        same_host = held.get("host") == mine["host"]
        pid = held.get("pid")
        own = pid == mine["pid"] and str(path) not in _HELD  # a killed run's pid, now this process's
        if same_host and isinstance(pid, int) and (own or not _pid_alive(pid)):
            log_line(f"warning: {path}: the run that held it (pid {pid}, started {held.get('started')}) "
                     "is gone; taking the lock over")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        who = (f"the run started {held.get('started', '?')} on host {held.get('host', '?')} "
               f"(pid {pid if pid is not None else '?'}, {held.get('processes', '?')} processes)") if held \
            else "an unknown run (the lock file is unreadable)"
        if same_host and pid == mine["pid"]:
            fix = "stop that run (this very process holds it: a train() call still running on this workdir)"
        elif same_host and isinstance(pid, int):
            command = _command(pid) or "alive"
            fix = (f"stop that run (pid {pid} is now: {command}), or if that is not the training run (its pid was "
                   f"reused) delete {path}")
        elif held:
            fix = (f"stop that run, or if it is dead (it ran on another host, so this cannot be checked here) delete "
                   f"{path}")
        else:
            fix = f"stop that run, or if no run uses this workdir delete {path}"
        raise WorkdirLocked(f"{workdir} is in use by {who}: {fix}, or train into another --workdir.")
    raise WorkdirLocked(f"{path} keeps changing: another run is starting in {workdir}; use another --workdir.")


def release(path: epath.Path) -> None:
    """Removes the lock if this process still holds it."""
    held = _read(path)
    _HELD.discard(str(path))
    if held and held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike) -> Iterator[None]:
    """Holds the workdir lock for the block: process 0 takes it, every process learns whether it
    did (a run whose process 0 cannot lock stops on all processes with one sentence)."""
    path, error = None, None
    if jax.process_index() == 0:
        try:
            path = acquire(workdir)
        except WorkdirLocked as e:
            error = e
    if jax.process_count() > 1:
        ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not int(ok) and error is None:
            error = WorkdirLocked(f"process 0 could not lock {workdir} (its message says which run holds it).")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if path is not None:
            release(path)
