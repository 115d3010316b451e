"""Parity of the Flax CLIP towers with transformers (float32) and the loaders' layouts and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from iedp_jax.sd import clip
from iedp_jax.sd.clip import (
    CLIPTextConfig,
    CLIPVisionConfig,
    clip_preprocess,
    load_clip_text,
    load_clip_vision,
)
from iedp_jax.sd.weights import WeightsError
from tests.helpers import perturb_, rel_err

TOL = 1e-5
VOCAB = 1000
BOS, EOS, PAD = 998, 997, 1  # EOS is not the largest id: the two pooling rules then differ
LENGTH = 16
TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=LENGTH, projection_dim=24,
            bos_token_id=BOS, pad_token_id=PAD)
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8, projection_dim=24)


def _ids() -> np.ndarray:
    """[3, 16] prompts: bos, words, eos, padding; row 0 holds the largest id 999 before its eos."""
    rows = [[BOS, 999, 17, 250, EOS], [BOS, 5, 6, 7, 8, 9, 10, EOS], [BOS, EOS]]
    ids = np.full((len(rows), LENGTH), PAD, np.int64)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = row
    return ids


def _mask(ids: np.ndarray) -> np.ndarray:
    eos_pos = (ids == EOS).argmax(-1)
    return (np.arange(ids.shape[1])[None] <= eos_pos[:, None]).astype(np.int64)


def _save(model, folder: Path, seed: int) -> Path:
    perturb_(model, seed=seed)
    model.eval()
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clip")


@pytest.fixture(scope="module")
def text_sd(tmp):
    """SD 1.5-like CLIPTextModel (quick_gelu, legacy eos_token_id 2) in a pipeline's text_encoder/."""
    cfg = transformers.CLIPTextConfig(**TEXT, eos_token_id=2, hidden_act="quick_gelu")
    model = transformers.CLIPTextModel(cfg)
    _save(model, tmp / "pipe" / "text_encoder", seed=1)
    return model, tmp / "pipe"


@pytest.fixture(scope="module")
def text_proj(tmp):
    """CLIPTextModelWithProjection with exact gelu and eos 997 (first-eos pooling)."""
    cfg = transformers.CLIPTextConfig(**TEXT, eos_token_id=EOS, hidden_act="gelu")
    model = transformers.CLIPTextModelWithProjection(cfg)
    return model, _save(model, tmp / "text_proj", seed=2)


@pytest.fixture(scope="module")
def vision_proj(tmp):
    """CLIPVisionModelWithProjection (quick_gelu) in a pipeline's image_encoder/."""
    cfg = transformers.CLIPVisionConfig(**VISION, hidden_act="quick_gelu")
    model = transformers.CLIPVisionModelWithProjection(cfg)
    _save(model, tmp / "pipe" / "image_encoder", seed=3)
    return model, tmp / "pipe"


@pytest.fixture(scope="module")
def full_clip(tmp):
    """A CLIPModel folder (like openai/clip-vit-large-patch14), gelu text, gelu_new vision."""
    cfg = transformers.CLIPConfig(
        text_config=dict(TEXT, eos_token_id=EOS, hidden_act="gelu"),
        vision_config=dict(VISION, hidden_act="gelu_new"),
        projection_dim=20,
    )
    model = transformers.CLIPModel(cfg)
    return model, _save(model, tmp / "clip_full", seed=4)


def _pixels(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 32, 32, 3)).astype(np.float32)


def _torch_text(model, ids, mask=None, hidden=False):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids),
                     attention_mask=None if mask is None else torch.from_numpy(mask),
                     output_hidden_states=hidden)


def _torch_pixels(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())


# ----------------------------------------------------------------------------------------------
# Parity.


def test_text_model_sd_layout_parity_and_argmax_pooling(text_sd):
    model, root = text_sd
    module, params = load_clip_text(root)  # pipeline root -> text_encoder/
    assert not module.config.with_projection and module.config.eos_token_id == 2
    ids = _ids()
    out = module.apply({"params": params}, jnp.asarray(ids, jnp.int32), output_hidden_states=True)
    ref = _torch_text(model, ids, hidden=True)
    assert rel_err(out.last_hidden_state, ref.last_hidden_state) < TOL
    assert rel_err(out.pooler_output, ref.pooler_output) < TOL
    assert out.text_embeds is None
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        assert rel_err(ours, theirs) < TOL
    # legacy eos id 2: pooled at argmax(ids) -- row 0 at the 999 token (position 1), not its eos
    pos = ids.argmax(-1)
    assert pos[0] == 1
    np.testing.assert_array_equal(out.pooler_output, np.asarray(out.last_hidden_state)[np.arange(3), pos])


