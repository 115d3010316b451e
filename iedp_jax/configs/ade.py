"""IEDP on ADE20K semantic segmentation (150 classes), the paper's schedule (DESIGN.md 3.1).

  python -m iedp_jax.train --config ade --workdir /ckpt/iedp_ade \
      --config.model.pretrained=/models/stable-diffusion-v1-5 \
      --config.model.clip_vision=/models/clip-vit-large-patch14 \
      --config.data.data_dir=/data/ade20k      # holds ADEChallengeData2016/
  python -m iedp_jax.evaluate --workdir /ckpt/iedp_ade                           # 55.9 target
  python -m iedp_jax.evaluate --workdir /ckpt/iedp_ade --config.eval.mode=multiscale

Published (IEDP, TMM 2025): 55.9 mIoU single-scale on ADE20K val (VPD: 53.7), with the
sliding-window protocol of ``python -m iedp_jax.evaluate``. Batch 16 over all devices; on GPUs
add ``--config.model.dtype=bfloat16`` (and ``--config.model.remat=True`` if memory is short).

Top rung of the ablation ladder (docs/vpd-baseline.md): iedp_jax/configs/vpd_ade.py (VPD) ->
iedp_jax/configs/ade_implicit.py (+ implicit branch) -> this file (+ explicit branch). The recipe details
IEDP inherits from VPD, whose code it builds on, take VPD's values here (each one a choice; ours
in brackets): unscaled VAE mean [x 0.18215], training pad colour mid-grey 128 [black 0], mmcv's
parameter groups [UNet x0.1, no decay on 1-D], cross-entropy over all pixels [valid pixels],
mmseg/VPD head initialisation [flax defaults], multi-scale ratios 1.0-1.5 in steps of 0.125, the
final checkpoint scored [the same]. The explicit branch's prompt alone is its context, its
class-token maps scattered into the class channels (``explicit.placement="scattered"``); the
rung that needs no query c <-> class c tie is iedp_jax/configs/ade_explicit_concat.py.
"""

from iedp_jax.config import base_config


def get_config():
    c = base_config()
    c.model.pretrained = ""
    c.model.clip_vision = ""
    c.model.num_queries = 150
    c.model.attn_strides = (16, 32)
    c.model.prompt_template = "a photo of {}"
    c.model.scale_latents = False     # VPD: latents.mode(), unscaled
    c.model.ce_average = "all"        # mmseg 0.x: avg_non_ignore=False
    c.model.head_init = "vpd"         # conv_seg N(0, 0.01), FPN Xavier, ConvModule Kaiming
    c.data.name = "ade20k"
    c.data.data_dir = ""
    c.data.crop_size = (512, 512)
    c.data.pad_value = 128            # VPD pads 0 after normalising (127.5); 128 is the nearest uint8
    c.optim.lr = 8e-5
    c.optim.weight_decay = 1e-3
    c.optim.unet_lr_mult = 0.1
    c.optim.param_groups = "mmcv"     # VPD's custom_keys {'unet': lr x0.1, 'norm': no decay}, first match
    c.optim.schedule = "warmup_poly"
    c.optim.warmup_steps = 1500
    c.optim.power = 1.0
    c.train.batch_size = 16
    c.train.total_steps = 80000
    c.train.ckpt_every = 2000
    c.train.eval_batch_size = 16
    c.eval.crop = (512, 512)          # mmseg test_cfg: slide, crop 512, stride 341
    c.eval.stride = (341, 341)
    c.eval.img_scale = (2048, 512)    # test Resize: short side 512, long side <= 2048
    c.eval.scales = (1.0, 1.125, 1.25, 1.375, 1.5)  # VPD test.py --aug-test (+ flip)
    c.eval.flip = True
    c.eval.checkpoint = "final"       # VPD's tables: the last checkpoint of the 80k schedule
    return c
