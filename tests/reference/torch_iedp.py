"""PyTorch reference of the IEDP segmentation train step (``IEDP.loss`` with task 'seg' + AdamW).

The same model as :mod:`iedp_jax.model` built from the same on-disk folders, for a parity test
(``tests/test_torch_train_step.py``) and for the performance suite (``benchmarks/train_step.py``
times both in one process):

- frozen diffusers ``AutoencoderKL`` (posterior mean x latent scale), frozen transformers CLIP
  vision tower (patch tokens of ``last_hidden_state``, our bicubic-antialiased square resize) and
  CLIP text tower (explicit prompts built with tensor ops, no per-example Python);
- trained diffusers ``UNet2DConditionModel`` with decoder features taken by forward hooks on
  ``up_blocks`` exactly where ``IEDP._features`` takes them, and an attention processor that runs
  ``F.scaled_dot_product_attention`` everywhere except at the cross-attention layers whose maps
  are used, where it computes the softmax explicitly (float32) and records its head mean;
- :class:`ImplicitBranch`, :class:`TextAdapter`, :class:`SemanticFPNHead` ported module by module
  with our Flax parameter names, so :func:`copy_jax_params` can load a JAX train state.

Precision (``dtype``): float32; or bfloat16 with JAX's ``model.dtype=bfloat16`` contract, i.e.
float32 master parameters of the trained modules with bf16 matmuls/convs via ``torch.autocast``
(norm statistics, the captured softmax and the loss in float32), and the frozen towers stored in
bf16 (our loaders load them with ``param_dtype = dtype``). Autocast keeps some activations in
float32 where Flax keeps bf16, so bf16 numbers agree only to bf16 rounding. Runs on CPU and CUDA.

This is test/benchmark code (``tests.reference``): it imports torch, which the library ``iedp_jax``
never does.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch import nn

from iedp_jax import optim
from iedp_jax.sd.unet import UNetConfig, level_sides

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_GN_EPS = 1e-5


# --------------------------------------------------------------------------------------------
# Prompts (port of iedp_jax.prompts.present_classes / build_prompts)
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class PromptTable:
    """Token ids of the prompt template and of every class name (see ``ClassPromptTable``)."""

    prefix: torch.Tensor     # [P] bos + template tokens before the class list
    class_ids: torch.Tensor  # [C, T] sub-token ids of each class name, zero-padded
    class_len: torch.Tensor  # [C] number of sub-tokens of each class name
    comma_id: int
    eos_id: int
    pad_id: int
    length: int

    @classmethod
    def from_arrays(cls, table: Any, device: torch.device | str = "cpu") -> PromptTable:
        """From any object with ``ClassPromptTable``'s fields (e.g. the JAX model's ``prompts``)."""
        t = lambda a: torch.tensor(np.asarray(a), dtype=torch.long, device=device)  # noqa: E731
        return cls(t(table.prefix), t(table.class_ids), t(table.class_len), int(table.comma_id),
                   int(table.eos_id), int(table.pad_id), int(table.length))

    def to(self, device: torch.device | str) -> PromptTable:
        return dataclasses.replace(self, prefix=self.prefix.to(device), class_ids=self.class_ids.to(device),
                                   class_len=self.class_len.to(device))


def present_classes(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """[B, H, W] int labels -> [B, C] bool: which classes appear in each label map."""
    b = labels.shape[0]
    flat = labels.reshape(b, -1).long()
    flat = torch.where((flat == ignore_index) | (flat >= num_classes) | (flat < 0), num_classes, flat)
    out = torch.zeros(b, num_classes + 1, dtype=torch.bool, device=labels.device)
    return out.scatter_(1, flat, True)[:, :num_classes]


def build_prompts(table: PromptTable, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``prefix + "c1, c2, ..." + eos`` for the present classes [B, C] (bool), in class order.

    Returns ids [B, L] (padded with ``pad_id``; classes that do not fit are dropped) and last
    [B, C]: position of each class's last sub-token, -1 for absent or dropped classes. Writes that
    JAX drops (``mode='drop'``) go to an extra column L that is cut off at the end.
    """
    b, c = present.shape
    p, t, length = table.prefix.shape[0], table.class_ids.shape[1], table.length
    dev = present.device
    pres = present.long()
    later = torch.flip(torch.cumsum(torch.flip(pres, [1]), 1), [1]) - pres  # present classes after c
    comma = present & (later > 0)
    span = torch.where(present, table.class_len[None] + comma.long(), 0)     # [B, C]
    start = p + torch.cumsum(span, 1) - span                                # [B, C]
    end = start + table.class_len[None]                                     # one past last sub-token
    fits = present & (end <= length - 1)

    ids = torch.full((b, length + 1), table.pad_id, dtype=torch.long, device=dev)
    ids[:, :p] = table.prefix[None]
    ar_t = torch.arange(t, device=dev)
    pos = start[:, :, None] + ar_t[None, None]                              # [B, C, T]
    valid = fits[:, :, None] & (ar_t[None, None] < table.class_len[None, :, None])
    pos = torch.where(valid, pos, length)
    ids.scatter_(1, pos.reshape(b, -1), table.class_ids[None].expand(b, c, t).reshape(b, -1))
    comma_pos = torch.where(fits & comma, end, length)                     # [B, C]
    ids.scatter_(1, comma_pos, table.comma_id)
    eos_pos = torch.where(fits, end, p).amax(1)                             # [B]
    ids[torch.arange(b, device=dev), eos_pos] = table.eos_id
    last = torch.where(fits, end - 1, -1)
    return ids[:, :length], last


