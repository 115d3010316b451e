"""Builds the IEDP model and its weights from a config: local folders only, checked up front.

VPD's class embeddings (``model.context="vpd"`` or ``model.query_init="class_text"``) are
computed with the pipeline's own CLIP text tower on first use and cached in
``WORKDIR/class_embeddings/<key>.npy`` (``python -m iedp_jax.class_embeddings`` computes them
ahead of time); the key covers the class names, the templates and the text tower's folder. With
``model.class_embeddings_file`` they are read from that file instead: VPD's own
``class_embeddings.pth`` (read without torch, refusing anything but tensor storage) or a ``.npy``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from ml_collections import ConfigDict

from iedp_jax.config import DTYPES, to_model_config
from iedp_jax.data.ade20k import ADE20K_CLASSES
from iedp_jax.data.catalog import make_dataset, task_of
from iedp_jax.infra.distributed import barrier
from iedp_jax.infra.errors import ConfigError
from iedp_jax.infra.logs import log_line
from iedp_jax.infra.paths import as_path
from iedp_jax.infra.torch_file import load_array
from iedp_jax.model import IEDP, SEG, VPD_CONTEXT
from iedp_jax.prompts import (
    IMAGENET_TEMPLATES,
    VPD_NYU_SCENES,
    class_prompt_table,
    class_text_embeddings,
    scene_prompt_ids,
    vpd_scene_classes,
)
from iedp_jax.sd import load_clip_text, load_clip_vision, load_tokenizer, load_unet, load_vae
from iedp_jax.sd.tiny import write_tiny_backbone
from iedp_jax.sd.unet import remat_policy

PyTree = Any

def needs_image_tower(cfg: ConfigDict) -> bool:
    """Only the implicit branch reads the CLIP image tower; VPD's context (``model.context="vpd"``) does not."""
    return cfg.model.context != VPD_CONTEXT


def resolve_backbone(cfg: ConfigDict, workdir: str | os.PathLike) -> tuple[Path, Path | None]:
    """The Stable Diffusion folder and the CLIP vision folder (None when the config does not use
    the image tower), or a clear error.

    With ``model.tiny_backbone`` a tiny random backbone is written (once) into the workdir.
    """
    if cfg.model.tiny_backbone:
        folder = Path(os.fspath(workdir)) / "tiny_backbone"  # local (the trainer refuses a URL with it)
        if jax.process_index() == 0:  # the workdir is shared: one writer, the others wait
            write_tiny_backbone(folder, seed=cfg.seed)
        barrier("tiny backbone written")
        if jax.process_index() != 0:
            write_tiny_backbone(folder, seed=cfg.seed)  # checks what process 0 wrote
        return folder, (folder / "image_encoder" if needs_image_tower(cfg) else None)
    sd, clip = Path(cfg.model.pretrained).expanduser(), Path(cfg.model.clip_vision).expanduser()
    if not cfg.model.pretrained or not (sd / "unet").is_dir():
        raise ConfigError(
            f"model.pretrained={str(cfg.model.pretrained)!r} is not a Stable Diffusion folder: download "
            "stable-diffusion-v1-5 in diffusers format (unet/, vae/, text_encoder/, tokenizer/) and pass "
            "--config.model.pretrained=/path/to/it.")
    if not needs_image_tower(cfg):
        return sd, None
    if not cfg.model.clip_vision or not (clip / "config.json").is_file():
        raise ConfigError(
            f"model.clip_vision={str(cfg.model.clip_vision)!r} is not a CLIP folder: download "
            "openai/clip-vit-large-patch14 (config.json + model.safetensors) and pass "
            "--config.model.clip_vision=/path/to/it.")
    return sd, clip


def needs_class_embeddings(cfg: ConfigDict) -> bool:
    return cfg.model.context == VPD_CONTEXT or cfg.model.query_init == "class_text"


def embedding_class_names(cfg: ConfigDict, dataset=None) -> tuple[str, ...]:
    """The classes VPD embeds for ``cfg.data``: the segmentation classes, or for depth VPD's 27
    NYUv2 scene classes (dataset scenes map onto them by name)."""
    if task_of(cfg.data.name) != SEG:
        return VPD_NYU_SCENES
    if cfg.data.name == "ade20k":
        return ADE20K_CLASSES
    return tuple((dataset or make_dataset(cfg.data, seed=cfg.seed)).class_names)


def embeddings_path(workdir: str | os.PathLike, text_folder: Path, names: Sequence[str],
                    templates: Sequence[str]) -> epath.Path:
    """Where the class embeddings of ``names`` x ``templates`` by the text tower in ``text_folder``
    are cached (the workdir may be ``gs://``)."""
    key = json.dumps({"text": str(Path(text_folder).resolve()), "names": list(names), "templates": list(templates)})
    return as_path(workdir) / "class_embeddings" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"


def cached_class_embeddings(workdir: str | os.PathLike, sd: Path, names: Sequence[str], text, text_params: PyTree,
                            tokenizer) -> np.ndarray:
    """[K, D] class embeddings from the cache in ``workdir``, or computed (and cached by process 0)."""
    path = embeddings_path(workdir, sd, names, IMAGENET_TEMPLATES)
    if path.is_file():
        with path.open("rb") as f:
            table = np.load(f)
        if table.shape == (len(names), text.config.hidden_size):
            return table
        log_line(f"{path} holds {table.shape}, not ({len(names)}, {text.config.hidden_size}): recomputing it")
    log_line(f"computing CLIP class embeddings of {len(names)} classes x {len(IMAGENET_TEMPLATES)} templates")
    pooled = jax.jit(lambda ids: text.apply({"params": text_params}, ids).pooler_output.astype(jnp.float32))
    table = class_text_embeddings(pooled, tokenizer, names)
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as f:
            np.save(f, table)
        tmp.replace(path)  # readers never see a partial file
        log_line(f"class embeddings cached in {path}")
    return table


