"""Stable Diffusion ``UNet2DConditionModel`` in Flax linen (SD 1.x and 2.x configurations).

NHWC at the API. Parameter names follow diffusers (``down_blocks_0/attentions_1/...``) so that
:func:`load_unet` is a rename plus transposes. Two ``sow`` collections expose internals without a
second code path:

- ``intermediates``: attention probabilities of the layers an :class:`AttentionCapture` selects
  (read them with :func:`iedp_jax.sd.attention.attention_maps`);
- ``features``: the decoder's activations, after every layer of every up block and at each up
  block's output (read them with :func:`decoder_features`).

A collection that is not listed in ``mutable`` costs nothing; under ``jit`` a sown value that is
not used is removed by XLA.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from iedp_jax.sd.attention import CROSS, NO_CAPTURE, SELF, Attention, AttentionCapture
from iedp_jax.sd.layers import Downsample2D, ResnetBlock2D, Upsample2D, conv, dense, group_norm
from iedp_jax.sd.names import flax_path_to_module_name
from iedp_jax.sd.weights import WeightsError, load_params, parse_config, resolve_component

Dtype = Any

_DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
# Config fields whose non-default values change the network in ways we do not implement.
_UNSUPPORTED = {
    "class_embed_type": None, "addition_embed_type": None, "encoder_hid_dim": None,
    "encoder_hid_dim_type": None, "time_cond_proj_dim": None, "dual_cross_attention": False,
    "only_cross_attention": False, "mid_block_only_cross_attention": None,
    "resnet_time_scale_shift": "default", "resnet_skip_time_act": False,
    "time_embedding_type": "positional", "time_embedding_act_fn": None, "timestep_post_act": None,
    "attention_type": "default", "cross_attention_norm": None, "act_fn": "silu",
    "num_class_embeds": None, "class_embeddings_concat": False,
    "projection_class_embeddings_input_dim": None, "reverse_transformer_layers_per_block": None,
}


def _per_block(value: Any, n: int, field: str) -> tuple:
    """An int (or str) broadcast to ``n`` blocks, or a length-``n`` sequence."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise WeightsError(f"UNet config field {field!r} has {len(value)} entries for {n} blocks: "
                             "give one per down block.")
        if any(isinstance(v, (list, tuple)) for v in value):
            raise WeightsError(f"UNet config field {field!r} with nested per-layer values is not supported.")
        return tuple(value)
    return (value,) * n


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """The fields of a diffusers UNet ``config.json`` that shape the network."""

    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
    transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)
    num_attention_heads: tuple[int, ...] = (8, 8, 8, 8)
    cross_attention_dim: int = 768
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    resnet_out_scale_factor: float = 1.0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    use_linear_projection: bool = False
    upcast_attention: bool = False
    time_embedding_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    sample_size: int | None = None  # the latent side the UNet was trained at (64 for SD 1.5); None: unknown

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> UNetConfig:
        """Reads a diffusers config dict; unsupported variants fail with the field named."""
        kind = cfg.get("_class_name") or (cfg.get("architectures") or [None])[0] or cfg.get("model_type")
        if kind is not None and kind != "UNet2DConditionModel":
            raise WeightsError(f"it describes a {kind}, not a UNet2DConditionModel: point it at a diffusers Stable "
                               "Diffusion folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/).")
        for field, default in _UNSUPPORTED.items():
            if cfg.get(field, default) not in (default,):
                raise WeightsError(f"UNet config field {field}={cfg[field]!r} is not supported "
                                 f"(only {default!r}): this is not an SD 1.x/2.x UNet.")
        down = tuple(cfg.get("down_block_types", cls.down_block_types))
        up = tuple(cfg.get("up_block_types", cls.up_block_types))
        n = len(down)
        for t in down:
            if t not in _DOWN_TYPES:
                raise WeightsError(f"UNet down block type {t!r} is not supported (only {_DOWN_TYPES}).")
        for t in up:
            if t not in _UP_TYPES:
                raise WeightsError(f"UNet up block type {t!r} is not supported (only {_UP_TYPES}).")
        mid = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")
        if mid not in ("UNetMidBlock2DCrossAttn", None):
            raise WeightsError(f"UNet mid_block_type {mid!r} is not supported.")
        channels = tuple(cfg.get("block_out_channels", cls.block_out_channels))
        if len(up) != n or len(channels) != n:
            raise WeightsError("UNet config must give as many up_block_types and block_out_channels "
                             "as down_block_types.")
        # diffusers quirk: SD configs put the head *count* in attention_head_dim.
        heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
        cross = cfg.get("cross_attention_dim", 1280)
        if isinstance(cross, (list, tuple)):
            if len(set(cross)) != 1:
                raise WeightsError("UNet config with a different cross_attention_dim per block is not supported.")
            cross = cross[0]
        if cfg.get("norm_num_groups", 32) is None:
            raise WeightsError("UNet config norm_num_groups=None is not supported.")
        return cls(
            in_channels=cfg.get("in_channels", 4),
            out_channels=cfg.get("out_channels", 4),
            center_input_sample=cfg.get("center_input_sample", False),
            flip_sin_to_cos=cfg.get("flip_sin_to_cos", True),
            freq_shift=cfg.get("freq_shift", 0),
            down_block_types=down,
            up_block_types=up,
            mid_block_type=mid,
            block_out_channels=channels,
            layers_per_block=_per_block(cfg.get("layers_per_block", 2), n, "layers_per_block"),
            transformer_layers_per_block=_per_block(
                cfg.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block"),
            num_attention_heads=_per_block(heads, n, "attention_head_dim"),
            cross_attention_dim=int(cross),
            downsample_padding=cfg.get("downsample_padding", 1),
            mid_block_scale_factor=cfg.get("mid_block_scale_factor", 1.0),
            resnet_out_scale_factor=cfg.get("resnet_out_scale_factor", 1.0),
            norm_num_groups=cfg.get("norm_num_groups", 32),
            norm_eps=cfg.get("norm_eps", 1e-5),
            use_linear_projection=cfg.get("use_linear_projection", False),
            upcast_attention=cfg.get("upcast_attention", False) or False,
            time_embedding_dim=cfg.get("time_embedding_dim"),
            conv_in_kernel=cfg.get("conv_in_kernel", 3),
            conv_out_kernel=cfg.get("conv_out_kernel", 3),
            sample_size=_sample_size(cfg.get("sample_size")),
        )

    @property
    def downsample_factor(self) -> int:
        """Ratio between the latent and the coarsest feature map."""
        return 2 ** (len(self.block_out_channels) - 1)


def _sample_size(value: Any) -> int | None:
    """diffusers' ``sample_size`` (an int, or [h, w] with h == w) as one side; None when absent."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise WeightsError(f"UNet config sample_size={value!r} is not square (only square sizes are supported).")
        value = value[0]
    return int(value)


def timestep_embedding(t: jax.Array, dim: int, flip_sin_to_cos: bool, shift: float,
                       max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding of (float) timesteps, as diffusers ``get_timestep_embedding``."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - shift))
    args = t.astype(jnp.float32)[:, None] * freqs[None]  # [B, half]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb  # [B, dim]


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention and GEGLU feed-forward, each pre-LayerNorm and residual."""

    dim: int
    heads: int
    capture_self: bool = False
    capture_cross: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        # x: [B, HW, C], context: [B, L, D]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ln = lambda name: nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name, **kw)  # noqa: E731
        hd = self.dim // self.heads
        x = x + Attention(self.heads, hd, self.dim, capture=self.capture_self, name="attn1", **kw)(ln("norm1")(x))
        x = x + Attention(self.heads, hd, self.dim, capture=self.capture_cross, name="attn2", **kw)(
            ln("norm2")(x), context)
        h = GEGLUFeedForward(self.dim, name="ff", **kw)(ln("norm3")(x))
        return x + h


class GEGLU(nn.Module):
    """``proj`` to 2x the width, then ``h * gelu(gate)`` (exact GELU)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hg = dense(2 * self.features, name="proj", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        h, gate = jnp.split(hg, 2, axis=-1)
        return h * nn.gelu(gate, approximate=False)


class GEGLUFeedForward(nn.Module):
    """diffusers ``FeedForward(activation_fn='geglu')``: ``net.0`` (GEGLU) -> ``net.2`` (linear)."""

    dim: int
    mult: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        return dense(self.dim, name="net_2", **kw)(GEGLU(self.dim * self.mult, name="net_0", **kw)(x))


class Transformer2DModel(nn.Module):
    """GroupNorm -> proj_in -> transformer blocks -> proj_out, plus the input (residual)."""

    channels: int
    heads: int
    layers: int
    groups: int
    use_linear_projection: bool
    capture: AttentionCapture = NO_CAPTURE
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        # x: [B, H, W, C], context: [B, L, D]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, h, w, c = x.shape
        proj = (lambda name: dense(self.channels, name=name, **kw)) if self.use_linear_projection else (
            lambda name: conv(self.channels, 1, name=name, padding=((0, 0), (0, 0)), **kw))
        hs = group_norm(self.groups, 1e-6, name="norm", **kw)(x)
        if self.use_linear_projection:
            hs = proj("proj_in")(hs.reshape(b, h * w, c))
        else:
            hs = proj("proj_in")(hs).reshape(b, h * w, self.channels)
        for i in range(self.layers):
            hs = BasicTransformerBlock(
                self.channels, self.heads, capture_self=self.capture.selects(SELF, h),
                capture_cross=self.capture.selects(CROSS, h), name=f"transformer_blocks_{i}", **kw,
            )(hs, context)  # [B, HW, C]
        if self.use_linear_projection:
            hs = proj("proj_out")(hs).reshape(b, h, w, self.channels)
        else:
            hs = proj("proj_out")(hs.reshape(b, h, w, self.channels))
        return hs + x


class TimestepEmbedding(nn.Module):
    """``linear_1`` -> SiLU -> ``linear_2``."""

    dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = dense(self.dim, name="linear_1", **kw)(x)
        return dense(self.dim, name="linear_2", **kw)(nn.silu(x))


@dataclasses.dataclass(frozen=True)
class _BlockSpec:
    """Static description of one down/mid/up block."""

    channels: int
    layers: int
    attention: bool
    heads: int
    transformer_layers: int
    resample: bool
    scale: float = 1.0


# Rematerialisation policies (``remat=``): what a rematerialised resnet / transformer keeps from
# its forward pass for the backward pass. "blocks": nothing but its inputs (the least memory;
# one extra forward of the UNet per step). "dots": also the outputs of its matmuls and
# convolutions without a batch dimension (projections, convs, feed-forward), so only norms,
# activations and the attention scores (batched dots) are recomputed.
REMAT_POLICIES = {
    "blocks": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(value: bool | str | None) -> str | None:
    """The policy name for a ``remat`` setting: False/None/"none" -> None, True -> "blocks"."""
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("", "none", "false")):
        return None
    if value is True or (isinstance(value, str) and value.lower() == "true"):
        return "blocks"
    if value not in REMAT_POLICIES:
        raise ValueError(f"remat must be False, True or one of {', '.join(REMAT_POLICIES)}, got {value!r}.")
    return value


def _maybe_remat(cls: type[nn.Module], remat: bool | str | None) -> type[nn.Module]:
    policy = remat_policy(remat)
    return cls if policy is None else nn.remat(cls, policy=REMAT_POLICIES[policy], prevent_cse=True)


class _Block(nn.Module):
    """Shared plumbing of the blocks: resnets_j (+ attentions_j), with optional remat."""

    spec: _BlockSpec
    config: UNetConfig
    capture: AttentionCapture = NO_CAPTURE
    remat: bool | str = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def resnet(self, j: int, x: jax.Array, temb: jax.Array) -> jax.Array:
        cls = _maybe_remat(ResnetBlock2D, self.remat)
        return cls(self.spec.channels, self.config.norm_num_groups, self.config.norm_eps, self.spec.scale,
                   name=f"resnets_{j}", dtype=self.dtype, param_dtype=self.param_dtype)(x, temb)

    def attention(self, j: int, x: jax.Array, context: jax.Array) -> jax.Array:
        cls = _maybe_remat(Transformer2DModel, self.remat)
        return cls(self.spec.channels, self.spec.heads, self.spec.transformer_layers,
                   self.config.norm_num_groups, self.config.use_linear_projection, self.capture,
                   name=f"attentions_{j}", dtype=self.dtype, param_dtype=self.param_dtype)(x, context)


class DownBlock(_Block):
    """``CrossAttnDownBlock2D`` / ``DownBlock2D``; returns the output and its skip connections."""

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        skips = []
        for j in range(self.spec.layers):
            x = self.resnet(j, x, temb)
            if self.spec.attention:
                x = self.attention(j, x, context)
            skips.append(x)
        if self.spec.resample:
            x = Downsample2D(self.spec.channels, self.config.downsample_padding, name="downsamplers_0",
                             dtype=self.dtype, param_dtype=self.param_dtype)(x)
            skips.append(x)
        return x, skips


class MidBlock(_Block):
    """``UNetMidBlock2DCrossAttn``: resnet, (transformer, resnet)."""

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array) -> jax.Array:
        x = self.resnet(0, x, temb)
        return self.resnet(1, self.attention(0, x, context), temb)


class UpBlock(_Block):
    """``CrossAttnUpBlock2D`` / ``UpBlock2D``; sows ``layers_j`` after each layer and ``out``."""

    @nn.compact
    def __call__(self, x: jax.Array, skips: list[jax.Array], temb: jax.Array, context: jax.Array,
                 upsample_size: tuple[int, int] | None) -> jax.Array:
        for j in range(self.spec.layers):
            x = jnp.concatenate([x, skips[j]], axis=-1)  # skips in consumption order
            x = self.resnet(j, x, temb)
            if self.spec.attention:
                x = self.attention(j, x, context)
            self.sow("features", f"layers_{j}", x)
        if self.spec.resample:
            x = Upsample2D(self.spec.channels, name="upsamplers_0", dtype=self.dtype,
                           param_dtype=self.param_dtype)(x, upsample_size)
        self.sow("features", "out", x)
        return x


class UNet2DConditionModel(nn.Module):
    """The SD UNet: ``apply({'params': p}, latents [B,h,w,C], t [B], context [B,L,D])``.

    Returns the noise prediction [B, h, w, out_channels]. Pass ``capture=AttentionCapture(...)``
    and ``mutable=['intermediates']`` to get attention maps; ``mutable=['features']`` for decoder
    features. ``remat`` rematerialises each resnet and transformer in the backward pass: True
    (or ``"blocks"``) keeps only their inputs, ``"dots"`` also their unbatched matmul/conv
    outputs (:data:`REMAT_POLICIES`).
    """

    config: UNetConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool | str = False

    @nn.compact
    def __call__(self, sample: jax.Array, timesteps: jax.Array, context: jax.Array,
                 capture: AttentionCapture = NO_CAPTURE) -> jax.Array:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        bkw = dict(config=cfg, capture=capture, remat=self.remat, **kw)
        b = sample.shape[0]
        if sample.ndim != 4 or sample.shape[-1] != cfg.in_channels:
            raise ValueError(f"UNet latents must be [B, h, w, {cfg.in_channels}] (NHWC), got {sample.shape}.")
        if context.ndim != 3 or context.shape[0] != b or context.shape[-1] != cfg.cross_attention_dim:
            raise ValueError(f"UNet context must be [{b}, L, {cfg.cross_attention_dim}], got {context.shape}.")

        t = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
        temb = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = TimestepEmbedding(cfg.time_embedding_dim or 4 * cfg.block_out_channels[0],
                                 name="time_embedding", **kw)(temb.astype(self.dtype))  # [B, T]

        x = sample.astype(self.dtype)
        if cfg.center_input_sample:
            x = 2 * x - 1.0
        context = context.astype(self.dtype)
        x = conv(cfg.block_out_channels[0], cfg.conv_in_kernel, name="conv_in", **kw)(x)

        n = len(cfg.block_out_channels)
        skips = [x]
        for i, btype in enumerate(cfg.down_block_types):
            spec = _BlockSpec(cfg.block_out_channels[i], cfg.layers_per_block[i],
                              btype == "CrossAttnDownBlock2D", cfg.num_attention_heads[i],
                              cfg.transformer_layers_per_block[i], i < n - 1, cfg.resnet_out_scale_factor)
            x, block_skips = DownBlock(spec, name=f"down_blocks_{i}", **bkw)(x, temb, context)
            skips += block_skips

        if cfg.mid_block_type is not None:
            spec = _BlockSpec(cfg.block_out_channels[-1], 1, True, cfg.num_attention_heads[-1],
                              cfg.transformer_layers_per_block[-1], False, cfg.mid_block_scale_factor)
            x = MidBlock(spec, name="mid_block", **bkw)(x, temb, context)

        for i, btype in enumerate(cfg.up_block_types):
            r = n - 1 - i  # the down block this up block mirrors
            spec = _BlockSpec(cfg.block_out_channels[r], cfg.layers_per_block[r] + 1,
                              btype == "CrossAttnUpBlock2D", cfg.num_attention_heads[r],
                              cfg.transformer_layers_per_block[r], i < n - 1, cfg.resnet_out_scale_factor)
            block_skips, skips = skips[-spec.layers:], skips[:-spec.layers]
            size = skips[-1].shape[1:3] if spec.resample else None
            x = UpBlock(spec, name=f"up_blocks_{i}", **bkw)(x, block_skips[::-1], temb, context, size)

        x = nn.silu(group_norm(cfg.norm_num_groups, cfg.norm_eps, name="conv_norm_out", **kw)(x))
        return conv(cfg.out_channels, cfg.conv_out_kernel, name="conv_out", **kw)(x)


def decoder_features(collections: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Sown decoder activations keyed ``up_blocks.{i}.layers.{j}`` / ``up_blocks.{i}.out`` (NHWC)."""
    tree = collections.get("features", collections)
    out: dict[str, jax.Array] = {}
    for block, leaves in tree.items():
        for name, value in leaves.items():
            out[flax_path_to_module_name((block, name))] = value[0]
    return out


def load_unet(path: str | os.PathLike, dtype: Dtype = jnp.float32, param_dtype: Dtype | None = None,
              remat: bool | str = False, abstract: bool = False) -> tuple[UNet2DConditionModel, dict]:
    """Loads a diffusers UNet from a local folder (pipeline root or its ``unet/``).

    Args:
      path: a diffusers Stable Diffusion folder or its ``unet/`` subfolder.
      dtype: the module's compute dtype.
      param_dtype: dtype of the returned parameters (default: ``dtype``).
      remat: rematerialise blocks in the backward pass (training memory): False, True (the
        ``"blocks"`` policy) or a policy name of :data:`REMAT_POLICIES`.
      abstract: return ``jax.ShapeDtypeStruct`` params without reading the weights.

    Returns:
      ``(module, params)``; ``module.apply({'params': params}, latents, t, context)``.
    """
    folder = resolve_component(path, "unet", "UNet",
                               "diffusers Stable Diffusion folder (unet/config.json and "
                               "unet/diffusion_pytorch_model.safetensors) or its unet/ folder")
    config = parse_config(folder, UNetConfig.from_dict)
    param_dtype = param_dtype or dtype
    module = UNet2DConditionModel(config, dtype=dtype, param_dtype=param_dtype, remat=remat_policy(remat) or False)
    params = load_params(folder, "diffusion_pytorch_model", lambda: init_unet(module), param_dtype,
                         abstract=abstract)
    return module, params


def downsampled_side(side: int, factor: int) -> int:
    """The side of a feature map ``factor`` (a power of two) times coarser than ``side``: the
    UNet's padded stride-2 convolutions round up (a 60-wide latent gives 30, 15, 8)."""
    if factor < 1 or factor & (factor - 1):
        raise ValueError(f"a UNet level is a power-of-two stride of the latent, got {factor}.")
    while factor > 1:
        side, factor = -(-side // 2), factor // 2
    return side


def level_sides(config: UNetConfig, latent_side: int) -> tuple[int, ...]:
    """Feature-map sides of the UNet levels, finest first (one per ``block_out_channels``)."""
    return tuple(downsampled_side(latent_side, 2**k) for k in range(len(config.block_out_channels)))


def attention_sides(config: UNetConfig, latent_side: int) -> tuple[int, ...]:
    """Sides of the feature maps that hold attention layers (self + cross), sorted."""
    level = level_sides(config, latent_side)
    n = len(level)
    sides = {level[i] for i, t in enumerate(config.down_block_types) if t == "CrossAttnDownBlock2D"}
    if config.mid_block_type is not None:
        sides.add(level[-1])
    sides |= {level[n - 1 - i] for i, t in enumerate(config.up_block_types) if t == "CrossAttnUpBlock2D"}
    return tuple(sorted(sides))


def init_unet(module: UNet2DConditionModel, h: int = 8, w: int = 8, seed: int = 0,
              context_len: int = 4) -> dict:
    """Randomly initialised variables (use under ``jax.eval_shape`` to get shapes only)."""
    cfg = module.config
    f = cfg.downsample_factor
    h, w = max(h, f), max(w, f)
    return module.init(jax.random.PRNGKey(seed), jnp.zeros((1, h, w, cfg.in_channels), module.dtype),
                       jnp.zeros((1,), jnp.int32), jnp.zeros((1, context_len, cfg.cross_attention_dim), module.dtype))


__all__: Sequence[str] = ["REMAT_POLICIES", "UNetConfig", "UNet2DConditionModel", "attention_sides",
                          "decoder_features", "downsampled_side", "level_sides", "load_unet", "init_unet",
                          "remat_policy", "timestep_embedding"]
