"""Builds the IEDP model and its weights from a config: local folders only, checked up front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from iedp_jax.config import DTYPES, to_model_config
from iedp_jax.infra.distributed import barrier
from iedp_jax.infra.errors import ConfigError
from iedp_jax.infra.logs import log_line
from iedp_jax.model import IEDP, SEG
from iedp_jax.prompts import class_prompt_table, scene_prompt_ids
from iedp_jax.sd import load_clip_text, load_clip_vision, load_tokenizer, load_unet, load_vae
from iedp_jax.sd.tiny import write_tiny_backbone

PyTree = Any

def resolve_backbone(cfg: ConfigDict, workdir: Path) -> tuple[Path, Path]:
    """The Stable Diffusion folder and the CLIP vision folder, or a clear error.

    With ``model.tiny_backbone`` a tiny random backbone is written (once) into the workdir.
    """
    if cfg.model.tiny_backbone:
        folder = workdir / "tiny_backbone"
        if jax.process_index() == 0:  # the workdir is shared: one writer, the others wait
            write_tiny_backbone(folder, seed=cfg.seed)
        barrier("tiny backbone written")
        if jax.process_index() != 0:
            write_tiny_backbone(folder, seed=cfg.seed)  # checks what process 0 wrote
        return folder, folder / "image_encoder"
    sd, clip = Path(cfg.model.pretrained).expanduser(), Path(cfg.model.clip_vision).expanduser()
    if not cfg.model.pretrained or not (sd / "unet").is_dir():
        raise ConfigError(
            f"model.pretrained={str(cfg.model.pretrained)!r} is not a Stable Diffusion folder: download "
            "stable-diffusion-v1-5 in diffusers format (unet/, vae/, text_encoder/, tokenizer/) and pass "
            "--config.model.pretrained=/path/to/it.")
    if not cfg.model.clip_vision or not (clip / "config.json").is_file():
        raise ConfigError(
            f"model.clip_vision={str(cfg.model.clip_vision)!r} is not a CLIP folder: download "
            "openai/clip-vit-large-patch14 (config.json + model.safetensors) and pass "
            "--config.model.clip_vision=/path/to/it.")
    return sd, clip


def build_model(cfg: ConfigDict, dataset, workdir: Path) -> tuple[IEDP, PyTree, PyTree]:
    """Loads the backbone and returns ``(model, unet_params, frozen_params)`` on the host."""
    if cfg.model.dtype not in DTYPES:
        raise ConfigError(f"model.dtype must be one of {sorted(DTYPES)}, got {cfg.model.dtype!r}.")
    dtype = DTYPES[cfg.model.dtype]
    sd, clip = resolve_backbone(cfg, Path(workdir))
    log_line(f"loading Stable Diffusion from {sd} and CLIP vision from {clip}")
    unet, unet_params = load_unet(sd, dtype=dtype, param_dtype=jnp.float32, remat=cfg.model.remat)
    vae, vae_params = load_vae(sd, dtype=dtype)
    vae_params = {k: v for k, v in vae_params.items() if k in ("encoder", "quant_conv")}  # no decoder
    vision, vision_params = load_clip_vision(clip, dtype=dtype)
    text, text_params = load_clip_text(sd, dtype=dtype)
    tokenizer = load_tokenizer(sd)
    mcfg = to_model_config(cfg, dataset.task, dataset.num_classes, vae.config.scaling_factor)
    template = cfg.model.prompt_template
    prompts = class_prompt_table(tokenizer, dataset.class_names, template) if dataset.task == SEG else None
    scenes = scene_prompt_ids(tokenizer, dataset.scene_names, template) if dataset.task != SEG else None
    model = IEDP(mcfg, unet, vae, vision, text, prompts=prompts, scene_ids=scenes)
    frozen = {"vae": vae_params, "clip_vision": vision_params, "clip_text": text_params}
    return model, unet_params, frozen


def abstract_params(model: IEDP, unet_params: PyTree, frozen: PyTree, image_hw: tuple[int, int],
                    seed: int) -> PyTree:
    """``ShapeDtypeStruct``s of the trained parameters (``unet`` + heads), computed without
    materializing the heads (``jax.eval_shape``)."""
    heads = jax.eval_shape(lambda u, f: model.init_head_params(jax.random.PRNGKey(seed + 1), image_hw, u, f),
                           unet_params, frozen)
    unet = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), unet_params)
    return {"unet": unet, **heads}
