"""CLIP text and vision towers in Flax, loaded from local transformers / diffusers folders.

Parameter names are transformers' CLIP names (``embeddings/token_embedding/embedding``,
``encoder/layers_0/self_attn/q_proj/kernel``, ``pre_layrnorm``, ``visual_projection``), so
:func:`iedp_jax.sd.weights.load_params` converts a checkpoint by renaming and transposing only.
The text tower is what Stable Diffusion conditions on (``text_encoder/``) and what the IEDP
explicit branch encodes prompts with; the vision tower feeds the IEDP implicit branch and
DiffSegmenter's category filter. Both reproduce transformers in float32 to about 1e-6.

Key layouts met on disk (transformers 5 ``save_pretrained``):

- ``CLIPTextModel`` / ``CLIPVisionModel``: no prefix (``embeddings.token_embedding.weight``).
- ``CLIPTextModelWithProjection``: ``text_model.*`` + ``text_projection.weight``;
  ``CLIPVisionModelWithProjection``: ``vision_model.*`` + ``visual_projection.weight``.
- ``CLIPModel``: both towers prefixed, both projections and ``logit_scale``.
- transformers 4 (real Stable Diffusion folders) prefixes every key, also for ``CLIPTextModel``,
  and may store the ``position_ids`` buffer.

All of these load: prefixes are stripped, buffers, ``logit_scale`` and the other tower skipped.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple, Self

import flax.linen as nn
import jax
import jax.numpy as jnp

from iedp_jax.sd.attention import dot_product_attention, sdpa
from iedp_jax.sd.layers import dense
from iedp_jax.sd.weights import (
    WeightsError,
    checkpoint_files,
    iter_checkpoint,
    load_params,
    parse_config,
    resolve_component,
)

Dtype = Any
PyTree = Any

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf, as torch's default
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}

_TEXT_LAYOUT = ("diffusers pipeline root with text_encoder/config.json, or a transformers "
                "CLIPTextModel(WithProjection) / CLIPModel folder (config.json + model.safetensors)")
_VISION_LAYOUT = ("diffusers pipeline root with image_encoder/config.json, or a transformers "
                  "CLIPVisionModel(WithProjection) / CLIPModel folder (config.json + model.safetensors)")


# ----------------------------------------------------------------------------------------------
# Configs.


def _activation_name(name: str, where: str) -> str:
    if name not in _ACTIVATIONS:
        raise WeightsError(
            f"{where} hidden_act {name!r} is not supported: use one of {', '.join(_ACTIVATIONS)}."
        )
    return name


def _tower_dict(d: Mapping[str, Any], tower: str) -> tuple[dict[str, Any], bool]:
    """Returns the tower's own config dict and whether ``d`` is a full ``CLIPModel`` config.

    ``tower`` is ``'text'`` or ``'vision'``. A ``CLIPModel`` config nests ``text_config`` /
    ``vision_config`` (transformers 4 may also carry ``*_config_dict`` overrides) and keeps the
    shared ``projection_dim`` at the top level.
    """
    other = "vision" if tower == "text" else "text"
    if f"{tower}_config" in d or d.get("model_type") == "clip":
        sub = dict(d.get(f"{tower}_config") or {})
        sub.update(d.get(f"{tower}_config_dict") or {})
        if "projection_dim" in d:
            sub["projection_dim"] = d["projection_dim"]
        return sub, True
    if d.get("model_type") == f"clip_{other}_model" or (
        "model_type" not in d and f"{other}_config" in d
    ):
        raise WeightsError(
            f"config.json describes a CLIP {other} model (model_type {d.get('model_type')!r}), "
            f"not the CLIP {tower} tower asked for."
        )
    model_type = d.get("model_type", f"clip_{tower}_model")
    if model_type != f"clip_{tower}_model":
        raise WeightsError(
            f"config.json model_type {model_type!r} is not a CLIP {tower} model "
            f"(expected 'clip_{tower}_model' or 'clip')."
        )
    return dict(d), False


def _architecture_projection(d: Mapping[str, Any]) -> bool | None:
    """True/False when ``architectures`` says whether the checkpoint has a projection."""
    archs = d.get("architectures") or []
    if any(a == "CLIPModel" or a.endswith("WithProjection") for a in archs):
        return True
    if any(a in ("CLIPTextModel", "CLIPVisionModel") for a in archs):
        return False
    return None


class _TowerConfig:
    """What the two tower configs share: reading a config.json dict and the head-count check.

    Subclasses are frozen dataclasses with ``hidden_size``, ``num_attention_heads``,
    ``hidden_act`` and ``with_projection`` fields; ``tower`` is ``'text'`` or ``'vision'``.
    """

    tower: ClassVar[str]

    def _check_common(self) -> None:
        where = f"CLIP {self.tower} config"
        _activation_name(self.hidden_act, where)
        if self.hidden_size % self.num_attention_heads:
            raise WeightsError(
                f"{where} hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}."
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], with_projection: bool | None = None) -> Self:
        """Builds the config from the tower's own config.json (``CLIPTextModel`` /
        ``CLIPVisionModel``, optionally ``WithProjection``) or a full ``CLIPModel`` one.

        ``with_projection=None`` decides from ``architectures`` (a ``CLIPModel`` always has one);
        missing fields take transformers' defaults.

        Raises:
          WeightsError: a config of another model or tower, or an unsupported value (named).
        """
        sub, full = _tower_dict(d, cls.tower)
        if with_projection is None:
            with_projection = True if full else bool(_architecture_projection(d))
        names = {f.name for f in dataclasses.fields(cls)} - {"with_projection"}
        kw = {k: sub[k] for k in names if sub.get(k) is not None}
        return cls(with_projection=with_projection, **kw)


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig(_TowerConfig):
    """The fields of a transformers ``CLIPTextConfig`` that shape the computation.

    ``with_projection`` adds ``text_projection`` (``CLIPTextModelWithProjection`` / ``CLIPModel``).
    ``eos_token_id`` picks the pooling rule (see :class:`CLIPTextTransformer`).
    """

    tower: ClassVar[str] = "text"

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512
    with_projection: bool = False
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 1

    def __post_init__(self) -> None:
        self._check_common()


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(_TowerConfig):
    """The fields of a transformers ``CLIPVisionConfig`` that shape the computation.

    ``with_projection`` adds ``visual_projection`` (``CLIPVisionModelWithProjection`` /
    ``CLIPModel``).
    """

    tower: ClassVar[str] = "vision"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512
    with_projection: bool = False

    def __post_init__(self) -> None:
        self._check_common()
        if self.image_size % self.patch_size:
            raise WeightsError(
                f"CLIP vision config image_size {self.image_size} is not a multiple of "
                f"patch_size {self.patch_size}."
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


# ----------------------------------------------------------------------------------------------
# Modules.


class CLIPTextOutput(NamedTuple):
    last_hidden_state: jax.Array  # [B, L, D], after final_layer_norm
    pooler_output: jax.Array  # [B, D], the end-of-text token's state
    text_embeds: jax.Array | None  # [B, P] text_projection(pooler_output), None without projection
    hidden_states: tuple[jax.Array, ...] | None  # num_layers + 1 x [B, L, D] when asked


class CLIPVisionOutput(NamedTuple):
    last_hidden_state: jax.Array  # [B, 1 + N, D], last layer output (no post_layernorm)
    pooler_output: jax.Array  # [B, D], post_layernorm(CLS)
    image_embeds: jax.Array | None  # [B, P] visual_projection(pooler_output), None without projection
    hidden_states: tuple[jax.Array, ...] | None  # num_layers + 1 x [B, 1 + N, D] when asked


def _layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
    """LayerNorm with PyTorch semantics (two-pass variance)."""
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                        use_fast_variance=False, name=name)


class CLIPAttention(nn.Module):
    """transformers ``CLIPAttention``: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` with biases."""

    hidden_size: int
    heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, causal: bool = False,
                 padding_mask: jax.Array | None = None) -> jax.Array:
        # x: [B, T, D]; padding_mask: [B, T] bool (True = real token) or None
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = dense(self.hidden_size, name="q_proj", **kw)(x)  # [B, T, D]
        k = dense(self.hidden_size, name="k_proj", **kw)(x)
        v = dense(self.hidden_size, name="v_proj", **kw)(x)
        if not causal and padding_mask is None:
            out = dot_product_attention(q, k, v, self.heads)  # fused path
        else:
            b, t, d = q.shape
            q, k, v = (a.reshape(b, t, self.heads, d // self.heads) for a in (q, k, v))
            mask = None if padding_mask is None else padding_mask.astype(bool)[:, None, None, :]
            out = sdpa(q, k, v, mask=mask, is_causal=causal, scale=(d // self.heads) ** -0.5)
            out = out.reshape(b, t, d)  # [B, T, D]
        return dense(self.hidden_size, name="out_proj", **kw)(out)


class CLIPMLP(nn.Module):
    """``fc1`` -> activation -> ``fc2``."""

    hidden_size: int
    intermediate_size: int
    hidden_act: str
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = dense(self.intermediate_size, name="fc1", **kw)(x)  # [B, T, I]
        h = _ACTIVATIONS[self.hidden_act](h)
        return dense(self.hidden_size, name="fc2", **kw)(h)  # [B, T, D]


class CLIPEncoderLayer(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    hidden_size: int
    intermediate_size: int
    heads: int
    hidden_act: str
    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, causal: bool = False,
                 padding_mask: jax.Array | None = None) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = _layer_norm(self.eps, name="layer_norm1", **kw)(x)
        x = x + CLIPAttention(self.hidden_size, self.heads, name="self_attn", **kw)(h, causal, padding_mask)
        h = _layer_norm(self.eps, name="layer_norm2", **kw)(x)
        return x + CLIPMLP(self.hidden_size, self.intermediate_size, self.hidden_act, name="mlp", **kw)(h)


class CLIPEncoder(nn.Module):
    """``layers_0 ... layers_{n-1}``; returns the last output and, when asked, every layer's input."""

    config: CLIPTextConfig | CLIPVisionConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, causal: bool = False, padding_mask: jax.Array | None = None,
                 output_hidden_states: bool = False) -> tuple[jax.Array, tuple[jax.Array, ...] | None]:
        c = self.config
        states = [x]
        for i in range(c.num_hidden_layers):
            x = CLIPEncoderLayer(c.hidden_size, c.intermediate_size, c.num_attention_heads,
                                 c.hidden_act, c.layer_norm_eps, dtype=self.dtype,
                                 param_dtype=self.param_dtype, name=f"layers_{i}")(x, causal, padding_mask)
            states.append(x)
        return x, (tuple(states) if output_hidden_states else None)


class CLIPTextEmbeddings(nn.Module):
    """Token plus learned absolute position embeddings."""

    config: CLIPTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        length = input_ids.shape[-1]
        tokens = nn.Embed(c.vocab_size, c.hidden_size, name="token_embedding", **kw)(input_ids)
        positions = nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embedding",
                             **kw)(jnp.arange(length))  # [L, D]
        return tokens + positions[None]  # [B, L, D]


class CLIPTextTransformer(nn.Module):
    """The CLIP text tower (``CLIPTextModel``, optionally ``WithProjection``).

    Causal self-attention over the tokens, optionally also masked by a padding ``attention_mask``
    (transformers' semantics: padded keys are ignored, padded queries still get outputs).
    The pooled state is taken at the end-of-text token with transformers' rule: when the config's
    ``eos_token_id`` is 2 (the legacy value of the released SD 1.5 config) at ``argmax(input_ids)``
    (49407 is the largest id), otherwise at the first position equal to ``eos_token_id``.
    """

    config: CLIPTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 output_hidden_states: bool = False) -> CLIPTextOutput:
        # input_ids: [B, L] int; attention_mask: [B, L] (1 = token, 0 = padding) or None
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if input_ids.shape[-1] > c.max_position_embeddings:
            raise ValueError(
                f"Token sequence length {input_ids.shape[-1]} exceeds the CLIP text model's "
                f"max_position_embeddings {c.max_position_embeddings}."
            )
        x = CLIPTextEmbeddings(c, name="embeddings", **kw)(input_ids)  # [B, L, D]
        x, states = CLIPEncoder(c, name="encoder", **kw)(
            x, causal=True, padding_mask=attention_mask, output_hidden_states=output_hidden_states)
        x = _layer_norm(c.layer_norm_eps, name="final_layer_norm", **kw)(x)  # [B, L, D]
        if c.eos_token_id == 2:
            eos_pos = jnp.argmax(input_ids, axis=-1)  # [B]
        else:
            eos_pos = jnp.argmax((input_ids == c.eos_token_id).astype(jnp.int32), axis=-1)  # [B]
        pooled = jnp.take_along_axis(x, eos_pos[:, None, None], axis=1)[:, 0]  # [B, D]
        embeds = None
        if c.with_projection:
            embeds = dense(c.projection_dim, use_bias=False, name="text_projection", **kw)(pooled)
        return CLIPTextOutput(x, pooled, embeds, states)


class CLIPVisionEmbeddings(nn.Module):
    """CLS token plus non-overlapping patch embeddings, plus learned position embeddings."""

    config: CLIPVisionConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        # pixel_values: [B, S, S, C] with S = image_size
        c = self.config
        b = pixel_values.shape[0]
        p = c.patch_size
        cls = self.param("class_embedding", nn.initializers.normal(0.02), (c.hidden_size,),
                         self.param_dtype)
        patches = nn.Conv(c.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                          dtype=self.dtype, param_dtype=self.param_dtype,
                          name="patch_embedding")(pixel_values)  # [B, S/p, S/p, D]
        patches = patches.reshape(b, -1, c.hidden_size)  # [B, N, D], row-major as torch's flatten
        cls = jnp.broadcast_to(jnp.asarray(cls, patches.dtype), (b, 1, c.hidden_size))
        x = jnp.concatenate([cls, patches], axis=1)  # [B, 1 + N, D]
        pos = nn.Embed(c.num_patches + 1, c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                       name="position_embedding")(jnp.arange(c.num_patches + 1))  # [1 + N, D]
        return x + pos[None]


class CLIPVisionTransformer(nn.Module):
    """The CLIP image tower (``CLIPVisionModel``, optionally ``WithProjection``).

    Input: NHWC pixel values at ``image_size``, already CLIP-normalised (see
    :func:`clip_preprocess`). ``last_hidden_state`` is the last layer's output without
    ``post_layernorm``, as in transformers; ``pooler_output`` is ``post_layernorm`` of the CLS
    token.
    """

    config: CLIPVisionConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array, output_hidden_states: bool = False) -> CLIPVisionOutput:
        # pixel_values: [B, S, S, C]
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if pixel_values.shape[1:] != (c.image_size, c.image_size, c.num_channels):
            raise ValueError(
                f"CLIP vision input has shape {tuple(pixel_values.shape)}: expected "
                f"[B, {c.image_size}, {c.image_size}, {c.num_channels}] (NHWC at image_size; "
                "use clip_preprocess)."
            )
        x = CLIPVisionEmbeddings(c, name="embeddings", **kw)(pixel_values)  # [B, 1 + N, D]
        x = _layer_norm(c.layer_norm_eps, name="pre_layrnorm", **kw)(x)
        x, states = CLIPEncoder(c, name="encoder", **kw)(x, output_hidden_states=output_hidden_states)
        pooled = _layer_norm(c.layer_norm_eps, name="post_layernorm", **kw)(x[:, 0])  # [B, D]
        embeds = None
        if c.with_projection:
            embeds = dense(c.projection_dim, use_bias=False, name="visual_projection", **kw)(pooled)
        return CLIPVisionOutput(x, pooled, embeds, states)


def clip_preprocess(images: jax.Array, image_size: int = 224) -> jax.Array:
    """Resizes images in [0, 1] to ``image_size`` squared (bicubic) and applies CLIP's mean/std.

    A plain square resize, not CLIP's short-side resize plus centre crop: callers crop first when
    the aspect ratio matters. Antialiased when shrinking (``jax.image.resize``), as PIL's bicubic.
    Jittable; ``image_size`` is static.

    Args:
      images: [B, H, W, 3] float in [0, 1].

    Returns:
      [B, image_size, image_size, 3] float32.
    """
    images = jnp.asarray(images, jnp.float32)
    b, h, w, c = images.shape
    if (h, w) != (image_size, image_size):
        images = jax.image.resize(images, (b, image_size, image_size, c), method="bicubic")
    mean = jnp.asarray(CLIP_MEAN, jnp.float32)
    std = jnp.asarray(CLIP_STD, jnp.float32)
    return (images - mean) / std


# ----------------------------------------------------------------------------------------------
# Loaders.


def _checkpoint_keys(folder: os.PathLike) -> set[str]:
    """Names of the tensors in a component's checkpoint (safetensors: header and mmap only)."""
    return {k for k, _ in iter_checkpoint(checkpoint_files(folder, "model"))}


def _rename(tower: str, full: bool) -> Callable[[str], str | None]:
    """Maps checkpoint keys to this tower's layout: strips the tower prefix, skips buffers and,
    in a ``CLIPModel`` folder, ``logit_scale`` and the other tower with its projection."""
    prefix = "text_model." if tower == "text" else "vision_model."
    other = ("vision_model.", "visual_projection.") if tower == "text" else ("text_model.", "text_projection.")

    def rename(key: str) -> str | None:
        if key.endswith("position_ids"):
            return None
        if full and (key == "logit_scale" or key.startswith(other)):
            return None
        return key.removeprefix(prefix)

    return rename


class _Tower(NamedTuple):
    """How to find, configure, build and initialise one tower."""

    subfolder: str  # of a diffusers pipeline root
    what: str  # for errors
    layout: str  # for errors
    config: type[CLIPTextConfig | CLIPVisionConfig]
    module: type[CLIPTextTransformer | CLIPVisionTransformer]
    projection_key: str  # the projection's tensor in an unprefixed checkpoint
    example: Callable[[Any], jax.Array]  # config -> an input for init


_TOWERS = {
    "text": _Tower("text_encoder", "CLIP text encoder", _TEXT_LAYOUT, CLIPTextConfig, CLIPTextTransformer,
                   "text_projection.weight",
                   lambda c: jnp.zeros((1, c.max_position_embeddings), jnp.int32)),
    "vision": _Tower("image_encoder", "CLIP image encoder", _VISION_LAYOUT, CLIPVisionConfig,
                     CLIPVisionTransformer, "visual_projection.weight",
                     lambda c: jnp.zeros((1, c.image_size, c.image_size, c.num_channels), jnp.float32)),
}


def _load_tower(tower: str, path: str | os.PathLike, dtype: Dtype,
                param_dtype: Dtype | None, abstract: bool = False) -> tuple[nn.Module, PyTree]:
    """The loader of :func:`load_clip_text` (``tower='text'``) and :func:`load_clip_vision`."""
    spec = _TOWERS[tower]
    folder = resolve_component(path, spec.subfolder, spec.what, spec.layout)

    d, full = parse_config(folder, lambda d: (d, _tower_dict(d, tower)[1]))
    projection = None
    if not full and _architecture_projection(d) is None:  # no architectures: look at the keys
        projection = spec.projection_key in _checkpoint_keys(folder)
    config = parse_config(folder, lambda d: spec.config.from_dict(d, with_projection=projection))
    param_dtype = dtype if param_dtype is None else param_dtype
    module = spec.module(config, dtype=dtype, param_dtype=param_dtype)
    x = spec.example(config)
    params = load_params(folder, "model", lambda: module.init(jax.random.PRNGKey(0), x),
                         param_dtype, _rename(tower, full), abstract=abstract)
    return module, params


def load_clip_text(path: str | os.PathLike, dtype: Dtype = jnp.float32,
                   param_dtype: Dtype | None = None, abstract: bool = False) -> tuple[CLIPTextTransformer, PyTree]:
    """Loads a CLIP text tower from a local folder.

    Args:
      path: a diffusers pipeline root (reads ``text_encoder/``) or a transformers
        ``CLIPTextModel(WithProjection)`` / ``CLIPModel`` folder (config.json + model.safetensors),
        saved by transformers 4 (``text_model.`` key prefix) or 5.
      dtype: compute dtype of the module.
      param_dtype: dtype of the returned parameters; None means ``dtype``.
      abstract: return ``jax.ShapeDtypeStruct`` params without reading the weights.

    Returns:
      ``(module, params)``; call ``module.apply({'params': params}, input_ids[B, L])``.

    Raises:
      WeightsError: missing folder/files; a config.json that is not a CLIP text config or has an
        unsupported value (naming the file and the field); a missing, unexpected or mis-shaped
        tensor.
    """
    return _load_tower("text", path, dtype, param_dtype, abstract)


def load_clip_vision(path: str | os.PathLike, dtype: Dtype = jnp.float32,
                     param_dtype: Dtype | None = None, abstract: bool = False) -> tuple[CLIPVisionTransformer, PyTree]:
    """Loads a CLIP image tower from a local folder.

    Args:
      path: a diffusers pipeline root (reads ``image_encoder/``) or a transformers
        ``CLIPVisionModel(WithProjection)`` / ``CLIPModel`` folder (e.g.
        ``openai/clip-vit-large-patch14`` saved locally), saved by transformers 4 or 5.
      dtype: compute dtype of the module.
      param_dtype: dtype of the returned parameters; None means ``dtype``.
      abstract: return ``jax.ShapeDtypeStruct`` params without reading the weights.

    Returns:
      ``(module, params)``; call ``module.apply({'params': params}, pixels[B, S, S, 3])``.

    Raises:
      WeightsError: missing folder/files; a config.json that is not a CLIP vision config or has
        an unsupported value (naming the file and the field); a missing, unexpected or
        mis-shaped tensor.
    """
    return _load_tower("vision", path, dtype, param_dtype, abstract)
