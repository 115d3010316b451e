"""DiffSegmenter end to end: images + candidate-class prompts -> label maps, in one jitted call.

Per batch of B images with K candidate classes each (padded, ``valid [B, K]``):

1. resize to ``image_size`` (bilinear), VAE posterior mean x latent scale, one seeded noise draw
   per image (the image's index folded into the key) at ``timestep``;
2. CLIP text states of the B*K prompts, class tokens up-weighted against the empty prompt;
3. ONE UNet call on B*K rows: the K classes of an image share its noised latent (a repeat of the
   latent along the batch axis, no Python loop over classes), capturing the cross-attention maps
   at the configured resolutions and the self-attention maps at the finest one;
4. aggregate (:func:`~diffseg_jax.attention.aggregate_cross`), refine with the mean
   self-attention (:func:`~diffseg_jax.attention.refine`), resize to the image, min-max
   normalise per class (steps 2-4: :meth:`DiffSegmenter.class_maps`, which the evaluator also
   runs, with the images edge-padded onto a fixed canvas);
5. argmax against the constant background threshold (:func:`~diffseg_jax.attention.label_map`).

Memory. The self-attention maps at the refinement side are averaged *as they come*: a flax
method interceptor adds each ``attn1`` layer's head-averaged map to a running sum right after the
layer, and an ``optimization_barrier`` ties that sum to the layer's output, so XLA cannot postpone
the additions (keeping all five 64x64 layers' [N, 4096, 4096] maps, 5 x 64 MiB per row, alive
until the end); only the running sum (64 MiB per row float32, 32 MiB with
``self_attn_dtype='bfloat16'``) is stored. Each captured layer computes its head-averaged
probabilities one head at a time (``iedp_jax.sd.attention.head_mean_probs``), so its transient is
one head's float32 [N, 4096, 4096] logits (64 MiB per row) rather than all heads'. Measure the
compiled peak for a configuration with ``python -m benchmarks.diffseg --memory --classes 1 2 4``
(XLA's memory analysis at SD 1.5 size; nothing is run).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffseg_jax.attention import label_map, maps_to_canvas, minmax_normalize, refined_maps, resize, resize_regions
from diffseg_jax.config import DiffSegConfig
from diffseg_jax.prompts import ClassPrompts, empty_prompt_ids, encode_class_prompts, upweight_class_tokens
from iedp_jax.infra.errors import ConfigError
from iedp_jax.sd import (
    AttentionCapture,
    AutoencoderKL,
    CLIPTextTransformer,
    NoiseSchedule,
    Tokenizer,
    UNet2DConditionModel,
    add_noise,
    attention_maps,
    load_clip_text,
    load_noise_schedule,
    load_tokenizer,
    load_unet,
    load_vae,
    scale_latents,
)
from iedp_jax.sd.attention import Attention, is_self_attention
from iedp_jax.sd.layers import resize_bilinear
from iedp_jax.sd.unet import attention_sides

Params = dict[str, Any]


class _SelfAttentionMean:
    """A flax method interceptor summing the captured self-attention maps of one side as they come."""

    def __init__(self, side: int, dtype: Any) -> None:
        self.q = side * side
        self.dtype = dtype
        self.total: jax.Array | None = None
        self.count = 0

    def __call__(self, next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        module = context.module
        if not (context.method_name == "__call__" and isinstance(module, Attention)
                and module.name == "attn1" and module.capture):
            return y
        probs = module.get_variable("intermediates", "probs")[-1]  # [N, Q, Q] float32, just sown
        if probs.shape[1] != self.q:
            return y
        total = probs if self.total is None else self.total.astype(jnp.float32) + probs
        # The barrier makes the layer's output wait for the addition: this layer's map is then dead.
        total, y = jax.lax.optimization_barrier((total.astype(self.dtype), y))
        self.total = total
        self.count += 1
        return y


@dataclasses.dataclass(frozen=True, eq=False)
class DiffSegmenter:
    """Training-free open-vocabulary segmentation with one UNet call per image.

    Attributes:
      unet, vae, text: the Stable Diffusion modules (``iedp_jax.sd``); their parameters travel
        separately as ``params = {'unet': ..., 'vae': ..., 'text': ...}``.
      schedule: the training noise schedule (for ``add_noise`` at ``config.timestep``).
      empty_ids: token ids of the empty prompt ``""`` (``z_empty`` of the up-weighting).
      config: the constants.
      tokenizer: the CLIP tokenizer (host side, for :meth:`encode_prompts`), optional.

    ``segment`` is :meth:`apply` under ``jax.jit`` (compiled once per input shape);
    :meth:`apply` is the unjitted function, to wrap in your own ``jit`` with shardings.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text: CLIPTextTransformer
    schedule: NoiseSchedule
    empty_ids: tuple[int, ...]
    config: DiffSegConfig = dataclasses.field(default_factory=DiffSegConfig)
    tokenizer: Tokenizer | None = None

    # ------------------------------------------------------------------------------------------
    # Static geometry.

    @property
    def latent_side(self) -> int:
        return self.config.image_size // self.vae.config.downsample_factor

    @property
    def self_side(self) -> int:
        """Side of the refinement self-attention (and of the aggregated cross map): 64 at 512."""
        return self.config.self_side(self.latent_side)

    @functools.cached_property
    def cross_resolutions(self) -> dict[int, float]:
        """``{side: weight}`` of the cross-attention resolutions this UNet has at this input size."""
        f = self.vae.config.downsample_factor
        if self.config.image_size % f:
            raise ConfigError(f"image_size {self.config.image_size} is not a multiple of the VAE's "
                             f"downsampling factor {f}.")
        have = set(attention_sides(self.unet.config, self.latent_side))
        wanted = self.config.cross_weights(self.latent_side)
        missing = sorted(set(wanted) - have)
        if missing and self.config.strict_resolutions:
            raise ConfigError(f"the UNet has no attention at sides {missing} for a {self.config.image_size} px "
                             f"input (it has {sorted(have)}); set strict_resolutions=False to drop them.")
        kept = {s: w for s, w in wanted.items() if s in have}
        if not kept:
            raise ConfigError(f"none of the cross-attention sides {sorted(wanted)} exists in the UNet for a "
                             f"{self.config.image_size} px input (it has {sorted(have)}).")
        if self.self_side not in have:
            raise ConfigError(f"the UNet has no self-attention at side {self.self_side} (it has {sorted(have)}).")
        return kept

    @property
    def capture(self) -> AttentionCapture:
        return AttentionCapture(self_attn=(self.self_side,), cross_attn=tuple(sorted(self.cross_resolutions)))

    # ------------------------------------------------------------------------------------------
    # Host side.

    def encode_prompts(self, class_names: Sequence[str], caption: str | None = None,
                       dataset: str | None = None) -> ClassPrompts:
        """:func:`~diffseg_jax.prompts.encode_class_prompts` with this config's template and rule."""
        if self.tokenizer is None:
            raise ValueError("this DiffSegmenter has no tokenizer: build it with load_diffsegmenter.")
        return encode_class_prompts(self.tokenizer, class_names, self.config.template(dataset), caption,
                                    ing_rule=self.config.ing_rule)

    # ------------------------------------------------------------------------------------------
    # Device side (pure functions of params and arrays).

    def preprocess(self, images: jax.Array, image_hw: jax.Array | None = None) -> jax.Array:
        """uint8 [B, H, W, 3] -> float32 [B, S, S, 3] in [-1, 1] (S = image_size, bilinear).

        ``image_hw`` [B, 2]: each image's size when the images are edge-padded onto one canvas
        (the resize then reads each image's own region, :func:`~diffseg_jax.attention.resize_regions`).
        """
        x = images.astype(jnp.float32) / 255.0
        s = self.config.image_size
        x = resize_bilinear(x, (s, s)) if image_hw is None else resize_regions(x, image_hw, (s, s))
        return 2.0 * x - 1.0

    def encode_latents(self, params: Params, images: jax.Array, image_hw: jax.Array | None = None) -> jax.Array:
        """VAE posterior mean x latent scale: [B, h, w, 4]."""
        mean, _ = self.vae.apply({"params": params["vae"]}, self.preprocess(images, image_hw), method="encode")
        if self.config.latent_scale is None:
            return scale_latents(self.vae.config, mean)
        return mean * self.config.latent_scale

    def noised_latents(self, params: Params, images: jax.Array, rng_seed: jax.Array | int,
                       image_index: jax.Array | None = None, image_hw: jax.Array | None = None) -> jax.Array:
        """Step 1: latents noised at ``config.timestep``, one draw per image keyed by its index
        (``image_index`` [B], default ``arange(B)``); ``image_hw`` as in :meth:`preprocess`."""
        z0 = self.encode_latents(params, images, image_hw)
        b = z0.shape[0]
        index = jnp.arange(b, dtype=jnp.int32) if image_index is None else jnp.asarray(image_index, jnp.int32)
        key = jax.random.PRNGKey(rng_seed)
        noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), z0.shape[1:], z0.dtype))(index)
        t = jnp.full((b,), self.config.timestep, jnp.int32)
        return add_noise(self.schedule, z0, noise, t)

    def text_context(self, params: Params, prompt_ids: jax.Array, class_pos: jax.Array) -> jax.Array:
        """Up-weighted CLIP text states [N, L, D] of prompts [N, L]."""
        z = self.text.apply({"params": params["text"]}, prompt_ids).last_hidden_state
        empty = jnp.asarray(self.empty_ids, jnp.int32)[None]
        z_empty = self.text.apply({"params": params["text"]}, empty).last_hidden_state[0]  # [L, D]
        return upweight_class_tokens(z, z_empty, class_pos, self.config.token_weight)

    def attention(self, params: Params, latents: jax.Array, context: jax.Array
                  ) -> tuple[dict[str, jax.Array], jax.Array]:
        """One UNet call; returns (cross maps {path: [N, Q, L]}, mean self-attention [N, Q, Q]).

        ``latents`` [N, h, w, 4] and ``context`` [N, L, D] share the batch axis N. The mean is
        in ``config.self_attn_dtype``.
        """
        acc = _SelfAttentionMean(self.self_side, self.config.self_attn_jnp_dtype)
        t = jnp.full((latents.shape[0],), self.config.timestep, jnp.int32)
        with nn.intercept_methods(acc):
            _, state = self.unet.apply({"params": params["unet"]}, latents, t, context,
                                       capture=self.capture, mutable=["intermediates"])
        if acc.count == 0:
            raise RuntimeError(f"no self-attention layer at side {self.self_side} was recorded.")
        cross = {p: m for p, m in attention_maps(state).items() if not is_self_attention(p)}
        mean = acc.total if acc.count == 1 else (acc.total.astype(jnp.float32) / acc.count).astype(acc.total.dtype)
        return cross, mean

    def class_maps(self, params: Params, latents: jax.Array, prompt_ids: jax.Array, token_weights: jax.Array,
                   class_pos: jax.Array, out_hw: tuple[int, int], image_hw: jax.Array | None = None) -> jax.Array:
        """Steps 2-4: the per-class maps of B images from their noised latents (unjitted).

        Args:
          latents: [B, h, w, 4] from :meth:`noised_latents`.
          prompt_ids, token_weights, class_pos: [B, K, L].
          out_hw: static (H, W) of the maps.
          image_hw: None: each map is resized to ``out_hw``; or [B, 2] int, each image's size
            inside an ``out_hw`` canvas: the map is resized to it there and is 0 outside
            (:func:`~diffseg_jax.attention.maps_to_canvas`).

        Returns:
          [B, K, H, W] float32, min-max normalised per map (over the image's region).
        """
        b, k, length = prompt_ids.shape
        rows = jnp.repeat(latents, k, axis=0)  # [B*K, h, w, 4]: the K classes share their image's latent
        context = self.text_context(params, prompt_ids.reshape(b * k, length),
                                    class_pos.reshape(b * k, length).astype(bool))
        cross, self_mean = self.attention(params, rows, context)
        maps = refined_maps(cross, self_mean, token_weights.reshape(b * k, length), self.cross_resolutions,
                            self.config.eps)  # [B*K, s, s]
        if image_hw is None:
            maps = minmax_normalize(resize(maps, out_hw), 2, self.config.eps)
        else:
            maps = maps_to_canvas(maps, jnp.repeat(image_hw, k, axis=0), out_hw, self.config.eps)
        return maps.reshape((b, k) + tuple(out_hw))

    def apply(self, params: Params, images: jax.Array, prompt_ids: jax.Array, token_weights: jax.Array,
              class_pos: jax.Array, valid: jax.Array, rng_seed: jax.Array | int,
              image_index: jax.Array | None = None, threshold: float | jax.Array | None = None
              ) -> tuple[jax.Array, jax.Array]:
        """Segments a batch (unjitted; ``segment`` is its jitted form).

        Args:
          params: ``{'unet', 'vae', 'text'}`` parameter trees.
          images: [B, H, W, 3] uint8 (one size per batch; outputs are at this size).
          prompt_ids, token_weights, class_pos: [B, K, L] from
            :func:`~diffseg_jax.prompts.pad_class_prompts` / :func:`encode_class_prompts`.
          valid: [B, K] bool; padding classes get zero maps and never win.
          rng_seed: int seed of the noise (traced: a new seed does not recompile).
          image_index: [B] ints folded into the key per image (default ``arange(B)``); pass
            dataset indices to make the noise independent of batching.
          threshold: background score (default ``config.threshold``).

        Returns:
          labels [B, H, W] int32 (0 background, k + 1 class k), class_maps [B, K, H, W] float32
          (per-class min-max normalised, 0 for padding classes).
        """
        latents = self.noised_latents(params, images, rng_seed, image_index)
        maps = self.class_maps(params, latents, prompt_ids, token_weights, class_pos, images.shape[1:3])
        valid = valid.astype(bool)
        maps = jnp.where(valid[:, :, None, None], maps, 0.0)
        thr = self.config.threshold if threshold is None else threshold
        return label_map(maps, valid, thr), maps

    @functools.cached_property
    def segment(self):
        """``jax.jit(self.apply)``: (params, images, prompt_ids, token_weights, class_pos, valid,
        rng_seed, image_index=None, threshold=None) -> (labels, class_maps)."""
        return jax.jit(self.apply)


