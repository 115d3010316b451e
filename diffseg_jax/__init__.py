"""DiffSegmenter in JAX: training-free open-vocabulary segmentation with Stable Diffusion attention.

Wang et al., IEEE TIP 2025 (arXiv 2309.02773). Per image, every candidate class gets a prompt
("a photograph of {class}", optionally continued by a per-class BLIP caption); the (image, class)
rows of a batch go through the UNet together, each row gathering its image's noised latent; the
class token's cross-attention maps (several resolutions) are refined by the mean self-attention
and compared against a constant background score.

    from diffseg_jax import DiffSegmenter
    result = DiffSegmenter.from_pretrained("/models/stable-diffusion-v1-5").segment("photo.jpg", ["cat", "sofa"])
    result.labels, result.maps   # [H, W] (0 = background, k = k-th class), [K, H, W] in [0, 1]

Modules:
  config    -- :class:`DiffSegConfig`, every constant of the method, and the evaluation config
               schema (:func:`default_config`, :func:`diffseg_config`).
  prompts   -- host-side prompt encoding (token weights, "-ing" rule, class mask, captions) and
               the class-token up-weighting.
  attention -- pure jittable aggregation, refinement, resize and label-map functions.
  pipeline  -- :class:`DiffSegmenter` (jitted ``segment``, steps 2-4 in ``row_maps`` /
               ``class_maps``, ``from_pretrained(path).segment(image, classes)``), the memory guard,
               :func:`load_diffsegmenter`.
  images    -- image files as RGB (grey, RGBA, 16-bit), overlays with a legend, heat maps.
  filtering -- category filtering with CLIP (+ caption nouns): :func:`load_clip_filter`,
               :func:`candidate_classes`.
  datasets  -- VOC 2012 / Pascal Context 60 / COCO-Object: :class:`SegDataset` over local folders.
  builders  -- their tfds builders (prepared array_record copies) and the reader over them.
  segment   -- ``python -m diffseg_jax.segment`` (one image -> label map + overlay PNGs).
  evaluate  -- ``python -m diffseg_jax.evaluate --config diffseg_voc --workdir DIR``.
  captions  -- ``python -m diffseg_jax.captions`` (BLIP captions per image or per class as the
               original makes them, optional, needs torch).

How to reproduce the paper and every difference from the official code: docs/diffsegmenter.md.

Built on the backbone :mod:`iedp_jax.sd` and the method-agnostic runtime :mod:`iedp_jax.infra`
only (never on the IEDP trainer).
"""

from diffseg_jax.attention import (
                                   aggregate_cross,
                                   class_maps_from_attention,
                                   label_map,
                                   mean_self_attention,
                                   minmax_normalize,
                                   refine,
                                   refined_maps,
)
from diffseg_jax.config import DiffSegConfig, default_config, diffseg_config
from diffseg_jax.datasets import BENCHMARKS, Benchmark, SegDataset, make_dataset
from diffseg_jax.filtering import CLIPFilter, candidate_classes, caption_nouns, load_clip_filter, read_given_file
from diffseg_jax.pipeline import DiffSegmenter, PretrainedDiffSegmenter, Segmentation, load_diffsegmenter
from diffseg_jax.prompts import (
                                   ClassPrompts,
                                   build_prompt,
                                   caption_for,
                                   class_token_weights,
                                   empty_prompt_ids,
                                   encode_class_prompts,
                                   encode_with_fallback,
                                   pad_class_prompts,
                                   read_captions,
                                   upweight_class_tokens,
)

__all__ = ["BENCHMARKS", "Benchmark", "CLIPFilter", "ClassPrompts", "DiffSegConfig", "DiffSegmenter",
           "PretrainedDiffSegmenter", "SegDataset", "Segmentation", "aggregate_cross", "build_prompt",
           "candidate_classes", "caption_for", "caption_nouns", "class_maps_from_attention", "class_token_weights",
           "default_config", "diffseg_config", "empty_prompt_ids", "encode_class_prompts", "encode_with_fallback",
           "label_map", "load_clip_filter", "load_diffsegmenter", "make_dataset", "mean_self_attention",
           "minmax_normalize", "pad_class_prompts", "read_captions", "read_given_file", "refine", "refined_maps",
           "upweight_class_tokens"]
