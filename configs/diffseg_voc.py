"""DiffSegmenter on PASCAL VOC 2012 val (1449 images, 21 classes with background), training-free.

  python -m diffseg_jax.evaluate --config configs/diffseg_voc.py --workdir /tmp/diffseg_voc \
      --config.pretrained=/models/stable-diffusion-v1-5 \
      --config.data.data_dir=/data \
      --config.filtering.clip_path=/models/clip-vit-large-patch14

``data_dir`` holds ``VOCdevkit/VOC2012/`` (with ``SegmentationClassAug``); the first run prepares it
as tfds array_record files under ``data.tfds_dir`` (``--config.data.format=folders`` reads the
folder directly).

Published (DiffSegmenter, Wang et al., IEEE TIP 2025): 60.1 mIoU with background (SD 1.5, CLIP
category filtering + BLIP captions, background threshold swept on val). Peers on the same column:
MaskCLIP 38.8, ProxyCLIP 61.2, CaR 67.5. Add ``--config.captions=captions.jsonl`` (see
``diffseg_jax.captions``) for caption-extended prompts and the caption-noun filter,
``--config.eval.sweep_thresholds="(0.3,0.35,0.4,0.45,0.5,0.55,0.6,0.65,0.7)"`` for the sweep
(reported apart), ``--config.filtering.mode=given`` for the oracle upper bound, and
``--config.dtype=bfloat16`` on GPUs/TPUs. Writes /tmp/diffseg_voc/results.json.
"""

from diffseg_jax.config import default_config


def get_config():
    return default_config("voc")  # the paper's settings and this dataset's published mIoU
