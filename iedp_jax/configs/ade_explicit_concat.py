"""Ablation ladder, ADE20K: IEDP with the explicit prompt concatenated to the implicit tokens
(iedp_jax/configs/ade.py with ``explicit.placement="concatenated"``, its one change).

  python -m iedp_jax.train --config ade_explicit_concat --workdir /ckpt/ade_concat \
      --config.model.pretrained=/models/stable-diffusion-v1-5 \
      --config.model.clip_vision=/models/clip-vit-large-patch14 \
      --config.data.data_dir=/data/ade20k
  python -m iedp_jax.evaluate --workdir /ckpt/ade_concat

iedp_jax/configs/ade.py ("scattered") makes the label prompt the explicit branch's whole context and puts
class c's prompt-token map into attention channel c, which at inference is the map of learned
query c: the gain of the explicit branch can then hinge on queries and classes lining up. Here
the explicit branch's context is the image's 150 implicit tokens followed by the prompt tokens,
and the head sees the maps of the 150 implicit tokens, the channels inference uses; the prompt
guides the shared UNet through cross-attention only. The paper's text says only that the two
branches share the diffusion model's weights and that labels are the explicit prompts; its body
is not public, so neither placement is known to be the paper's (docs/vpd-baseline.md).
"""

from iedp_jax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "ade")
    c.explicit.placement = "concatenated"
    return c
