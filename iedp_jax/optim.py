"""AdamW with VPD's parameter groups and its learning-rate schedules (optax).

Groups: the UNet's learning rate is ``unet_lr_mult`` times the base (0.1 for segmentation, 0.01
for depth); norms, biases and other 1-D parameters get no weight decay. Frozen towers are not in
the trained pytree at all, so they carry no optimizer state. PyTorch AdamW semantics: the decay
``lr * wd * p`` is scaled by the same per-group multiplier as the Adam step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from iedp_jax.infra.errors import ConfigError

PyTree = Any


def learning_rate_schedule(cfg: ConfigDict, total_steps: int) -> optax.Schedule:
    """``warmup_poly``: linear warmup to ``lr`` then poly(``power``) to ``end_lr`` (ADE20K);
    ``one_cycle``: ``start_lr`` -> ``lr`` at ``peak_fraction`` -> ``end_lr``, poly(``power``) (NYUv2)."""
    if cfg.schedule == "warmup_poly":
        warmup = min(cfg.warmup_steps, total_steps)
        return optax.join_schedules([
            optax.linear_schedule(cfg.lr * cfg.warmup_ratio, cfg.lr, max(warmup, 1)),
            optax.polynomial_schedule(cfg.lr, cfg.end_lr, cfg.power, max(total_steps - warmup, 1)),
        ], [warmup])
    if cfg.schedule == "one_cycle":
        peak = max(int(total_steps * cfg.peak_fraction), 1)
        return optax.join_schedules([
            optax.polynomial_schedule(cfg.start_lr, cfg.lr, cfg.power, peak),
            optax.polynomial_schedule(cfg.lr, cfg.end_lr, cfg.power, max(total_steps - peak, 1)),
        ], [peak])
    raise ConfigError(f"optim.schedule must be 'warmup_poly' or 'one_cycle', got {cfg.schedule!r}.")


def decay_mask(params: PyTree) -> PyTree:
    """True where weight decay applies: matrices and kernels, not norms, biases or gammas."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.ndim(x) >= 2 and getattr(path[-1], "key", "") not in ("scale", "bias"), params)


def lr_multipliers(params: PyTree, unet_lr_mult: float) -> PyTree:
    """Per-leaf learning-rate multiplier: ``unet_lr_mult`` under ``params['unet']``, else 1."""
    return {k: jax.tree.map(lambda _, m=(unet_lr_mult if k == "unet" else 1.0): m, v) for k, v in params.items()}


def scale_by_tree(multipliers: PyTree) -> optax.GradientTransformation:
    """Multiplies each update leaf by a constant (the parameter-group learning-rate factor)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * m if m != 1.0 else u, updates, multipliers), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(cfg: ConfigDict, params: PyTree, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                              optax.Schedule]:
    """AdamW (+ optional global-norm clipping) with the parameter groups above."""
    schedule = learning_rate_schedule(cfg, total_steps)
    parts = []
    if cfg.clip_grad_norm and cfg.clip_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
    parts += [
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask(params)),
        optax.scale_by_learning_rate(schedule),
        scale_by_tree(lr_multipliers(params, cfg.unet_lr_mult)),
    ]
    return optax.chain(*parts), schedule
