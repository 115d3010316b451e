"""The Stable Diffusion / CLIP backbone shared by IEDP and DiffSegmenter (Flax, offline loaders).

Nothing here imports anything of ours outside ``iedp_jax.sd`` (neither the methods nor
``iedp_jax.infra``), and nothing ever downloads: every loader reads a local folder. A folder,
config or checkpoint that cannot be used raises :class:`WeightsError` (a ``ValueError``) naming it.
"""

from iedp_jax.sd.attention import AttentionCapture, attention_maps
from iedp_jax.sd.clip import (
                              CLIPTextConfig,
                              CLIPTextTransformer,
                              CLIPVisionConfig,
                              CLIPVisionTransformer,
                              clip_preprocess,
                              load_clip_text,
                              load_clip_vision,
)
from iedp_jax.sd.schedule import NoiseSchedule, add_noise, load_noise_schedule
from iedp_jax.sd.tokenizer import Tokenizer, load_tokenizer
from iedp_jax.sd.unet import UNet2DConditionModel, UNetConfig, decoder_features, load_unet
from iedp_jax.sd.vae import AutoencoderKL, VAEConfig, load_vae, scale_latents, unscale_latents
from iedp_jax.sd.weights import WeightsError

__all__ = [
    "AttentionCapture", "AutoencoderKL", "CLIPTextConfig", "CLIPTextTransformer", "CLIPVisionConfig",
    "CLIPVisionTransformer", "NoiseSchedule", "Tokenizer", "UNet2DConditionModel", "UNetConfig",
    "VAEConfig", "WeightsError", "add_noise", "attention_maps", "clip_preprocess", "decoder_features",
    "load_clip_text", "load_clip_vision", "load_noise_schedule", "load_tokenizer", "load_unet",
    "load_vae", "scale_latents", "unscale_latents",
]
