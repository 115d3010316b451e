"""Image captions for DiffSegmenter prompts, from a local BLIP captioning model (optional).

The original makes one BLIP caption **per class** (``blip-image-captioning-large``): BLIP
continues the class prompt ("a photograph of {c}" for VOC, "a photography of {c}" for Pascal
Context and COCO, with the original's prompt names), and the prompt is that caption with compel's
``++`` on the class's last word ("a photograph of cat++ sitting on a couch"). With ``--dataset``
this module does the same for each image's candidate classes (``--candidates``: the original's
``predict_syn_txt_0.8_img_0.97.json`` or an evaluation's ``candidates.jsonl``; without it every
class) and writes JSON lines

    {"image": "2007_000033.jpg", "class": "plane", "caption": "a photograph of plane flying ...",
     "prompt": "a photograph of plane++ flying ..."}

keyed by image and class, which :func:`diffseg_jax.prompts.read_captions` reads and
``config.captions`` of ``python -m diffseg_jax.evaluate`` uses (the prompt of a class is built
from its caption, the up-weighting goes on the last word; ``prompt`` is for reading only).
Without ``--dataset`` it writes one caption per image, ``{"image": ..., "caption": ...}`` (the
``--caption`` of ``python -m diffseg_jax.segment`` takes such a text).

    python -m diffseg_jax.captions --dataset voc --images VOCdevkit/VOC2012/JPEGImages \\
        --list VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt --model /models/blip-image-captioning-large \\
        --candidates predict_syn_txt_0.8_img_0.97.json --out voc_class_captions.jsonl
    python -m diffseg_jax.captions --images photos/ --out captions.jsonl --model /models/blip-image-captioning-large

BLIP generates with its own generation settings (as the original, which calls ``generate``
without arguments) unless ``--max-new-tokens`` is given. This is the only module that runs a
PyTorch model; ``transformers`` and ``torch`` are imported inside :func:`blip_captioner`, so the
rest of the library never needs them.

User errors (a missing image folder, model folder, list or candidate file, an unknown dataset,
transformers / torch not installed) are :class:`~iedp_jax.infra.errors.UserError`; the command
line prints their one sentence after ``error:`` and exits with status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from PIL import Image

from diffseg_jax.config import TEMPLATES
from diffseg_jax.datasets import PROMPT_NAME_TABLES, benchmark
from diffseg_jax.filtering import image_key, read_given_file
from diffseg_jax.images import read_image
from diffseg_jax.prompts import build_prompt
from iedp_jax.infra.cli import prog_name
from iedp_jax.infra.errors import ConfigError, DatasetError, InputError, MissingDependency, UserError, output_error

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# captioner(images, texts) -> captions: BLIP on a batch of RGB images, each continuing its text (or None).
Captioner = Callable[[Sequence[Image.Image], Sequence[str | None]], list[str]]

__all__ = ["IMAGE_SUFFIXES", "Captioner", "blip_captioner", "class_prompt", "list_images", "main", "write_captions",
           "write_class_captions"]


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


def blip_captioner(model_path: str | os.PathLike, device: str | None = None,
                   max_new_tokens: int | None = None) -> Captioner:
    """A local transformers BLIP captioning model (``BlipForConditionalGeneration`` +
    ``BlipProcessor`` saved with ``save_pretrained``) as a :data:`Captioner`.

    Raises:
      InputError: the model folder is missing.
      MissingDependency: transformers or torch is not installed.
    """
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
    kwargs = {} if max_new_tokens is None else {"max_new_tokens": int(max_new_tokens)}

    def caption(images: Sequence[Image.Image], texts: Sequence[str | None]) -> list[str]:
        out = []
        with torch.no_grad():
            if all(t is None for t in texts):  # unconditional: one batch
                inputs = processor(images=list(images), return_tensors="pt").to(device)
                ids = model.generate(**inputs, **kwargs)
                return [" ".join(t.split()) for t in processor.batch_decode(ids, skip_special_tokens=True)]
            for im, text in zip(images, texts):  # conditional: one at a time, as the original
                inputs = processor(im, text, return_tensors="pt").to(device) if text else \
                    processor(images=im, return_tensors="pt").to(device)
                ids = model.generate(**inputs, **kwargs)
                out.append(" ".join(processor.decode(ids[0], skip_special_tokens=True).split()))
        return out

    return caption


def _rgb(path: Path) -> Image.Image | None:
    """The image as RGB (its EXIF orientation applied), or None with one line when it cannot be
    decoded (the image is skipped; the other captions are still written)."""
    try:
        return Image.fromarray(read_image(path))
    except InputError as e:
        print(f"skipped: {e}", file=sys.stderr)
        return None


def write_captions(images_dir: str | os.PathLike, out_jsonl: str | os.PathLike, model_path: str | os.PathLike, *,
                   prompt: str | None = None, names: Sequence[str] | None = None, batch_size: int = 8,
                   max_new_tokens: int | None = 40, device: str | None = None,
                   captioner: Captioner | None = None) -> int:
    """Captions the images of ``images_dir`` (one caption per image); returns how many were written.

    Args:
      images_dir: a folder of images (e.g. ``VOCdevkit/VOC2012/JPEGImages``).
      out_jsonl: the JSON-lines file to write (its folder is created).
      model_path: a local transformers BLIP captioning folder (:func:`blip_captioner`).
      prompt: optional text BLIP continues (conditional captioning, e.g. "a photograph of").
      names: caption only these images (file names, or stems of ``.jpg`` files); default all.
      batch_size, max_new_tokens, device: generation settings.
      captioner: use this instead of loading ``model_path``.

    Raises:
      DatasetError: the image folder is missing or has no image (one sentence).
      InputError: the model folder is missing.
      MissingDependency: transformers or torch is not installed.
    """
    files = list_images(images_dir, names)
    captioner = captioner or blip_captioner(model_path, device, max_new_tokens)

    def records() -> Iterator[dict]:
        for start in range(0, len(files), batch_size):
            batch = [(p, im) for p in files[start:start + batch_size] if (im := _rgb(p)) is not None]
            if not batch:
                continue
            batch, decoded = [p for p, _ in batch], [im for _, im in batch]
            texts = captioner(decoded, [prompt] * len(batch))
            for p, text in zip(batch, texts):
                yield {"image": p.name, "caption": " ".join(text.split())}

    return _write_jsonl(out_jsonl, records())


def class_prompt(template: str, class_name: str, caption: str) -> str:
    """The original's compel prompt of a per-class caption: the class prompt with ``++`` after
    its last word, then the caption's continuation ("a photograph of cat++ sitting on a couch")."""
    plain = template.format(class_name)
    full = build_prompt(template, class_name, caption)
    if not full.startswith(plain):
        return full
    return f"{plain}++{full[len(plain):]}"


