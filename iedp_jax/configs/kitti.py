"""IEDP on KITTI monocular depth, Eigen split with the annotated ground truth (BTS protocol).

  python -m iedp_jax.train --config kitti --workdir /ckpt/iedp_kitti \
      --config.model.pretrained=/models/stable-diffusion-v1-5 \
      --config.model.clip_vision=/models/clip-vit-large-patch14 \
      --config.data.data_dir=/data/kitti    # raw <date>/ folders, data_depth_annotated/, split files
  python -m iedp_jax.evaluate --workdir /ckpt/iedp_kitti             # Garg crop, 0-80 m, 7 metrics

Protocol (BTS bts_eval.py / bts_dataloader.py): every frame cut to the KB crop (352x1216, bottom
centre); training adds a rotation U(-1, 1) degree, a random 352x704 window, flip and KITTI's colour
ranges; testing predicts the whole KB crop (one 352x1216 window) averaged with its flip
(VPD-family test), clips predictions to [1e-3, 80] as BTS, and scores the Garg crop of the full
frame (``data.eval_crop="eigen"`` for the Eigen crop) where 1e-3 < gt < 80 m, split lines whose
ground truth is ``None`` skipped. Metrics: AbsRel, SqRel, RMSE, RMSE-log, log10, delta1-3, per
image then averaged. The model follows iedp_jax/configs/nyu.py (VPD's depth recipe) with max depth 80 m;
the explicit branch prompts "a photo of a street" (ours: KITTI has no scene labels).
"""

from iedp_jax.config import base_config


def get_config():
    c = base_config()
    c.model.pretrained = ""
    c.model.clip_vision = ""
    c.model.num_queries = 0           # 8 implicit queries
    c.model.explicit_maps = "zeros"
    c.model.attn_maps = False         # VPD depth: UNetWrapper(use_attn=False)
    c.model.prompt_template = "a photo of a {}"
    c.model.head_groups = 16
    c.model.max_depth = 80.0          # sigmoid * 80 m
    c.model.scale_latents = False
    c.model.depth_pad_multiple = 64   # 352 -> 384 (1216 is a multiple of 64)
    c.model.coarse_resize = "nearest"
    c.model.head_init = "vpd"
    c.data.name = "kitti"
    c.data.data_dir = ""
    c.data.crop_size = (352, 704)     # BTS input_height x input_width
    c.data.kb_crop = (352, 1216)
    c.data.eval_crop = "garg"
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
    c.train.total_steps = 25 * 23158 // 24  # 25 epochs of the 23,158 Eigen training frames with ground truth
    c.train.ckpt_every = 1000
    c.train.eval_batch_size = 24
    c.eval.crop = (352, 1216)         # the whole KB crop in one window
    c.eval.stride = (352, 1216)
    c.eval.flip = True
    c.eval.clip_depth = True          # BTS clips predictions to [min_depth_eval, max_depth_eval]
    return c