# --------------------------------------------------------------------------------------------
# Trained modules (Flax parameter names kept, NCHW / [B, T, D])
# --------------------------------------------------------------------------------------------

class MultiHeadAttention(nn.Module):
    """Flax ``nn.MultiHeadDotProductAttention`` (``query/key/value/out`` with biases), via SDPA."""

    def __init__(self, dim: int, kv_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(kv_dim, dim), nn.Linear(kv_dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        # x: [B, Q, D], mem: [B, K, Dk]
        b, h = x.shape[0], self.heads
        split = lambda y: y.view(b, y.shape[1], h, -1).transpose(1, 2)  # noqa: E731  [B, h, T, d]
        o = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(mem)), split(self.value(mem)))
        return self.out(o.transpose(1, 2).reshape(b, x.shape[1], -1))  # [B, Q, D]


class ImplicitBranch(nn.Module):
    """CLIP image tokens -> projector -> one pre-LN query decoder layer -> [B, N, D] context."""

    def __init__(self, in_dim: int, num_queries: int, dim: int, heads: int) -> None:
        super().__init__()
        self.proj_1, self.proj_2 = nn.Linear(in_dim, dim), nn.Linear(dim, dim)
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        for name in ("norm_self", "norm_cross", "norm_ffn", "norm_out"):
            setattr(self, name, nn.LayerNorm(dim, eps=1e-5))
        self.self_attn, self.cross_attn = MultiHeadAttention(dim, dim, heads), MultiHeadAttention(dim, dim, heads)
        self.ffn_1, self.ffn_2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: [B, P, Dv] frozen CLIP image tokens
        mem = self.proj_2(F.gelu(self.proj_1(tokens)))                       # [B, P, D]
        q = self.queries[None].expand(tokens.shape[0], -1, -1)
        h = self.norm_self(q)
        q = q + self.self_attn(h, h)
        q = q + self.cross_attn(self.norm_cross(q), mem)
        q = q + self.ffn_2(F.gelu(self.ffn_1(self.norm_ffn(q))))
        return self.norm_out(q)                                             # [B, N, D]


class TextAdapter(nn.Module):
    """VPD's adapter ``c = E + gamma * MLP(E)``."""

    def __init__(self, dim: int, gamma_init: float = 1e-4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), gamma_init))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        h = self.fc2(F.gelu(self.fc1(e)))
        return e + self.gamma.to(h.dtype) * h


