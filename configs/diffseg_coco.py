"""DiffSegmenter on COCO-Object val2017 (5000 images, 81 classes: background + 80), training-free.

  python -m diffseg_jax.evaluate --config configs/diffseg_coco.py --workdir /tmp/diffseg_coco \
      --config.pretrained=/models/stable-diffusion-v1-5 \
      --config.data.data_dir=/data \
      --config.filtering.clip_path=/models/clip-vit-large-patch14

``data_dir`` holds coco/images/val2017 + annotations (see datasets).

Published (DiffSegmenter, Wang et al., IEEE TIP 2025): 37.9 mIoU on COCO-Object with background.
Peers: MaskCLIP 20.6, ProxyCLIP 39.1, CaR 37.5. The prompt template is the original's
"a photography of {}". Options as in configs/diffseg_voc.py (captions, sweep, oracle, bfloat16).
"""

from diffseg_jax.config import default_config


def get_config():
    return default_config("coco")  # the paper's settings and this dataset's published mIoU
