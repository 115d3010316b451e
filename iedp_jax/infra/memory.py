"""The per-device memory plan of a training run, printed at start.

From the shardings alone (before compiling): how many bytes of trainable parameters, optimizer
state and frozen weights (VAE encoder, CLIP towers) each device holds, using each leaf's shard
shape under its ``NamedSharding``. After the first compilation the trainer adds XLA's own
figures (arguments, outputs, temporaries: the activations) from the compiled step.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

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


def plan(state: PyTree, frozen: PyTree) -> dict[str, float]:
    """GiB per device: ``params``, ``optimizer``, ``frozen`` and their ``total``, plus the
    unsharded ``params_full`` and ``optimizer_full`` for comparison."""
    out = {"params": per_device_bytes(state["params"]) / GIB,
           "optimizer": per_device_bytes(state["opt_state"]) / GIB,
           "frozen": per_device_bytes(frozen) / GIB,
           "params_full": sum(x.nbytes for x in jax.tree.leaves(state["params"])) / GIB,
           "optimizer_full": sum(x.nbytes for x in jax.tree.leaves(state["opt_state"])) / GIB}
    out["total"] = out["params"] + out["optimizer"] + out["frozen"]
    return out


def describe(p: dict[str, float], mesh_shape: dict[str, int]) -> str:
    """One log line for :func:`plan`."""
    return (f"memory per device on mesh {dict(mesh_shape)}: params {p['params']:.3f} GiB "
            f"(of {p['params_full']:.3f}), optimizer {p['optimizer']:.3f} GiB (of {p['optimizer_full']:.3f}), "
            f"frozen {p['frozen']:.3f} GiB, total {p['total']:.3f} GiB before activations")


def describe_compiled(analysis: Any) -> str | None:
    """One log line for XLA's memory analysis of the compiled step (None when unavailable)."""
    if analysis is None:
        return None
    fields = {"arguments": "argument_size_in_bytes", "outputs": "output_size_in_bytes",
              "temporaries": "temp_size_in_bytes", "aliased": "alias_size_in_bytes"}
    got = {k: getattr(analysis, v, None) for k, v in fields.items()}
    if any(v is None for v in got.values()):
        return None
    peak = got["arguments"] + got["outputs"] + got["temporaries"] - got["aliased"]
    return ("compiled train step per device: " + ", ".join(f"{k} {v / GIB:.3f} GiB" for k, v in got.items())
            + f"; about {peak / GIB:.3f} GiB at peak")