def _resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``iedp_jax.losses.resize_bilinear`` in NCHW (a no-op when the size matches)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(
        x, size=size, mode="bilinear", align_corners=False)


class SemanticFPNHead(nn.Module):
    """FPN neck + Semantic-FPN head as ``iedp_jax.heads.SemanticFPNHead`` (GroupNorm, Dropout2d)."""

    def __init__(self, in_channels: list[int], num_classes: int, fpn_channels: int, head_channels: int,
                 groups: int, dropout: float) -> None:
        super().__init__()
        self.n = len(in_channels)
        for k, c in enumerate(in_channels):
            self.add_module(f"lateral_{k}", nn.Conv2d(c, fpn_channels, 1))
            self.add_module(f"fpn_{k}", nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1))
            for j in range(max(1, k)):
                self.add_module(f"scale_{k}_conv_{j}", nn.Conv2d(fpn_channels if j == 0 else head_channels,
                                                                 head_channels, 3, padding=1, bias=False))
                self.add_module(f"scale_{k}_norm_{j}", nn.GroupNorm(groups, head_channels, eps=_GN_EPS))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(head_channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        # features[k]: [B, C_k, h_k, w_k], fine to coarse
        m = dict(self.named_children())
        shapes = [tuple(f.shape[-2:]) for f in features]
        lat = [m[f"lateral_{k}"](f) for k, f in enumerate(features)]  # [B, fpn, h_k, w_k]
        for k in range(self.n - 1, 0, -1):
            lat[k - 1] = lat[k - 1] + F.interpolate(lat[k], size=shapes[k - 1], mode="nearest")
        total = None
        for k, x in enumerate(lat):
            x = m[f"fpn_{k}"](x)
            for j in range(max(1, k)):
                x = F.relu(m[f"scale_{k}_norm_{j}"](m[f"scale_{k}_conv_{j}"](x)))
                if k > 0:
                    x = _resize_bilinear(x, shapes[k - 1 - j])
            total = x if total is None else total + x  # [B, head, h0, w0]
        return self.conv_seg(self.dropout(total)).float()  # [B, classes, h0, w0] float32


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """``iedp_jax.losses.cross_entropy``: logits [B, C, h, w] resized bilinearly (float32) to
    labels [B, H, W]; labels outside [0, C) or equal to ignore_index are left out; 0 if none valid."""
    c = logits.shape[1]
    logp = F.log_softmax(_resize_bilinear(logits.float(), tuple(labels.shape[-2:])), dim=1)  # [B, C, H, W]
    labels = labels.long()
    valid = (labels != ignore_index) & (labels >= 0) & (labels < c)                          # [B, H, W]
    nll = -logp.gather(1, torch.where(valid, labels, 0)[:, None])[:, 0]                      # [B, H, W]
    return torch.where(valid, nll, 0.0).sum() / valid.sum().clamp(min=1).float()


# --------------------------------------------------------------------------------------------
# UNet attention: SDPA, or explicit softmax with head-mean capture
# --------------------------------------------------------------------------------------------

class AttentionRecorder:
    """Which cross-attention query counts (h*w) to record, and the maps recorded per count."""

    def __init__(self) -> None:
        self.sizes: set[int] = set()
        self.maps: dict[int, list[torch.Tensor]] = {}

    def reset(self, sizes: set[int]) -> None:
        self.sizes, self.maps = sizes, {}


class CaptureSDPAProcessor:
    """diffusers attention processor: ``F.scaled_dot_product_attention``, except at cross-attention
    layers on a recorded feature size, where ``softmax(q k^T * scale)`` is computed in float32 and
    its head mean [B, Q, K] is appended to the recorder (the output then uses these probabilities)."""

    def __init__(self, recorder: AttentionRecorder) -> None:
        self.recorder = recorder

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        if attention_mask is not None or attn.spatial_norm is not None or attn.group_norm is not None \
                or hidden_states.ndim != 3:
            raise NotImplementedError("CaptureSDPAProcessor supports the SD UNet's plain attention only.")
        residual = hidden_states
        b, nq, _ = hidden_states.shape  # [B, Q, C]
        cross = encoder_hidden_states is not None
        ctx = hidden_states if not cross else (
            attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states)
        q, k, v = attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx)
        h = attn.heads
        split = lambda y: y.view(b, -1, h, y.shape[-1] // h).transpose(1, 2)  # noqa: E731  [B, h, T, d]
        q, k, v = split(q), split(k), split(v)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if cross and nq in self.recorder.sizes:
            with torch.autocast(q.device.type, enabled=False):
                probs = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * attn.scale, dim=-1)  # [B, h, Q, K]
            self.recorder.maps.setdefault(nq, []).append(probs.mean(1))  # [B, Q, K]
            out = probs.to(v.dtype) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)  # [B, h, Q, d]
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(b, nq, -1)))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

