"""Memory planning: what a program needs per device, what the devices and the host have, and
the guard that refuses a run that cannot fit before it starts.

From the shardings alone (before compiling): how many bytes of trainable parameters, optimizer
state and frozen weights each device holds, using each leaf's shard shape under its
``NamedSharding``. From a compiled program: XLA's own figures (arguments, outputs, temporaries:
the activations). :func:`available_bytes` says what a device can still hold (an accelerator's
allocator limit, or for a CPU device the host's available memory, cgroup limits included), and
:func:`check_fits` turns a program that needs more into one :class:`MemoryPlanError` sentence.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from iedp_jax.infra.errors import MemoryPlanError

PyTree = Any
GIB = 2.0**30


def per_device_bytes(tree: PyTree, shardings: PyTree | None = None) -> int:
    """The largest number of bytes of ``tree`` that one device holds (leaves are arrays or
    ShapeDtypeStructs; ``shardings`` defaults to the leaves' own)."""
    leaves = jax.tree.leaves(tree)
    shs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)) \
        if shardings is not None else [getattr(x, "sharding", None) for x in leaves]
    if len(shs) != len(leaves):
        raise ValueError(f"{len(leaves)} leaves but {len(shs)} shardings.")
    total = 0
    for x, sh in zip(leaves, shs, strict=True):
        shape = tuple(np.shape(x))
        shard = sh.shard_shape(shape) if sh is not None else shape
        total += int(np.prod(shard, dtype=np.int64)) * np.dtype(x.dtype).itemsize
    return total


def full_bytes(tree: PyTree) -> int:
    """Bytes of ``tree``'s leaves (arrays or ShapeDtypeStructs), unsharded."""
    return sum(int(np.prod(np.shape(x), dtype=np.int64)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def plan(state: PyTree, frozen: PyTree) -> dict[str, float]:
    """GiB per device: ``params``, ``optimizer``, ``frozen`` and their ``total``, plus the
    unsharded ``params_full`` and ``optimizer_full`` for comparison."""
    out = {"params": per_device_bytes(state["params"]) / GIB,
           "optimizer": per_device_bytes(state["opt_state"]) / GIB,
           "frozen": per_device_bytes(frozen) / GIB,
           "params_full": full_bytes(state["params"]) / GIB,
           "optimizer_full": full_bytes(state["opt_state"]) / GIB}
    out["total"] = out["params"] + out["optimizer"] + out["frozen"]
    return out


def describe(p: dict[str, float], mesh_shape: dict[str, int]) -> str:
    """One log line for :func:`plan`."""
    return (f"memory per device on mesh {dict(mesh_shape)}: params {p['params']:.3f} GiB "
            f"(of {p['params_full']:.3f}), optimizer {p['optimizer']:.3f} GiB (of {p['optimizer_full']:.3f}), "
            f"frozen {p['frozen']:.3f} GiB, total {p['total']:.3f} GiB before activations")


_FIELDS = {"arguments": "argument_size_in_bytes", "outputs": "output_size_in_bytes",
           "temporaries": "temp_size_in_bytes", "aliased": "alias_size_in_bytes",
           "code": "generated_code_size_in_bytes"}


def compiled_sizes(analysis: Any) -> dict[str, float] | None:
    """GiB per device from XLA's memory analysis of a compiled program: ``arguments``,
    ``outputs``, ``temporaries``, ``aliased`` (outputs written into donated arguments), ``code``
    and the ``peak`` they add up to (None when the backend gives no analysis)."""
    if analysis is None:
        return None
    got = {k: getattr(analysis, v, None) for k, v in _FIELDS.items()}
    if any(got[k] is None for k in ("arguments", "outputs", "temporaries", "aliased")):
        return None
    got["code"] = got["code"] or 0
    got["peak"] = got["arguments"] + got["outputs"] + got["temporaries"] - got["aliased"] + got["code"]
    return {k: v / GIB for k, v in got.items()}


def describe_compiled(analysis: Any, what: str = "train step") -> str | None:
    """One log line for XLA's memory analysis of the compiled step (None when unavailable)."""
    sizes = compiled_sizes(analysis)
    if sizes is None:
        return None
    return (f"compiled {what} per device: "
            + ", ".join(f"{k} {sizes[k]:.3f} GiB" for k in ("arguments", "outputs", "temporaries", "aliased"))
            + f"; about {sizes['peak']:.3f} GiB at peak")


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def host_available_bytes() -> int | None:
    """Bytes the host can still give this process: ``MemAvailable`` of /proc/meminfo, capped by
    the cgroup's limit (a container's ``memory.max`` minus its ``memory.current``); None when
    unknown."""
    found = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            found = None
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            left = max(limit - usage, 0)
            found = left if found is None else min(found, left)
            break
    return found


def available_bytes(device: jax.Device | None = None) -> int | None:
    """Bytes a new program may use on ``device`` (default: the first local one): the allocator's
    limit minus what is in use (GPU, TPU), or the host's available memory for a CPU device (whose
    programs run in host memory); None when unknown."""
    device = jax.local_devices()[0] if device is None else device
    if device.platform != "cpu":
        try:
            stats = device.memory_stats()
        except (AttributeError, NotImplementedError, RuntimeError):
            stats = None
        if stats and stats.get("bytes_limit"):
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return host_available_bytes()


def where(device: jax.Device | None = None) -> str:
    """What :func:`available_bytes` measures, for a sentence: "the host" or "each NVIDIA H100"."""
    device = jax.local_devices()[0] if device is None else device
    return "the host" if device.platform == "cpu" else f"each {device.device_kind}"


def check_fits(needed: int | None, who: str, advice: str, available: int | None = None,
               at_least: bool = False, purpose: str = "", place: str | None = None) -> None:
    """Raises a one-sentence :class:`MemoryPlanError` when ``needed`` bytes exceed ``available``
    (default: :func:`available_bytes` of the first local device); nothing when either is unknown.

    Args:
      needed: bytes the program needs (None: unknown, nothing is checked).
      who: what needs them, e.g. "the train step".
      advice: what to change, naming the knobs.
      at_least: ``needed`` is a floor (said so), not a compiled program's own figure.
      purpose: what the memory is for, e.g. "batch 2 per device in bfloat16".
      place: where the memory is, for the sentence (default :func:`where`).
    """
    available = available_bytes() if available is None else available
    if needed is None or available is None or needed <= available:
        return
    raise MemoryPlanError(f"{who} needs {'at least' if at_least else 'about'} {gib(needed)} GiB"
                          f"{' for ' + purpose if purpose else ''} but {place or where()} has "
                          f"{gib(available)} GiB free: {advice}.")


def gib(n: int) -> str:
    """Bytes as GiB for a sentence: one decimal from 1 GiB up, two significant digits below
    (``19.5``, ``0.062``), so that a small figure never reads as 0.0."""
    x = n / GIB
    return f"{x:.1f}" if x >= 0.95 else f"{x:.2g}"
