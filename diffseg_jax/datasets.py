"""Readers for the open-vocabulary segmentation benchmarks of DiffSegmenter, from local folders.

Nothing is downloaded: each reader takes the folder the user already has, checks it once (every
listed image and label exists) and decodes one example at a time. The interface is small on
purpose, so a tfds builder can wrap it later:

- ``num_images``: how many examples;
- ``class_names``: the evaluation classes in label order, ``class_names[0] == 'background'``;
- ``prompt_names``: the names used in prompts for classes ``1..C-1`` (see the substitutions);
- ``load(i) -> (image uint8 [H, W, 3], label uint8 [H, W], name)``; label 255 = ignore;
- ``size(i) -> (H, W)`` from the image header (nothing decoded), ``name(i)``, ``image_path(i)``.

Accepted layouts (``data_dir`` may be the outer folder or any of the inner ones shown)::

    VOC 2012 (21 classes)    DATA_DIR/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
                             DATA_DIR/VOCdevkit/VOC2012/SegmentationClassAug/<id>.png
                             DATA_DIR/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt
        Labels: indexed (palette, mode P) or grey PNGs holding 0 = background, 1..20 = classes,
        255 = ignore (object borders). ``SegmentationClass/`` (the official labels, same format
        and identical on val) is used when ``SegmentationClassAug/`` is absent.

    Pascal Context 60        DATA_DIR/VOCdevkit/VOC2010/JPEGImages/<id>.jpg
                             DATA_DIR/VOCdevkit/VOC2010/SegmentationClassContext/<id>.png
                             DATA_DIR/VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt
        mmsegmentation's converted layout (``tools/dataset_converters/pascal_context.py``):
        label PNGs with 0 = background, 1..59 = the 59 classes (mmseg's
        ``PascalContextDataset59`` order), 255 = ignore if present. Evaluated with the
        background as class 0 (60 classes), as DiffSegmenter / MaskCLIP's "Context-60".

    COCO-Object (81 classes) DATA_DIR/coco/images/val2017/<id>.jpg, and either
                             DATA_DIR/coco/annotations/object_val2017/<id>.png  or
                             DATA_DIR/coco/annotations/val2017/<id>_instanceTrainIds.png
        The second is what the usual conversion script for COCO-Object writes (GroupViT's
        ``convert_coco_object.py``, also used by TCL / CaR / ProxyCLIP over COCO-Stuff-164k):
        0 = background, 1..80 = the 80 thing classes in COCO order, 255 = ignore. The root may
        be named ``coco``, ``coco_stuff164k`` or be ``DATA_DIR`` itself; images are listed from
        ``images/val2017`` (sorted) and paired with their labels by file stem.

Prompt-name substitutions (**ours**, after the original's choice of plain words: it prompts VOC
with "plane", "table", "plant", "monitor"): dataset spellings that are not words tokenize into
meaningless pieces, so they are replaced in prompts (``class_names`` keep the official spelling
for the results):

    VOC / Context: pottedplant -> "potted plant", tvmonitor -> "monitor", diningtable -> "table"
    COCO:          tv -> "television", hair drier -> "hair dryer"

"aeroplane", "motorbike", "bedclothes" and the remaining names are ordinary words and are kept.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

IGNORE_INDEX = 255

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
assert len(VOC_CLASSES) == 21

# mmseg PascalContextDataset59.CLASSES, preceded by the background (label 0).
CONTEXT_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat",
    "book", "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person",
    "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
)
assert len(CONTEXT_CLASSES) == 60

# GroupViT's COCOObjectDataset.CLASSES: background + the 80 COCO thing classes in id order.
COCO_OBJECT_CLASSES: tuple[str, ...] = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
assert len(COCO_OBJECT_CLASSES) == 81

VOC_SUBSTITUTIONS: Mapping[str, str] = {
    "pottedplant": "potted plant", "tvmonitor": "monitor", "diningtable": "table",
}
CONTEXT_SUBSTITUTIONS: Mapping[str, str] = {"pottedplant": "potted plant", "tvmonitor": "monitor"}
COCO_SUBSTITUTIONS: Mapping[str, str] = {"tv": "television", "hair drier": "hair dryer"}

DATASETS = ("voc", "context", "coco")
# Published DiffSegmenter mIoU (%) with background (Wang et al., IEEE TIP 2025).
PUBLISHED_MIOU: Mapping[str, float] = {"voc": 60.1, "context": 27.5, "coco": 37.9}

__all__ = [
    "COCO_OBJECT_CLASSES", "COCO_SUBSTITUTIONS", "CONTEXT_CLASSES", "CONTEXT_SUBSTITUTIONS", "COCOObject",
    "DATASETS", "DatasetError", "IGNORE_INDEX", "PUBLISHED_MIOU", "PascalContext", "SegFolder", "VOC2012",
    "VOC_CLASSES", "VOC_SUBSTITUTIONS", "make_dataset", "prompt_names", "voc_palette", "write_fake_dataset",
]


class DatasetError(FileNotFoundError):
    """A dataset folder that does not have the expected layout (the message says what is missing)."""


def prompt_names(class_names: Sequence[str], substitutions: Mapping[str, str]) -> tuple[str, ...]:
    """Prompt names of classes ``1..C-1`` (the background is not a prompt)."""
    return tuple(substitutions.get(n, n) for n in class_names[1:])


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map ``[n, 3]`` uint8 (label k's bits spread over R, G, B)."""
    out = np.zeros((n, 3), np.uint8)
    for k in range(n):
        c, r, g, b = k, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[k] = (r, g, b)
    return out


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _load_label(path: Path) -> np.ndarray:
    """A label PNG (mode L or P: the stored indices) as uint8 [H, W]."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{path} is a {im.mode} image, not a single-channel label map (mode L or P).")
        arr = np.asarray(im)
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"{path} holds label values outside 0..255.")
        arr = arr.astype(np.uint8)
    return arr


class SegFolder:
    """A list of (image, label) file pairs with class names: the common reader.

    Attributes:
      key: 'voc', 'context' or 'coco' (also the DiffSegConfig prompt-template key).
      root: the folder the files were found in.
      class_names: C names in label order, 'background' first.
      prompt_names: C - 1 prompt names of the foreground classes.
      ignore_index: 255.
    """

    key = ""
    class_names: tuple[str, ...] = ()
    substitutions: Mapping[str, str] = {}
    ignore_index = IGNORE_INDEX

    def __init__(self, root: Path, pairs: Sequence[tuple[Path, Path]], names: Sequence[str]) -> None:
        self.root = root
        self._pairs = list(pairs)
        self._names = list(names)
        self.prompt_names = prompt_names(self.class_names, self.substitutions)

    @property
    def num_images(self) -> int:
        return len(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def name(self, i: int) -> str:
        """The example's id (the image file's stem, e.g. ``2007_000033``)."""
        return self._names[i]

    def image_path(self, i: int) -> Path:
        return self._pairs[i][0]

    def label_path(self, i: int) -> Path:
        return self._pairs[i][1]

    def size(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of image ``i`` from its header."""
        with Image.open(self._pairs[i][0]) as im:
            w, h = im.size
        return h, w

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        """``(image uint8 [H, W, 3], label uint8 [H, W], name)``; label 255 = ignore.

        Raises:
          ValueError: the label's size differs from the image's.
        """
        img_path, ann_path = self._pairs[i]
        image, label = _load_rgb(img_path), _load_label(ann_path)
        if image.shape[:2] != label.shape:
            raise ValueError(f"{img_path} is {image.shape[1]}x{image.shape[0]} but its label {ann_path} is "
                             f"{label.shape[1]}x{label.shape[0]} (width x height).")
        return image, label, self._names[i]

    def limit(self, num_images: int) -> SegFolder:
        """Keeps the first ``num_images`` examples (0 or less: all); returns self."""
        if num_images and num_images > 0:
            self._pairs = self._pairs[:num_images]
            self._names = self._names[:num_images]
        return self


