"""IEDP: a Stable Diffusion UNet as a perception backbone with implicit and explicit language guidance.

Per image (VPD's recipe, DESIGN.md 3.1): VAE encoder posterior mean (frozen) -> optional latent
scale -> one UNet pass at a fixed timestep without noise -> decoder features, fine to coarse, with
the head- and layer-averaged cross-attention maps of the chosen strides concatenated -> task head.

The UNet's context comes from one of two branches that share the UNet and head weights
(DESIGN.md 3.2), or, with ``context="vpd"``, from VPD's fixed class embeddings:

- implicit: frozen CLIP image tower -> projector -> one pre-LN decoder layer over N learnable
  queries -> text adapter -> N context tokens. This is the only branch used at inference.
- explicit: the class names present in the label crop (segmentation) or the scene name (depth) ->
  prompt -> frozen CLIP text tower -> text adapter.
- vpd (the baseline, replacing the implicit branch): ``frozen["class_embeddings"]`` [K, D] (CLIP
  text embeddings of the class names averaged over 80 templates, :mod:`iedp_jax.prompts`) ->
  text adapter; segmentation uses all K classes, depth the one row of the image's scene class.

Parameters are explicit pytrees: ``params`` (trained: ``unet``, ``implicit``, ``adapter``,
``head``; no ``implicit`` with ``context="vpd"``) and ``frozen`` (``vae``, ``clip_vision``,
``clip_text``, and ``class_embeddings`` when used), never mixed, so the optimizer
holds no state for the frozen towers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from iedp_jax.heads import HEAD_INITS, RESIZES, DepthHead, SemanticFPNHead, vpd_head_init
from iedp_jax.infra.errors import ConfigError, InputError
from iedp_jax.losses import CE_AVERAGES, cross_entropy, silog
from iedp_jax.prompts import ClassPromptTable, build_prompts, present_classes
from iedp_jax.sd.attention import CROSS, NO_CAPTURE, AttentionCapture, attention_maps, maps_by_queries, mean_map
from iedp_jax.sd.clip import CLIPTextTransformer, CLIPVisionTransformer, clip_preprocess
from iedp_jax.sd.unet import UNet2DConditionModel, decoder_features, level_sides
from iedp_jax.sd.vae import AutoencoderKL

PyTree = Any
Dtype = Any

SEG, DEPTH = "seg", "depth"
IMPLICIT_CONTEXT, VPD_CONTEXT = "implicit", "vpd"
QUERY_INITS = ("normal", "class_text")
# Where the explicit branch's prompt goes (config ``explicit.placement``): "scattered" = the prompt
# alone is the context and its class-token maps are scattered into the class channels (or zeros,
# ``explicit_maps``); "concatenated" = the implicit tokens followed by the prompt tokens, the maps of
# the implicit tokens in the channels as at inference (no class c <-> channel c tie needed).
SCATTERED, CONCATENATED = "scattered", "concatenated"
PLACEMENTS = (SCATTERED, CONCATENATED)


@dataclasses.dataclass(frozen=True)
class IEDPConfig:
    """Static choices of the model (hashable; see ``iedp_jax/configs/*.py`` for their meaning)."""

    task: str = SEG
    num_classes: int = 150           # segmentation classes (ignored for depth)
    num_queries: int = 150           # N implicit context tokens (= num_classes for segmentation)
    timestep: int = 1
    latent_scale: float = 0.18215    # 1.0 reproduces VPD (no scaling)
    feature_layer: int = 1           # up_blocks[i].layers[j] taken for all but the finest block
    attn_strides: tuple[int, ...] = (16, 32)  # image strides whose cross-attention maps are used
    attn_maps: bool = True
    explicit_maps: str = "scatter"   # 'scatter' class-token maps into class channels, or 'zeros'
    explicit_weight: float = 1.0     # lambda in L = L(implicit) + lambda L(explicit)
    decoder_heads: int = 8
    adapter_gamma: float = 1e-4
    fpn_channels: int = 256
    head_channels: int = 256
    head_groups: int = 32
    dropout: float = 0.1
    max_depth: float = 10.0
    neck_channels: int = 1536
    deconv_channels: int = 32
    conv_channels: int = 192
    ignore_index: int = 255
    context: str = IMPLICIT_CONTEXT  # implicit (IEDP) | vpd (fixed class embeddings, the baseline)
    query_init: str = "normal"       # normal: free queries N(0, 0.02) | class_text: query c from class c's text
    ce_average: str = "valid"        # cross-entropy mean over valid pixels | all pixels (mmseg 0.x, VPD)
    depth_pad_multiple: int = 0      # depth: pad the image to a multiple of this (VPD: 64) and crop back
    coarse_resize: str = "bilinear"  # depth neck: coarser level to the target level (VPD: nearest)
    head_init: str = "flax"          # flax defaults | vpd (mmseg/VPD initialisations)
    explicit_placement: str = SCATTERED  # scattered | concatenated (see PLACEMENTS)
    silog_group: int = 0             # depth: SILog per group of N images, averaged (VPD: 3 per GPU); 0 = batch

    def __post_init__(self) -> None:
        if self.task not in (SEG, DEPTH):
            raise ConfigError(f"model.task must be 'seg' or 'depth', got {self.task!r}.")
        for field, allowed in (("context", (IMPLICIT_CONTEXT, VPD_CONTEXT)), ("query_init", QUERY_INITS),
                               ("ce_average", CE_AVERAGES), ("coarse_resize", RESIZES), ("head_init", HEAD_INITS),
                               ("explicit_placement", PLACEMENTS)):
            if getattr(self, field) not in allowed:
                key = "explicit.placement" if field == "explicit_placement" else f"model.{field}"
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, field)!r}.")
        if self.silog_group < 0:
            raise ConfigError(f"loss.silog_group must be 0 (the whole batch) or a group size, got {self.silog_group}.")
        if self.depth_pad_multiple < 0 or self.depth_pad_multiple % 8:
            raise ConfigError(f"model.depth_pad_multiple must be 0 or a positive multiple of 8, got "
                              f"{self.depth_pad_multiple}.")
        vpd_tokens = self.num_classes if self.task == SEG else 1
        if self.context == VPD_CONTEXT and self.num_queries != vpd_tokens:
            raise ConfigError(f"model.context='vpd' gives {vpd_tokens} context token(s) (one per class for "
                              f"segmentation, the scene's for depth); set model.num_queries={vpd_tokens} or 0.")
        if self.query_init == "class_text" and (self.task != SEG or self.context != IMPLICIT_CONTEXT):
            raise ConfigError("model.query_init='class_text' ties query c to class c: it needs segmentation "
                              "with model.context='implicit'.")
        if self.explicit_maps not in ("scatter", "zeros"):
            raise ConfigError(f"model.explicit_maps must be 'scatter' or 'zeros', got {self.explicit_maps!r}.")
        if (self.task == SEG and self.explicit_placement == SCATTERED and self.explicit_maps == "scatter"
                and self.num_queries != self.num_classes):
            raise ConfigError("explicit_maps='scatter' needs num_queries == num_classes (one map channel "
                             "per class); set model.num_queries or use explicit_maps='zeros'.")


class ImplicitBranch(nn.Module):
    """CLIP image tokens -> projector -> one pre-LN query decoder layer -> [B, N, D] context."""

    num_queries: int
    dim: int
    heads: int = 8
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        # tokens: [B, P, Dv] frozen CLIP image tokens
        kw = dict(dtype=self.dtype)
        mem = nn.Dense(self.dim, name="proj_1", **kw)(tokens)
        mem = nn.Dense(self.dim, name="proj_2", **kw)(nn.gelu(mem, approximate=False))  # [B, P, D]
        q = self.param("queries", nn.initializers.normal(0.02), (self.num_queries, self.dim))
        q = jnp.broadcast_to(q.astype(self.dtype), (tokens.shape[0], self.num_queries, self.dim))
        ln = lambda name: nn.LayerNorm(epsilon=1e-5, name=name, **kw)  # noqa: E731
        mha = lambda name: nn.MultiHeadDotProductAttention(self.heads, name=name, **kw)  # noqa: E731
        h = ln("norm_self")(q)
        q = q + mha("self_attn")(h, h)
        q = q + mha("cross_attn")(ln("norm_cross")(q), mem)
        h = nn.Dense(4 * self.dim, name="ffn_1", **kw)(ln("norm_ffn")(q))
        q = q + nn.Dense(self.dim, name="ffn_2", **kw)(nn.gelu(h, approximate=False))
        return ln("norm_out")(q)  # [B, N, D]


class TextAdapter(nn.Module):
    """VPD's adapter ``c = E + gamma * MLP(E)`` with a per-channel gamma starting at 1e-4."""

    dim: int
    gamma_init: float = 1e-4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, e: jax.Array) -> jax.Array:
        h = nn.Dense(self.dim, name="fc1", dtype=self.dtype)(e)
        h = nn.Dense(self.dim, name="fc2", dtype=self.dtype)(nn.gelu(h, approximate=False))
        gamma = self.param("gamma", nn.initializers.constant(self.gamma_init), (self.dim,))
        return e + gamma.astype(h.dtype) * h


def class_queries(embeddings: jax.Array, queries: jax.Array) -> jax.Array:
    """Queries tied to classes: query c is class c's text embedding ``embeddings`` [K, D], each
    row rescaled to the RMS of the random ``queries`` [N, D] (N(0, 0.02) at init), so that the
    decoder starts at the scale it was designed for."""
    n = queries.shape[0]
    if embeddings.shape[0] != n or embeddings.shape[1] != queries.shape[1]:
        raise ConfigError(f"model.query_init='class_text' needs one {queries.shape[1]}-d class embedding per query "
                          f"({n}), got {embeddings.shape}.")
    rms = jnp.sqrt(jnp.mean(jnp.square(queries)))
    e = embeddings.astype(jnp.float32)
    return (e / jnp.sqrt(jnp.mean(jnp.square(e), axis=1, keepdims=True) + 1e-12) * rms).astype(queries.dtype)


@dataclasses.dataclass(frozen=True)
class IEDP:
    """The IEDP model: pure functions over ``params`` (trained) and ``frozen`` pytrees."""

    config: IEDPConfig
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    clip_vision: CLIPVisionTransformer | None  # None with context "vpd" (no implicit branch)
    clip_text: CLIPTextTransformer
    prompts: ClassPromptTable | None = None  # segmentation: class-name token table
    scene_ids: jax.Array | None = None       # depth: [S, L] one prompt per scene
    scene_classes: jax.Array | None = None   # depth, context 'vpd': [S] row of each scene's class embedding

    @property
    def dtype(self) -> Dtype:
        return self.unet.dtype

    @property
    def context_dim(self) -> int:
        return self.unet.config.cross_attention_dim

    # ------------------------------------------------------------------ modules
    def implicit_module(self) -> ImplicitBranch:
        return ImplicitBranch(self.config.num_queries, self.context_dim, self.config.decoder_heads,
                              dtype=self.dtype)

    def adapter_module(self) -> TextAdapter:
        return TextAdapter(self.context_dim, self.config.adapter_gamma, dtype=self.dtype)

    def head_module(self) -> nn.Module:
        c = self.config
        if c.task == SEG:
            return SemanticFPNHead(c.num_classes, c.fpn_channels, c.head_channels, c.head_groups, c.dropout,
                                   dtype=self.dtype)
        return DepthHead(c.max_depth, c.neck_channels, c.deconv_channels, c.conv_channels, c.head_groups,
                         c.coarse_resize, dtype=self.dtype)

    def init_head_params(self, rng: jax.Array, image_hw: tuple[int, int], unet_params: PyTree,
                         frozen: PyTree) -> PyTree:
        """Random parameters of the implicit branch (not with ``context='vpd'``), adapter and head
        (UNet params are given)."""
        c = self.config
        r1, r2, r3 = jax.random.split(rng, 3)
        r4 = jax.random.fold_in(rng, 3)  # VPD head init; r1-r3 stay as before this option existed
        images = jnp.zeros((1, *image_hw, 3), jnp.uint8)
        out = {}
        if c.context == VPD_CONTEXT:
            ctx = self._class_embeddings(frozen)[None, : c.num_queries]  # [1, K, D]
        else:
            tokens = self._clip_tokens(frozen, images)
            implicit = self.implicit_module().init(r1, tokens)["params"]
            if c.query_init == "class_text":
                implicit["queries"] = class_queries(self._class_embeddings(frozen), implicit["queries"])
            ctx = self.implicit_module().apply({"params": implicit}, tokens)
            out["implicit"] = implicit
        out["adapter"] = self.adapter_module().init(r2, ctx)["params"]
        latents = self._latents(frozen, images)
        feats = self._features(unet_params, latents, ctx, explicit_last=None)
        if c.task == SEG:
            head = self.head_module().init(r3, feats, train=False)["params"]
        else:
            head = self.head_module().init(r3, feats, image_hw, self._neck_hw(image_hw, len(feats)))["params"]
        out["head"] = vpd_head_init(head, r4, c.task) if c.head_init == "vpd" else head
        return out

    # ------------------------------------------------------------------ pieces
    def _class_embeddings(self, frozen: PyTree) -> jax.Array:
        if "class_embeddings" not in frozen:
            raise ConfigError("this model needs the class embeddings (model.context='vpd' or "
                              "model.query_init='class_text'); build it with iedp_jax.build.build_model.")
        return frozen["class_embeddings"]  # [K, D]

    def _latents(self, frozen: PyTree, images: jax.Array) -> jax.Array:
        x = images.astype(jnp.float32) / 127.5 - 1.0  # [B, H, W, 3] in [-1, 1]
        m = self.config.depth_pad_multiple
        if self.config.task == DEPTH and m:
            # VPD pads the normalised image with 0 (grey) at the bottom and right: 480 -> 512.
            _, h, w, _ = x.shape
            x = jnp.pad(x, ((0, 0), (0, -h % m), (0, -w % m), (0, 0)))  # [B, H', W', 3]
        mean, _ = self.vae.apply({"params": frozen["vae"]}, x.astype(self.vae.dtype), method=self.vae.encode)
        return jax.lax.stop_gradient(mean * self.config.latent_scale)  # [B, H/8, W/8, 4]

    def _clip_tokens(self, frozen: PyTree, images: jax.Array) -> jax.Array:
        size = self.clip_vision.config.image_size
        pixels = clip_preprocess(images.astype(jnp.float32) / 255.0, size)
        out = self.clip_vision.apply({"params": frozen["clip_vision"]}, pixels.astype(self.clip_vision.dtype))
        return jax.lax.stop_gradient(out.last_hidden_state[:, 1:])  # [B, P, Dv] patch tokens

    def _features(self, unet_params: PyTree, latents: jax.Array, context: jax.Array,
                  explicit_last: jax.Array | None, map_tokens: int | None = None) -> list[jax.Array]:
        """UNet decoder features, fine to coarse, with attention maps concatenated.

        ``explicit_last`` [B, C] (position of each class's last prompt token, -1 if absent) maps
        an explicit prompt's attention onto class channels; None means the context is implicit.
        ``map_tokens`` = N keeps the maps of the first N context tokens only (the implicit tokens
        of a concatenated explicit context: the same channels as at inference).
        """
        c = self.config
        levels = len(self.unet.config.block_out_channels)
        heights = level_sides(self.unet.config, latents.shape[1])
        strides = {8 * 2**k: heights[k] for k in range(levels)}
        capture = (AttentionCapture(cross_attn=tuple(strides[s] for s in c.attn_strides if s in strides))
                   if c.attn_maps else NO_CAPTURE)
        _, state = self.unet.apply({"params": unet_params}, latents, jnp.full((latents.shape[0],), c.timestep),
                                   context, capture=capture, mutable=["intermediates", "features"])
        feats = decoder_features(state)
        out = [feats[f"up_blocks.{levels - 1}.out"]] + [
            feats[f"up_blocks.{i}.layers.{c.feature_layer}"] for i in range(levels - 2, -1, -1)]
        if not c.attn_maps:
            return out
        grouped = maps_by_queries(attention_maps(state), CROSS)  # {h*w: [[B, h*w, K], ...]}
        for k, f in enumerate(out):
            b, h, w, _ = f.shape
            if h * w not in grouped:
                continue
            m = mean_map(grouped[h * w])  # [B, h*w, K] layer mean
            if explicit_last is not None:
                m = self._class_channels(m, explicit_last)
            elif map_tokens is not None:
                m = m[:, :, :map_tokens]  # [B, h*w, N]: softmax over N + L tokens, the first N kept
            out[k] = jnp.concatenate([f, m.reshape(b, h, w, -1).astype(f.dtype)], axis=-1)
        return out

    def _class_channels(self, m: jax.Array, last: jax.Array) -> jax.Array:
        """Explicit maps [B, Q, L] -> [B, Q, N] class channels (scatter or zeros)."""
        b, q, _ = m.shape
        n = self.config.num_queries
        if self.config.explicit_maps == "zeros" or self.config.task == DEPTH:
            return jnp.zeros((b, q, n), m.dtype)
        picked = jnp.take_along_axis(m, jnp.maximum(last, 0)[:, None, :], axis=2)  # [B, Q, C]
        return jnp.where(last[:, None, :] >= 0, picked, 0.0)

    def _neck_hw(self, image_hw: tuple[int, int], levels: int) -> tuple[int, int] | None:
        """The depth neck's size for the unpadded image when the input was padded (VPD's crop)."""
        if not self.config.depth_pad_multiple:
            return None
        stride = 8 * 2 ** min(2, levels - 1)  # the neck's target level (DepthHead)
        return -(-image_hw[0] // stride), -(-image_hw[1] // stride)

    def _head(self, params: PyTree, feats: list[jax.Array], out_hw: tuple[int, int], train: bool,
              rng: jax.Array | None) -> jax.Array:
        head = self.head_module()
        if self.config.task == SEG:
            rngs = {"dropout": rng} if train and rng is not None else {}
            return head.apply({"params": params["head"]}, feats, train=train, rngs=rngs)  # [B, h, w, C]
        return head.apply({"params": params["head"]}, feats, out_hw, self._neck_hw(out_hw, len(feats)))  # [B, H, W]

    def vpd_context(self, params: PyTree, frozen: PyTree, batch_size: int, scenes: jax.Array | None
                    ) -> jax.Array:
        """VPD's context: the adapted class embeddings, all K [B, K, D] (segmentation) or the
        scene class's [B, 1, D] (depth, ``scenes`` [B] dataset scene indices)."""
        table = self._class_embeddings(frozen)  # [K, D]
        if self.config.task == DEPTH:
            if scenes is None:
                raise InputError("model.context='vpd' for depth conditions on each image's scene class (VPD uses "
                                 "the ground-truth scene at test time too): pass the images' scenes.")
            table = table[self.scene_classes[scenes]][:, None]  # [B, 1, D]
        ctx = self.adapter_module().apply({"params": params["adapter"]}, table)
        return jnp.broadcast_to(ctx, (batch_size, *ctx.shape[-2:]))  # [B, K, D]

    def main_context(self, params: PyTree, frozen: PyTree, images: jax.Array, scenes: jax.Array | None = None
                     ) -> jax.Array:
        """The context used at inference: the implicit branch's, or VPD's class embeddings."""
        if self.config.context == VPD_CONTEXT:
            return self.vpd_context(params, frozen, images.shape[0], scenes)
        return self.implicit_context(params, frozen, images)

    def implicit_context(self, params: PyTree, frozen: PyTree, images: jax.Array) -> jax.Array:
        """[B, N, D] context from the image alone."""
        ctx = self.implicit_module().apply({"params": params["implicit"]}, self._clip_tokens(frozen, images))
        return self.adapter_module().apply({"params": params["adapter"]}, ctx)

    def explicit_context(self, params: PyTree, frozen: PyTree, batch: Mapping[str, jax.Array]
                         ) -> tuple[jax.Array, jax.Array | None]:
        """[B, L, D] context from the labels: class names (seg) or scene name (depth)."""
        if self.config.task == SEG:
            present = present_classes(batch["label"], self.config.num_classes, self.config.ignore_index)
            ids, last = build_prompts(self.prompts, present)
        else:
            ids, last = self.scene_ids[batch["scene"]], None
        text = self.clip_text.apply({"params": frozen["clip_text"]}, ids).last_hidden_state
        ctx = self.adapter_module().apply({"params": params["adapter"]}, jax.lax.stop_gradient(text))
        return ctx.astype(self.dtype), (last if last is not None else jnp.zeros((ids.shape[0], 0), jnp.int32))

    # ------------------------------------------------------------------ public
    def predict(self, params: PyTree, frozen: PyTree, images: jax.Array, scenes: jax.Array | None = None
                ) -> jax.Array:
        """Inference (implicit branch only; takes no labels): seg logits [B, h, w, C] at 1/8
        resolution, or depth [B, H, W] in metres. ``images`` [B, H, W, 3] uint8 / float 0-255;
        ``scenes`` [B] only for depth with ``context='vpd'``."""
        latents = self._latents(frozen, images)
        feats = self._features(params["unet"], latents, self.main_context(params, frozen, images, scenes), None)
        return self._head(params, feats, images.shape[1:3], False, None)

    def loss(self, params: PyTree, frozen: PyTree, batch: Mapping[str, jax.Array], rng: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``L = L(implicit) + lambda * L(explicit)`` and its parts (float32 scalars)."""
        c = self.config
        images = batch["image"]
        latents = self._latents(frozen, images)
        r_imp, r_exp = jax.random.split(rng)

        def task_loss(pred: jax.Array) -> jax.Array:
            if c.task == SEG:
                return cross_entropy(pred.astype(jnp.float32), batch["label"], c.ignore_index, c.ce_average)
            return silog(pred.astype(jnp.float32), batch["depth"], group=c.silog_group)

        ctx = self.main_context(params, frozen, images, batch.get("scene"))
        pred = self._head(params, self._features(params["unet"], latents, ctx, None), images.shape[1:3], True, r_imp)
        l_imp = task_loss(pred)
        metrics = {f"loss_{c.context}": l_imp}
        total = l_imp
        if c.explicit_weight > 0:
            ctx_e, last = self.explicit_context(params, frozen, batch)
            if c.explicit_placement == CONCATENATED:
                # [B, N + L, D]: the inference context followed by the label prompt (gradients reach both)
                ctx_e = jnp.concatenate([ctx.astype(ctx_e.dtype), ctx_e], axis=1)
                feats = self._features(params["unet"], latents, ctx_e, None, map_tokens=ctx.shape[1])
            else:
                feats = self._features(params["unet"], latents, ctx_e, last)
            l_exp = task_loss(self._head(params, feats, images.shape[1:3], True, r_exp))
            total = total + c.explicit_weight * l_exp
            metrics["loss_explicit"] = l_exp
        metrics["loss"] = total
        return total, metrics
