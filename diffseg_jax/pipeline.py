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

Rows. Step 3's batch axis is a list of (image, class) rows: :meth:`DiffSegmenter.row_maps` takes
each row's image index and gathers its latent, so a batch's candidate pairs can be packed into
fixed-size row blocks (the evaluator does; the rows computed follow the candidates, not
``batch x classes``); :meth:`DiffSegmenter.class_maps` is the ``[B, K]`` layout on top of it.

Image size. ``DiffSegConfig.image_size = 0`` (the default) is the pipeline's native size, UNet
``sample_size`` x the VAE factor (512 for SD 1.5, 768 for SD 2.x-768, 32 for a 16-sample UNet
over a 2x VAE); it must be a multiple of the VAE factor.

One call. ``DiffSegmenter.from_pretrained(path).segment(image, ["cat", "sofa"])`` returns a
:class:`Segmentation` (label map and per-class maps at the image's size); it compiles once per
image size and class count and checks the compiled program's memory against the device first
(:func:`check_memory`).

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

Memory guard. Before a program runs, :func:`check_memory` compares what it needs with what the
device has free and stops with one sentence naming the knob (image size, rows per call): first a
floor known before compiling (:func:`attention_floor_bytes`: one float32 ``[Q, Q]`` map and the
running sum per row), then the compiled program's own memory analysis (temporaries + outputs).
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
import numpy as np

from diffseg_jax.attention import label_map, maps_to_canvas, minmax_normalize, refined_maps, resize, resize_regions
from diffseg_jax.config import DTYPES, DiffSegConfig
from diffseg_jax.images import read_image
from diffseg_jax.prompts import (
    ClassPrompts,
    build_prompt,
    empty_prompt_ids,
    encode_class_prompts,
    encode_with_fallback,
    pad_class_prompts,
    upweight_class_tokens,
)
from iedp_jax.infra import memory
from iedp_jax.infra.compile import compiler_options
from iedp_jax.infra.errors import ConfigError, InputError
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

    def __post_init__(self) -> None:
        size = self.config.image_size
        if size == 0:
            size = self.native_image_size
            if size is None:
                raise ConfigError("the UNet's config.json gives no sample_size, so the pipeline's native image size is "
                                  "unknown: set image_size.")
            object.__setattr__(self, "config", dataclasses.replace(self.config, image_size=size))
        self._check_size(size, "image_size")

    # ------------------------------------------------------------------------------------------
    # Static geometry.

    @property
    def vae_factor(self) -> int:
        return self.vae.config.downsample_factor

    @property
    def native_image_size(self) -> int | None:
        """UNet ``sample_size`` x the VAE factor (512 for SD 1.5), or None when the UNet does not say."""
        sample = self.unet.config.sample_size
        return None if sample is None else sample * self.vae_factor

    def _check_size(self, size: int, knob: str) -> None:
        native = self.native_image_size
        at = "" if native is None else f" (the pipeline's native size is {native})"
        if size <= 0:
            raise ConfigError(f"{knob} {size} must be a positive multiple of the VAE's downsampling factor "
                              f"{self.vae_factor}{at}.")
        if size % self.vae_factor:
            raise ConfigError(f"{knob} {size} is not a multiple of the VAE's downsampling factor "
                              f"{self.vae_factor}{at}.")

    def resized(self, image_size: int, knob: str = "image_size") -> DiffSegmenter:
        """This segmenter at another input size (0: the native one); ``knob`` names the setting in errors."""
        if image_size != 0:
            self._check_size(image_size, knob)
        return dataclasses.replace(self, config=dataclasses.replace(self.config, image_size=image_size))

    @property
    def latent_side(self) -> int:
        return self.config.image_size // self.vae_factor

    @property
    def self_side(self) -> int:
        """Side of the refinement self-attention (and of the aggregated cross map): 64 at 512."""
        return self.config.self_side(self.latent_side)

    @functools.cached_property
    def cross_resolutions(self) -> dict[int, float]:
        """``{side: weight}`` of the cross-attention resolutions this UNet has at this input size."""
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

    def encode_prompts(self, class_names: Sequence[str], caption: str | Sequence[str | None] | None = None,
                       dataset: str | None = None) -> ClassPrompts:
        """:func:`~diffseg_jax.prompts.encode_class_prompts` with this config's template and rules
        (``caption``: one for every class, or one per class)."""
        return encode_class_prompts(self.require_tokenizer(), class_names, self.config.template(dataset), caption,
                                    ing_rule=self.config.ing_rule, upweight=self.config.upweight)

    def encode_prompts_with_fallback(self, class_names: Sequence[str],
                                     caption: str | Sequence[str | None] | None = None, dataset: str | None = None
                                     ) -> tuple[ClassPrompts, list[str | None]]:
        """:func:`~diffseg_jax.prompts.encode_with_fallback` with this config's template and rules."""
        return encode_with_fallback(self.require_tokenizer(), class_names, self.config.template(dataset), caption,
                                    ing_rule=self.config.ing_rule, upweight=self.config.upweight)

    def require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError("this DiffSegmenter has no tokenizer: build it with load_diffsegmenter.")
        return self.tokenizer

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

    def encode_latents(self, params: Params, images: jax.Array, image_hw: jax.Array | None = None,
                       keys: jax.Array | None = None) -> jax.Array:
        """The VAE posterior mean (or, with ``config.posterior='sample'``, a posterior sample drawn
        with ``keys`` [B], one key per image) x latent scale: [B, h, w, 4]."""
        mean, logvar = self.vae.apply({"params": params["vae"]}, self.preprocess(images, image_hw), method="encode")
        z = mean
        if self.config.posterior == "sample":
            if keys is None:
                keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(self.config.noise_seed), i))(
                    jnp.arange(mean.shape[0]))
            eps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), mean.shape[1:], jnp.float32))(keys)
            z = (mean.astype(jnp.float32) + jnp.exp(0.5 * logvar.astype(jnp.float32)) * eps).astype(mean.dtype)
        if self.config.latent_scale is None:
            return scale_latents(self.vae.config, z)
        return z * self.config.latent_scale

    def noised_latents(self, params: Params, images: jax.Array, rng_seed: jax.Array | int,
                       image_index: jax.Array | None = None, image_hw: jax.Array | None = None) -> jax.Array:
        """Step 1: latents noised at ``config.timestep``, one draw per image keyed by its index
        (``image_index`` [B], default ``arange(B)``); ``image_hw`` as in :meth:`preprocess`. A
        posterior sample (``config.posterior='sample'``) uses the same per-image key."""
        b = images.shape[0]
        index = jnp.arange(b, dtype=jnp.int32) if image_index is None else jnp.asarray(image_index, jnp.int32)
        key = jax.random.PRNGKey(rng_seed)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
        z0 = self.encode_latents(params, images, image_hw, keys)
        noise = jax.vmap(lambda k: jax.random.normal(k, z0.shape[1:], z0.dtype))(keys)
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

    def row_maps(self, params: Params, latents: jax.Array, row_image: jax.Array, prompt_ids: jax.Array,
                 token_weights: jax.Array, class_pos: jax.Array, out_hw: tuple[int, int],
                 image_hw: jax.Array | None = None) -> jax.Array:
        """Steps 2-4 on R (image, class) rows: each row gathers its image's latent (unjitted).

        Args:
          latents: [B, h, w, 4] from :meth:`noised_latents`.
          row_image: [R] int, the image (index into ``latents``) of each row.
          prompt_ids, token_weights, class_pos: [R, L], each row's class prompt.
          out_hw: static (H, W) of the maps.
          image_hw: None: each map is resized to ``out_hw``; or [B, 2] int, each image's size
            inside an ``out_hw`` canvas: the map is resized to it there and is 0 outside
            (:func:`~diffseg_jax.attention.maps_to_canvas`).

        Returns:
          [R, H, W] float32, min-max normalised per map (over the image's region).
        """
        row_image = jnp.asarray(row_image, jnp.int32)
        rows = jnp.take(latents, row_image, axis=0)  # [R, h, w, 4]: a row shares its image's latent
        context = self.text_context(params, prompt_ids, class_pos.astype(bool))
        cross, self_mean = self.attention(params, rows, context)
        maps = refined_maps(cross, self_mean, token_weights, self.cross_resolutions, self.config.eps)  # [R, s, s]
        if image_hw is None:
            return minmax_normalize(resize(maps, out_hw), 2, self.config.eps)
        return maps_to_canvas(maps, jnp.take(jnp.asarray(image_hw), row_image, axis=0), out_hw, self.config.eps)

    def class_maps(self, params: Params, latents: jax.Array, prompt_ids: jax.Array, token_weights: jax.Array,
                   class_pos: jax.Array, out_hw: tuple[int, int], image_hw: jax.Array | None = None) -> jax.Array:
        """Steps 2-4: the per-class maps of B images with K classes each (:meth:`row_maps` on the
        B*K rows, image-major; unjitted).

        Args:
          latents: [B, h, w, 4] from :meth:`noised_latents`.
          prompt_ids, token_weights, class_pos: [B, K, L].
          out_hw, image_hw: as in :meth:`row_maps`.

        Returns:
          [B, K, H, W] float32, min-max normalised per map (over the image's region).
        """
        b, k, length = prompt_ids.shape
        row_image = jnp.repeat(jnp.arange(b, dtype=jnp.int32), k)
        maps = self.row_maps(params, latents, row_image, prompt_ids.reshape(b * k, length),
                             token_weights.reshape(b * k, length), class_pos.reshape(b * k, length), out_hw, image_hw)
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
        return jax.jit(self.apply, compiler_options=compiler_options() or None)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, config: DiffSegConfig | None = None, *,
                        dtype: Any = "float32", **overrides: Any) -> PretrainedDiffSegmenter:
        """A ready segmenter: ``DiffSegmenter.from_pretrained(path).segment(image, ["cat", "sofa"])``.

        Args:
          path: a local Stable Diffusion folder (diffusers layout).
          config: the constants (default :class:`DiffSegConfig`: the pipeline's native size).
          dtype: compute dtype, a name of :data:`~diffseg_jax.config.DTYPES` or a jnp dtype.
          overrides: :class:`DiffSegConfig` fields, e.g. ``image_size=512, threshold=0.4``.
        """
        config = dataclasses.replace(config or DiffSegConfig(), **overrides)
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
            dtype = DTYPES[dtype]
        seg, params = load_diffsegmenter(path, config, dtype=dtype)
        return PretrainedDiffSegmenter(seg, params)