# ----------------------------------------------------------------------------------------------
# Folder discovery.


def _data_dir(data_dir: str | os.PathLike, what: str) -> Path:
    if data_dir is None or not str(data_dir).strip():
        raise DatasetError(f"no data folder given for {what}: set the folder that holds it (config.data.data_dir).")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"the {what} data folder {str(root)!r} does not exist or is not a folder.")
    return root


def _find_year(root: Path, year: str, marker: str) -> Path | None:
    """``root`` itself, ``root/VOC<year>`` or ``root/VOCdevkit/VOC<year>`` if it holds ``marker``."""
    for cand in (root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if (cand / marker).is_dir():
            return cand
    return None


def _read_ids(split_file: Path) -> list[str]:
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"the split file {split_file} lists no image.")
    return ids


def _check_pairs(pairs: Sequence[tuple[Path, Path]], what: str) -> None:
    broken = [[p for p in pair if not p.is_file()] for pair in pairs]
    broken = [m for m in broken if m]
    if broken:
        raise DatasetError(f"{len(broken)} of the {len(pairs)} {what} examples miss their image or label file, "
                           f"the first missing file is {broken[0][0]}.")


def _voc_like(data_dir, year: str, label_dirs: Sequence[str], split_dir: str, split: str, what: str
              ) -> tuple[Path, list[tuple[Path, Path]], list[str]]:
    root = _data_dir(data_dir, what)
    base = _find_year(root, year, "JPEGImages")
    layout = (f"VOCdevkit/VOC{year}/JPEGImages/*.jpg, VOCdevkit/VOC{year}/{label_dirs[0]}/*.png and "
              f"VOCdevkit/VOC{year}/ImageSets/{split_dir}/{split}.txt")
    if base is None:
        raise DatasetError(f"{str(root)!r} does not hold a {what} folder: expected {layout}.")
    label_dir = next((base / d for d in label_dirs if (base / d).is_dir()), None)
    if label_dir is None:
        raise DatasetError(f"{str(base)!r} has no {label_dirs[0]}/ folder of label PNGs: expected {layout}.")
    split_file = base / "ImageSets" / split_dir / f"{split}.txt"
    if not split_file.is_file():
        raise DatasetError(f"the split file {split_file} does not exist: expected {layout}.")
    ids = _read_ids(split_file)
    pairs = [(base / "JPEGImages" / f"{i}.jpg", label_dir / f"{i}.png") for i in ids]
    _check_pairs(pairs, what)
    return base, pairs, ids