def class_embeddings_from_file(path: str | os.PathLike, names: Sequence[str], dim: int) -> np.ndarray:
    """[K, D] float32 class embeddings from ``model.class_embeddings_file`` (a ``.npy``, or a
    ``torch.save`` ``.pth`` of one tensor such as VPD's ``segmentation/class_embeddings.pth``),
    one row per name of ``names`` in that order, or a clear error."""
    table = load_array(path)
    if table.shape != (len(names), dim) or not np.issubdtype(table.dtype, np.floating):
        raise ConfigError(f"model.class_embeddings_file={str(path)!r} holds a {table.dtype} array of shape "
                          f"{table.shape}, but this run needs float ({len(names)}, {dim}): one {dim}-d embedding "
                          f"per class, in the order of the dataset's {len(names)} classes.")
    table = table.astype(np.float32)
    if not np.all(np.isfinite(table)):
        raise ConfigError(f"model.class_embeddings_file={str(path)!r} holds NaN or infinite values.")
    log_line(f"class embeddings {table.shape[0]} x {table.shape[1]} read from {path}")
    return table


def model_remat(cfg: ConfigDict) -> str | bool:
    """``model.remat`` as the UNet's policy name (False for none), or a clear error."""
    try:
        return remat_policy(cfg.model.remat) or False
    except ValueError:
        raise ConfigError(f"model.remat={cfg.model.remat!r} is not a remat policy: use none, blocks (or True: "
                          "keep only block inputs, the least memory) or dots (keep matmul outputs too).") from None


WEIGHTS = ("all", "frozen", "none")


def build_model(cfg: ConfigDict, dataset, workdir: str | os.PathLike, weights: str = "all"
                ) -> tuple[IEDP, PyTree, PyTree]:
    """Loads the backbone and returns ``(model, unet_params, frozen_params)`` on the host.

    ``weights`` says which weights are read: ``"all"``; ``"frozen"`` (the UNet's parameters
    come as ``jax.ShapeDtypeStruct``s: a resumed run reads them from its checkpoint); ``"none"``
    (config files only: the trainer's memory guard compiles the step from the shapes before any
    weight is read)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}.")
    abstract, abstract_unet = weights == "none", weights != "all"
    if cfg.model.dtype not in DTYPES:
        raise ConfigError(f"model.dtype must be one of {sorted(DTYPES)}, got {cfg.model.dtype!r}.")
    dtype = DTYPES[cfg.model.dtype]
    sd, clip = resolve_backbone(cfg, workdir)
    if not abstract:
        log_line(f"loading Stable Diffusion from {sd}" + (f" and CLIP vision from {clip}" if clip else ""))
    unet, unet_params = load_unet(sd, dtype=dtype, param_dtype=jnp.float32, remat=model_remat(cfg),
                                  abstract=abstract_unet)
    vae, vae_params = load_vae(sd, dtype=dtype, abstract=abstract)
    vae_params = {k: v for k, v in vae_params.items() if k in ("encoder", "quant_conv")}  # no decoder
    vision, vision_params = load_clip_vision(clip, dtype=dtype, abstract=abstract) if clip else (None, None)
    text, text_params = load_clip_text(sd, dtype=dtype, abstract=abstract)
    tokenizer = load_tokenizer(sd)
    mcfg = to_model_config(cfg, dataset.task, dataset.num_classes, vae.config.scaling_factor)
    template = cfg.model.prompt_template
    prompts = class_prompt_table(tokenizer, dataset.class_names, template) if dataset.task == SEG else None
    scenes = scene_prompt_ids(tokenizer, dataset.scene_names, template) if dataset.task != SEG else None
    scene_classes = None
    frozen = {"vae": vae_params, "clip_text": text_params}
    if vision is not None:
        frozen["clip_vision"] = vision_params
    if needs_class_embeddings(cfg):
        names = embedding_class_names(cfg, dataset)
        file, dim = str(cfg.model.get("class_embeddings_file", "") or ""), text.config.hidden_size
        given = class_embeddings_from_file(file, names, dim) if file else None  # small: checked up front
        if abstract:
            frozen["class_embeddings"] = jax.ShapeDtypeStruct((len(names), dim), jnp.float32)
        else:
            frozen["class_embeddings"] = jnp.asarray(given if given is not None else cached_class_embeddings(
                workdir, sd, names, text, text_params, tokenizer))
        if dataset.task != SEG:
            scene_classes = jnp.asarray(vpd_scene_classes(dataset.scene_names, names))
    model = IEDP(mcfg, unet, vae, vision, text, prompts=prompts, scene_ids=scenes, scene_classes=scene_classes)
    return model, unet_params, frozen


def abstract_params(model: IEDP, unet_params: PyTree, frozen: PyTree, image_hw: tuple[int, int],
                    seed: int) -> PyTree:
    """``ShapeDtypeStruct``s of the trained parameters (``unet`` + heads), computed without
    materializing the heads (``jax.eval_shape``)."""
    heads = jax.eval_shape(lambda u, f: model.init_head_params(jax.random.PRNGKey(seed + 1), image_hw, u, f),
                           unet_params, frozen)
    unet = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), unet_params)
    return {"unet": unet, **heads}