def test_text_padding_mask_parity(text_sd):
    model, root = text_sd
    module, params = load_clip_text(root / "text_encoder")  # the component folder itself
    ids = _ids()
    mask = _mask(ids)
    out = module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    ref = _torch_text(model, ids, mask)
    assert rel_err(out.last_hidden_state, ref.last_hidden_state) < TOL
    assert rel_err(out.pooler_output, ref.pooler_output) < TOL
    unmasked = module.apply({"params": params}, jnp.asarray(ids))
    assert rel_err(unmasked.last_hidden_state, out.last_hidden_state) > 1e-3  # the mask mattered


def test_text_with_projection_parity_and_first_eos_pooling(text_proj):
    model, folder = text_proj
    module, params = load_clip_text(folder)
    assert module.config.with_projection and module.config.hidden_act == "gelu"
    ids = _ids()
    out = jax.jit(lambda p, i: module.apply({"params": p}, i))(params, jnp.asarray(ids))
    ref = _torch_text(model, ids)
    assert rel_err(out.last_hidden_state, ref.last_hidden_state) < TOL
    assert rel_err(out.text_embeds, ref.text_embeds) < TOL
    pos = (ids == EOS).argmax(-1)  # first eos: row 0 at position 4, not at the 999 token
    assert pos[0] == 4
    np.testing.assert_array_equal(out.pooler_output, np.asarray(out.last_hidden_state)[np.arange(3), pos])
    with torch.no_grad():
        ref_pool = model.text_model(input_ids=torch.from_numpy(ids)).pooler_output
    assert rel_err(out.pooler_output, ref_pool) < TOL


def test_vision_with_projection_parity(vision_proj):
    model, root = vision_proj
    module, params = load_clip_vision(root)  # pipeline root -> image_encoder/
    assert module.config.with_projection
    pixels = _pixels()
    out = module.apply({"params": params}, jnp.asarray(pixels), output_hidden_states=True)
    with torch.no_grad():
        ref = model(pixel_values=_torch_pixels(pixels), output_hidden_states=True)
        ref_pool = model.vision_model(pixel_values=_torch_pixels(pixels)).pooler_output
    assert out.last_hidden_state.shape == (2, 1 + 16, 32)
    assert rel_err(out.last_hidden_state, ref.last_hidden_state) < TOL
    assert rel_err(out.pooler_output, ref_pool) < TOL
    assert rel_err(out.image_embeds, ref.image_embeds) < TOL
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        assert rel_err(ours, theirs) < TOL


def test_vision_model_without_projection_gelu(tmp):
    cfg = transformers.CLIPVisionConfig(**VISION, hidden_act="gelu")
    model = transformers.CLIPVisionModel(cfg)
    folder = _save(model, tmp / "vision_plain", seed=5)
    module, params = load_clip_vision(folder)
    assert not module.config.with_projection
    pixels = _pixels(seed=1)
    out = module.apply({"params": params}, jnp.asarray(pixels))
    with torch.no_grad():
        ref = model(pixel_values=_torch_pixels(pixels))
    assert rel_err(out.last_hidden_state, ref.last_hidden_state) < TOL
    assert rel_err(out.pooler_output, ref.pooler_output) < TOL
    assert out.image_embeds is None


def test_full_clip_model_folder_loads_each_tower(full_clip):
    model, folder = full_clip
    text, tparams = load_clip_text(folder)
    vision, vparams = load_clip_vision(folder)
    assert text.config.projection_dim == vision.config.projection_dim == 20
    assert vision.config.hidden_act == "gelu_new"
    assert "visual_projection" not in tparams and "text_projection" in tparams
    ids, pixels = _ids(), _pixels(seed=2)
    tout = text.apply({"params": tparams}, jnp.asarray(ids))
    vout = vision.apply({"params": vparams}, jnp.asarray(pixels))
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), pixel_values=_torch_pixels(pixels))
        # transformers 5: CLIPModel's text/vision_model_output.pooler_output hold the *projected*
        # features (get_*_features overwrite them), so take the towers' own pooled states.
        ref_tp = model.text_model(input_ids=torch.from_numpy(ids)).pooler_output
        ref_vp = model.vision_model(pixel_values=_torch_pixels(pixels)).pooler_output
    assert rel_err(tout.last_hidden_state, ref.text_model_output.last_hidden_state) < TOL
    assert rel_err(tout.pooler_output, ref_tp) < TOL
    # CLIPModel's text_embeds / image_embeds are L2-normalised projections
    assert rel_err(tout.text_embeds / jnp.linalg.norm(tout.text_embeds, axis=-1, keepdims=True),
                   ref.text_embeds) < TOL
    assert rel_err(vout.image_embeds / jnp.linalg.norm(vout.image_embeds, axis=-1, keepdims=True),
                   ref.image_embeds) < TOL
    assert rel_err(vout.last_hidden_state, ref.vision_model_output.last_hidden_state) < TOL
    assert rel_err(vout.pooler_output, ref_vp) < TOL