class _VOCLike(SegFolder):
    """A VOCdevkit layout: JPEGImages/, a label folder and an ImageSets split file."""

    year = ""
    label_dirs: tuple[str, ...] = ()
    split_dir = ""
    what = ""

    def __init__(self, data_dir: str | os.PathLike, split: str = "val") -> None:
        base, pairs, ids = _voc_like(data_dir, self.year, self.label_dirs, self.split_dir, split, self.what)
        super().__init__(base, pairs, ids)


class VOC2012(_VOCLike):
    """PASCAL VOC 2012 segmentation val (1449 images), 21 classes with the background."""

    key = "voc"
    class_names = VOC_CLASSES
    substitutions = VOC_SUBSTITUTIONS
    year, label_dirs, split_dir, what = "2012", ("SegmentationClassAug", "SegmentationClass"), "Segmentation", \
        "PASCAL VOC 2012"


class PascalContext(_VOCLike):
    """Pascal Context val (5105 images), 60 classes: background + mmseg's 59."""

    key = "context"
    class_names = CONTEXT_CLASSES
    substitutions = CONTEXT_SUBSTITUTIONS
    year, label_dirs, split_dir, what = "2010", ("SegmentationClassContext",), "SegmentationContext", \
        "Pascal Context"


class COCOObject(SegFolder):
    """COCO-Object val2017 (5000 images), 81 classes: background + the 80 COCO things."""

    key = "coco"
    class_names = COCO_OBJECT_CLASSES
    substitutions = COCO_SUBSTITUTIONS

    def __init__(self, data_dir: str | os.PathLike, split: str = "val2017") -> None:
        what = "COCO-Object"
        root = _data_dir(data_dir, what)
        layout = (f"coco/images/{split}/*.jpg with coco/annotations/object_{split}/*.png or "
                  f"coco/annotations/{split}/*_instanceTrainIds.png")
        base = next((c for c in (root, root / "coco", root / "coco_stuff164k")
                     if (c / "images" / split).is_dir()), None)
        if base is None:
            raise DatasetError(f"{str(root)!r} does not hold a {what} folder: expected {layout}.")
        images = sorted(p for p in (base / "images" / split).iterdir()
                        if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not images:
            raise DatasetError(f"{base / 'images' / split} holds no image: expected {layout}.")
        candidates = [(base / "annotations" / f"object_{split}", ".png"),
                      (base / "annotations" / split, "_instanceTrainIds.png")]
        ann = next(((d, s) for d, s in candidates if d.is_dir()), None)
        if ann is None:
            raise DatasetError(f"{str(base)!r} has no label folder annotations/object_{split}/ or "
                               f"annotations/{split}/: expected {layout}.")
        pairs = [(p, ann[0] / f"{p.stem}{ann[1]}") for p in images]
        _check_pairs(pairs, what)
        super().__init__(base, pairs, [p.stem for p in images])


_READERS = {"voc": VOC2012, "context": PascalContext, "coco": COCOObject}


def make_dataset(name: str, data_dir: str | os.PathLike, split: str | None = None, num_images: int = 0
                 ) -> SegFolder:
    """The reader of ``name`` ('voc', 'context' or 'coco') over ``data_dir``, limited to the first
    ``num_images`` examples (0: all). ``split`` defaults to ``val`` (``val2017`` for COCO)."""
    if name not in _READERS:
        raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}.")
    cls = _READERS[name]
    ds = cls(data_dir) if split is None else cls(data_dir, split)
    return ds.limit(num_images)


