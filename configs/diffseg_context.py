"""DiffSegmenter on Pascal Context val (5105 images, 60 classes: background + 59), training-free.

  python -m diffseg_jax.evaluate --config configs/diffseg_context.py --workdir /tmp/diffseg_context \
      --config.pretrained=/models/stable-diffusion-v1-5 \
      --config.data.data_dir=/data \
      --config.filtering.clip_path=/models/clip-vit-large-patch14

``data_dir`` holds VOCdevkit/VOC2010/ (mmseg's converted layout).

Published (DiffSegmenter, Wang et al., IEEE TIP 2025): 27.5 mIoU on Pascal-Context-60 with
background. Peers: MaskCLIP 23.6, ProxyCLIP 38.3, CaR 31.5. The prompt template is the original's
"a photography of {}". Options as in configs/diffseg_voc.py (captions, sweep, oracle, bfloat16).
"""

from diffseg_jax.config import default_config


def get_config():
    return default_config("context")  # the paper's settings and this dataset's published mIoU
