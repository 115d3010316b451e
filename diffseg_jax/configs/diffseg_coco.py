"""DiffSegmenter on COCO-Object val2017 (5000 images, 81 classes: background + 80), training-free.

Reproduces **37.9 mIoU** (DiffSegmenter, Wang et al., IEEE TIP 2025, COCO-Object with background;
SD 1.5, the original's candidate classes, per-class BLIP captions continuing
"a photography of {class}", threshold swept over 0.30..0.74 on val). The original's candidate
file names the images COCO_val2014_<id>.jpg; they are matched to val2017's <id>.jpg by id:

  python -m diffseg_jax.captions --dataset coco --images /data/coco/images/val2017 \
      --model /models/blip-image-captioning-large \
      --candidates /src/DiffSegmenter/dataset/coco/predict_syn_txt_0.8_img_0.97.json \
      --out /data/coco_class_captions.jsonl
  python -m diffseg_jax.evaluate --config diffseg_coco --workdir /tmp/diffseg_coco \
      --config.pretrained=/models/stable-diffusion-v1-5 --config.data.data_dir=/data \
      --config.filtering.mode=given \
      --config.filtering.given_file=/src/DiffSegmenter/dataset/coco/predict_syn_txt_0.8_img_0.97.json \
      --config.captions=/data/coco_class_captions.jsonl --config.dtype=float16

The published number is ``threshold_sweep.best_mIoU`` of results.json; ``mIoU`` is the fixed
threshold 0.5, and ``--config.eval.threshold_from`` takes the threshold from a held-out run (see
diffseg_jax/configs/diffseg_voc.py). ``data_dir`` holds coco/images/val2017 + annotations (see
diffseg_jax.datasets). Peers: MaskCLIP 20.6, ProxyCLIP 39.1, CaR 37.5. Differences from the
official code (the COCO ground truth among them): docs/diffsegmenter.md.
"""

from diffseg_jax.config import default_config


def get_config():
    return default_config("coco")  # the paper's settings and this dataset's published mIoU