def test_transformers4_prefixed_layout_loads(text_sd, vision_proj, tmp):
    """Keys with ``text_model.`` / ``vision_model.`` prefixes and stored ``position_ids`` buffers."""
    model, root = text_sd
    folder = tmp / "t4_text"
    shutil.copytree(root / "text_encoder", folder)
    state = load_file(folder / "model.safetensors")
    assert not any(k.startswith("text_model.") for k in state)  # what transformers 5 writes
    state = {f"text_model.{k}": v for k, v in state.items()}
    state["text_model.embeddings.position_ids"] = np.arange(LENGTH, dtype=np.int64)[None]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    module, params = load_clip_text(folder)
    out = module.apply({"params": params}, jnp.asarray(_ids()))
    assert rel_err(out.last_hidden_state, _torch_text(model, _ids()).last_hidden_state) < TOL

    vmodel, vroot = vision_proj
    vfolder = tmp / "t4_vision"
    shutil.copytree(vroot / "image_encoder", vfolder)
    vstate = load_file(vfolder / "model.safetensors")
    assert any(k.startswith("vision_model.") for k in vstate)  # WithProjection keeps the prefix
    vstate["vision_model.embeddings.position_ids"] = np.arange(17, dtype=np.int64)[None]
    save_file(vstate, vfolder / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((vfolder / "config.json").read_text())
    del cfg["architectures"]  # projection then detected from the tensor names
    (vfolder / "config.json").write_text(json.dumps(cfg))
    vmodule, vparams = load_clip_vision(vfolder)
    assert vmodule.config.with_projection
    pixels = _pixels(seed=3)
    with torch.no_grad():
        ref = vmodel(pixel_values=_torch_pixels(pixels))
    assert rel_err(vmodule.apply({"params": vparams}, jnp.asarray(pixels)).image_embeds,
                   ref.image_embeds) < TOL


def test_bf16_params_and_compute(text_proj):
    model, folder = text_proj
    module, params = load_clip_text(folder, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    out = module.apply({"params": params}, jnp.asarray(_ids()))
    assert out.last_hidden_state.dtype == jnp.bfloat16
    assert rel_err(out.text_embeds, _torch_text(model, _ids()).text_embeds) < 5e-2
    module32, params32 = load_clip_text(folder, dtype=jnp.float32, param_dtype=jnp.bfloat16)
    assert module32.dtype == jnp.float32 and module32.param_dtype == jnp.bfloat16
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params32))


# ----------------------------------------------------------------------------------------------
# Configs and preprocessing.


def test_config_from_dicts():
    sd15 = json.loads((Path("/work/shared/sd15_configs.json")).read_text()) \
        if Path("/work/shared/sd15_configs.json").exists() else None
    if sd15 is not None:
        t = CLIPTextConfig.from_dict(sd15["text_encoder"])
        assert (t.hidden_size, t.num_hidden_layers, t.eos_token_id, t.with_projection) == (768, 12, 2, False)
        v = CLIPVisionConfig.from_dict(sd15["clip_vit_l14_vision"], with_projection=True)
        assert (v.patch_size, v.num_patches, v.projection_dim) == (14, 256, 768)
    full = {"model_type": "clip", "projection_dim": 768, "architectures": ["CLIPModel"],
            "text_config": {"hidden_size": 768, "projection_dim": 512},
            "text_config_dict": {"hidden_act": "gelu"},
            "vision_config": {"hidden_size": 1024, "num_attention_heads": 16, "patch_size": 14}}
    t = CLIPTextConfig.from_dict(full)
    assert (t.hidden_size, t.projection_dim, t.hidden_act, t.with_projection) == (768, 768, "gelu", True)
    v = CLIPVisionConfig.from_dict(full)
    assert (v.hidden_size, v.patch_size, v.projection_dim) == (1024, 14, 768)
    assert CLIPTextConfig.from_dict({"architectures": ["CLIPTextModelWithProjection"]}).with_projection


