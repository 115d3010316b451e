"""Full-size random-weight folders in the released layouts: SD 1.5 (diffusers) and CLIP ViT-L/14
(transformers), plus a few ADE20K-layout photos, for memory plans and benchmarks.

  python -m benchmarks.full_size --out /tmp/full          # writes /tmp/full/{sd15,clip_l14,ade}

The configurations are the published ones (``benchmarks/sd15_configs.json``: the released SD 1.5
``unet``/``vae``/``text_encoder`` and CLIP ViT-L/14 vision configs). Weights are random (torch's
default initialisation, saved as float32 safetensors), so nothing here is downloaded. The tokenizer
is the tiny backbone's byte-level BPE (every id is within the 49408-token vocabulary). About 5 GB.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

CONFIGS = Path(__file__).with_name("sd15_configs.json")


def configs() -> dict:
    """The released SD 1.5 and CLIP ViT-L/14 configs (benchmarks/sd15_configs.json)."""
    return json.loads(CONFIGS.read_text())


def write_sd15(folder: Path, seed: int = 0) -> Path:
    """A diffusers SD 1.5 pipeline folder (unet, vae, text_encoder, tokenizer, scheduler)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from iedp_jax.sd.tiny import scheduler_config, write_tokenizer

    cfg = configs()
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(seed)
    UNet2DConditionModel(**{k: v for k, v in cfg["unet"].items()}).save_pretrained(folder / "unet")
    AutoencoderKL(**cfg["vae"]).save_pretrained(folder / "vae")
    CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])).save_pretrained(folder / "text_encoder")
    write_tokenizer(folder / "tokenizer")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(), indent=2))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    return folder


def write_clip_l14(folder: Path, seed: int = 0) -> Path:
    """A transformers ``CLIPVisionModelWithProjection`` folder (ViT-L/14, 224 px)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(seed + 1)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**configs()["clip_vit_l14_vision"])).save_pretrained(folder)
    return folder


def write_ade_photos(root: Path, n: int = 4, size: tuple[int, int] = (512, 683), seed: int = 0) -> Path:
    """``ADEChallengeData2016/{images,annotations}/{training,validation}`` with ``n`` photo-sized
    random images each (JPEG) and labels (PNG, values 0..150)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = Path(root) / "ADEChallengeData2016"
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"{prefix}_{i + 1:08d}"
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(img).save(base / "images" / split / f"{stem}.jpg", quality=90)
            blocks = rng.integers(0, 151, (size[0] // 32 + 1, size[1] // 32 + 1), dtype=np.uint8)
            label = np.kron(blocks, np.ones((32, 32), np.uint8))[: size[0], : size[1]]
            Image.fromarray(label).save(base / "annotations" / split / f"{stem}.png")
    return Path(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/full", help="folder that receives sd15/, clip_l14/ and ade/")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    print(write_sd15(out / "sd15", args.seed))
    print(write_clip_l14(out / "clip_l14", args.seed))
    print(write_ade_photos(out / "ade", seed=args.seed))


if __name__ == "__main__":
    main()