def write_class_captions(images_dir: str | os.PathLike, out_jsonl: str | os.PathLike,
                         model_path: str | os.PathLike | None = None, *, dataset: str | None = None,
                         classes: Sequence[str] | None = None, template: str | None = None,
                         candidates: str | os.PathLike | None = None, names: Sequence[str] | None = None,
                         prompt_names: str = "official", max_new_tokens: int | None = None,
                         device: str | None = None, captioner: Captioner | None = None) -> int:
    """One caption per (image, class), BLIP continuing the class prompt as the original does;
    returns how many were written.

    Args:
      images_dir, out_jsonl, names: as :func:`write_captions`.
      model_path: a local BLIP captioning folder (:func:`blip_captioner`), unless ``captioner``.
      dataset: 'voc', 'context' or 'coco': its prompt template and its ``prompt_names`` table
        ('official': the original's); or None with ``classes`` and ``template``.
      classes, template: a vocabulary and a template ("a photograph of {}") of your own.
      candidates: caption only each image's candidates (the original's candidate JSON or a
        ``candidates.jsonl``; needs ``dataset``); an image it does not list gets none.

    Raises:
      ConfigError: neither a dataset nor classes, or candidates without a dataset.
      DatasetError / InputError / MissingDependency: as :func:`write_captions`.
    """
    if dataset is not None:
        bench = benchmark(dataset)
        vocab = list(bench.prompt_names_for(prompt_names))
        template = template or dict(TEMPLATES)[bench.key]
    elif classes:
        if template is None or template.count("{}") != 1:
            raise ConfigError("per-class captions of your own classes need --prefix with one '{}', e.g. "
                              "--prefix \"a photograph of {}\".")
        bench, vocab = None, [str(c) for c in classes]
    else:
        raise ConfigError("give --dataset (voc, context, coco) or --classes for per-class captions.")
    given = None
    if candidates is not None:
        if bench is None:
            raise ConfigError("--candidates needs --dataset (its class names are the dataset's).")
        if not Path(candidates).expanduser().is_file():
            raise InputError(f"the candidate file {str(candidates)!r} does not exist.")
        given = read_given_file(Path(candidates).expanduser(), bench)
    files = list_images(images_dir, names)
    captioner = captioner or blip_captioner(model_path, device, max_new_tokens)

    def records() -> Iterator[dict]:
        for p in files:
            todo = vocab if given is None else [vocab[c - 1] for c in given.get(image_key(p.name), [])]
            if not todo:
                continue
            image = _rgb(p)
            if image is None:
                continue
            texts = captioner([image] * len(todo), [template.format(c) for c in todo])
            for c, text in zip(todo, texts):
                text = " ".join(text.split())
                yield {"image": p.name, "class": c, "caption": text, "prompt": class_prompt(template, c, text)}

    return _write_jsonl(out_jsonl, records())


