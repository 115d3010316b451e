"""The Stable Diffusion VAE (diffusers ``AutoencoderKL``) in Flax, channels-last.

Parameter names follow diffusers (``encoder/down_blocks_0/resnets_1/norm1``,
``encoder/mid_block/attentions_0/to_q``, ``quant_conv``, ``decoder/up_blocks_0/upsamplers_0/conv``)
so a diffusers checkpoint loads with a rename plus transposes (:func:`load_vae`).

Every normalisation in the diffusers VAE uses eps 1e-6 (resnets, the mid-block attention's group
norm, ``conv_norm_out``), whatever the config says; the encoder downsamples with padding 0
(pad right/bottom by one, then a stride-2 3x3 convolution) and outputs ``2 * latent_channels``
channels (mean and log-variance); the mid-block attention is single-head with head_dim = channels,
biased q/k/v, a group norm before it and a residual connection around it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from iedp_jax.sd.attention import dot_product_attention
from iedp_jax.sd.layers import Downsample2D, ResnetBlock2D, Upsample2D, conv, dense, group_norm
from iedp_jax.sd.weights import WeightsError, load_params, parse_config, resolve_component

Dtype = Any

VAE_EPS = 1e-6  # diffusers hard-codes this for every norm of the VAE
_ACTIVATIONS = ("silu", "swish")  # diffusers maps both to nn.SiLU
_DOWN_BLOCKS = ("DownEncoderBlock2D",)
_UP_BLOCKS = ("UpDecoderBlock2D",)
_CLASS_NAMES = ("AutoencoderKL",)
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # diffusers' DiagonalGaussianDistribution clamp


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """The fields of a diffusers ``AutoencoderKL`` ``config.json`` that define the model.

    Defaults are diffusers' constructor defaults; :meth:`from_dict` reads a config.json dict
    (unknown keys such as ``_diffusers_version`` are ignored). Construction validates: an
    unsupported activation or block type raises :class:`WeightsError` naming it.
    """

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, ...] = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        # Lists from JSON become tuples so that the config stays hashable (a static module field).
        for name in ("down_block_types", "up_block_types", "block_out_channels", "sample_size",
                     "latents_mean", "latents_std"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.act_fn not in _ACTIVATIONS:
            raise WeightsError(
                f"VAE act_fn {self.act_fn!r} is not supported (only 'silu', which diffusers also "
                "calls 'swish')."
            )
        for field, allowed in (("down_block_types", _DOWN_BLOCKS), ("up_block_types", _UP_BLOCKS)):
            for block in getattr(self, field):
                if block not in allowed:
                    raise WeightsError(
                        f"VAE {field} entry {block!r} is not supported (only {allowed[0]!r})."
                    )
        n = len(self.block_out_channels)
        if n == 0 or len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise WeightsError(
                f"VAE config has {n} block_out_channels, {len(self.down_block_types)} "
                f"down_block_types and {len(self.up_block_types)} up_block_types: they must agree."
            )
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise WeightsError(
                    f"VAE block_out_channels entry {c} is not divisible by norm_num_groups "
                    f"{self.norm_num_groups}."
                )

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> VAEConfig:
        """Builds the config from a diffusers ``config.json`` dict."""
        class_name = config.get("_class_name")
        if class_name is not None and class_name not in _CLASS_NAMES:
            raise WeightsError(
                f"VAE _class_name {class_name!r} is not supported (only 'AutoencoderKL')."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})

    @property
    def downsample_factor(self) -> int:
        """Image size / latent size (8 for Stable Diffusion)."""
        return 2 ** (len(self.block_out_channels) - 1)


class VAEAttention(nn.Module):
    """The VAE mid-block attention: group norm, single-head self-attention, residual."""

    groups: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # x: [B, H, W, C]
        b, h, w, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = group_norm(self.groups, VAE_EPS, name="group_norm", **kw)(x).reshape(b, h * w, c)
        q = dense(c, name="to_q", **kw)(y)
        k = dense(c, name="to_k", **kw)(y)
        v = dense(c, name="to_v", **kw)(y)
        out = dot_product_attention(q, k, v, heads=1)
        out = dense(c, name="to_out_0", **kw)(out)
        return x + out.reshape(b, h, w, c)


class VAEMidBlock(nn.Module):
    """diffusers ``UNetMidBlock2D`` as the VAE uses it: resnet, [attention], resnet; no temb."""

    channels: int
    groups: int
    add_attention: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = ResnetBlock2D(self.channels, self.groups, VAE_EPS, name="resnets_0", **kw)(x, None)
        if self.add_attention:
            x = VAEAttention(self.groups, name="attentions_0", **kw)(x)
        return ResnetBlock2D(self.channels, self.groups, VAE_EPS, name="resnets_1", **kw)(x, None)


class VAEBlock2D(nn.Module):
    """diffusers ``DownEncoderBlock2D`` / ``UpDecoderBlock2D``: ``num_layers`` resnets, then the
    block's resampler unless it is the last block.

    ``resample``: ``'down'`` adds ``downsamplers_0``, a padding-0 stride-2 3x3 convolution (the
    encoder's); ``'up'`` adds ``upsamplers_0``, a nearest 2x upsampling then a 3x3 convolution (the
    decoder's); None adds nothing.
    """

    out_channels: int
    num_layers: int
    groups: int
    resample: str | None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, self.groups, VAE_EPS, name=f"resnets_{i}", **kw)(x, None)
        if self.resample == "down":
            x = Downsample2D(self.out_channels, padding=0, name="downsamplers_0", **kw)(x)
        elif self.resample == "up":
            x = Upsample2D(self.out_channels, name="upsamplers_0", **kw)(x)
        elif self.resample is not None:
            raise ValueError(f"VAEBlock2D resample must be 'down', 'up' or None, got {self.resample!r}.")
        return x


class Encoder(nn.Module):
    """diffusers ``Encoder`` with ``double_z=True``: image -> [B, h, w, 2 * latent_channels]."""

    config: VAEConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        channels = cfg.block_out_channels
        x = conv(channels[0], 3, name="conv_in", **kw)(x)
        for i, c in enumerate(channels):
            x = VAEBlock2D(c, cfg.layers_per_block, cfg.norm_num_groups,
                           resample="down" if i < len(channels) - 1 else None,
                           name=f"down_blocks_{i}", **kw)(x)
        x = VAEMidBlock(channels[-1], cfg.norm_num_groups, cfg.mid_block_add_attention,
                        name="mid_block", **kw)(x)
        x = nn.silu(group_norm(cfg.norm_num_groups, VAE_EPS, name="conv_norm_out", **kw)(x))
        return conv(2 * cfg.latent_channels, 3, name="conv_out", **kw)(x)


class Decoder(nn.Module):
    """diffusers ``Decoder`` (group norm): latent [B, h, w, latent_channels] -> image."""

    config: VAEConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        channels = tuple(reversed(cfg.block_out_channels))
        x = conv(channels[0], 3, name="conv_in", **kw)(z)
        x = VAEMidBlock(channels[0], cfg.norm_num_groups, cfg.mid_block_add_attention,
                        name="mid_block", **kw)(x)
        for i, c in enumerate(channels):
            x = VAEBlock2D(c, cfg.layers_per_block + 1, cfg.norm_num_groups,
                           resample="up" if i < len(channels) - 1 else None,
                           name=f"up_blocks_{i}", **kw)(x)
        x = nn.silu(group_norm(cfg.norm_num_groups, VAE_EPS, name="conv_norm_out", **kw)(x))
        return conv(cfg.out_channels, 3, name="conv_out", **kw)(x)


class AutoencoderKL(nn.Module):
    """diffusers ``AutoencoderKL``, NHWC.

    ``apply({'params': p}, x, method='encode')`` -> ``(mean, logvar)``;
    ``apply({'params': p}, z, method='decode')`` -> image; ``apply({'params': p}, x)`` decodes the
    posterior mean (diffusers' ``forward`` with ``sample_posterior=False``) and is what ``init``
    runs, so it creates every parameter. Latents here are *unscaled*: multiply by
    ``config.scaling_factor`` (after subtracting ``shift_factor`` if set) for the UNet, see
    :func:`scale_latents`.
    """

    config: VAEConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.encoder = Encoder(cfg, **kw)
        self.decoder = Decoder(cfg, **kw)
        # 1x1 convolutions (names are given by the attribute, as setup requires).
        self.quant_conv = (nn.Conv(2 * cfg.latent_channels, (1, 1), padding="VALID", **kw)
                           if cfg.use_quant_conv else None)
        self.post_quant_conv = (nn.Conv(cfg.latent_channels, (1, 1), padding="VALID", **kw)
                                if cfg.use_post_quant_conv else None)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Posterior of an image batch.

        Args:
          x: [B, H, W, in_channels] in [-1, 1].

        Returns:
          ``(mean, logvar)``, each [B, H // f, W // f, latent_channels] with
          f = ``config.downsample_factor`` (each padding-0 downsampler floors odd sides, as in
          diffusers); logvar clipped to [-30, 20] as in diffusers.
        """
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: jax.Array) -> jax.Array:
        """Image [B, h*f, w*f, out_channels] (about [-1, 1]) from unscaled latents [B, h, w, C]."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """Encode then decode; decodes a posterior sample when ``rng`` is given, else the mean."""
        mean, logvar = self.encode(x)
        z = mean if rng is None else sample_latent(mean, logvar, rng)
        return self.decode(z)


def sample_latent(mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
    """A draw from the diagonal Gaussian posterior: ``mean + exp(logvar / 2) * eps``."""
    eps = jax.random.normal(rng, mean.shape, dtype=mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps


def scale_latents(config: VAEConfig, z: jax.Array) -> jax.Array:
    """VAE latents -> UNet latents: ``(z - shift_factor) * scaling_factor``."""
    if config.shift_factor is not None:
        z = z - config.shift_factor
    return z * config.scaling_factor


def unscale_latents(config: VAEConfig, z: jax.Array) -> jax.Array:
    """UNet latents -> VAE latents (inverse of :func:`scale_latents`)."""
    z = z / config.scaling_factor
    if config.shift_factor is not None:
        z = z + config.shift_factor
    return z


_LEGACY_ATTENTION = re.compile(r"^(.*\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$")
_LEGACY_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def rename_vae_key(key: str) -> str:
    """Maps legacy attention names (old checkpoints, e.g. the released SD 1.5 VAE) to diffusers'.

    ``mid_block.attentions.0.query|key|value|proj_attn`` -> ``to_q|to_k|to_v|to_out.0``.
    """
    m = _LEGACY_ATTENTION.match(key)
    if m:
        return f"{m.group(1)}{_LEGACY_NAMES[m.group(2)]}.{m.group(3)}"
    return key


def load_vae(path: str | os.PathLike, dtype: Dtype = jnp.float32,
             param_dtype: Dtype | None = None, abstract: bool = False) -> tuple[AutoencoderKL, Any]:
    """Loads a diffusers ``AutoencoderKL`` folder as ``(module, params)``.

    Args:
      path: a diffusers pipeline root (with ``vae/``) or the VAE folder itself (``config.json``
        plus ``diffusion_pytorch_model.safetensors``, or ``.bin``).
      dtype: compute dtype of the module.
      param_dtype: dtype of the returned parameters; None means ``dtype``.
      abstract: return ``jax.ShapeDtypeStruct`` params without reading the weights.

    Raises:
      WeightsError: missing folder/config/weights, an unsupported config (naming the field), or a
        missing, unexpected or mis-shaped tensor (naming it).
    """
    folder = resolve_component(
        path, "vae", "VAE",
        "diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors) or a "
        "pipeline root with vae/",
    )
    config = parse_config(folder, VAEConfig.from_dict)
    param_dtype = dtype if param_dtype is None else param_dtype
    module = AutoencoderKL(config, dtype=dtype, param_dtype=param_dtype)
    side = 2 * config.downsample_factor
    x = jnp.zeros((1, side, side, config.in_channels), dtype)
    params = load_params(folder, "diffusion_pytorch_model",
                         lambda: module.init(jax.random.PRNGKey(0), x), param_dtype, rename_vae_key,
                         abstract=abstract)
    return module, params
