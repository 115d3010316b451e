"""Readers for the open-vocabulary segmentation benchmarks of DiffSegmenter, from local folders.

Nothing is downloaded: :func:`find_files` checks the folder the user already has once (every
listed image and label exists) and lists its (image, label) file pairs. One reader,
:class:`SegDataset`, decodes one example at a time from such pairs, whether they are files on disk
(:class:`~iedp_jax.infra.files.DiskPairs`, :func:`make_dataset`) or records of the prepared tfds
copy (:class:`~iedp_jax.infra.tfds.RecordPairs`, :func:`diffseg_jax.builders.make_prepared_dataset`):

- ``num_images``: how many examples;
- ``class_names``: the evaluation classes in label order, ``class_names[0] == 'background'``;
- ``prompt_names``: the names used in prompts for classes ``1..C-1`` (see the substitutions);
- ``load(i) -> (image uint8 [H, W, 3], label uint8 [H, W], name)``; label 255 = ignore;
- ``size(i) -> (H, W)`` without decoding, ``name(i)`` (the id, e.g. ``2007_000033``),
  ``file_name(i)`` (the image's file name, which captions files are keyed by).

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

Prompt names are kept apart from the class names (``class_names`` name the results). Two tables
per benchmark (:meth:`Benchmark.prompt_names_for`):

- ``'official'`` (the paper's protocol, :data:`OFFICIAL_PROMPT_NAMES`): the original's ``embs``
  lists, position by position (VOC ``plane, buses, people, plant, table, monitor``; Context
  ``airplane, plant, monitor``; COCO ``motorbike, aeroplane, sofa, pottedplant, diningtable,
  tvmonitor, hair drier, toothbrus``, sic). They are also the names in the original's candidate
  files (``predict_syn_txt_0.8_img_0.97.json``).
- ``'readable'`` (**ours**): the dataset spellings with the ones that are not words replaced:

    VOC / Context: pottedplant -> "potted plant", tvmonitor -> "monitor", diningtable -> "table"
    COCO:          tv -> "television", hair drier -> "hair dryer"
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from iedp_jax.infra.errors import ConfigError, DatasetError, DataValueError
from iedp_jax.infra.files import DiskPairs, PairFiles
from iedp_jax.infra.images import image_size, load_label, load_rgb

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

# The original's prompt names (its ``embs`` lists), in label order 1..C-1.
VOC_OFFICIAL_NAMES: tuple[str, ...] = (
    "plane", "bicycle", "bird", "boat", "bottle", "buses", "car", "cat", "chair", "cow", "table", "dog", "horse",
    "motorbike", "people", "plant", "sheep", "sofa", "train", "monitor",
)
CONTEXT_OFFICIAL_NAMES: tuple[str, ...] = tuple(
    {"aeroplane": "airplane", "pottedplant": "plant", "tvmonitor": "monitor"}.get(n, n) for n in CONTEXT_CLASSES[1:])
COCO_OFFICIAL_NAMES: tuple[str, ...] = tuple(
    {"motorcycle": "motorbike", "airplane": "aeroplane", "couch": "sofa", "potted plant": "pottedplant",
     "dining table": "diningtable", "tv": "tvmonitor", "toothbrush": "toothbrus"}.get(n, n)
    for n in COCO_OBJECT_CLASSES[1:])
OFFICIAL_PROMPT_NAMES: Mapping[str, tuple[str, ...]] = {
    "voc": VOC_OFFICIAL_NAMES, "context": CONTEXT_OFFICIAL_NAMES, "coco": COCO_OFFICIAL_NAMES}
PROMPT_NAME_TABLES = ("official", "readable")


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A benchmark apart from its files.

    Attributes:
      key: 'voc', 'context' or 'coco' (also the DiffSegConfig prompt-template key).
      title: its name in messages.
      class_names: C names in label order, 'background' first.
      substitutions: prompt names of the class names that are not words.
      split: the validation split's name in the layout.
      published_miou: DiffSegmenter's published mIoU (%) with background (Wang et al., IEEE TIP 2025).
      official_names: the original's prompt names of classes ``1..C-1`` (its ``embs`` list).
    """

    key: str
    title: str
    class_names: tuple[str, ...]
    substitutions: Mapping[str, str]
    split: str
    published_miou: float
    official_names: tuple[str, ...] = ()

    @property
    def prompt_names(self) -> tuple[str, ...]:
        """Readable prompt names of classes ``1..C-1`` (the background is not a prompt)."""
        return tuple(self.substitutions.get(n, n) for n in self.class_names[1:])

    def prompt_names_for(self, table: str = "readable") -> tuple[str, ...]:
        """Prompt names of classes ``1..C-1`` from ``table``: 'official' (the original's) or 'readable'."""
        if table == "official":
            return self.official_names
        if table == "readable":
            return self.prompt_names
        raise ConfigError(f"prompt_names={table!r} is not one of {', '.join(PROMPT_NAME_TABLES)}.")

    def label_of(self, name: str) -> int | None:
        """The label (1..C-1) of a class or prompt name of any table (the background: None)."""
        for table in (self.class_names[1:], self.official_names, self.prompt_names):
            if name in table:
                return table.index(name) + 1
        return None


