"""Shared test utilities: the shipped configs with overrides, PyTorch reference models with no zero
layer, error measures, and quick compilation."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

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


ROOT = Path(__file__).resolve().parents[1]


CONFIG_FOLDERS = (ROOT / "iedp_jax" / "configs", ROOT / "diffseg_jax" / "configs")


def config_file(name: str) -> Path:
    """The shipped config ``name`` (``ade``, ``diffseg_voc``) in its package's ``configs/``."""
    return next(f / f"{name}.py" for f in CONFIG_FOLDERS if (f / f"{name}.py").is_file())


def load_config(name: str, **overrides):
    """The shipped config ``name`` with ``{'a.b': value}`` overrides."""
    spec = importlib.util.spec_from_file_location(name, config_file(name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config()
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def small(name: str = "smoke_seg", **overrides):
    """A few steps of the smoke config at a 64 px crop, for tests that check mechanics rather than
    learning."""
    base = {"train.total_steps": 6, "train.ckpt_every": 2, "train.log_every": 2, "train.batch_size": 4,
            "train.eval_batch_size": 8, "data.val_size": 8, "data.crop_size": (64, 64)}
    return load_config(name, **{**base, **overrides})


def params_of(workdir: Path, cfg) -> dict:
    """The train state stored in the latest checkpoint of ``workdir``."""
    import jax

    from iedp_jax.infra import sharding
    from iedp_jax.infra.checkpoint import Checkpointer, abstract_like
    from iedp_jax.trainer import build_trainer

    t = build_trainer(cfg, workdir, sharding.make_mesh((1, 1), jax.devices()[:1]))
    ckpt = Checkpointer(workdir / "checkpoints", cfg.train.ckpt_every)
    restored, _ = ckpt.restore(ckpt.latest_step(), abstract_like(t.state))
    ckpt.close()
    return jax.device_get(restored)


def train_batch(source, step: int, batch_size: int, rows: slice = slice(None)) -> dict:
    """This process's ``rows`` of the global training batch of ``step``, stacked on the host (what
    the grain pipeline streams, without it)."""
    examples = [source.train_example(step, row, batch_size) for row in list(range(batch_size))[rows]]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def eval_cfg(crop, stride, **eval_fields):
    """The base config with the evaluation window ``crop`` / ``stride`` and ``eval.<field>`` overrides."""
    from iedp_jax.config import base_config

    cfg = base_config()
    cfg.data.crop_size = crop
    cfg.eval.crop = crop
    cfg.eval.stride = stride
    for k, v in eval_fields.items():
        cfg.eval[k] = v
    return cfg
