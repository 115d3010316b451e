"""IEDP on ADE20K semantic segmentation (150 classes), the paper's schedule (DESIGN.md 3.1).

  python -m iedp_jax.train --config configs/ade.py --workdir /ckpt/iedp_ade \
      --config.model.pretrained=/models/stable-diffusion-v1-5 \
      --config.model.clip_vision=/models/clip-vit-large-patch14 \
      --config.data.data_dir=/data/ade20k      # holds ADEChallengeData2016/

Published (IEDP, TMM 2025): 55.9 mIoU single-scale on ADE20K val (VPD: 53.7), with the
sliding-window protocol of ``python -m iedp_jax.evaluate``. Batch 16 over all devices; on GPUs
add ``--config.model.dtype=bfloat16`` (and ``--config.model.remat=True`` if memory is short).
"""

from iedp_jax.config import base_config


def get_config():
    c = base_config()
    c.model.pretrained = ""
    c.model.clip_vision = ""
    c.model.num_queries = 150
    c.model.attn_strides = (16, 32)
    c.model.prompt_template = "a photo of {}"
    c.data.name = "ade20k"
    c.data.data_dir = ""
    c.data.crop_size = (512, 512)
    c.optim.lr = 8e-5
    c.optim.weight_decay = 1e-3
    c.optim.unet_lr_mult = 0.1
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
    c.eval.scales = (1.0, 1.25, 1.5)  # --config.eval.mode=multiscale (+ flip)
    c.eval.flip = True
    return c
