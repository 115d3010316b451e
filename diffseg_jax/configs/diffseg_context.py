"""DiffSegmenter on Pascal Context val (5105 images, 60 classes: background + 59), training-free.

Reproduces **27.5 mIoU** (DiffSegmenter, Wang et al., IEEE TIP 2025, Pascal-Context-60 with
background; SD 1.5, the original's candidate classes, per-class BLIP captions continuing
"a photography of {class}", threshold swept over 0.30..0.74 on val):

  python -m diffseg_jax.captions --dataset context --images /data/VOCdevkit/VOC2010/JPEGImages \
      --list /data/VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt \
      --model /models/blip-image-captioning-large \
      --candidates /src/DiffSegmenter/dataset/voc10/predict_syn_txt_0.8_img_0.97.json \
      --out /data/context_class_captions.jsonl
  python -m diffseg_jax.evaluate --config diffseg_context --workdir /tmp/diffseg_context \
      --config.pretrained=/models/stable-diffusion-v1-5 --config.data.data_dir=/data \
      --config.filtering.mode=given \
      --config.filtering.given_file=/src/DiffSegmenter/dataset/voc10/predict_syn_txt_0.8_img_0.97.json \
      --config.captions=/data/context_class_captions.jsonl --config.dtype=float16

The published number is ``threshold_sweep.best_mIoU`` of results.json; ``mIoU`` is the fixed
threshold 0.5, and ``--config.eval.threshold_from`` takes the threshold from a held-out run (see
diffseg_jax/configs/diffseg_voc.py). ``data_dir`` holds VOCdevkit/VOC2010/ (mmseg's converted layout).
Peers: MaskCLIP 23.6, ProxyCLIP 38.3, CaR 31.5. Differences from the official code:
docs/diffsegmenter.md.
"""

from diffseg_jax.config import default_config


def get_config():
    return default_config("context")  # the paper's settings and this dataset's published mIoU
