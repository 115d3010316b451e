"""Flax params -> PyTorch layout (export.py): key names and shapes against diffusers /
transformers modules, tensor layouts, and round trips through our loaders."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import transformers
from diffusers import AutoencoderKL as TorchVAE
from diffusers import UNet2DConditionModel as TorchUNet
from safetensors import safe_open

from iedp_jax.sd.clip import (
    CLIPTextConfig,
    CLIPTextTransformer,
    CLIPVisionConfig,
    CLIPVisionTransformer,
    load_clip_text,
    load_clip_vision,
)
from iedp_jax.sd.export import save_component, torch_state_dict
from iedp_jax.sd.unet import UNet2DConditionModel, UNetConfig, init_unet, load_unet
from iedp_jax.sd.vae import AutoencoderKL, VAEConfig, load_vae

UNET_SD1 = dict(  # conv proj_in/proj_out, one head count
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64, 64), norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
UNET_SD2 = dict(  # linear proj_in/proj_out (Dense), per-block heads, 2 transformer layers
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(16, 32),
    norm_num_groups=4, cross_attention_dim=20, attention_head_dim=(2, 4), use_linear_projection=True,
    transformer_layers_per_block=(1, 2), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
VAE = dict(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
           up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4,
           layers_per_block=1)
TEXT = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=16, projection_dim=24)
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8, projection_dim=24)
UNET_FILE = "diffusion_pytorch_model.safetensors"


def _random(shapes, seed: int) -> dict:
    """Distinct non-zero values for every leaf of an eval_shape tree (no init compile)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def _unet_params(cfg: dict, seed: int = 0) -> dict:
    module = UNet2DConditionModel(UNetConfig.from_dict(cfg))
    return _random(jax.eval_shape(lambda: init_unet(module))["params"], seed)


def _vae_params(cfg: dict, seed: int = 0) -> dict:
    module = AutoencoderKL(VAEConfig.from_dict(cfg))
    x = jnp.zeros((1, 8, 8, 3))
    return _random(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x))["params"], seed)


def _text_params(with_projection: bool, seed: int = 0) -> dict:
    module = CLIPTextTransformer(CLIPTextConfig(**TEXT, with_projection=with_projection))
    ids = jnp.zeros((1, 16), jnp.int32)
    return _random(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids))["params"], seed)


def _vision_params(with_projection: bool, seed: int = 0) -> dict:
    module = CLIPVisionTransformer(CLIPVisionConfig(**VISION, with_projection=with_projection))
    px = jnp.zeros((1, 32, 32, 3))
    return _random(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), px))["params"], seed)


def _torch_shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def _our_shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _assert_same_tree(a, b) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------------------------
# Key names and shapes equal those of the PyTorch modules built from the same config.


@pytest.mark.parametrize("cfg", [UNET_SD1, UNET_SD2], ids=["sd1", "sd2"])
def test_unet_keys_match_diffusers(cfg):
    ours = torch_state_dict(_unet_params(cfg))
    assert _our_shapes(ours) == _torch_shapes(TorchUNet(**cfg))
    # diffusers spells these with an underscore, not as list indices
    assert "time_embedding.linear_1.weight" in ours and "time_embedding.linear.1.weight" not in ours


def test_vae_keys_match_diffusers():
    assert _our_shapes(torch_state_dict(_vae_params(VAE))) == _torch_shapes(TorchVAE(**VAE))


@pytest.mark.parametrize("cls, prefix", [
    (transformers.CLIPTextModel, ""),  # transformers 5 layout
    (transformers.CLIPTextModel, "text_model."),  # transformers 4 / Stable Diffusion layout
    (transformers.CLIPTextModelWithProjection, "text_model."),
])
def test_clip_text_keys_match_transformers(cls, prefix):
    proj = cls is transformers.CLIPTextModelWithProjection
    ours = torch_state_dict(_text_params(proj), prefix=prefix)
    ref = _torch_shapes(cls(transformers.CLIPTextConfig(**TEXT)))
    if prefix and not proj:  # transformers 5 builds CLIPTextModel without the prefix
        ref = {prefix + k: v for k, v in ref.items()}
    assert _our_shapes(ours) == ref
    if proj:
        assert "text_projection.weight" in ours  # outside the tower prefix


def test_clip_vision_keys_match_transformers():
    ours = torch_state_dict(_vision_params(True), prefix="vision_model.")
    ref = _torch_shapes(transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**VISION)))
    assert _our_shapes(ours) == ref
    assert "vision_model.embeddings.class_embedding" in ours and "visual_projection.weight" in ours


# ----------------------------------------------------------------------------------------------
# Tensor layouts.


