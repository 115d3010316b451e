"""The DDPM forward-noising schedule (diffusers ``DDPMScheduler`` betas and ``add_noise``).

``load_noise_schedule`` reads a diffusers ``scheduler_config.json`` (any scheduler class: the
training betas of DDPM, DDIM, PNDM, ... are computed the same way) into a :class:`NoiseSchedule`,
a pytree holding ``alphas_cumprod`` [T] float32 with the rest as static fields, so it can be
passed through ``jax.jit``. The betas follow PyTorch's float32 arithmetic (``torch.linspace``'s
scalar formula in float32, ``cumprod`` accumulated in float64 and rounded, as torch does on CPU):
``alphas_cumprod`` agrees with diffusers' to about one float32 ulp (torch's vectorised linspace
rounds a few entries differently, depending on the CPU's vector width).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from iedp_jax.sd.weights import WeightsError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@flax.struct.dataclass
class NoiseSchedule:
    """Cumulative signal levels of the training noise schedule.

    Attributes:
      alphas_cumprod: [T] float32, ``prod_{s <= t} (1 - beta_s)`` (a pytree leaf).
      num_train_timesteps, beta_schedule, beta_start, beta_end, prediction_type,
      rescale_betas_zero_snr: static (not traced) fields copied from the config.
    """

    alphas_cumprod: jax.Array
    num_train_timesteps: int = flax.struct.field(pytree_node=False, default=1000)
    beta_schedule: str = flax.struct.field(pytree_node=False, default="linear")
    beta_start: float = flax.struct.field(pytree_node=False, default=0.0001)
    beta_end: float = flax.struct.field(pytree_node=False, default=0.02)
    prediction_type: str = flax.struct.field(pytree_node=False, default="epsilon")
    rescale_betas_zero_snr: bool = flax.struct.field(pytree_node=False, default=False)


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` to within one ulp.

    The scalar formula of torch's CPU kernel: ``start + i * step`` for the first half,
    ``end - (steps - 1 - i) * step`` for the second, in float32.
    """
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], np.float32)
    step = (end32 - start32) / np.float32(steps - 1)
    idx = np.arange(steps)
    half = steps // 2
    lo = start32 + step * idx.astype(np.float32)
    hi = end32 - step * (steps - idx - 1).astype(np.float32)
    return np.where(idx < half, lo, hi).astype(np.float32)


def _cosine_betas(steps: int, max_beta: float = 0.999) -> np.ndarray:
    """diffusers ``betas_for_alpha_bar`` (GLIDE cosine), computed in float64, stored float32."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta)
                     for i in range(steps)], np.float32)


def _cumprod_f32(x: np.ndarray) -> np.ndarray:
    """float32 cumulative product accumulated in float64 (as torch does on CPU)."""
    return np.cumprod(x.astype(np.float64)).astype(np.float32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """diffusers ``rescale_zero_terminal_snr`` (Lin et al. 2023), in float32."""
    alphas_bar_sqrt = np.sqrt(_cumprod_f32(np.float32(1.0) - betas))
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt ** 2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (np.float32(1.0) - alphas).astype(np.float32)


def from_config(config: Mapping[str, Any]) -> NoiseSchedule:
    """Builds the schedule from a diffusers scheduler config dict.

    Reads ``num_train_timesteps`` (1000), ``beta_schedule`` ('linear'), ``beta_start`` (1e-4),
    ``beta_end`` (0.02), ``trained_betas`` (None), ``rescale_betas_zero_snr`` (False) and
    ``prediction_type`` ('epsilon'); defaults as diffusers'.

    Raises:
      WeightsError: an unsupported ``beta_schedule`` or ``prediction_type`` (naming it).
    """
    steps = int(config.get("num_train_timesteps", 1000))
    schedule = config.get("beta_schedule", "linear")
    start = float(config.get("beta_start", 0.0001))
    end = float(config.get("beta_end", 0.02))
    prediction = config.get("prediction_type", "epsilon")
    rescale = bool(config.get("rescale_betas_zero_snr", False))
    trained = config.get("trained_betas")
    if prediction not in PREDICTION_TYPES:
        raise WeightsError(
            f"Scheduler prediction_type {prediction!r} is not supported (one of {PREDICTION_TYPES})."
        )
    if trained is not None:
        betas = np.asarray(trained, np.float32)
        steps = len(betas)
    elif schedule == "linear":
        betas = _torch_linspace_f32(start, end, steps)
    elif schedule == "scaled_linear":
        betas = _torch_linspace_f32(start ** 0.5, end ** 0.5, steps) ** 2
    elif schedule == "squaredcos_cap_v2":
        betas = _cosine_betas(steps)
    else:
        raise WeightsError(
            f"Scheduler beta_schedule {schedule!r} is not supported (one of {BETA_SCHEDULES})."
        )
    if rescale:
        betas = _rescale_zero_terminal_snr(betas)
    alphas_cumprod = _cumprod_f32(np.float32(1.0) - betas.astype(np.float32))
    return NoiseSchedule(
        alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32),
        num_train_timesteps=steps,
        beta_schedule=schedule,
        beta_start=start,
        beta_end=end,
        prediction_type=prediction,
        rescale_betas_zero_snr=rescale,
    )


def load_noise_schedule(path: str | os.PathLike) -> NoiseSchedule:
    """Reads ``scheduler_config.json``.

    Args:
      path: a diffusers pipeline root (``path/scheduler/scheduler_config.json``), the scheduler
        folder, or the json file itself.

    Raises:
      WeightsError: no scheduler_config.json there, or an unsupported or unreadable schedule
        (naming it and the file).
    """
    root = Path(path).expanduser()
    candidates = ([root] if root.is_file() else
                  [root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"])
    for file in candidates:
        if file.is_file():
            break
    else:
        raise WeightsError(
            f"No scheduler_config.json at {str(root)!r}: point it at a diffusers pipeline root "
            "(with scheduler/), its scheduler/ folder, or the json file."
        )
    try:
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{str(file)!r} is not valid JSON: {e}") from None
    try:
        return from_config(config)
    except WeightsError as e:
        raise WeightsError(f"{str(file)!r}: {e}") from None


def _per_sample(values: jax.Array, t: jax.Array, like: jax.Array) -> jax.Array:
    """``values[t]`` in ``like``'s dtype, shaped [B, 1, ..., 1] to broadcast against ``like``."""
    v = values.astype(like.dtype)[t]
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def add_noise(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """Forward diffusion ``sqrt(a_t) x0 + sqrt(1 - a_t) noise`` (diffusers ``add_noise``).

    Args:
      x0: clean samples [B, ...] (e.g. NHWC latents); noise: same shape.
      t: [B] integer timesteps in [0, num_train_timesteps) (or a scalar for the whole batch).

    Returns:
      Noisy samples, shape and dtype of ``x0``; jittable (schedule may be a traced argument).
    """
    a = _per_sample(schedule.alphas_cumprod, jnp.asarray(t), x0)
    return a ** 0.5 * x0 + (1 - a) ** 0.5 * noise
