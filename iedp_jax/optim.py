"""AdamW with VPD's parameter groups and its learning-rate schedules (optax).

Groups (``optim.param_groups``):

- ``"ours"`` (also VPD's depth rule, ``models_depth/optimizer.py``): the UNet's learning rate is
  ``unet_lr_mult`` times the base (0.1 for segmentation, 0.01 for depth); norms, biases and other
  1-D parameters get no weight decay.
- ``"mmcv"``: what mmcv's first-match ``custom_keys`` make of VPD's ADE20K config
  (``{'unet': lr_mult 0.1, 'norm': decay_mult 0}``, keys tried longest first, ``'norm'`` before
  ``'unet'``): parameters of the UNet's transformer norms (LDM names ``...attentions...norm``,
  ``norm1/2/3``) train at the base learning rate with no decay; every other UNet parameter
  (biases and resnet GroupNorms included) at ``unet_lr_mult`` with decay; everything else at the
  base rate with decay (biases, the adapter's gamma, the head's norms, which VPD names ``bn``),
  except parameters of modules named ``norm*`` outside the head (the implicit branch's LayerNorms,
  which mmcv's rule would match by name).

Frozen towers are not in the trained pytree at all, so they carry no optimizer state. PyTorch
AdamW semantics: the decay ``lr * wd * p`` is scaled by the same per-group multiplier as the Adam
step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from iedp_jax.infra.errors import ConfigError

PyTree = Any


SCHEDULES = ("warmup_poly", "one_cycle", "one_cycle_vpd")
PARAM_GROUPS = ("ours", "mmcv")


def vpd_one_cycle(step: jax.Array, total_steps: int, lr: float, start_lr: float, end_lr: float, power: float,
                  peak_fraction: float) -> jax.Array:
    """VPD's NYUv2 curve (``depth/train.py``) at optimizer step ``step`` (0-based).

    VPD counts ``s = step + 1`` and, with ``H`` the steps of ``epochs // 2`` epochs (12 of 25:
    ``peak_fraction = 0.48``), sets ``start + (lr - start) (s/H)^p`` for ``s < H``, then
    ``max(end, lr - (lr - end) (s/H - 1)^p)``: a concave rise, the peak at 48% and the minimum
    from 96% on (VPD has ``start = end = min_lr``).
    """
    h = max(int(total_steps * peak_fraction), 1)
    x = (jnp.asarray(step, jnp.float32) + 1.0) / h
    rise = start_lr + (lr - start_lr) * jnp.power(jnp.clip(x, 0.0, 1.0), power)
    fall = jnp.maximum(end_lr, lr - (lr - end_lr) * jnp.power(jnp.maximum(x - 1.0, 0.0), power))
    return jnp.where(x < 1.0, rise, fall)


def learning_rate_schedule(cfg: ConfigDict, total_steps: int) -> optax.Schedule:
    """``warmup_poly``: linear warmup to ``lr`` then poly(``power``) to ``end_lr`` (ADE20K);
    ``one_cycle``: ``start_lr`` -> ``lr`` at ``peak_fraction`` -> ``end_lr``, poly(``power``) both
    ways, the minimum at the last step; ``one_cycle_vpd``: VPD's own formula (:func:`vpd_one_cycle`)."""
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
    if cfg.schedule == "one_cycle_vpd":
        args = (total_steps, cfg.lr, cfg.start_lr, cfg.end_lr, cfg.power, cfg.peak_fraction)
        return lambda step: vpd_one_cycle(step, *args)
    raise ConfigError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}.")


def _keys(path) -> list[str]:
    return [str(getattr(p, "key", p)) for p in path]


def _mmcv_norm(keys: list[str]) -> bool:
    """Whether mmcv's ``'norm'`` custom key matches this parameter (VPD's names, see the module doc)."""
    if keys[0] == "unet":
        return any(k.startswith("attentions_") for k in keys) and any(k.startswith("norm") for k in keys)
    return keys[0] != "head" and any(k.startswith("norm") for k in keys)


def _check_groups(rule: str) -> None:
    if rule not in PARAM_GROUPS:
        raise ConfigError(f"optim.param_groups must be one of {', '.join(PARAM_GROUPS)}, got {rule!r}.")


def decay_mask(params: PyTree, rule: str = "ours") -> PyTree:
    """True where weight decay applies. ``ours``: matrices and kernels, not norms, biases or
    gammas; ``mmcv``: everything but what the ``'norm'`` key matches."""
    _check_groups(rule)
    if rule == "mmcv":
        return jax.tree_util.tree_map_with_path(lambda path, _: not _mmcv_norm(_keys(path)), params)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.ndim(x) >= 2 and getattr(path[-1], "key", "") not in ("scale", "bias"), params)


def lr_multipliers(params: PyTree, unet_lr_mult: float, rule: str = "ours") -> PyTree:
    """Per-leaf learning-rate multiplier: ``unet_lr_mult`` under ``params['unet']``, else 1
    (``mmcv``: 1 for the UNet's transformer norms too)."""
    _check_groups(rule)

    def mult(path, _) -> float:
        keys = _keys(path)
        if keys[0] != "unet" or (rule == "mmcv" and _mmcv_norm(keys)):
            return 1.0
        return unet_lr_mult

    return jax.tree_util.tree_map_with_path(mult, params)


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
        optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask(params, cfg.param_groups)),
        optax.scale_by_learning_rate(schedule),
        scale_by_tree(lr_multipliers(params, cfg.unet_lr_mult, cfg.param_groups)),
    ]
    return optax.chain(*parts), schedule