def clip_preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """``iedp_jax.sd.clip.clip_preprocess``: [B, H, W, 3] in [0, 1] -> [B, 3, size, size] float32
    (square bicubic resize, antialiased when shrinking as jax.image.resize, then CLIP mean/std)."""
    x = images.permute(0, 3, 1, 2).float()
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    mean = torch.tensor(CLIP_MEAN, device=x.device)[None, :, None, None]
    std = torch.tensor(CLIP_STD, device=x.device)[None, :, None, None]
    return (x - mean) / std


class TorchIEDP(nn.Module):
    """IEDP for segmentation. ``config`` is an ``iedp_jax.model.IEDPConfig`` (or any object with
    its fields). Trained: ``unet``, ``implicit``, ``adapter``, ``head``; frozen: ``vae``,
    ``clip_vision``, ``clip_text`` (eval mode, no gradients)."""

    TRAINED = ("unet", "implicit", "adapter", "head")

    def __init__(self, config: Any, unet: nn.Module, vae: nn.Module, clip_vision: nn.Module, clip_text: nn.Module,
                 prompts: PromptTable, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if config.task != "seg":
            raise ValueError("the PyTorch reference implements the segmentation task only.")
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}.")
        self.config, self.dtype, self.prompts = config, dtype, prompts
        self.unet, self.vae, self.clip_vision, self.clip_text = unet, vae, clip_vision, clip_text
        for m in (vae, clip_vision, clip_text):
            m.requires_grad_(False).eval()
            if next(m.parameters()).dtype != dtype:
                m.to(dtype)
        d = unet.config.cross_attention_dim
        self.implicit = ImplicitBranch(clip_vision.config.hidden_size, config.num_queries, d, config.decoder_heads)
        self.adapter = TextAdapter(d, config.adapter_gamma)
        boc = list(unet.config.block_out_channels)
        self.unet_config = UNetConfig.from_dict(unet.config)  # our view of it: the level sides
        self.levels = len(boc)
        maps = lambda k: config.num_queries if config.attn_maps and 8 * 2**k in config.attn_strides else 0  # noqa: E731
        self.head = SemanticFPNHead([c + maps(k) for k, c in enumerate(boc)], config.num_classes,
                                    config.fpn_channels, config.head_channels, config.head_groups, config.dropout)
        self.recorder = AttentionRecorder()
        unet.set_attn_processor(CaptureSDPAProcessor(self.recorder))
        self._feats: dict[str, torch.Tensor] = {}
        self._hook_features()

    def _hook_features(self) -> None:
        """Forward hooks where ``IEDP._features`` reads the decoder: the finest up block's output
        and ``up_blocks[i]`` after layer ``feature_layer`` (attention if the block has one)."""
        def keep(name: str) -> Callable[..., None]:
            def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
                self._feats[name] = output[0] if isinstance(output, tuple) else output
            return hook

        ups, j = self.unet.up_blocks, self.config.feature_layer
        ups[self.levels - 1].register_forward_hook(keep("out"))
        for i in range(self.levels - 1):
            layer = ups[i].attentions[j] if getattr(ups[i], "attentions", None) else ups[i].resnets[j]
            layer.register_forward_hook(keep(f"up_{i}"))

    @property
    def device(self) -> torch.device:
        return self.head.conv_seg.weight.device

    def trained_modules(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in self.TRAINED}

    def train(self, mode: bool = True) -> TorchIEDP:
        """Train mode for the trained modules only; the frozen towers stay in eval mode."""
        for m in self.trained_modules().values():
            m.train(mode)
        return self

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16)

    # ---------------------------------------------------------------- pieces
    @torch.no_grad()
    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """[B, H, W, 3] uint8 -> [B, 4, H/8, W/8] scaled posterior means."""
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return self.vae.encode(x.to(self.dtype)).latent_dist.mean * self.config.latent_scale

    @torch.no_grad()
    def clip_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, H, W, 3] uint8 -> [B, P, Dv] CLIP patch tokens (last layer, no post-layernorm)."""
        pixels = clip_preprocess(images.float() / 255.0, self.clip_vision.config.image_size)
        return self.clip_vision(pixel_values=pixels.to(self.dtype)).last_hidden_state[:, 1:]

    def implicit_context(self, images: torch.Tensor) -> torch.Tensor:
        """[B, N, D] context from the image alone."""
        return self.adapter(self.implicit(self.clip_tokens(images)))

    def explicit_prompts(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt ids [B, L] and class last-token positions [B, C] from the labels."""
        c = self.config
        return build_prompts(self.prompts, present_classes(labels, c.num_classes, c.ignore_index))

    def explicit_context(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L, D] context from the class names present in the labels, and last [B, C]."""
        ids, last = self.explicit_prompts(labels)
        with torch.no_grad():
            text = self.clip_text(input_ids=ids).last_hidden_state  # [B, L, D]
        return self.adapter(text), last

    def features(self, latents: torch.Tensor, context: torch.Tensor,
                 explicit_last: torch.Tensor | None) -> list[torch.Tensor]:
        """Decoder features fine to coarse [B, C_k, h_k, w_k] with the layer- and head-averaged
        cross-attention maps of ``attn_strides`` concatenated (class channels for explicit)."""
        c = self.config
        hs = level_sides(self.unet_config, latents.shape[2])
        ws = level_sides(self.unet_config, latents.shape[3])
        sizes = {hs[k] * ws[k] for k in range(self.levels) if 8 * 2**k in c.attn_strides} if c.attn_maps else set()
        self.recorder.reset(sizes)
        self._feats.clear()
        t = torch.full((latents.shape[0],), c.timestep, dtype=torch.long, device=latents.device)
        self.unet(latents, t, encoder_hidden_states=context, return_dict=False)
        out = [self._feats["out"]] + [self._feats[f"up_{i}"] for i in range(self.levels - 2, -1, -1)]
        grouped, self.recorder.maps = self.recorder.maps, {}
        self._feats.clear()
        if not c.attn_maps:
            return out
        for k, f in enumerate(out):
            b, _, h, w = f.shape
            if h * w not in grouped:
                continue
            m = torch.stack(grouped[h * w]).mean(0)  # [B, Q, K] layer mean
            if explicit_last is not None:
                m = self._class_channels(m, explicit_last)
            out[k] = torch.cat([f, m.reshape(b, h, w, -1).permute(0, 3, 1, 2).to(f.dtype)], dim=1)
        return out

    def _class_channels(self, m: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """Explicit maps [B, Q, L] -> [B, Q, N] class channels (scatter or zeros)."""
        b, q, _ = m.shape
        if self.config.explicit_maps == "zeros":
            return m.new_zeros(b, q, self.config.num_queries)
        picked = m.gather(2, last.clamp(min=0)[:, None, :].expand(b, q, last.shape[1]))  # [B, Q, C]
        return torch.where(last[:, None, :] >= 0, picked, 0.0)

    # ---------------------------------------------------------------- public
    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``L = L(implicit) + lambda * L(explicit)`` and its parts (float32 scalars), as ``IEDP.loss``.
        ``batch``: ``image`` [B, H, W, 3] uint8, ``label`` [B, H, W] int."""
        c = self.config
        images, labels = batch["image"], batch["label"]
        with self._autocast():
            latents = self.latents(images)
            pred = self.head(self.features(latents, self.implicit_context(images), None))
            l_imp = cross_entropy(pred, labels, c.ignore_index)
            metrics = {"loss_implicit": l_imp}
            total = l_imp
            if c.explicit_weight > 0:
                ctx, last = self.explicit_context(labels)
                l_exp = cross_entropy(self.head(self.features(latents, ctx, last)), labels, c.ignore_index)
                total = total + c.explicit_weight * l_exp
                metrics["loss_explicit"] = l_exp
        metrics["loss"] = total
        return total, metrics


