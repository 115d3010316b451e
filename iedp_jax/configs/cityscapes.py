"""IEDP on Cityscapes semantic segmentation (19 classes, gtFine), mmseg's Cityscapes protocol.

  python -m iedp_jax.train --config cityscapes --workdir /ckpt/iedp_cityscapes \
      --config.model.pretrained=/models/stable-diffusion-v1-5 \
      --config.model.clip_vision=/models/clip-vit-large-patch14 \
      --config.data.data_dir=/data/cityscapes   # holds leftImg8bit/ and gtFine/ (labelIds are mapped here)
  python -m iedp_jax.evaluate --workdir /ckpt/iedp_cityscapes      # mIoU over the 19 classes, 500 val images

Protocol (mmseg iedp_jax/configs/_base_/datasets/cityscapes.py): train crop 512x1024 from images rescaled
by 0.5-2.0 of (2048, 1024) with cat_max_ratio 0.75, flip and photometric distortion; test at full
resolution (2048x1024, no resize) with a sliding 512x1024 window, stride 2/3 of it (ours: mmseg's
rule for ADE's 512 / 341), scored against the train ids (255 ignored). ``eval.mode=multiscale``
uses mmseg's Cityscapes ratios 0.5-1.75 + flip. The model and optimiser follow iedp_jax/configs/ade.py
(VPD's ADE20K recipe) at mmseg's Cityscapes schedule of 80k iterations at batch 8.
"""

from iedp_jax.config import base_config


def get_config():
    c = base_config()
    c.model.pretrained = ""
    c.model.clip_vision = ""
    c.model.num_queries = 0           # one implicit query per class (19)
    c.model.attn_strides = (16, 32)
    c.model.prompt_template = "a photo of {}"
    c.model.scale_latents = False     # VPD: latents.mode(), unscaled
    c.model.ce_average = "all"        # mmseg 0.x: avg_non_ignore=False
    c.model.head_init = "vpd"
    c.data.name = "cityscapes"
    c.data.data_dir = ""
    c.data.crop_size = (512, 1024)
    c.data.img_scale = (2048, 1024)   # mmseg Resize(img_scale=(2048, 1024), ratio_range=(0.5, 2.0))
    c.data.pad_value = 128            # VPD pads 0 after normalising (127.5), as iedp_jax/configs/ade.py
    c.optim.lr = 8e-5
    c.optim.weight_decay = 1e-3
    c.optim.unet_lr_mult = 0.1
    c.optim.param_groups = "mmcv"
    c.optim.schedule = "warmup_poly"
    c.optim.warmup_steps = 1500
    c.optim.power = 1.0
    c.train.batch_size = 8            # mmseg Cityscapes: 2 images x 4 GPUs
    c.train.total_steps = 80000
    c.train.ckpt_every = 2000
    c.train.eval_batch_size = 8
    c.eval.crop = (512, 1024)         # slide window at full resolution
    c.eval.stride = (341, 682)
    c.eval.img_scale = (2048, 1024)   # test Resize: 2048x1024 stays as it is
    c.eval.scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # mmseg Cityscapes aug test (+ flip)
    c.eval.flip = True
    return c
