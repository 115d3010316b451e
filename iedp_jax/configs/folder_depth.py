"""IEDP on your own depth folder (``data.name='folder_depth'``), with the NYUv2 recipe.

  python -m iedp_jax.train --config folder_depth --workdir /ckpt/mine_depth \
      --config.model.pretrained=/models/stable-diffusion-v1-5 \
      --config.model.clip_vision=/models/clip-vit-large-patch14 \
      --config.data.data_dir=/data/mine_depth --config.model.max_depth=10
  python -m iedp_jax.evaluate --workdir /ckpt/mine_depth

The folder layout is in docs/datasets.md: depth.json = {"scale": 1000, "max_depth": 10} (16-bit
depth PNGs, metres = value / scale, 0 = no value; depth above max_depth counts as no value).
Set ``model.max_depth`` to depth.json's max_depth (the model predicts sigmoid * max_depth).
Training: a random crop, flip and BTS's colour augmentation; evaluation: VPD's sliding windows +
flip over every pixel with 1e-3 < gt < max_depth, the 7 usual metrics. The model follows
iedp_jax/configs/nyu.py. Set ``train.total_steps`` for your data's size.
"""

from iedp_jax.config import base_config


def get_config():
    c = base_config()
    c.model.pretrained = ""
    c.model.clip_vision = ""
    c.model.num_queries = 0           # 8 implicit queries
    c.model.explicit_maps = "zeros"
    c.model.attn_maps = False
    c.model.prompt_template = "a photo of a {}"
    c.model.head_groups = 16
    c.model.max_depth = 10.0          # = depth.json's max_depth
    c.model.scale_latents = False
    c.model.depth_pad_multiple = 64
    c.model.coarse_resize = "nearest"
    c.model.head_init = "vpd"
    c.data.name = "folder_depth"
    c.data.data_dir = ""
    c.data.format = "folders"
    c.data.crop_size = (480, 480)
    c.data.min_depth = 1e-3
    c.optim.lr = 5e-4
    c.optim.start_lr = 3e-5
    c.optim.end_lr = 3e-5
    c.optim.schedule = "one_cycle_vpd"
    c.optim.peak_fraction = 12 / 25
    c.optim.power = 0.9
    c.optim.weight_decay = 0.1
    c.optim.unet_lr_mult = 0.01
    c.train.batch_size = 24
    c.train.total_steps = 20000
    c.train.ckpt_every = 1000
    c.train.eval_batch_size = 24
    c.eval.crop = (480, 480)
    c.eval.stride = (160, 160)
    c.eval.flip = True
    return c