def load_reference(sd_folder: str | Path, clip_folder: str | Path, config: Any, prompts: Any,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> TorchIEDP:
    """Builds :class:`TorchIEDP` from the folders the JAX trainer uses: a diffusers SD folder
    (``unet/``, ``vae/``, ``text_encoder/``) and an HF CLIP vision folder. ``prompts``: the JAX
    model's ``ClassPromptTable`` (or a :class:`PromptTable`)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPVisionModel

    sd = Path(sd_folder)
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet", torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(sd, subfolder="vae", torch_dtype=dtype)  # frozen: stored in dtype
    text = CLIPTextModel.from_pretrained(sd, subfolder="text_encoder", torch_dtype=dtype)
    vision = CLIPVisionModel.from_pretrained(clip_folder, torch_dtype=dtype)
    table = prompts if isinstance(prompts, PromptTable) else PromptTable.from_arrays(prompts)
    model = TorchIEDP(config, unet, vae, vision, text, table, dtype)
    model.prompts = table.to(device)
    return model.to(device).train()


# --------------------------------------------------------------------------------------------
# JAX parameters -> torch
# --------------------------------------------------------------------------------------------

def _diffusers_name(part: str) -> str:
    """Flax ``up_blocks_1`` -> diffusers ``up_blocks.1`` (``linear_1`` is a name, not an index)."""
    return part if re.fullmatch(r"linear_\d+", part) else re.sub(r"_(\d+)$", r".\1", part)


def jax_to_state_dict(params: Mapping[str, Any], module: nn.Module, diffusers_names: bool = False
                      ) -> dict[str, torch.Tensor]:
    """A Flax params subtree -> ``module``'s state dict (names and layouts), float32 on CPU.

    Kernels: conv HWIO -> OIHW, dense [in, out] -> [out, in] (reshaped to a 1x1 conv where the
    module has one), Flax attention [in, heads, d] / [heads, d, out] -> [heads*d, in] /
    [out, heads*d]; ``scale`` -> ``weight``; 2-D attention biases flattened.
    """
    want = module.state_dict()
    out: dict[str, torch.Tensor] = {}
    for path, value in traverse_util.flatten_dict(dict(params)).items():
        mod = [(_diffusers_name(p) if diffusers_names else p) for p in path[:-1]]
        leaf = path[-1]
        a = np.array(value, dtype=np.float32)  # a writable copy
        if leaf == "kernel":
            if a.ndim == 4:
                a = a.transpose(3, 2, 0, 1)
            elif a.ndim == 3:
                a = a.reshape(-1, a.shape[-1]).T if mod[-1] == "out" else a.reshape(a.shape[0], -1).T
            else:
                a = a.T
            leaf = "weight"
        elif leaf == "scale":
            leaf = "weight"
        key = ".".join(mod + [leaf])
        if key not in want:
            raise KeyError(f"JAX parameter {'/'.join(path)} has no torch counterpart {key!r}.")
        out[key] = torch.from_numpy(np.ascontiguousarray(a)).reshape(want[key].shape)
    missing = sorted(set(want) - set(out))
    if missing:
        raise KeyError(f"no JAX parameter for torch {', '.join(missing[:8])}")
    return out


@torch.no_grad()
def copy_jax_params(model: TorchIEDP, params: Mapping[str, Any]) -> None:
    """Loads JAX trained params (``state['params']``: ``implicit``, ``adapter``, ``head`` and, when
    present, ``unet``) into ``model``, checking that every tensor is covered."""
    for name, tree in params.items():
        module = getattr(model, name)
        want = module.state_dict()
        sd = jax_to_state_dict(tree, module, diffusers_names=name == "unet")
        module.load_state_dict({k: v.to(want[k].dtype) for k, v in sd.items()}, strict=True)


# --------------------------------------------------------------------------------------------
# Optimizer and train step
# --------------------------------------------------------------------------------------------

def learning_rate_schedule(cfg: Any, total_steps: int) -> Callable[[int], float]:
    """``iedp_jax.optim.learning_rate_schedule`` itself, tabulated once for steps 0..total_steps,
    so the timed PyTorch step does no JAX work."""
    table = np.asarray(jax.vmap(optim.learning_rate_schedule(cfg, total_steps))(np.arange(total_steps + 1)))
    return lambda step: float(table[min(max(int(step), 0), total_steps)])


def make_optimizer(model: TorchIEDP, cfg: Any, total_steps: int
                   ) -> tuple[torch.optim.AdamW, Callable[[int], float]]:
    """AdamW with ``iedp_jax.optim``'s groups: ``lr_mult`` = ``unet_lr_mult`` for the UNet, else 1;
    weight decay only on parameters with >= 2 dims (not norms, biases, gamma). PyTorch AdamW's
    decoupled decay ``lr * wd * p`` equals optax's ``add_decayed_weights`` before the lr scaling."""
    groups = []
    for name, module in model.trained_modules().items():
        mult = cfg.unet_lr_mult if name == "unet" else 1.0
        ps = [p for p in module.parameters() if p.requires_grad]
        for decay in (True, False):
            chosen = [p for p in ps if (p.ndim >= 2) == decay]
            if chosen:
                groups.append({"params": chosen, "lr_mult": mult, "weight_decay": cfg.weight_decay if decay else 0.0,
                               "name": f"{name}/{'decay' if decay else 'no_decay'}"})
    fused = model.device.type == "cuda"
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.b1, cfg.b2), eps=cfg.eps, fused=fused or None)
    return opt, learning_rate_schedule(cfg, total_steps)