def _write_jsonl(out_jsonl: str | os.PathLike, records: Iterable[dict]) -> int:
    """Writes ``records`` as JSON lines (creating the folder); returns how many. They go to a
    temporary file renamed over ``out_jsonl`` at the end: a run that stops early (an error, a
    kill) leaves an existing file as it was."""
    out = Path(out_jsonl).expanduser()
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    written = 0
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
                written += 1
        os.replace(tmp, out)
    except OSError as e:  # a read-only or full folder is one sentence; anything else a bug
        if (err := output_error(e, f"--out {out}", "the captions")) is None:
            raise
        raise err from e
    finally:
        with contextlib.suppress(OSError):  # gone after the rename, or its folder never was
            tmp.unlink(missing_ok=True)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog_name("diffseg_jax.captions"),
                                description="Caption images with a local BLIP model (JSON lines): one caption per "
                                            "image, or with --dataset / --classes one per class as the original.")
    p.add_argument("--images", "--image", required=True, help="folder of images")
    p.add_argument("--out", required=True, help="JSON-lines file to write")
    p.add_argument("--model", required=True, help="local BLIP captioning model folder")
    p.add_argument("--dataset", default=None, help="voc | context | coco: per-class captions with its prompts")
    p.add_argument("--prompt-names", "--prompt_names", default="official", choices=PROMPT_NAME_TABLES,
                   help="with --dataset: the original's prompt names (official) or ours (readable)")
    p.add_argument("--classes", default=None, help='per-class captions of these classes, e.g. "cat,sofa"')
    p.add_argument("--prefix", "--prompt", default=None,
                   help='with --classes: the class prompt BLIP continues, e.g. "a photograph of {}"; without '
                        '--dataset/--classes: text every image\'s caption continues, e.g. "a photograph of"')
    p.add_argument("--candidates", default=None,
                   help="with --dataset: caption only each image's candidates (predict_syn_txt_0.8_img_0.97.json or "
                        "candidates.jsonl)")
    p.add_argument("--list", default=None, help="a split file: caption only the ids it lists (first column)")
    p.add_argument("--batch-size", "--batch_size", type=int, default=8)
    p.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=None,
                   help="default: the model's generation settings")
    args = p.parse_args(argv)
    try:
        if args.batch_size <= 0:
            raise ConfigError(f"--batch-size {args.batch_size} must be positive.")
        if args.max_new_tokens is not None and args.max_new_tokens <= 0:
            raise ConfigError(f"--max-new-tokens {args.max_new_tokens} must be positive (default: the model's own "
                              "generation settings).")
        names = None
        if args.list:
            lst = Path(args.list).expanduser()
            if not lst.is_file():
                raise InputError(f"the list file {str(lst)!r} does not exist.")
            names = [line.split()[0] for line in lst.read_text().splitlines() if line.strip()]
        if args.dataset or args.classes is not None:
            classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
            if args.classes is not None and not classes:
                raise ConfigError('--classes is empty: give comma-separated class names, e.g. --classes "cat,sofa".')
            n = write_class_captions(args.images, args.out, args.model, dataset=args.dataset, classes=classes,
                                     template=args.prefix, candidates=args.candidates, names=names,
                                     prompt_names=args.prompt_names, max_new_tokens=args.max_new_tokens)
        else:
            n = write_captions(args.images, args.out, args.model, prompt=args.prefix, names=names,
                               batch_size=args.batch_size,
                               max_new_tokens=40 if args.max_new_tokens is None else args.max_new_tokens)
    except UserError as e:  # anything else is a bug: keep its traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {n} captions to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