def test_leaf_layouts():
    rng = np.random.default_rng(0)
    conv = rng.standard_normal((3, 3, 4, 8)).astype(np.float32)  # HWIO
    dense = rng.standard_normal((5, 7)).astype(np.float32)  # [in, out]
    params = {
        "down_blocks_0": {"resnets_1": {"conv1": {"kernel": conv, "bias": np.arange(8.0)}}},
        "attn": {"to_out_0": {"kernel": dense}},
        "norm": {"scale": np.ones(3, np.float32), "bias": np.zeros(3, np.float32)},
        "emb": {"embedding": dense, "class_embedding": np.arange(4.0)},
        "time_embedding": {"linear_2": {"kernel": dense}},
    }
    state = torch_state_dict({"params": params})  # a variables dict is unwrapped
    w = state["down_blocks.0.resnets.1.conv1.weight"]
    assert w.shape == (8, 4, 3, 3) and w[5, 2, 0, 1] == conv[0, 1, 2, 5]  # OIHW
    np.testing.assert_array_equal(state["attn.to_out.0.weight"], dense.T)
    np.testing.assert_array_equal(state["emb.weight"], dense)  # embeddings are not transposed
    assert set(state) == {
        "down_blocks.0.resnets.1.conv1.weight", "down_blocks.0.resnets.1.conv1.bias",
        "attn.to_out.0.weight", "norm.weight", "norm.bias", "emb.weight", "emb.class_embedding",
        "time_embedding.linear_2.weight"}
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in state.values())


def test_low_precision_params_are_written_float32():
    params = {"a": {"kernel": jnp.ones((2, 3), jnp.bfloat16), "bias": np.ones(3, np.float16)},
              "b": {"scale": np.ones(2, ml_dtypes.bfloat16)}}
    state = torch_state_dict(params)
    assert {v.dtype for v in state.values()} == {np.dtype(np.float32)}
    assert state["a.weight"].shape == (3, 2)


def test_prefix_skips_projections_and_rejects_odd_kernels():
    params = {"embeddings": {"patch_embedding": {"kernel": np.ones((2, 2, 3, 4), np.float32)}},
              "visual_projection": {"kernel": np.ones((4, 5), np.float32)}}
    assert set(torch_state_dict(params, prefix="vision_model.")) == {
        "vision_model.embeddings.patch_embedding.weight", "visual_projection.weight"}
    assert set(torch_state_dict(params, prefix="m.", unprefixed=())) == {
        "m.embeddings.patch_embedding.weight", "m.visual_projection.weight"}
    with pytest.raises(ValueError, match="3-D kernel"):
        torch_state_dict({"x": {"kernel": np.ones((2, 3, 4), np.float32)}})


# ----------------------------------------------------------------------------------------------
# Round trips: save_component -> our loaders -> identical arrays.


@pytest.mark.parametrize("cfg", [UNET_SD1, UNET_SD2], ids=["sd1", "sd2"])
def test_unet_round_trip(cfg, tmp_path):
    params = _unet_params(cfg, seed=1)
    folder = save_component(tmp_path / "unet", {"_class_name": "UNet2DConditionModel", **cfg},
                            params, UNET_FILE)
    written = json.loads((folder / "config.json").read_text())
    assert written["block_out_channels"] == list(cfg["block_out_channels"])
    with safe_open(str(folder / UNET_FILE), "np") as f:
        assert f.metadata() == {"format": "pt"}
        assert {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__ == {np.dtype(np.float32)}
    _, loaded = load_unet(tmp_path)  # a pipeline root with unet/
    _assert_same_tree(loaded, params)


def test_vae_round_trip(tmp_path):
    params = _vae_params(VAE, seed=2)
    save_component(tmp_path / "vae", {"_class_name": "AutoencoderKL", **VAE}, params, UNET_FILE)
    _, loaded = load_vae(tmp_path)
    _assert_same_tree(loaded, params)


@pytest.mark.parametrize("prefix", ["", "text_model."])
@pytest.mark.parametrize("proj", [False, True])
def test_clip_text_round_trip(tmp_path, prefix, proj):
    params = _text_params(proj, seed=3)
    arch = "CLIPTextModelWithProjection" if proj else "CLIPTextModel"
    config = {**TEXT, "model_type": "clip_text_model", "architectures": [arch]}
    save_component(tmp_path / "text_encoder", config, params, "model.safetensors", prefix=prefix)
    module, loaded = load_clip_text(tmp_path)
    assert module.config.with_projection == proj
    _assert_same_tree(loaded, params)


@pytest.mark.parametrize("proj", [False, True])
def test_clip_vision_round_trip(tmp_path, proj):
    params = _vision_params(proj, seed=4)
    arch = "CLIPVisionModelWithProjection" if proj else "CLIPVisionModel"
    config = {**VISION, "model_type": "clip_vision_model", "architectures": [arch]}
    save_component(tmp_path / "image_encoder", config, params, "model.safetensors",
                   prefix="vision_model." if proj else "")
    module, loaded = load_clip_vision(tmp_path)
    assert module.config.with_projection == proj
    _assert_same_tree(loaded, params)


def test_save_component_rejects_other_formats(tmp_path):
    with pytest.raises(ValueError, match="safetensors"):
        save_component(tmp_path, {}, {"a": {"bias": np.zeros(1)}}, "model.bin")