@pytest.mark.parametrize("bad, words", [
    ({"hidden_act": "swish"}, ["hidden_act", "swish"]),
    ({"model_type": "clip_vision_model"}, ["vision"]),
    ({"model_type": "bert"}, ["bert"]),
    ({"hidden_size": 30, "num_attention_heads": 4}, ["num_attention_heads"]),
])
def test_text_config_rejects(bad, words):
    with pytest.raises(WeightsError) as e:
        CLIPTextConfig.from_dict(bad)
    assert all(w in str(e.value) for w in words), str(e.value)


@pytest.mark.parametrize("bad, words", [
    ({"model_type": "clip_text_model"}, ["text", "not the CLIP vision tower"]),
    ({"image_size": 225, "patch_size": 14}, ["image_size 225", "patch_size 14"]),
    ({"hidden_size": 30, "num_attention_heads": 4}, ["CLIP vision config", "num_attention_heads"]),
])
def test_vision_config_rejects(bad, words):
    with pytest.raises(WeightsError) as e:
        CLIPVisionConfig.from_dict(bad)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_clip_preprocess():
    img = jnp.full((2, 48, 40, 3), 0.5, jnp.float32)
    out = jax.jit(clip_preprocess, static_argnums=1)(img, 32)
    assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32
    want = (0.5 - np.asarray(clip.CLIP_MEAN)) / np.asarray(clip.CLIP_STD)
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(want, out.shape), rtol=1e-5, atol=1e-5)
    same = np.random.default_rng(0).random((1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(clip_preprocess(same, 32),
                               (same - np.asarray(clip.CLIP_MEAN)) / np.asarray(clip.CLIP_STD), atol=1e-6)


def test_vision_rejects_wrong_image_size(vision_proj):
    module, params = load_clip_vision(vision_proj[1])
    with pytest.raises(ValueError, match="clip_preprocess"):
        module.apply({"params": params}, jnp.zeros((1, 48, 48, 3)))


# ----------------------------------------------------------------------------------------------
# Loader errors.


def test_missing_folder_names_layout(tmp):
    with pytest.raises(WeightsError, match="text_encoder"):
        load_clip_text(tmp / "nowhere")
    (tmp / "empty").mkdir(exist_ok=True)
    with pytest.raises(WeightsError, match="image_encoder"):
        load_clip_vision(tmp / "empty")


def _edited_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    edit(state)
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_missing_tensor_is_named(text_proj, tmp):
    folder = _edited_copy(text_proj[1], tmp / "missing",
                          lambda s: s.pop("text_model.final_layer_norm.weight"))
    with pytest.raises(WeightsError, match=r"missing tensors for final_layer_norm\.scale"):
        load_clip_text(folder)


def test_wrong_shape_is_named(text_proj, tmp):
    key = "text_model.encoder.layers.1.mlp.fc1.weight"

    def edit(s):
        s[key] = np.zeros((40, 32), np.float32)

    folder = _edited_copy(text_proj[1], tmp / "misshaped", edit)
    with pytest.raises(WeightsError, match=r"wrong shapes: text_model\.encoder\.layers\.1\.mlp\.fc1\.weight"):
        load_clip_text(folder)


def test_unexpected_tensor_is_named(vision_proj, tmp):
    def edit(s):
        s["vision_model.encoder.layers.7.mlp.fc1.weight"] = np.zeros((48, 32), np.float32)

    folder = _edited_copy(vision_proj[1] / "image_encoder", tmp / "unexpected", edit)
    with pytest.raises(WeightsError, match=r"unexpected tensors vision_model\.encoder\.layers\.7"):
        load_clip_vision(folder)


def test_wrong_config_is_named(text_proj, vision_proj, tmp):
    with pytest.raises(WeightsError, match=r"config\.json'?: config\.json describes a CLIP vision model"):
        load_clip_text(vision_proj[1] / "image_encoder")
    folder = tmp / "bad_act"
    shutil.copytree(text_proj[1], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_act"] = "relu6"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=r"bad_act/config\.json'?: CLIP text config hidden_act 'relu6'"):
        load_clip_text(folder)
