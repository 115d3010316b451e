"""Ablation ladder, NYUv2: IEDP with the scene prompt concatenated to the implicit tokens
(iedp_jax/configs/nyu.py with ``explicit.placement="concatenated"``, its one change).

  python -m iedp_jax.train --config nyu_explicit_concat --workdir /ckpt/nyu_concat \
      --config.model.pretrained=/models/stable-diffusion-v1-5 \
      --config.model.clip_vision=/models/clip-vit-large-patch14 \
      --config.data.data_dir=/data/nyu
  python -m iedp_jax.evaluate --workdir /ckpt/nyu_concat

iedp_jax/configs/nyu.py ("scattered") conditions the explicit branch on the scene prompt alone; here its
context is the 8 implicit tokens followed by the scene prompt, so the explicit branch trains the
UNet on the context inference uses plus the label. Depth uses no attention-map channels (VPD's
``use_attn=False``), so only the context differs. The paper's body is not public: neither
placement is known to be the paper's (docs/vpd-baseline.md).
"""

from iedp_jax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "nyu")
    c.explicit.placement = "concatenated"
    return c