# ----------------------------------------------------------------------------------------------
# Memory guard.

GiB = 2 ** 30


available_memory = memory.available_bytes  # (a module attribute: tests replace it)


def compiled_bytes(compiled: Any) -> int | None:
    """What a compiled program allocates when it runs (XLA's memory analysis: temporaries +
    outputs + code; the arguments are already in memory), per device; None when not reported."""
    try:
        m = compiled.memory_analysis()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    if m is None:
        return None
    return int(m.temp_size_in_bytes + m.output_size_in_bytes + getattr(m, "generated_code_size_in_bytes", 0))


def attention_floor_bytes(seg: DiffSegmenter, rows: int) -> int:
    """A floor on the memory of ``rows`` UNet rows, known before compiling: each row holds at
    least one float32 ``[Q, Q]`` self-attention map at the refinement side and the running sum."""
    q = seg.self_side ** 2
    return int(rows) * q * q * (4 + jnp.dtype(seg.config.self_attn_jnp_dtype).itemsize)


def check_memory(needed: int | None, what: str, advice: str, available: int | None = None,
                 at_least: bool = False) -> None:
    """Raises a one-sentence :class:`~iedp_jax.infra.errors.MemoryPlanError` (a ConfigError) when
    ``needed`` bytes exceed the device's free memory (``available``, default
    :func:`available_memory`): :func:`iedp_jax.infra.memory.check_fits` for DiffSegmenter.

    Args:
      needed: bytes (None: unknown, nothing is checked).
      what: what needs them, e.g. "1 image x 3 classes at 512 px".
      advice: what to lower, naming the knob, e.g. "lower --image-size (native 512) or --classes-per-call".
      at_least: ``needed`` is a floor (said so), not the compiled program's own figure.
    """
    memory.check_fits(needed, "DiffSegmenter", advice, available_memory() if available is None else available,
                      at_least=at_least, purpose=what)


