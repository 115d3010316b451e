"""Shared test utilities: PyTorch reference models with no zero layer, and error measures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np


def perturb_(model, seed: int = 0, scale: float = 0.05) -> None:
    """Adds seeded noise to every parameter of a torch module, in place.

    Fresh diffusers/transformers models zero-initialise some layers (``conv_out``, biases), which
    would hide a mis-mapped weight; after this every tensor is non-zero and distinct.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref| (as float64)."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def nchw_to_nhwc(x):
    """A torch NCHW tensor (or array) as a NHWC numpy array."""
    return np.asarray(x.detach().numpy() if hasattr(x, "detach") else x).transpose(0, 2, 3, 1)


@contextlib.contextmanager
def quick_compile() -> Iterator[None]:
    """XLA with most optimisations off, for tests of a few train steps: they are compile-bound,
    and the tiny train step compiles in about half the time (73 s -> 40 s measured on 2 cores)
    with results unchanged at the tests' tolerances. Learning tests, which run hundreds of
    steps, keep the optimised code."""
    import jax

    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", old)
