"""VPD on ADE20K (Zhao et al., ICCV 2023; github wl-zhao/VPD), rung 1 of the ablation ladder.

  python -m iedp_jax.class_embeddings --config vpd_ade --workdir /ckpt/vpd_ade \
      --config.model.pretrained=/models/stable-diffusion-v1-5   # optional: else the first run does it
  python -m iedp_jax.train --config vpd_ade --workdir /ckpt/vpd_ade \
      --config.model.pretrained=/models/stable-diffusion-v1-5 \
      --config.data.data_dir=/data/ade20k
  python -m iedp_jax.evaluate --workdir /ckpt/vpd_ade                              # 53.7 target
  python -m iedp_jax.evaluate --workdir /ckpt/vpd_ade --config.eval.mode=multiscale  # 54.6 target

Published (VPD README, fpn_vpd_sd1-5_512x512_gpu8x2.py): 53.7 mIoU single-scale, 54.6 with
multi-scale + flip. VPD's recipe: the UNet conditioned on fixed class embeddings (CLIP text
embeddings of the 150 class names averaged over 80 templates, then the text adapter), unscaled
VAE mean, mmcv parameter groups, pad 0 after normalising, CE over all pixels, mmseg head
initialisation, Semantic FPN on in-channels [320, 790, 1430, 1280], 80k iterations at batch 16.
One change from iedp_jax/configs/ade_implicit.py: ``model.context="vpd"``. The CLIP image tower is not
loaded (``model.clip_vision`` is not needed). The faithful class embeddings are VPD's own file,
passed as-is (read without torch; a .npy works too):
``--config.model.class_embeddings_file=/src/VPD/segmentation/class_embeddings.pth``; without it
they are computed with VPD's NYU recipe, which VPD's ADE20K file was not made with. The final
checkpoint is scored (``eval.checkpoint="final"``), as VPD reports. Remaining differences from
VPD: docs/vpd-baseline.md.
"""

from iedp_jax.config import ladder_rung, sibling_config


def get_config():
    return ladder_rung(sibling_config(__file__, "ade_implicit"), "vpd")