BENCHMARKS: Mapping[str, Benchmark] = {b.key: b for b in (
    Benchmark("voc", "PASCAL VOC 2012", VOC_CLASSES, VOC_SUBSTITUTIONS, "val", 60.1, VOC_OFFICIAL_NAMES),
    Benchmark("context", "Pascal Context", CONTEXT_CLASSES, CONTEXT_SUBSTITUTIONS, "val", 27.5,
              CONTEXT_OFFICIAL_NAMES),
    Benchmark("coco", "COCO-Object", COCO_OBJECT_CLASSES, COCO_SUBSTITUTIONS, "val2017", 37.9, COCO_OFFICIAL_NAMES),
)}
DATASETS = tuple(BENCHMARKS)

__all__ = ["BENCHMARKS", "COCO_OBJECT_CLASSES", "COCO_OFFICIAL_NAMES", "COCO_SUBSTITUTIONS", "CONTEXT_CLASSES",
           "CONTEXT_OFFICIAL_NAMES", "CONTEXT_SUBSTITUTIONS", "DATASETS", "IGNORE_INDEX", "OFFICIAL_PROMPT_NAMES",
           "PROMPT_NAME_TABLES", "VOC_CLASSES", "VOC_OFFICIAL_NAMES", "VOC_SUBSTITUTIONS", "Benchmark", "SegDataset",
           "benchmark", "find_files", "make_dataset"]


def benchmark(name: str) -> Benchmark:
    """The :class:`Benchmark` called ``name``."""
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}.")
    return BENCHMARKS[name]


