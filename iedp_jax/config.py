"""The complete config schema with defaults, and its mapping to the model's static config.

``iedp_jax/configs/*.py`` start from :func:`base_config` and override. Every key a run can read exists
here, so ``--config.x=y`` with an unknown ``x`` is an error. Model fields that
:class:`~iedp_jax.model.IEDPConfig` also has take its defaults (stated once, there);
:func:`to_model_config` is the one place a ConfigDict becomes an ``IEDPConfig``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import jax.numpy as jnp
from ml_collections import ConfigDict

from iedp_jax.model import SEG, VPD_CONTEXT, IEDPConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# ``config.model`` fields that are IEDPConfig fields of the same name and meaning.
_SHARED = ("timestep", "feature_layer", "attn_strides", "attn_maps", "explicit_maps", "explicit_weight",
           "decoder_heads", "fpn_channels", "head_channels", "head_groups", "dropout", "max_depth",
           "neck_channels", "deconv_channels", "conv_channels", "context", "query_init", "ce_average",
           "depth_pad_multiple", "coarse_resize", "head_init")


def base_config() -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    defaults = IEDPConfig()
    c.model = ConfigDict(dict(
        pretrained="",            # diffusers Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/)
        clip_vision="",           # Hugging Face CLIP folder (e.g. clip-vit-large-patch14)
        tiny_backbone=False,      # write and use a tiny random backbone (smoke runs, tests)
        dtype="float32",          # compute dtype: float32 | bfloat16 (parameters stay float32)
        remat="none",             # rematerialise UNet blocks in the backward pass: none | blocks (True) | dots
        scale_latents=True,       # multiply latents by the VAE scaling factor (TADP; VPD: False)
        context=defaults.context,  # implicit (IEDP: image -> queries) | vpd (fixed CLIP class embeddings)
        query_init=defaults.query_init,  # normal (free queries) | class_text (query c from class c's embedding)
        ce_average=defaults.ce_average,  # valid | all (mmseg 0.x: mean over every pixel, ignored ones as 0)
        depth_pad_multiple=defaults.depth_pad_multiple,  # depth: pad the image to a multiple (VPD: 64), 0 = none
        coarse_resize=defaults.coarse_resize,  # depth neck: coarser level to the target, bilinear | nearest (VPD)
        head_init=defaults.head_init,  # flax (lecun normal) | vpd (mmseg / VPD initialisations)
        class_embeddings_file="",  # a [K, D] class-embedding file (VPD's class_embeddings.pth or .npy); "" = compute
        timestep=defaults.timestep,
        num_queries=0,            # implicit tokens N; 0 = number of classes (seg) or 8 (depth)
        feature_layer=defaults.feature_layer,          # up_blocks[i].layers[j] used as the level-i feature
        attn_strides=defaults.attn_strides,    # image strides whose cross-attention maps join the features
        attn_maps=defaults.attn_maps,
        explicit_maps=defaults.explicit_maps,  # scatter | zeros: explicit-branch maps in the class channels
        explicit_weight=defaults.explicit_weight,      # lambda: L = L(implicit) + lambda L(explicit); 0 = implicit only
        decoder_heads=defaults.decoder_heads,          # heads of the implicit branch's query decoder
        prompt_template="a photo of {}",
        fpn_channels=defaults.fpn_channels,
        head_channels=defaults.head_channels,
        head_groups=defaults.head_groups,
        dropout=defaults.dropout,
        max_depth=defaults.max_depth,
        neck_channels=defaults.neck_channels,
        deconv_channels=defaults.deconv_channels,
        conv_channels=defaults.conv_channels,
    ))
    c.data = ConfigDict(dict(
        name="synthetic_seg",     # synthetic_seg | synthetic_depth | ade20k | nyu | cityscapes | kitti | folder[_depth]
        data_dir="",              # ade20k / nyu: the dataset folder in its usual layout
        format="tfds",            # ade20k / nyu: tfds (prepared array_record files) | folders (decode files directly)
        tfds_dir="",              # where tfds prepares and reads them; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
        num_workers=-1,           # input decoding threads per process; -1 = min(16, cores), 0 = none
        crop_size=(64, 64),
        train_size=512,           # synthetic datasets only
        val_size=64,
        num_classes=5,            # synthetic segmentation only
        ignore_index=255,
        min_depth=1e-3,
        pad_value=0,              # ade20k training pad colour, uint8 (VPD pads 0 after normalising = 127.5)
        cutdepth="ours",          # nyu CutDepth: ours (p 0.25 per sample, grey depth) | vpd (every 4th sample,
                                  # raw mm cast to uint8) | none
        img_scale=(),             # folder / cityscapes training rescale (long, short); () = (4 s, s) / (2048, 1024)
        kb_crop=(352, 1216),      # kitti: the KB crop (height, width) of every frame
        eval_crop="garg",         # kitti: the scored region of the full frame, garg | eigen | none
    ))
    c.optim = ConfigDict(dict(
        lr=8e-5, weight_decay=1e-3, unet_lr_mult=0.1,
        schedule="warmup_poly",   # warmup_poly | one_cycle | one_cycle_vpd (VPD's NYUv2 formula)
        param_groups="ours",      # ours (UNet x unet_lr_mult, no decay on 1-D) | mmcv (VPD ADE20K's custom keys)
        warmup_steps=1500, warmup_ratio=1e-6, power=1.0, end_lr=0.0,
        start_lr=3e-5, peak_fraction=0.5,  # one_cycle* only
        clip_grad_norm=0.0, b1=0.9, b2=0.999, eps=1e-8,
    ))
    c.train = ConfigDict(dict(
        batch_size=16,            # the global (effective) batch per optimizer step
        grad_accum_steps=1,       # split each batch into this many micro-batches (activations of one)
        total_steps=80000, log_every=50, ckpt_every=2000, keep_checkpoints=3,
        eval_batch_size=16,
        eval_every=0,             # centre-crop validation every N steps (+ best checkpoint); 0 = at the end only
        num_panels=4,             # prediction panels sent to TensorBoard at each validation
        profile_steps=(),         # (first, last): a jax.profiler trace of these steps in WORKDIR/profile
        memory_guard=True,        # refuse, before it starts, a run whose compiled step does not fit in memory
        ckpt_host_gb=0.0,         # bound on the checkpoint's host copy in GB; 0 = auto (bounded when the state
                                  # would not fit beside the step on the host)
    ))
    c.mesh = ConfigDict(dict(shape=(-1, 1)))  # (data, fsdp); -1 takes the remaining devices
    c.eval = ConfigDict(dict(     # python -m iedp_jax.evaluate (the official protocols)
        mode="single",            # single | multiscale (segmentation: scales x flip, mmseg aug_test)
        crop=(),                  # window (h, w); () = data.crop_size
        stride=(),                # window stride (h, w); () = 2/3 of the crop (341 for 512)
        img_scale=(),             # segmentation test resize (long, short); () = (4 s, s), s = min(crop)
        scales=(1.0, 1.25, 1.5),  # multiscale: ratios of img_scale
        flip=True,                # flip averaging: segmentation in multiscale mode; depth always
        clip_depth=True,          # depth: clip predictions to (min_depth, max_depth) as BTS; VPD: False
        num_images=0,             # only the first N validation images; 0 = all
        num_visualizations=8,     # image | prediction | ground truth PNGs in WORKDIR/eval/images
        batch_size=0,             # images per step, split over all devices; 0 = one per device
        checkpoint="final",       # scored without --checkpoint: final (the last step) | best (WORKDIR/best)
    ))
    c.loss = ConfigDict(dict(
        silog_group=defaults.silog_group,  # depth: SILog per group of N images, averaged (VPD: 3); 0 = batch
    ))
    c.explicit = ConfigDict(dict(
        placement=defaults.explicit_placement,  # scattered (prompt alone, maps into class channels) | concatenated
    ))
    return c


LADDER = {"vpd": dict(context="vpd", explicit_weight=0.0),        # VPD: fixed class embeddings
          "implicit": dict(context="implicit", explicit_weight=0.0),  # + the implicit branch
          "iedp": dict(context="implicit", explicit_weight=1.0)}      # + the explicit branch (IEDP)


def sibling_config(config_file: str | os.PathLike, name: str) -> ConfigDict:
    """``get_config()`` of ``iedp_jax/configs/<name>.py`` next to ``config_file`` (configs build on each other)."""
    path = Path(config_file).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def ladder_rung(cfg: ConfigDict, rung: str) -> ConfigDict:
    """``cfg`` set to one rung of the ablation ladder VPD -> + implicit -> + explicit (IEDP):
    each rung differs from the previous one by its one change (``LADDER``)."""
    for key, value in LADDER[rung].items():
        cfg.model[key] = value
    return cfg


def to_model_config(cfg: ConfigDict, task: str, num_classes: int, scaling_factor: float) -> IEDPConfig:
    """The model's static config from ``cfg.model``, the dataset (task, classes) and the VAE."""
    m = cfg.model
    queries = num_classes if task == SEG else (1 if m.context == VPD_CONTEXT else 8)
    return IEDPConfig(
        task=task, num_classes=num_classes, num_queries=m.num_queries or queries,
        latent_scale=scaling_factor if m.scale_latents else 1.0, ignore_index=cfg.data.ignore_index,
        explicit_placement=cfg.explicit.placement, silog_group=int(cfg.loss.silog_group),
        **{f: (tuple(m[f]) if f == "attn_strides" else m[f]) for f in _SHARED})


assert set(_SHARED) <= {f.name for f in dataclasses.fields(IEDPConfig)}
