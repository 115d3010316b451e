"""VAE: float32 parity with diffusers ``AutoencoderKL``, legacy checkpoints, loader errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from iedp_jax.sd.vae import AutoencoderKL, VAEConfig, load_vae, scale_latents, unscale_latents
from iedp_jax.sd.weights import WeightsError
from tests.helpers import nchw_to_nhwc, perturb_, rel_err

WEIGHTS = "diffusion_pytorch_model.safetensors"

# Two tiny layouts: 2 vs 3 blocks, 1 vs 2 layers per block, with / without the quant convs,
# 4 vs 6 latent channels; non-square inputs, the second with odd sides.
CONFIGS = {
    "two_blocks": dict(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4,
                       norm_num_groups=8, image=(40, 24)),
    "three_blocks_no_quant": dict(block_out_channels=(16, 16, 32), layers_per_block=2,
                                  latent_channels=6, norm_num_groups=8, use_quant_conv=False,
                                  use_post_quant_conv=False, shift_factor=0.1, scaling_factor=0.5,
                                  image=(33, 19)),
}


def build_torch_vae(block_out_channels, seed=0, **kw):
    from diffusers import AutoencoderKL as TorchAutoencoderKL

    n = len(block_out_channels)
    torch.manual_seed(seed)
    model = TorchAutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=block_out_channels,
        **kw,
    ).eval()
    perturb_(model, seed=seed)
    return model


@pytest.fixture(scope="module", params=list(CONFIGS))
def saved(request, tmp_path_factory):
    """(torch model, pipeline root holding vae/, image size) per config."""
    kw = dict(CONFIGS[request.param])
    image = kw.pop("image")
    model = build_torch_vae(**kw)
    root = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(root / "vae")
    return model, root, image, kw


def test_parity_with_diffusers(saved):
    model, root, (h, w), kw = saved
    module, params = load_vae(root)  # pipeline root: finds vae/
    cfg = module.config
    assert cfg.block_out_channels == kw["block_out_channels"]
    assert cfg.use_quant_conv == kw.get("use_quant_conv", True)
    assert cfg.scaling_factor == kw.get("scaling_factor", 0.18215)
    assert cfg.shift_factor == kw.get("shift_factor")
    assert ("quant_conv" in params) == cfg.use_quant_conv
    assert ("post_quant_conv" in params) == cfg.use_post_quant_conv

    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, h, w, generator=gen) * 2 - 1
    x[1] *= 0.1  # a low-contrast image: small group-norm variances expose a wrong eps
    f = cfg.downsample_factor
    z = torch.randn(2, cfg.latent_channels, 5, 3, generator=gen)
    with torch.no_grad():
        post = model.encode(x).latent_dist
        dec = model.decode(z).sample

    @jax.jit
    def run(p, x, z):
        encoded = module.apply({"params": p}, x, method="encode")
        return encoded, module.apply({"params": p}, z, method="decode")

    (mean, logvar), ours_dec = run(params, jnp.asarray(nchw_to_nhwc(x)), jnp.asarray(nchw_to_nhwc(z)))
    assert mean.shape == (2, h // f, w // f, cfg.latent_channels)  # padding-0 downsampling floors
    assert rel_err(mean, nchw_to_nhwc(post.mean)) < 1e-5
    assert rel_err(logvar, nchw_to_nhwc(post.logvar)) < 1e-5
    assert ours_dec.shape == (2, 5 * f, 3 * f, 3)
    assert rel_err(ours_dec, nchw_to_nhwc(dec)) < 1e-5


def test_vae_folder_and_dtypes(saved):
    _, root, _, _ = saved
    module, params = load_vae(root / "vae", dtype=jnp.bfloat16)  # the component folder itself
    assert module.dtype == jnp.bfloat16 and module.param_dtype == jnp.bfloat16
    assert {a.dtype for a in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    module, params = load_vae(root / "vae", dtype=jnp.bfloat16, param_dtype=jnp.float32)
    assert module.dtype == jnp.bfloat16
    assert {a.dtype for a in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    kw = dict(CONFIGS["two_blocks"])
    kw.pop("image")
    root = tmp_path_factory.mktemp("small")
    build_torch_vae(**kw).save_pretrained(root / "vae")
    return root


def test_legacy_attention_names(small_root, tmp_path):
    """Old checkpoints (the released SD 1.5 VAE) name the mid attention query/key/value/proj_attn."""
    state = load_file(str(small_root / "vae" / WEIGHTS))
    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, arr in state.items():
        for new, old in names.items():
            if f".attentions.0.{new}." in key:
                key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
                if key.startswith("decoder.") and key.endswith("query.weight"):
                    arr = arr[:, :, None, None]  # a 1x1-conv-shaped linear weight
        legacy[key] = np.ascontiguousarray(arr)
    assert sum(".query." in k for k in legacy) == 4  # encoder + decoder, weight + bias
    assert not any(".to_q." in k for k in legacy)
    folder = tmp_path / "legacy_vae"
    folder.mkdir()
    shutil.copy(small_root / "vae" / "config.json", folder / "config.json")
    save_file(legacy, str(folder / WEIGHTS))

    module, params = load_vae(small_root)
    _, legacy_params = load_vae(folder)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, legacy_params)

    @jax.jit
    def run(p, x):  # __call__ = decode(posterior mean)
        mean, _ = module.apply({"params": p}, x, method="encode")
        return module.apply({"params": p}, x), module.apply({"params": p}, mean, method="decode")

    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3)), jnp.float32)
    full, decoded = run(params, x)
    np.testing.assert_array_equal(full, decoded)
    np.testing.assert_array_equal(full, run(legacy_params, x)[0])


def _rewrite(root: Path, tmp_path: Path, edit_state=None, edit_config=None) -> Path:
    folder = tmp_path / "vae"
    folder.mkdir()
    config = json.loads((root / "vae" / "config.json").read_text())
    if edit_config:
        edit_config(config)
    (folder / "config.json").write_text(json.dumps(config))
    state = dict(load_file(str(root / "vae" / WEIGHTS)))
    if edit_state:
        edit_state(state)
    save_file(state, str(folder / WEIGHTS))
    return folder


def test_missing_folder(tmp_path):
    with pytest.raises(WeightsError, match="does not exist") as e:
        load_vae(tmp_path / "nowhere")
    assert "nowhere" in str(e.value)


def test_folder_without_config(tmp_path):
    with pytest.raises(WeightsError, match="No VAE config.json"):
        load_vae(tmp_path)


def test_missing_weights_file(small_root, tmp_path):
    shutil.copy(small_root / "vae" / "config.json", tmp_path / "config.json")
    with pytest.raises(WeightsError, match="No weights"):
        load_vae(tmp_path)


def test_missing_tensor(small_root, tmp_path):
    folder = _rewrite(small_root, tmp_path, edit_state=lambda s: s.pop("decoder.conv_out.bias"))
    with pytest.raises(WeightsError, match="missing tensors") as e:
        load_vae(folder)
    assert "decoder.conv_out.bias" in str(e.value)


def test_wrong_shaped_tensor(small_root, tmp_path):
    def edit(state):
        state["encoder.mid_block.attentions.0.to_q.weight"] = np.zeros((32, 16), np.float32)

    folder = _rewrite(small_root, tmp_path, edit_state=edit)
    with pytest.raises(WeightsError, match="wrong shapes") as e:
        load_vae(folder)
    assert "encoder.mid_block.attentions.0.to_q.weight" in str(e.value)


def test_unexpected_tensor(small_root, tmp_path):
    def edit(state):
        state["encoder.extra_layer.weight"] = np.zeros((3,), np.float32)

    folder = _rewrite(small_root, tmp_path, edit_state=edit)
    with pytest.raises(WeightsError, match="unexpected tensors encoder.extra_layer.weight"):
        load_vae(folder)


@pytest.mark.parametrize("keep", ["most", "header_only", "half_header", "four_bytes"])
def test_truncated_weights_file_is_named(small_root, tmp_path, keep):
    """A truncated (or partly copied) safetensors file is a WeightsError naming the file, before
    any tensor is read."""
    folder = _rewrite(small_root, tmp_path)
    path = folder / WEIGHTS
    data = path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    size = {"most": len(data) - 100, "header_only": header_end, "half_header": header_end // 2,
            "four_bytes": 4}[keep]
    path.write_bytes(data[:size])
    with pytest.raises(WeightsError) as e:
        load_vae(folder)
    assert str(path) in str(e.value) and f"({size} bytes)" in str(e.value), str(e.value)
    assert "truncated" in str(e.value)


def test_unreadable_config_is_named(small_root, tmp_path):
    folder = _rewrite(small_root, tmp_path)
    (folder / "config.json").write_text('{"act_fn": "silu",')
    with pytest.raises(WeightsError, match="config.json' is not valid JSON"):
        load_vae(folder)


@pytest.mark.parametrize("field,value,named", [
    ("act_fn", "gelu", "act_fn 'gelu'"),
    ("down_block_types", ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"], "'AttnDownEncoderBlock2D'"),
    ("up_block_types", ["UpDecoderBlock2D", "AttnUpDecoderBlock2D"], "'AttnUpDecoderBlock2D'"),
    ("_class_name", "AutoencoderTiny", "'AutoencoderTiny'"),
    ("up_block_types", ["UpDecoderBlock2D"], "up_block_types"),
])
def test_unsupported_config(small_root, tmp_path, field, value, named):
    folder = _rewrite(small_root, tmp_path, edit_config=lambda c: c.__setitem__(field, value))
    with pytest.raises(WeightsError) as e:
        load_vae(folder)
    assert named in str(e.value)
    assert "config.json" in str(e.value)


def test_config_defaults_and_latent_scaling():
    cfg = VAEConfig.from_dict({"block_out_channels": [8, 8], "norm_num_groups": 4, "sample_size": [4, 6],
                               "down_block_types": ["DownEncoderBlock2D"] * 2,
                               "up_block_types": ["UpDecoderBlock2D"] * 2, "_diffusers_version": "x"})
    assert cfg.block_out_channels == (8, 8) and cfg.sample_size == (4, 6) and hash(cfg)
    assert cfg.scaling_factor == 0.18215 and cfg.shift_factor is None and cfg.downsample_factor == 2
    z = jnp.arange(6.0)
    np.testing.assert_allclose(scale_latents(cfg, z), z * 0.18215, rtol=1e-6)
    shifted = VAEConfig(scaling_factor=2.0, shift_factor=0.5)
    np.testing.assert_allclose(scale_latents(shifted, z), (z - 0.5) * 2.0)
    np.testing.assert_allclose(unscale_latents(shifted, scale_latents(shifted, z)), z)
    AutoencoderKL(cfg)  # a VAEConfig is a valid (hashable) static module field