class SegDataset:
    """A benchmark's examples over (image, label) file pairs: files on disk or prepared records.

    Args:
      benchmark: what the labels mean.
      files: pair ``i`` = (image file, label PNG), named by the image's file name.
      sizes: ``(H, W)`` per example when known without decoding (the prepared copy's index);
        None reads each image's header.
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, benchmark: Benchmark, files: PairFiles, sizes: Sequence[tuple[int, int]] | None = None
                 ) -> None:
        if sizes is not None and len(sizes) != len(files):
            raise ValueError(f"{len(sizes)} sizes for {len(files)} examples.")
        self.benchmark = benchmark
        self.files = files
        self._sizes = None if sizes is None else [(int(h), int(w)) for h, w in sizes]

    @property
    def key(self) -> str:
        return self.benchmark.key

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.benchmark.class_names

    @property
    def prompt_names(self) -> tuple[str, ...]:
        return self.benchmark.prompt_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_images(self) -> int:
        return len(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def file_name(self, i: int) -> str:
        """The image's file name (e.g. ``2007_000033.jpg``)."""
        return self.files.name(i)

    def name(self, i: int) -> str:
        """The example's id: the image file's stem (e.g. ``2007_000033``)."""
        return Path(self.files.name(i)).stem

    def size(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of image ``i`` (from the index or the image header; nothing decoded)."""
        if self._sizes is not None:
            return self._sizes[i]
        return image_size(self.files.open(i)[0])

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        """``(image uint8 [H, W, 3], label uint8 [H, W], name)``; label 255 = ignore.

        Raises:
          DatasetError: the label's size differs from the image's.
        """
        image_file, label_file = self.files.open(i)
        image, label = load_rgb(image_file), load_label(label_file)
        if image.shape[:2] != label.shape:
            raise DatasetError(f"the {self.benchmark.title} image {self.file_name(i)} is "
                               f"{image.shape[1]}x{image.shape[0]} but its label is {label.shape[1]}x{label.shape[0]} "
                               "(width x height).")
        bad = label[(label >= self.num_classes) & (label != self.ignore_index)]
        if bad.size:  # scored, it would count as a class the benchmark does not have
            where = label_file if isinstance(label_file, (str, os.PathLike)) else getattr(label_file, "name", i)
            raise DataValueError(f"the {self.benchmark.title} label map {where} holds the value "
                                 f"{int(bad.max())}, outside its classes 0..{self.num_classes - 1} and the ignore "
                                 f"value {self.ignore_index}: the label files are not this dataset's (or not "
                                 "its class ids); fix or replace them.")
        return image, label, self.name(i)

    def head(self, num_images: int) -> SegDataset:
        """The first ``num_images`` examples (0 or less: all)."""
        n = int(num_images) if num_images and num_images > 0 else None
        return SegDataset(self.benchmark, self.files.head(n), None if self._sizes is None else self._sizes[:n])


# ----------------------------------------------------------------------------------------------
# Folder discovery.


def _data_dir(data_dir: str | os.PathLike, what: str) -> Path:
    if data_dir is None or not str(data_dir).strip():
        raise DatasetError(f"no data folder given for {what}: set the folder that holds it (config.data.data_dir).")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"the {what} data folder {str(root)!r} does not exist or is not a folder.")
    return root


def _read_ids(split_file: Path) -> list[str]:
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"the split file {split_file} lists no image.")
    return ids


def _checked(pairs: Sequence[tuple[Path, Path]], what: str) -> DiskPairs:
    broken = [[p for p in pair if not p.is_file()] for pair in pairs]
    broken = [m for m in broken if m]
    if broken:
        raise DatasetError(f"{len(broken)} of the {len(pairs)} {what} examples miss their image or label file, "
                           f"the first missing file is {broken[0][0]}.")
    return DiskPairs(pairs)


def _find_voc_like(root: Path, split: str, what: str, year: str, label_dirs: Sequence[str], split_dir: str
                   ) -> DiskPairs:
    """A VOCdevkit layout: JPEGImages/, a label folder and an ImageSets split file, under
    ``root``, ``root/VOC<year>`` or ``root/VOCdevkit/VOC<year>``."""
    layout = (f"VOCdevkit/VOC{year}/JPEGImages/*.jpg, VOCdevkit/VOC{year}/{label_dirs[0]}/*.png and "
              f"VOCdevkit/VOC{year}/ImageSets/{split_dir}/{split}.txt")
    base = next((c for c in (root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}")
                 if (c / "JPEGImages").is_dir()), None)
    if base is None:
        raise DatasetError(f"{str(root)!r} does not hold a {what} folder: expected {layout}.")
    label_dir = next((base / d for d in label_dirs if (base / d).is_dir()), None)
    if label_dir is None:
        raise DatasetError(f"{str(base)!r} has no {label_dirs[0]}/ folder of label PNGs: expected {layout}.")
    split_file = base / "ImageSets" / split_dir / f"{split}.txt"
    if not split_file.is_file():
        raise DatasetError(f"the split file {split_file} does not exist: expected {layout}.")
    return _checked([(base / "JPEGImages" / f"{i}.jpg", label_dir / f"{i}.png") for i in _read_ids(split_file)],
                    what)


def _find_coco(root: Path, split: str, what: str) -> DiskPairs:
    """COCO-Object: images/<split>/ (sorted) paired by stem with annotations/object_<split>/<id>.png
    or annotations/<split>/<id>_instanceTrainIds.png, under ``root``, ``root/coco`` or
    ``root/coco_stuff164k``."""
    layout = (f"coco/images/{split}/*.jpg with coco/annotations/object_{split}/*.png or "
              f"coco/annotations/{split}/*_instanceTrainIds.png")
    base = next((c for c in (root, root / "coco", root / "coco_stuff164k") if (c / "images" / split).is_dir()), None)
    if base is None:
        raise DatasetError(f"{str(root)!r} does not hold a {what} folder: expected {layout}.")
    images = sorted(p for p in (base / "images" / split).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise DatasetError(f"{base / 'images' / split} holds no image: expected {layout}.")
    candidates = [(base / "annotations" / f"object_{split}", ".png"),
                  (base / "annotations" / split, "_instanceTrainIds.png")]
    ann = next(((d, s) for d, s in candidates if d.is_dir()), None)
    if ann is None:
        raise DatasetError(f"{str(base)!r} has no label folder annotations/object_{split}/ or "
                           f"annotations/{split}/: expected {layout}.")
    return _checked([(p, ann[0] / f"{p.stem}{ann[1]}") for p in images], what)


_FINDERS: Mapping[str, Callable[[Path, str, str], DiskPairs]] = {
    "voc": functools.partial(_find_voc_like, year="2012", label_dirs=("SegmentationClassAug", "SegmentationClass"),
                             split_dir="Segmentation"),
    "context": functools.partial(_find_voc_like, year="2010", label_dirs=("SegmentationClassContext",),
                                 split_dir="SegmentationContext"),
    "coco": _find_coco,
}


def find_files(name: str, data_dir: str | os.PathLike, split: str | None = None) -> DiskPairs:
    """The checked (image, label) file pairs of benchmark ``name`` in ``data_dir`` (split default:
    the validation split), named by the image's file name.

    Raises:
      DatasetError: the folder is missing or not in the layout (one sentence saying what is missing).
    """
    b = benchmark(name)
    return _FINDERS[name](_data_dir(data_dir, b.title), split or b.split, b.title)


def make_dataset(name: str, data_dir: str | os.PathLike, split: str | None = None, num_images: int = 0
                 ) -> SegDataset:
    """The reader of ``name`` ('voc', 'context' or 'coco') over the folder ``data_dir``, limited to
    the first ``num_images`` examples (0: all)."""
    return SegDataset(benchmark(name), find_files(name, data_dir, split)).head(num_images)
