"""Noise schedule: alphas_cumprod and add_noise against diffusers ``DDPMScheduler``."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from iedp_jax.sd.schedule import NoiseSchedule, add_noise, from_config, load_noise_schedule
from iedp_jax.sd.weights import WeightsError
from tests.helpers import rel_err

CASES = {
    "linear": dict(beta_schedule="linear"),
    "scaled_linear_sd": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                             prediction_type="v_prediction"),
    "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=500),
    "zero_snr": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                     rescale_betas_zero_snr=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_ddpm_scheduler(name, tmp_path):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(**CASES[name])
    ref.save_config(tmp_path / "scheduler")  # writes scheduler/scheduler_config.json
    schedule = load_noise_schedule(tmp_path)  # pipeline root
    for other in (tmp_path / "scheduler", tmp_path / "scheduler" / "scheduler_config.json"):
        np.testing.assert_array_equal(load_noise_schedule(other).alphas_cumprod, schedule.alphas_cumprod)

    T = ref.config.num_train_timesteps
    assert schedule.num_train_timesteps == T
    assert schedule.beta_schedule == ref.config.beta_schedule
    assert schedule.prediction_type == ref.config.prediction_type
    assert schedule.alphas_cumprod.dtype == jnp.float32 and schedule.alphas_cumprod.shape == (T,)
    assert rel_err(schedule.alphas_cumprod, ref.alphas_cumprod.numpy()) < 1e-6

    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((5, 8, 6, 4)).astype(np.float32)  # NHWC
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    t = np.array([0, 1, 100, T // 2, T - 1])
    want = ref.add_noise(torch.from_numpy(x0).permute(0, 3, 1, 2), torch.from_numpy(noise).permute(0, 3, 1, 2),
                         torch.from_numpy(t)).permute(0, 2, 3, 1).numpy()
    got = jax.jit(add_noise)(schedule, jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t, jnp.int32))
    assert got.shape == x0.shape and got.dtype == jnp.float32
    assert rel_err(got, want) < 1e-6


def test_from_config_sd15_pndm_and_scalar_t():
    # The released SD 1.5 scheduler config is a PNDMScheduler's: same training betas.
    config = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
              "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "set_alpha_to_one": False,
              "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}
    schedule = from_config(config)
    assert schedule.prediction_type == "epsilon"
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    assert rel_err(schedule.alphas_cumprod, ref.alphas_cumprod.numpy()) < 1e-6
    x0 = jnp.ones((2, 3, 3, 4), jnp.bfloat16)
    out = add_noise(schedule, x0, jnp.zeros_like(x0), jnp.asarray(100))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32),
                               np.sqrt(float(schedule.alphas_cumprod[100])), rtol=1e-2)
    # A pytree: traced leaves, static fields.
    leaves, treedef = jax.tree_util.tree_flatten(schedule)
    assert len(leaves) == 1 and isinstance(jax.tree_util.tree_unflatten(treedef, leaves), NoiseSchedule)


def test_trained_betas():
    schedule = from_config({"trained_betas": [0.1, 0.2, 0.5]})
    np.testing.assert_allclose(schedule.alphas_cumprod, [0.9, 0.72, 0.36], rtol=1e-6)
    assert schedule.num_train_timesteps == 3


def test_unknown_beta_schedule(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "sigmoid"}))
    with pytest.raises(WeightsError, match="beta_schedule 'sigmoid' is not supported") as e:
        load_noise_schedule(tmp_path)
    assert "scheduler_config.json" in str(e.value)
    with pytest.raises(WeightsError, match="'cosine'"):
        from_config({"beta_schedule": "cosine"})
    with pytest.raises(WeightsError, match="prediction_type 'flow'"):
        from_config({"prediction_type": "flow"})


def test_missing_or_unreadable_config(tmp_path):
    with pytest.raises(WeightsError, match="No scheduler_config.json"):
        load_noise_schedule(tmp_path / "nowhere")
    (tmp_path / "scheduler_config.json").write_text('{"beta_schedule": ')
    with pytest.raises(WeightsError, match="scheduler_config.json' is not valid JSON"):
        load_noise_schedule(tmp_path)
