"""Image captions for DiffSegmenter prompts, from a local BLIP captioning model (optional).

The original extends every class prompt with a BLIP caption (``blip-image-captioning-large``).
:func:`write_captions` captions a folder of images with a transformers BLIP model the user already
has on disk and writes JSON lines ``{"image": "<file name>", "caption": "..."}``, the format
:func:`diffseg_jax.prompts.read_captions` reads and ``config.captions`` of
``python -m diffseg_jax.evaluate`` / ``--caption`` of ``python -m diffseg_jax.segment`` use.

    python -m diffseg_jax.captions --images VOCdevkit/VOC2012/JPEGImages --out captions.jsonl \\
        --model /models/blip-image-captioning-large [--prompt "a photograph of"] [--list val.txt]

This is the only module that runs a PyTorch model; ``transformers`` and ``torch`` are imported
inside :func:`write_captions`, so the rest of the library never needs them.

User errors (a missing image folder, model folder or list file, transformers / torch not
installed) are :class:`~iedp_jax.infra.errors.UserError`; the command line prints their one
sentence after ``error:`` and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from iedp_jax.infra.errors import DatasetError, InputError, MissingDependency, UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

__all__ = ["IMAGE_SUFFIXES", "list_images", "main", "write_captions"]


def list_images(images_dir: str | os.PathLike, names: Sequence[str] | None = None) -> list[Path]:
    """The image files of a folder (sorted), or the listed ones (file names or stems + ``.jpg``).

    Raises:
      DatasetError: a missing folder, no image in it, or a listed image that is missing.
    """
    folder = Path(images_dir).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"the image folder {str(folder)!r} does not exist.")
    if names is None:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = [folder / (n if Path(n).suffix else f"{n}.jpg") for n in names]
        missing = [p for p in files if not p.is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} listed image(s) are not in {str(folder)!r}, "
                                    f"the first is {missing[0].name}.")
    if not files:
        raise DatasetError(f"the image folder {str(folder)!r} holds no image ({', '.join(IMAGE_SUFFIXES)}).")
    return files


def write_captions(images_dir: str | os.PathLike, out_jsonl: str | os.PathLike, model_path: str | os.PathLike, *,
                   prompt: str | None = None, names: Sequence[str] | None = None, batch_size: int = 8,
                   max_new_tokens: int = 40, device: str | None = None) -> int:
    """Captions the images of ``images_dir`` with a local BLIP model; returns how many were written.

    Args:
      images_dir: a folder of images (e.g. ``VOCdevkit/VOC2012/JPEGImages``).
      out_jsonl: the JSON-lines file to write (its folder is created).
      model_path: a local transformers BLIP captioning folder
        (``BlipForConditionalGeneration`` + ``BlipProcessor``, e.g.
        ``Salesforce/blip-image-captioning-large`` saved with ``save_pretrained``).
      prompt: optional text BLIP continues (conditional captioning, e.g. "a photograph of").
      names: caption only these images (file names, or stems of ``.jpg`` files); default all.
      batch_size, max_new_tokens: generation settings.
      device: a torch device ("cuda", "cpu"); default cuda when available.

    Raises:
      DatasetError: the image folder is missing or has no image (one sentence).
      InputError: the model folder is missing.
      MissingDependency: transformers or torch is not installed.
    """
    files = list_images(images_dir, names)
    model_dir = Path(model_path).expanduser()
    if not (model_dir / "config.json").is_file():
        raise InputError(
            f"the BLIP model folder {str(model_dir)!r} does not exist or has no config.json: save a captioning model "
            "there with BlipForConditionalGeneration.from_pretrained(...).save_pretrained(folder) (and its "
            "BlipProcessor).")
    try:
        import torch  # noqa: PLC0415 - optional and heavy: only captioning needs it
        from transformers import BlipForConditionalGeneration, BlipProcessor  # noqa: PLC0415 - optional BLIP
    except ImportError as e:
        raise MissingDependency(f"captioning needs transformers and torch, which are not installed ({e}): "
                                "pip install transformers torch.") from None

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    processor = BlipProcessor.from_pretrained(str(model_dir))
    model = BlipForConditionalGeneration.from_pretrained(str(model_dir)).to(device).eval()
    out = Path(out_jsonl).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(out, "w", encoding="utf-8") as f, torch.no_grad():
        for start in range(0, len(files), batch_size):
            batch = files[start:start + batch_size]
            images = []
            for p in batch:
                with Image.open(p) as im:
                    images.append(im.convert("RGB"))
            kwargs = {"text": [prompt] * len(images)} if prompt else {}
            inputs = processor(images=images, return_tensors="pt", **kwargs).to(device)
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens)
            for p, text in zip(batch, processor.batch_decode(ids, skip_special_tokens=True)):
                f.write(json.dumps({"image": p.name, "caption": " ".join(text.split())}) + "\n")
                written += 1
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffseg_jax.captions",
                                description="Caption a folder of images with a local BLIP model (JSON lines).")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--out", required=True, help="JSON-lines file to write")
    p.add_argument("--model", required=True, help="local BLIP captioning model folder")
    p.add_argument("--prompt", default=None, help='text BLIP continues, e.g. "a photograph of"')
    p.add_argument("--list", default=None, help="a split file: caption only the ids it lists (first column)")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)
    try:
        names = None
        if args.list:
            lst = Path(args.list).expanduser()
            if not lst.is_file():
                raise InputError(f"the list file {str(lst)!r} does not exist.")
            names = [line.split()[0] for line in lst.read_text().splitlines() if line.strip()]
        n = write_captions(args.images, args.out, args.model, prompt=args.prompt, names=names,
                           batch_size=args.batch_size)
    except UserError as e:  # anything else is a bug: keep its traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {n} captions to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
