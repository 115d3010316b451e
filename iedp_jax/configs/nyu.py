"""IEDP on NYUv2 monocular depth (BTS sync split), the paper's schedule (DESIGN.md 3.1).

  python -m iedp_jax.train --config nyu --workdir /ckpt/iedp_nyu \
      --config.model.pretrained=/models/stable-diffusion-v1-5 \
      --config.model.clip_vision=/models/clip-vit-large-patch14 \
      --config.data.data_dir=/data/nyu      # BTS layout: sync/, official_splits/test/, split files
  python -m iedp_jax.evaluate --workdir /ckpt/iedp_nyu

Published: VPD RMSE 0.254; IEDP reports an 11.0% relative gain over VPD (about 0.226 RMSE if
the gain is on RMSE), evaluated on the 654 official test images with the Eigen crop, ground truth
in (1e-3, 10) m (pixels outside are masked, not clipped), two 480-wide windows and flip (``python
-m iedp_jax.evaluate``). 25 epochs of 24,231 images at batch 24.

Top rung of the ablation ladder (docs/vpd-baseline.md): iedp_jax/configs/vpd_nyu.py (VPD) ->
iedp_jax/configs/nyu_implicit.py (+ implicit branch) -> this file (+ explicit branch). The recipe details
IEDP inherits from VPD take VPD's values (ours in brackets): unscaled VAE mean [x 0.18215], no
cross-attention maps in the features (VPD depth: ``use_attn=False``) [maps of the 8 queries],
VPD's one-cycle formula peaking at 12 of 25 epochs [mirrored poly, peak at 50%], the 480 crop
padded with grey to 512 and the neck cropped back [a 60x60 latent], the coarsest level upsampled
nearest [bilinear], VPD's head initialisation [flax defaults], SILog per group of 3 images
averaged as VPD's per-GPU loss [the whole batch pooled], VPD's CutDepth (every 4th sample, raw
millimetres cast to uint8) [Bernoulli 0.25, depth as grey], the final checkpoint scored [the
same]. The explicit branch's placement is ``explicit.placement="scattered"``; the alternative rung
is iedp_jax/configs/nyu_explicit_concat.py.
"""

from iedp_jax.config import base_config


def get_config():
    c = base_config()
    c.model.pretrained = ""
    c.model.clip_vision = ""
    c.model.num_queries = 0           # 8 implicit queries (1 token, the scene's, with context='vpd')
    c.model.explicit_maps = "zeros"
    c.model.attn_maps = False         # VPD depth: UNetWrapper(use_attn=False)
    c.model.prompt_template = "a photo of a {}"
    c.model.head_groups = 16
    c.model.max_depth = 10.0
    c.model.scale_latents = False     # VPD: encode(x).mode(), unscaled
    c.model.depth_pad_multiple = 64   # VPD: 480 -> 512 (zeros after normalising), neck 16 -> 15
    c.model.coarse_resize = "nearest"  # VPD: F.interpolate(outs[3], scale_factor=2)
    c.model.head_init = "vpd"         # decoder and last layers N(0, 0.001), neck N(0, 0.02)
    c.data.name = "nyu"
    c.data.data_dir = ""
    c.data.crop_size = (480, 480)
    c.data.min_depth = 1e-3
    c.data.cutdepth = "vpd"           # VPD depth/dataset/base_dataset.py: every 4th sample, raw mm cast to uint8
    c.loss.silog_group = 3            # VPD: SiLogLoss per GPU (3 images), the 8 GPUs' gradients averaged
    c.optim.lr = 5e-4
    c.optim.start_lr = 3e-5
    c.optim.end_lr = 3e-5
    c.optim.schedule = "one_cycle_vpd"
    c.optim.peak_fraction = 12 / 25   # VPD: half_epoch = epochs // 2 = 12 of 25; minimum from 24 of 25
    c.optim.power = 0.9
    c.optim.weight_decay = 0.1
    c.optim.unet_lr_mult = 0.01
    c.optim.param_groups = "ours"     # = VPD's depth rule: no decay on 1-D and biases, UNet x0.01
    c.train.batch_size = 24
    c.train.total_steps = 25 * 24231 // 24
    c.train.ckpt_every = 1000
    c.train.eval_batch_size = 24
    c.eval.crop = (480, 480)          # VPD test: two 480-wide windows (x = 0, 160) + flip
    c.eval.stride = (160, 160)
    c.eval.flip = True
    c.eval.clip_depth = False         # VPD scores its sigmoid * 10 output unclipped
    c.eval.checkpoint = "final"       # VPD's tables: the last checkpoint of the fixed schedule
    return c
