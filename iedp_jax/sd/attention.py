"""Multi-head attention with optional capture of its head-averaged probabilities.

Every layer computes its output with the fused attention; captured layers additionally compute
``softmax(q k^T * scale)`` in float32, one head at a time, and ``sow`` the head-mean into the
``intermediates`` collection under the name ``probs``. The fused path is
``jax.nn.dot_product_attention``, asking for cuDNN flash attention on GPU when the dtype and head
size allow it (jax's default, ``implementation=None``, is always the XLA path). The XLA path
materialises every head's ``[Q, K]`` scores (and keeps them for the backward pass): layers whose
scores exceed :data:`SCORE_BUDGET` per image (SD's 64x64-token self-attention) run in
rematerialised query chunks instead, which bounds the memory of training and inference alike. Which layers
capture is decided statically from an :class:`AttentionCapture`, so nothing is materialised
unless asked.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from iedp_jax.sd.layers import dense
from iedp_jax.sd.names import flax_path_to_module_name

Dtype = Any

SELF = "self"
CROSS = "cross"


@dataclasses.dataclass(frozen=True)
class AttentionCapture:
    """Which attention maps to record, by kind and by feature-map resolution.

    ``self_attn`` / ``cross_attn`` list the heights of the feature maps whose self (``attn1``) /
    cross (``attn2``) attention probabilities are recorded (64, 32, 16, 8 for a 512x512 image and
    an SD UNet); ``None`` records every resolution, ``()`` none.
    """

    self_attn: tuple[int, ...] | None = ()
    cross_attn: tuple[int, ...] | None = ()

    def selects(self, kind: str, height: int) -> bool:
        """True when a layer of this kind on a feature map of this height is recorded."""
        res = self.self_attn if kind == SELF else self.cross_attn
        return res is None or height in res

    @property
    def any(self) -> bool:
        return self.self_attn != () or self.cross_attn != ()


NO_CAPTURE = AttentionCapture()


def attention_maps(intermediates: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Collects sown attention maps, keyed by diffusers module path.

    Args:
      intermediates: the ``intermediates`` collection returned by ``apply(..., mutable=[...])``
        (the whole mutable dict is accepted too).

    Returns:
      ``{'up_blocks.1.attentions.2.transformer_blocks.0.attn2': probs}`` with probs
      ``[B, Q, K]`` float32, Q = h*w in row-major order, K = h*w (self) or the context length.
    """
    tree = intermediates.get("intermediates", intermediates)
    maps: dict[str, jax.Array] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                if k == "probs":
                    maps[flax_path_to_module_name(path)] = v[0]
                else:
                    walk(v, path + (k,))

    walk(tree, ())
    return maps


def is_self_attention(path: str) -> bool:
    """True for a self-attention layer's module path (``...attn1``)."""
    return path.endswith("attn1")


def maps_by_queries(maps: Mapping[str, jax.Array], kind: str) -> dict[int, list[jax.Array]]:
    """The ``kind`` (SELF or CROSS) maps of :func:`attention_maps` grouped by their number of
    queries (the feature map's h*w), each group in module-path order."""
    out: dict[int, list[jax.Array]] = {}
    for path in sorted(maps):
        if is_self_attention(path) == (kind == SELF):
            out.setdefault(maps[path].shape[1], []).append(maps[path])  # [B, h*w, K]
    return out


def maps_by_side(maps: Mapping[str, jax.Array], kind: str) -> dict[int, list[jax.Array]]:
    """:func:`maps_by_queries` for square feature maps, keyed by the side."""
    out: dict[int, list[jax.Array]] = {}
    for q, layers in maps_by_queries(maps, kind).items():
        side = math.isqrt(q)
        if side * side != q:
            raise ValueError(f"attention maps with {q} queries do not come from a square feature map.")
        out[side] = layers
    return out


def mean_map(layers: Sequence[jax.Array], dtype: Any = jnp.float32) -> jax.Array:
    """The mean of same-shaped maps, accumulated in float32 one at a time (no stacked copy)."""
    total = layers[0].astype(jnp.float32)
    for m in layers[1:]:
        total = total + m.astype(jnp.float32)
    return (total / len(layers)).astype(dtype)


def fused_implementation(q: jax.Array) -> str | None:
    """``'cudnn'`` on GPU for half-precision inputs with a head size cuDNN supports, else XLA."""
    d = q.shape[-1]
    if (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
            and d <= 128 and d % 8 == 0):
        return "cudnn"
    return None


def _cpu_float16(x: jax.Array) -> bool:
    """XLA:CPU has no float16 x float16 -> float32 dot: such inputs are computed in float32 there."""
    return x.dtype == jnp.float16 and jax.default_backend() == "cpu"


def sdpa(q: jax.Array, k: jax.Array, v: jax.Array, **kwargs) -> jax.Array:
    """``jax.nn.dot_product_attention(q, k, v, **kwargs)`` ([B, T, N, D] inputs), computed in float32
    for float16 inputs on a CPU (cast back to ``v``'s dtype)."""
    if _cpu_float16(q):
        kwargs.pop("implementation", None)
        f32 = jnp.float32
        return jax.nn.dot_product_attention(q.astype(f32), k.astype(f32), v.astype(f32), **kwargs).astype(v.dtype)
    return jax.nn.dot_product_attention(q, k, v, **kwargs)