# ----------------------------------------------------------------------------------------------
# Tiny fake copies (tests, demos, the tfds builder's tests).


def write_fake_dataset(name: str, root: str | os.PathLike, num_images: int = 3,
                       size: tuple[int, int] | Sequence[tuple[int, int]] = (48, 64), seed: int = 0) -> Path:
    """Writes ``num_images`` random examples of ``name`` in its on-disk layout under ``root``.

    Each image is noise with two flat rectangles whose labels are random foreground classes, the
    rest background, and a 2-pixel ignore (255) border on VOC (as VOC's object outlines).
    ``size`` is one ``(H, W)`` for all images or one per image. Returns ``root`` (pass it as
    ``data_dir``).
    """
    if name not in _READERS:
        raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}.")
    root = Path(root)
    rng = np.random.default_rng(seed)
    sizes = [tuple(size)] * num_images if np.ndim(size) == 1 else [tuple(s) for s in size]
    if len(sizes) != num_images:
        raise ValueError(f"{len(sizes)} sizes for {num_images} images.")
    num_classes = len(_READERS[name].class_names)
    if name == "voc":
        base = root / "VOCdevkit" / "VOC2012"
        img_dir, ann_dir, split = base / "JPEGImages", base / "SegmentationClassAug", base / "ImageSets/Segmentation"
        ids = [f"2007_{i:06d}" for i in range(num_images)]
    elif name == "context":
        base = root / "VOCdevkit" / "VOC2010"
        img_dir, ann_dir = base / "JPEGImages", base / "SegmentationClassContext"
        split = base / "ImageSets/SegmentationContext"
        ids = [f"2008_{i:06d}" for i in range(num_images)]
    else:
        base = root / "coco"
        img_dir, ann_dir, split = base / "images/val2017", base / "annotations/object_val2017", None
        ids = [f"{i:012d}" for i in range(num_images)]
    for d in (img_dir, ann_dir) + ((split,) if split is not None else ()):
        d.mkdir(parents=True, exist_ok=True)
    colours = rng.integers(0, 256, (num_classes, 3))
    for i, (h, w) in zip(ids, sizes):
        image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        label = np.zeros((h, w), np.uint8)
        for _ in range(2):
            k = int(rng.integers(1, num_classes))
            y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            y1, x1 = y0 + int(rng.integers(h // 4, h // 2)), x0 + int(rng.integers(w // 4, w // 2))
            label[y0:y1, x0:x1] = k
            image[y0:y1, x0:x1] = colours[k]
            if name == "voc":
                label[y0:y0 + 2, x0:x1] = IGNORE_INDEX
        Image.fromarray(image).save(img_dir / f"{i}.jpg", quality=95)
        if name == "voc":  # indexed PNG with the VOC palette, as SegmentationClassAug
            lab = Image.frombytes("P", (w, h), label.tobytes())
            lab.putpalette(voc_palette().reshape(-1).tolist())
        else:
            lab = Image.frombytes("L", (w, h), label.tobytes())
        lab.save(ann_dir / f"{i}.png")
    if split is not None:
        (split / "val.txt").write_text("".join(f"{i}\n" for i in ids))
    return root
