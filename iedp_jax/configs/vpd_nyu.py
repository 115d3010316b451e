"""VPD on NYUv2 depth (Zhao et al., ICCV 2023; github wl-zhao/VPD), rung 1 of the ablation ladder.

  python -m iedp_jax.class_embeddings --config vpd_nyu --workdir /ckpt/vpd_nyu \
      --config.model.pretrained=/models/stable-diffusion-v1-5   # optional: else the first run does it
  python -m iedp_jax.train --config vpd_nyu --workdir /ckpt/vpd_nyu \
      --config.model.pretrained=/models/stable-diffusion-v1-5 \
      --config.data.data_dir=/data/nyu

Published (VPD): RMSE 0.254 on the 654 official test images (Eigen crop, two 480 windows +
flip). VPD's recipe: one context token per image, the adapted CLIP embedding (80 templates,
pooled) of the image's scene class among VPD's 27 (scene folder names matched by VPD's substring
rule), no cross-attention maps, unscaled VAE mean, the 480 crop padded to 512 and the neck
cropped back, nearest upsampling of the coarsest level, VPD's one-cycle formula, 25 epochs at
batch 24. One change from iedp_jax/configs/nyu_implicit.py: ``model.context="vpd"``.

VPD conditions on the ground-truth scene at test time too: each of the 654 test images is
prompted with its own scene, the folder of ``official_splits/test/<scene>/`` in the split file,
in the centre-crop validation at the end of training and in ``python -m iedp_jax.evaluate`` (the
final checkpoint, ``eval.checkpoint="final"``, as VPD reports). Also from iedp_jax/configs/nyu.py: SILog per
group of 3 images (``loss.silog_group``), VPD's CutDepth (``data.cutdepth="vpd"``). Remaining
differences from VPD: docs/vpd-baseline.md.
"""

from iedp_jax.config import ladder_rung, sibling_config


def get_config():
    return ladder_rung(sibling_config(__file__, "nyu_implicit"), "vpd")
