"""DiffSegmenter on PASCAL VOC 2012 val (1449 images, 21 classes with background), training-free.

Reproduces **60.1 mIoU** (DiffSegmenter, Wang et al., IEEE TIP 2025, Table "VOC" with background;
SD 1.5, the original's CLIP+BLIP candidate classes, per-class BLIP captions, background threshold
swept over 0.30..0.74 on val). Two commands (``/src/DiffSegmenter`` is a checkout of the official
code, github.com/VCG-team/DiffSegmenter, for its candidate file):

  # 1. one BLIP caption per (image, candidate class), continuing "a photograph of {class}"
  python -m diffseg_jax.captions --dataset voc --images /data/VOCdevkit/VOC2012/JPEGImages \
      --list /data/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt \
      --model /models/blip-image-captioning-large \
      --candidates /src/DiffSegmenter/dataset/voc12/predict_syn_txt_0.8_img_0.97.json \
      --out /data/voc_class_captions.jsonl
  # 2. the evaluation, replaying the original's candidates, in the original's fp16
  python -m diffseg_jax.evaluate --config diffseg_voc --workdir /tmp/diffseg_voc \
      --config.pretrained=/models/stable-diffusion-v1-5 --config.data.data_dir=/data \
      --config.filtering.mode=given \
      --config.filtering.given_file=/src/DiffSegmenter/dataset/voc12/predict_syn_txt_0.8_img_0.97.json \
      --config.captions=/data/voc_class_captions.jsonl --config.dtype=float16

The published number is ``threshold_sweep.best_mIoU`` of /tmp/diffseg_voc/results.json (the best
threshold of the paper's grid, chosen on val itself); ``mIoU`` is the fixed threshold 0.5. To fix
the threshold on held-out data instead, evaluate a training subset first (``--config.data.split=train
--config.data.format=folders --config.data.num_images=500``, the CLIP filter:
``--config.filtering.clip_path=/models/clip-vit-large-patch14``, its own captions) and pass its
results.json as ``--config.eval.threshold_from``. Our own open-vocabulary run (no candidate file:
the CLIP filter with the caption-noun branch on the captions given) is the command above with
``--config.filtering.clip_path=...`` instead of the two ``filtering`` overrides.

``data_dir`` holds ``VOCdevkit/VOC2012/`` (with ``SegmentationClassAug``); the first run prepares
it as tfds array_record files under ``data.tfds_dir`` (``--config.data.format=folders`` reads the
folder directly). Peers on the same column: MaskCLIP 38.8, ProxyCLIP 61.2, CaR 67.5. Every
difference from the official code: docs/diffsegmenter.md.
"""

from diffseg_jax.config import default_config


def get_config():
    return default_config("voc")  # the paper's settings and this dataset's published mIoU