def train_step(model: TorchIEDP, opt: torch.optim.AdamW, schedule: Callable[[int], float],
               batch: Mapping[str, torch.Tensor], step: int, clip_grad_norm: float = 0.0) -> dict[str, torch.Tensor]:
    """One step as ``iedp_jax.train.make_train_step``: loss, gradients, optional global-norm
    clipping (optax's rule: scale by ``max / norm`` only when ``norm >= max``), AdamW update.
    Parameters that get no gradient (the UNet's unused ``conv_norm_out``/``conv_out``) get a zero
    one, as in JAX, so their weight decay still applies. Returns device scalars (no sync)."""
    lr = schedule(step)
    for g in opt.param_groups:
        g["lr"] = lr * g["lr_mult"]
    opt.zero_grad(set_to_none=False)
    _, metrics = model.loss(batch)
    metrics["loss"].backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if clip_grad_norm and clip_grad_norm > 0:
        torch._foreach_mul_(grads, torch.where(norm < clip_grad_norm, 1.0, clip_grad_norm / norm))
    opt.step()
    return {**{k: v.detach() for k, v in metrics.items()}, "grad_norm": norm.detach(),
            "lr": torch.tensor(lr)}


def to_torch_batch(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, torch.Tensor]:
    """A host batch (numpy) -> torch tensors on ``device``; labels as int64."""
    out = {k: torch.as_tensor(np.asarray(v)).to(device) for k, v in batch.items() if k in ("image", "label")}
    out["label"] = out["label"].long()
    return out


__all__ = ["PromptTable", "present_classes", "build_prompts", "TorchIEDP", "load_reference", "copy_jax_params",
           "jax_to_state_dict", "make_optimizer", "train_step", "to_torch_batch", "learning_rate_schedule"]
