"""IEDP on your own segmentation folder (``data.name='folder'``), with the ADE20K recipe.

  python -m iedp_jax.train --config folder_seg --workdir /ckpt/mine \
      --config.model.pretrained=/models/stable-diffusion-v1-5 \
      --config.model.clip_vision=/models/clip-vit-large-patch14 \
      --config.data.data_dir=/data/mine     # classes.json, images/{train,val}/, labels/{train,val}/
  python -m iedp_jax.evaluate --workdir /ckpt/mine                   # sliding window, mIoU over your classes

The folder layout is in docs/datasets.md: classes.json = {"classes": [...], "ignore_index": 255};
label PNGs hold the class ids. The class names become the explicit branch's prompts and the
legend of ``python -m iedp_jax.predict``. Training and evaluation follow iedp_jax/configs/ade.py (mmseg's
ADE20K pipeline without reduce_zero_label, sliding 512 windows at stride 341, short side 512).
The folder is read directly (``data.format='folders'``); ``tfds`` prepares it once instead.
Set ``train.total_steps`` for your data's size.
"""

from iedp_jax.config import base_config


def get_config():
    c = base_config()
    c.model.pretrained = ""
    c.model.clip_vision = ""
    c.model.num_queries = 0           # one implicit query per class
    c.model.attn_strides = (16, 32)
    c.model.prompt_template = "a photo of {}"
    c.model.scale_latents = False
    c.model.ce_average = "all"
    c.model.head_init = "vpd"
    c.data.name = "folder"
    c.data.data_dir = ""
    c.data.format = "folders"
    c.data.crop_size = (512, 512)
    c.data.pad_value = 128
    c.optim.lr = 8e-5
    c.optim.weight_decay = 1e-3
    c.optim.unet_lr_mult = 0.1
    c.optim.param_groups = "mmcv"
    c.optim.schedule = "warmup_poly"
    c.optim.warmup_steps = 1500
    c.optim.power = 1.0
    c.train.batch_size = 16
    c.train.total_steps = 40000
    c.train.ckpt_every = 2000
    c.train.eval_batch_size = 16
    c.eval.crop = (512, 512)
    c.eval.stride = (341, 341)
    c.eval.img_scale = (2048, 512)
    c.eval.scales = (1.0, 1.125, 1.25, 1.375, 1.5)
    c.eval.flip = True
    return c