# ----------------------------------------------------------------------------------------------
# One call.


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """The result of :meth:`PretrainedDiffSegmenter.segment`.

    Attributes:
      labels: [H, W] int32 at the image's size: 0 = background, k = ``classes[k - 1]``.
      maps: [K, H, W] float32 in [0, 1]: each class's refined attention map, min-max normalised
        (the method's own artefact; a pixel's label is the class with the largest map where it
        exceeds ``threshold``).
      classes: the K class names as given.
      prompts: the K prompt texts.
      fallbacks: per class None, or why its captioned prompt fell back to the plain template.
      threshold: the background score used.
    """

    labels: np.ndarray
    maps: np.ndarray
    classes: tuple[str, ...]
    prompts: tuple[str, ...]
    fallbacks: tuple[str | None, ...]
    threshold: float


class PretrainedDiffSegmenter:
    """A :class:`DiffSegmenter` with its parameters (:meth:`DiffSegmenter.from_pretrained`).

    ``segment`` compiles once per (image size, classes per call) and checks the compiled
    program's memory against the device first; ``advice`` is the sentence's tail naming what to
    lower (``{native}`` = the native size, ``{size}`` = the current one).
    """

    ADVICE = ("lower image_size (now {size}; the pipeline's native size is {native}) or segment fewer classes per "
              "call (classes_per_call)")

    def __init__(self, segmenter: DiffSegmenter, params: Params, advice: str | None = None) -> None:
        self.segmenter = segmenter
        self.params = params
        self.advice = self.ADVICE if advice is None else advice
        self._compiled: dict[tuple, Any] = {}

    @property
    def config(self) -> DiffSegConfig:
        return self.segmenter.config

    def _advice(self) -> str:
        native = self.segmenter.native_image_size
        return self.advice.format(size=self.config.image_size, native="unknown" if native is None else native)

    def compiled(self, image_hw: tuple[int, int], num_classes: int):
        """The compiled ``apply`` for one image of ``image_hw`` and ``num_classes`` classes, after
        the memory guard (:func:`check_memory`)."""
        key = (tuple(image_hw), int(num_classes))
        if key in self._compiled:
            return self._compiled[key]
        seg, length = self.segmenter, self._tokenizer_length()
        what = (f"1 image x {num_classes} class{'es' if num_classes != 1 else ''} at {seg.config.image_size} px "
                f"(self-attention {seg.self_side}x{seg.self_side})")
        check_memory(attention_floor_bytes(seg, num_classes), what, self._advice(), at_least=True)
        spec = jax.ShapeDtypeStruct
        lowered = jax.jit(seg.apply).lower(
            self.params, spec((1, *image_hw, 3), jnp.uint8), spec((1, num_classes, length), jnp.int32),
            spec((1, num_classes, length), jnp.float32), spec((1, num_classes, length), jnp.bool_),
            spec((1, num_classes), jnp.bool_), spec((), jnp.int32), None, spec((), jnp.float32))
        compiled = lowered.compile(compiler_options() or None)
        check_memory(compiled_bytes(compiled), what, self._advice())
        self._compiled[key] = compiled
        return compiled

    def _tokenizer_length(self) -> int:
        return len(self.segmenter.empty_ids)

    def segment(self, image: np.ndarray | str | os.PathLike, classes: Sequence[str], *,
                caption: str | Sequence[str | None] | None = None, threshold: float | None = None,
                seed: int | None = None, classes_per_call: int | None = None) -> Segmentation:
        """Segments one image into ``classes`` (plus the background).

        Args:
          image: an RGB uint8 array [H, W, 3] (grey, RGBA and 16-bit arrays are converted) or an
            image file.
          classes: class names, e.g. ``["cat", "sofa"]``.
          caption: one caption for every class (appended, or continued when it starts with the
            class prompt) or one per class; a class whose caption cannot hold its token falls
            back to the plain template (``Segmentation.fallbacks``).
          threshold: background score in [0, 1] (default ``config.threshold``).
          seed: the noise seed (default ``config.noise_seed``).
          classes_per_call: UNet rows per call (default all classes in one call); lower it when
            the memory guard says so.

        Raises:
          ConfigError / InputError: one sentence (no class, an unreadable image, a threshold out
            of range, a program larger than the device's free memory).
        """
        if isinstance(classes, (str, bytes)):  # iterating it would segment one letter per class
            raise ConfigError(f"classes={classes!r} is one string: pass a list of class names, e.g. "
                              f"{[c.strip() for c in str(classes).split(',') if c.strip()] or ['cat']}.")
        classes = [str(c) for c in classes]
        if not classes:
            raise ConfigError("no class to segment: give at least one class name.")
        if len(set(classes)) != len(classes):
            twice = sorted({c for c in classes if classes.count(c) > 1})
            raise ConfigError(f"classes lists {', '.join(map(repr, twice))} more than once: give each class once "
                              "(its label is its position in the list).")
        threshold = self.config.threshold if threshold is None else float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold {threshold} is outside [0, 1] (the class maps are normalised to [0, 1]).")
        k_call = len(classes) if not classes_per_call else int(classes_per_call)
        if k_call <= 0:
            raise ConfigError(f"classes_per_call must be positive, got {classes_per_call}.")
        image = read_image(image) if isinstance(image, (str, os.PathLike)) else _as_rgb(image)
        seg = self.segmenter
        prompts, reasons = seg.encode_prompts_with_fallback(classes, caption)
        seed = self.config.noise_seed if seed is None else int(seed)
        maps = []
        for start in range(0, len(classes), k_call):
            part = ClassPrompts(*(x[start:start + k_call] for x in prompts))
            ids, tw, pos, valid = pad_class_prompts([part], seg.require_tokenizer(), k_call)
            run = self.compiled(image.shape[:2], k_call)
            _, m = run(self.params, image[None], ids, tw, pos, valid, np.int32(seed), None, np.float32(threshold))
            maps.append(np.asarray(m[0, :part.ids.shape[0]], np.float32))
        maps = np.concatenate(maps)
        scores = np.concatenate([np.full((1,) + maps.shape[1:], threshold, np.float32), maps])
        labels = np.argmax(scores, axis=0).astype(np.int32)  # ties: the background, then the lower class
        texts = tuple(build_prompt(seg.config.template(), c, None if r else cap)
                      for c, cap, r in zip(classes, _captions_of(caption, len(classes)), reasons))
        return Segmentation(labels, maps, tuple(classes), texts, tuple(reasons), threshold)