# Attention scores kept alive at once per image on the XLA path: a quarter of one head's
# [4096, 4096] (the 64x64-token self-attention of SD at 512 px; 16 MiB in float32). Larger
# layers (SD's 64x64 and 32x32 self-attention) run in query chunks of this size.
SCORE_BUDGET = 2**22


def query_chunk(num_queries: int, heads: int, num_keys: int, budget: int = SCORE_BUDGET) -> int:
    """Queries per chunk so that one chunk's scores ``[chunk, heads, K]`` hold at most ``budget``
    elements per image: the largest divisor of ``num_queries`` under that size (all queries when
    they fit, a padded chunk when no divisor is within 2x of the target)."""
    target = max(1, budget // max(1, heads * num_keys))
    if target >= num_queries:
        return num_queries
    for c in range(target, max(1, target // 2) - 1, -1):
        if num_queries % c == 0:
            return c
    return target


def chunked_sdpa(q: jax.Array, k: jax.Array, v: jax.Array, scale: float, chunk: int) -> jax.Array:
    """``sdpa`` over query chunks of ``chunk`` rows ([B, T, N, D] inputs): a ``lax.map`` whose
    body is rematerialised, so neither the forward nor the backward pass ever holds more than one
    chunk's ``[B, N, chunk, K]`` scores (the backward recomputes them chunk by chunk). Exact: each
    query's softmax still sees every key."""
    b, nq, n, d = q.shape
    pad = -nq % chunk
    qc = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))) if pad else q
    qc = jnp.moveaxis(qc.reshape(b, (nq + pad) // chunk, chunk, n, d), 1, 0)  # [C, B, chunk, N, D]

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def one(qi: jax.Array) -> jax.Array:
        return sdpa(qi, k, v, scale=scale)

    out = jnp.moveaxis(jax.lax.map(one, qc), 0, 1).reshape(b, nq + pad, n, v.shape[-1])  # [B, T', N, D]
    return out[:, :nq] if pad else out


def head_mean_probs(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
    """Head-averaged ``softmax(q k^T * scale)`` in float32, one head at a time.

    q: [B, Q, N, D], k: [B, K, N, D] -> [B, Q, K]. A scan over heads keeps one head's
    [B, Q, K] logits alive at a time instead of all N (8x less memory for a 64x64 SD layer).
    """
    if _cpu_float16(q):
        q, k = q.astype(jnp.float32), k.astype(jnp.float32)
    qh, kh = jnp.moveaxis(q, 2, 0), jnp.moveaxis(k, 2, 0)  # [N, B, T, D]

    def add_head(total: jax.Array, qk: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        logits = jnp.einsum("bqd,bkd->bqk", qk[0], qk[1], preferred_element_type=jnp.float32) * scale
        return total + jax.nn.softmax(logits, axis=-1), None

    total, _ = jax.lax.scan(add_head, jnp.zeros((q.shape[0], q.shape[1], k.shape[1]), jnp.float32), (qh, kh))
    return total / q.shape[2]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int,
                          record: nn.Module | None = None) -> jax.Array:
    """Scaled dot-product attention over ``heads`` heads.

    Args:
      q: [B, Q, heads*D]; k, v: [B, K, heads*D].
      record: when given, the module whose ``sow`` receives the head-averaged probabilities
        ``[B, Q, K]`` (float32), computed beside the fused attention (so the output never
        depends on whether a layer is captured).

    Returns:
      [B, Q, heads*D] in the dtype of ``v``.
    """
    b, nq, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, d) for t in (q, k, v))  # [B, T, N, D]
    scale = d ** -0.5
    implementation = fused_implementation(q)
    chunk = query_chunk(nq, heads, k.shape[1])
    if implementation is None and chunk < nq:  # XLA materialises all scores: bound them
        out = chunked_sdpa(q, k, v, scale, chunk)
    else:
        out = sdpa(q, k, v, scale=scale, implementation=implementation)
    if record is not None:
        record.sow("intermediates", "probs", head_mean_probs(q, k, scale))
    return out.reshape(b, nq, inner)


class Attention(nn.Module):
    """diffusers ``Attention`` (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) without norms.

    ``capture`` is static: True makes this layer record its probabilities.
    """

    heads: int
    head_dim: int
    out_dim: int
    qkv_bias: bool = False
    capture: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        # x: [B, Q, C], context: [B, K, Cc] (None for self-attention)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        inner = self.heads * self.head_dim
        context = x if context is None else context
        q = dense(inner, use_bias=self.qkv_bias, name="to_q", **kw)(x)
        k = dense(inner, use_bias=self.qkv_bias, name="to_k", **kw)(context)
        v = dense(inner, use_bias=self.qkv_bias, name="to_v", **kw)(context)
        out = dot_product_attention(q, k, v, self.heads, self if self.capture else None)
        return dense(self.out_dim, name="to_out_0", **kw)(out)
