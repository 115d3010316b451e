"""IEDP on NYUv2 monocular depth (BTS sync split), the paper's schedule (DESIGN.md 3.1).

  python -m iedp_jax.train --config configs/nyu.py --workdir /ckpt/iedp_nyu \
      --config.model.pretrained=/models/stable-diffusion-v1-5 \
      --config.model.clip_vision=/models/clip-vit-large-patch14 \
      --config.data.data_dir=/data/nyu      # BTS layout: sync/, official_splits/test/, split files

Published: VPD RMSE 0.254; IEDP reports an 11.0% relative gain over VPD (about 0.226 RMSE if
the gain is on RMSE), evaluated with the Eigen crop, depth in (1e-3, 10], two 480-wide windows
and flip (``python -m iedp_jax.evaluate``). 25 epochs of 24,231 images at batch 24.
"""

from iedp_jax.config import base_config


def get_config():
    c = base_config()
    c.model.pretrained = ""
    c.model.clip_vision = ""
    c.model.num_queries = 8
    c.model.explicit_maps = "zeros"
    c.model.prompt_template = "a photo of a {}"
    c.model.head_groups = 16
    c.model.max_depth = 10.0
    c.data.name = "nyu"
    c.data.data_dir = ""
    c.data.crop_size = (480, 480)
    c.data.min_depth = 1e-3
    c.optim.lr = 5e-4
    c.optim.start_lr = 3e-5
    c.optim.end_lr = 3e-5
    c.optim.schedule = "one_cycle"
    c.optim.peak_fraction = 0.5
    c.optim.power = 0.9
    c.optim.weight_decay = 0.1
    c.optim.unet_lr_mult = 0.01
    c.train.batch_size = 24
    c.train.total_steps = 25 * 24231 // 24
    c.train.ckpt_every = 1000
    c.train.eval_batch_size = 24
    c.eval.crop = (480, 480)          # VPD test: two 480-wide windows (x = 0, 160) + flip
    c.eval.stride = (160, 160)
    c.eval.flip = True
    return c