def _captions_of(caption: str | Sequence[str | None] | None, k: int) -> list[str | None]:
    return [caption] * k if caption is None or isinstance(caption, str) else list(caption)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """An array image as uint8 RGB [H, W, 3] (grey, grey + alpha, RGBA, 16-bit and float in [0, 1])."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4) or min(a.shape[:2]) < 1:
        raise InputError(f"expected an image array [H, W, 3] (or grey / RGBA), got shape {a.shape}.")
    if a.dtype == np.uint16:
        a = (a.astype(np.uint32) * 255 + 32767) // 65535
    elif np.issubdtype(a.dtype, np.floating):
        top = float(np.nanmax(a)) if a.size else 0.0
        if top > 1.0:  # 0..255 as floats would clip to white
            raise InputError(f"a float image must hold values in [0, 1], this one reaches {top:g}: pass "
                             "image / 255, or the uint8 array.")
        a = np.clip(np.rint(a * 255.0), 0, 255)
    a = a.astype(np.uint8)
    if a.shape[-1] in (2, 4):
        a = a[..., :-1]
    return np.ascontiguousarray(np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a)


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


__all__ = ["DiffSegmenter", "PretrainedDiffSegmenter", "Segmentation", "attention_floor_bytes", "available_memory",
           "check_memory", "compiled_bytes", "load_diffsegmenter"]
