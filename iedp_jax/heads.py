"""Task heads on the UNet's multi-scale decoder features (DESIGN 3.1), NHWC.

``features`` are fine-to-coarse maps, each level about half the size of the previous one (odd
sizes allowed: a 15x15 level is followed by an 8x8 one). Wherever a map is brought to another
level it is resized to that level's exact shape, so any crop size works.

VPD uses mmseg's SyncBN/BN in these heads; we use GroupNorm everywhere (configurable group
count): it needs no cross-device batch statistics and behaves the same at batch size 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from iedp_jax.infra.errors import ConfigError
from iedp_jax.sd.layers import conv, group_norm, resize_bilinear, resize_nearest

Dtype = Any
_GN_EPS = 1e-5  # PyTorch's GroupNorm default
RESIZES = ("bilinear", "nearest")
HEAD_INITS = ("flax", "vpd")


def _check_features(features: Sequence[jax.Array]) -> None:
    if len(features) == 0:
        raise ValueError("features must hold at least one [B, h, w, C] map.")
    for i, f in enumerate(features):
        if f.ndim != 4 or f.shape[0] != features[0].shape[0]:
            raise ValueError(f"every feature must be [B, h, w, C] with the same B; level {i} has "
                             f"shape {f.shape}, level 0 has {features[0].shape}.")


def _check_groups(channels: int, groups: int, what: str) -> None:
    if channels % groups:
        raise ConfigError(f"{what} ({channels}) must be divisible by groups ({groups}).")


def _hw(x: jax.Array) -> tuple[int, int]:
    return int(x.shape[1]), int(x.shape[2])


class SemanticFPNHead(nn.Module):
    """FPN neck + Semantic-FPN head (mmseg ``FPN`` + ``FPNHead`` as configured by VPD).

    FPN: 1x1 lateral conv per level, top-down sum of nearest-upsampled coarser laterals, 3x3
    output conv per level. Head: level k passes through ``max(1, k)`` stages of
    [3x3 conv + GroupNorm + ReLU (+ 2x bilinear upsample for k > 0)] down to level 0; the levels
    are summed, channel dropout (mmseg's ``Dropout2d``) is applied when training, and a 1x1 conv
    gives float32 logits at level 0's resolution.
    """

    num_classes: int
    fpn_channels: int = 256
    head_channels: int = 256
    groups: int = 32
    dropout: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], train: bool) -> jax.Array:
        # features[k]: [B, h_k, w_k, C_k], fine to coarse
        _check_features(features)
        _check_groups(self.head_channels, self.groups, "head_channels")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        n = len(features)
        shapes = [_hw(f) for f in features]

        # FPN neck.
        laterals = [conv(self.fpn_channels, 1, name=f"lateral_{k}", **kw)(f)
                    for k, f in enumerate(features)]  # [B, h_k, w_k, fpn]
        for k in range(n - 1, 0, -1):
            laterals[k - 1] = laterals[k - 1] + resize_nearest(laterals[k], shapes[k - 1])
        outs = [conv(self.fpn_channels, 3, name=f"fpn_{k}", **kw)(x)
                for k, x in enumerate(laterals)]  # [B, h_k, w_k, fpn]

        # Semantic-FPN head.
        total = None
        for k, x in enumerate(outs):
            for j in range(max(1, k)):
                x = conv(self.head_channels, 3, use_bias=False, name=f"scale_{k}_conv_{j}", **kw)(x)
                x = nn.relu(group_norm(self.groups, _GN_EPS, name=f"scale_{k}_norm_{j}", **kw)(x))
                if k > 0:
                    x = resize_bilinear(x, shapes[k - 1 - j])  # to the next finer level
            total = x if total is None else total + x  # [B, h0, w0, head]
        total = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(total)
        logits = conv(self.num_classes, 1, name="conv_seg", **kw)(total)  # [B, h0, w0, classes]
        return logits.astype(jnp.float32)


class DepthHead(nn.Module):
    """VPD's depth neck and decoder, with GroupNorm throughout.

    Neck: target level ``t = min(2, L - 1)`` (stride 32 when level 0 is stride 8). Finer levels
    ``i < t`` go through ``t - i`` stride-2 3x3 convs (GroupNorm + ReLU between consecutive ones,
    as VPD's ``layer1``); coarser levels are resized to level t (bilinear, or VPD's nearest with
    ``coarse_resize="nearest"``); concat; 1x1 conv to
    ``neck_channels`` + GroupNorm + ReLU. Decoder: 3 x [2x2 stride-2 transposed conv + GroupNorm +
    ReLU], 3x3 conv + GroupNorm + ReLU, bilinear resize straight to ``out_size`` (VPD: two fixed
    2x upsamples), 3x3 conv + ReLU + 3x3 conv to one channel, ``sigmoid * max_depth`` (float32).
    """

    max_depth: float = 10.0
    neck_channels: int = 1536
    deconv_channels: int = 32
    conv_channels: int = 192
    groups: int = 16
    coarse_resize: str = "bilinear"  # coarser levels to the target level: bilinear | nearest (VPD)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], out_size: tuple[int, int],
                 neck_hw: tuple[int, int] | None = None) -> jax.Array:
        """``neck_hw``: keep only the top-left ``neck_hw`` of the neck output (VPD's crop of the
        neck after padding 480 to 512: 16x16 -> 15x15); None keeps it whole."""
        # features[k]: [B, h_k, w_k, C_k], fine to coarse
        _check_features(features)
        if len(out_size) != 2 or min(out_size) < 1:
            raise ValueError(f"out_size must be two positive integers, got {out_size!r}.")
        if self.coarse_resize not in RESIZES:
            raise ConfigError(f"model.coarse_resize must be one of {RESIZES}, got {self.coarse_resize!r}.")
        for channels, what in ((self.neck_channels, "neck_channels"),
                               (self.deconv_channels, "deconv_channels"),
                               (self.conv_channels, "conv_channels")):
            _check_groups(channels, self.groups, what)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        gn = lambda name: group_norm(self.groups, _GN_EPS, name=name, **kw)  # noqa: E731
        t = min(2, len(features) - 1)
        target = _hw(features[t])

        # Neck.
        parts = []
        for i, x in enumerate(features):
            if i < t:
                channels = x.shape[-1]
                if t - i > 1:
                    _check_groups(channels, self.groups, f"the channels of feature level {i}")
                for j in range(t - i):
                    if j > 0:
                        x = nn.relu(gn(f"down_{i}_norm_{j - 1}")(x))
                    last = j == t - i - 1  # no bias on a conv followed by a norm
                    x = conv(channels, 3, stride=2, use_bias=last,
                             name=f"down_{i}_conv_{j}", **kw)(x)
            # A stride-2 conv gives ceil(h / 2), the UNet's own rule, so this is normally a no-op.
            coarser = i > t and self.coarse_resize == "nearest" and _hw(x) != target
            parts.append(resize_nearest(x, target) if coarser else resize_bilinear(x, target))  # [B, h_t, w_t, C_i]
        x = jnp.concatenate(parts, axis=-1)
        x = conv(self.neck_channels, 1, use_bias=False, name="neck_conv", **kw)(x)
        x = nn.relu(gn("neck_norm")(x))  # [B, h_t, w_t, neck]
        if neck_hw is not None:
            x = x[:, : neck_hw[0], : neck_hw[1]]  # [B, h_n, w_n, neck]

        # Decoder.
        for j in range(3):
            x = nn.ConvTranspose(self.deconv_channels, (2, 2), strides=(2, 2), padding="VALID",
                                 use_bias=False, name=f"deconv_{j}", **kw)(x)
            x = nn.relu(gn(f"deconv_norm_{j}")(x))  # [B, 2^(j+1) h_t, 2^(j+1) w_t, deconv]
        x = conv(self.conv_channels, 3, use_bias=False, name="conv", **kw)(x)
        x = nn.relu(gn("conv_norm")(x))
        x = resize_bilinear(x, out_size)  # [B, H, W, conv]
        x = nn.relu(conv(self.conv_channels, 3, name="last_conv_0", **kw)(x))
        x = conv(1, 3, name="last_conv_1", **kw)(x)  # [B, H, W, 1]
        return jax.nn.sigmoid(x[..., 0].astype(jnp.float32)) * self.max_depth  # [B, H, W]


def _vpd_initializer(task: str, name: str, leaf: str):
    """The initialiser VPD's code gives head parameter ``name/leaf``, or None (keep it)."""
    normal = jax.nn.initializers.normal
    zeros = jax.nn.initializers.zeros
    if leaf == "bias" and not name.endswith("_norm") and "_norm_" not in name:
        return zeros  # every conv bias starts at 0 in mmseg and VPD
    if leaf != "kernel":
        return None  # norms: scale 1, bias 0 already
    if task == "seg":
        if name.startswith(("lateral_", "fpn_")):
            return jax.nn.initializers.xavier_uniform()  # mmseg FPN: Xavier (uniform)
        if name.startswith("scale_"):
            return jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # mmcv ConvModule: Kaiming
        return normal(0.01) if name == "conv_seg" else None  # BaseDecodeHead: conv_seg N(0, 0.01)
    if name.startswith("down_") or name == "neck_conv":
        return normal(0.02)  # VPDDepthEncoder: trunc_normal(0.02), truncated at +-2 (i.e. 100 std)
    return normal(0.001)  # Decoder and last_layer_depth: normal_init(std=0.001)


def vpd_head_init(head_params: Mapping[str, Any], rng: jax.Array, task: str) -> dict[str, Any]:
    """Re-initialises head parameters as mmseg/VPD do (``model.head_init="vpd"``).

    Segmentation: FPN convs Xavier-uniform, head convs Kaiming-normal (fan-out, ReLU), ``conv_seg``
    N(0, 0.01). Depth: neck convs N(0, 0.02), deconvs and decoder convs N(0, 0.001). Biases 0,
    norms scale 1 / bias 0. Shapes and dtypes are kept.
    """
    if task not in ("seg", "depth"):
        raise ValueError(f"task must be 'seg' or 'depth', got {task!r}.")
    out = {}
    for i, (name, leaves) in enumerate(sorted(head_params.items())):
        out[name] = {}
        for j, (leaf, value) in enumerate(sorted(leaves.items())):
            init = _vpd_initializer(task, name, leaf)
            key = jax.random.fold_in(jax.random.fold_in(rng, i), j)
            out[name][leaf] = value if init is None else init(key, value.shape, value.dtype)
    return out
