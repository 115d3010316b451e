"""DiffSegmenter in JAX: training-free open-vocabulary segmentation with Stable Diffusion attention.

Wang et al., IEEE TIP 2025 (arXiv 2309.02773). Per image, every candidate class gets a prompt
("a photograph of {class}"); all classes go through ONE UNet call as a batch sharing the image's
noised latent; the class token's cross-attention maps (several resolutions) are refined by the
mean self-attention and compared against a constant background score.

Modules:
  config    -- :class:`DiffSegConfig`, every constant of the method, and the evaluation config
               schema (:func:`default_config`, :func:`diffseg_config`).
  prompts   -- host-side prompt encoding (token weights, "-ing" rule, class mask, captions) and
               the class-token up-weighting.
  attention -- pure jittable aggregation, refinement, resize and label-map functions.
  pipeline  -- :class:`DiffSegmenter` (jitted ``segment``, steps 2-4 in ``class_maps``) and
               :func:`load_diffsegmenter`.
  filtering -- category filtering with CLIP (+ caption nouns): :func:`load_clip_filter`,
               :func:`candidate_classes`.
  datasets  -- VOC 2012 / Pascal Context 60 / COCO-Object: :class:`SegDataset` over local folders.
  builders  -- their tfds builders (prepared array_record copies) and the reader over them.
  segment   -- ``python -m diffseg_jax.segment`` (one image -> label map + overlay PNGs).
  evaluate  -- ``python -m diffseg_jax.evaluate --config configs/diffseg_voc.py --workdir DIR``.
  captions  -- ``python -m diffseg_jax.captions`` (BLIP captions, optional, needs torch).

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
from diffseg_jax.filtering import CLIPFilter, candidate_classes, caption_nouns, load_clip_filter
from diffseg_jax.pipeline import DiffSegmenter, load_diffsegmenter
from diffseg_jax.prompts import (
                                   ClassPrompts,
                                   build_prompt,
                                   class_token_weights,
                                   empty_prompt_ids,
                                   encode_class_prompts,
                                   pad_class_prompts,
                                   read_captions,
                                   upweight_class_tokens,
)

__all__ = ["BENCHMARKS", "Benchmark", "CLIPFilter", "ClassPrompts", "DiffSegConfig", "DiffSegmenter", "SegDataset",
           "aggregate_cross", "build_prompt", "candidate_classes", "caption_nouns", "class_maps_from_attention",
           "class_token_weights", "default_config", "diffseg_config", "empty_prompt_ids", "encode_class_prompts",
           "label_map", "load_clip_filter", "load_diffsegmenter", "make_dataset", "mean_self_attention",
           "minmax_normalize", "pad_class_prompts", "read_captions", "refine", "refined_maps", "upweight_class_tokens"]
