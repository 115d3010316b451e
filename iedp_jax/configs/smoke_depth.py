"""Smoke run for depth: a tiny random backbone on synthetic depth, minutes on a laptop CPU.

  python -m iedp_jax.train --config smoke_depth --workdir /tmp/iedp_depth

The explicit branch prompts with the scene name; expect a small RMSE on the validation split.
"""

from iedp_jax.config import base_config


def get_config():
    c = base_config()
    c.model.tiny_backbone = True
    c.model.decoder_heads = 4
    c.model.num_queries = 8
    c.model.explicit_maps = "zeros"
    c.model.prompt_template = "a photo of a {}"
    c.model.head_groups = 8
    c.model.neck_channels = 64
    c.model.deconv_channels = 16
    c.model.conv_channels = 32
    c.data.name = "synthetic_depth"
    c.data.crop_size = (64, 64)
    c.data.train_size = 20000
    c.optim.lr = 2e-3
    c.optim.unet_lr_mult = 0.1
    c.optim.weight_decay = 0.1
    c.optim.warmup_steps = 20
    c.train.batch_size = 8
    c.train.total_steps = 300
    c.train.log_every = 25
    c.train.ckpt_every = 100
    c.train.keep_checkpoints = 2
    c.train.eval_batch_size = 16
    return c