def load_diffsegmenter(pretrained_path: str | os.PathLike, config: DiffSegConfig | None = None,
                       dtype: Any = jnp.float32) -> tuple[DiffSegmenter, Params]:
    """Loads a local Stable Diffusion folder (diffusers layout) into a DiffSegmenter.

    Args:
      pretrained_path: the pipeline root (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
        ``scheduler/``).
      config: constants (default :class:`DiffSegConfig`).
      dtype: compute dtype of the three modules (attention maps are float32 regardless).

    Returns:
      ``(segmenter, params)`` with ``params = {'unet', 'vae', 'text'}``.
    """
    config = DiffSegConfig() if config is None else config
    unet, unet_params = load_unet(pretrained_path, dtype=dtype)
    vae, vae_params = load_vae(pretrained_path, dtype=dtype)
    text, text_params = load_clip_text(pretrained_path, dtype=dtype)
    tokenizer = load_tokenizer(pretrained_path)
    schedule = load_noise_schedule(pretrained_path)
    if not 0 <= config.timestep < schedule.num_train_timesteps:
        raise ConfigError(f"timestep {config.timestep} is outside the schedule's "
                         f"[0, {schedule.num_train_timesteps}).")
    segmenter = DiffSegmenter(unet, vae, text, schedule, tuple(int(i) for i in empty_prompt_ids(tokenizer)),
                              config, tokenizer)
    segmenter.cross_resolutions  # noqa: B018 - validates the resolutions against the UNet now
    return segmenter, {"unet": unet_params, "vae": vae_params, "text": text_params}


__all__ = ["DiffSegmenter", "load_diffsegmenter"]
