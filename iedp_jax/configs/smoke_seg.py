"""Smoke run: a tiny random backbone on synthetic segmentation, about 3 minutes on 2 CPU cores.

  python -m iedp_jax.train --config smoke_seg --workdir /tmp/iedp

Writes the tiny backbone (real diffusers/HF layout) into the workdir, trains both branches,
and evaluates the implicit branch on the synthetic validation split; expect mIoU >= 0.9
(measured 0.914 in 184 s on 2 idle cores, 2026-11-30: benchmarks/RESULTS.md).
"""

from iedp_jax.config import base_config


def get_config():
    c = base_config()
    c.model.tiny_backbone = True
    c.model.decoder_heads = 4
    c.model.fpn_channels = 32
    c.model.head_channels = 32
    c.model.head_groups = 8
    c.model.dropout = 0.0
    c.data.name = "synthetic_seg"
    c.data.crop_size = (32, 32)  # 4x4 cells of the 8-pixel grid; the logits at 1/8 can be exact
    c.data.num_classes = 5
    c.data.train_size = 20000  # fresh examples, no overfitting in 1900 x 8
    c.optim.lr = 3e-3
    c.optim.unet_lr_mult = 0.3
    c.optim.warmup_steps = 20
    c.train.batch_size = 8
    c.train.total_steps = 1900
    c.train.log_every = 100
    c.train.ckpt_every = 950
    c.train.keep_checkpoints = 2
    c.train.eval_batch_size = 16
    c.train.num_panels = 0  # no extra compile for TensorBoard panels in a 3-minute run
    return c
