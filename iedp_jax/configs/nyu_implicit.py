"""Ablation ladder, NYUv2 rung 2: VPD + the implicit branch (iedp_jax/configs/nyu.py without the explicit
branch, ``model.explicit_weight=0``); one change from iedp_jax/configs/vpd_nyu.py: the context is 8
queries read from the image instead of the scene class's fixed embedding.

  python -m iedp_jax.train --config nyu_implicit --workdir /ckpt/nyu_implicit \
      --config.model.pretrained=/models/stable-diffusion-v1-5 \
      --config.model.clip_vision=/models/clip-vit-large-patch14 \
      --config.data.data_dir=/data/nyu
  python -m iedp_jax.evaluate --workdir /ckpt/nyu_implicit

Target: none published (IEDP reports only the full model, an 11.0% gain over VPD's RMSE 0.254);
the row measures the implicit branch alone. Unlike VPD it needs no scene label at test time.
"""

from iedp_jax.config import ladder_rung, sibling_config


def get_config():
    return ladder_rung(sibling_config(__file__, "nyu"), "implicit")
