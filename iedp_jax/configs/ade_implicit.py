"""Ablation ladder, ADE20K rung 2: VPD + the implicit branch (iedp_jax/configs/ade.py without the
explicit branch, ``model.explicit_weight=0``); one change from iedp_jax/configs/vpd_ade.py: the context
comes from the image (CLIP image tokens -> 150 queries) instead of fixed class embeddings.

  python -m iedp_jax.train --config ade_implicit --workdir /ckpt/ade_implicit \
      --config.model.pretrained=/models/stable-diffusion-v1-5 \
      --config.model.clip_vision=/models/clip-vit-large-patch14 \
      --config.data.data_dir=/data/ade20k
  python -m iedp_jax.evaluate --workdir /ckpt/ade_implicit

Target: none published (IEDP reports only the full model, 55.9 mIoU ss); the row measures how
much of the +2.2 over VPD's 53.7 the implicit branch alone gives.
"""

from iedp_jax.config import ladder_rung, sibling_config


def get_config():
    return ladder_rung(sibling_config(__file__, "ade"), "implicit")
