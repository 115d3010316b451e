"""A user's own dataset folder, for segmentation (``data.name='folder'``) or depth
(``data.name='folder_depth'``): the folder reader, its tfds builders, and the sources.

Segmentation layout (``data.data_dir``)::

    classes.json                      {"classes": [names...], "ignore_index": 255, "palette": [[r, g, b], ...]}
    images/{train,val}/*.{jpg,jpeg,png}
    labels/{train,val}/<stem>.png     one channel, values = class ids 0..K-1 or ignore_index

Depth layout::

    depth.json                        {"scale": 1000, "max_depth": 10, "scene": "room"}
    images/{train,val}/*.{jpg,jpeg,png}
    depth/{train,val}/<stem>.png      uint16, metres = value / scale, 0 = no value

Pairs are matched by file stem. A label value outside the classes, an image without its target
(or a target without its image) and an image whose target has another size are refused with the
file's name. Segmentation trains with the mmseg pipeline of ADE20K (rescale, crop with
``cat_max_ratio``, flip, photometric distortion) without ``reduce_zero_label``; depth with a random
crop, flip and BTS's colour augmentation. ``palette`` is optional and checked; ``scene`` (default
"scene") is the word the depth model's explicit prompt uses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iedp_jax.data import transforms
from iedp_jax.data.sources import Example, FileSource, SegmentationFileSource
from iedp_jax.infra.errors import ConfigError, DatasetError, DataValueError
from iedp_jax.infra.files import DiskPairs, PairFiles
from iedp_jax.infra.images import image_size, load_depth_png, load_label, load_rgb
from iedp_jax.infra.tfds import FolderBuilder, RecordPairs, bytes_feature, tfds

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "val")
CLASSES_FILE = "classes.json"
DEPTH_FILE = "depth.json"


def _layout(target: str, meta: str) -> str:
    return (f"expected {meta}, images/{{train,val}}/*.{{jpg,png}} and {target}/{{train,val}}/<same stem>.png "
            "under data.data_dir (see docs/datasets.md)")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"no {path.name} in {str(path.parent)!r}: write the {what} there (see docs/datasets.md).")
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path} is not valid JSON ({e}): fix it (see docs/datasets.md).") from e
    if not isinstance(value, dict):
        raise DatasetError(f"{path} must hold a JSON object, not {type(value).__name__}: see docs/datasets.md.")
    return value


def read_meta(data_dir: str | os.PathLike, file_name: str) -> dict[str, Any]:
    """The parsed ``classes.json`` or ``depth.json`` of ``data_dir`` (a one-sentence error if absent)."""
    what = ('{"classes": [names...], "ignore_index": 255}' if file_name == CLASSES_FILE
            else '{"scale": 1000, "max_depth": 10}')
    return _read_json(Path(data_dir) / file_name, what)


def read_classes(meta: dict[str, Any], path: str | os.PathLike = CLASSES_FILE
                 ) -> tuple[tuple[str, ...], int, np.ndarray | None]:
    """``(class names, ignore value, palette uint8 [K, 3] or None)`` from parsed ``classes.json``
    (``path`` names it in errors)."""
    names = meta.get("classes")
    if (not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names)):
        raise DatasetError(f"{path}: 'classes' must be a non-empty list of class names in label order.")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DatasetError(f"{path}: the class name {dup!r} appears twice; give each class one name.")
    ignore = meta.get("ignore_index", transforms.IGNORE_INDEX)
    if not isinstance(ignore, int) or isinstance(ignore, bool) or not len(names) <= ignore <= 255:
        raise DatasetError(f"{path}: 'ignore_index' must be an integer from {len(names)} (the class count) to "
                           f"255, got {ignore!r}.")
    if len(names) > 255:
        raise DatasetError(f"{path} lists {len(names)} classes: uint8 label maps hold at most 255 classes.")
    palette = meta.get("palette")
    if palette is not None:
        arr = np.asarray(palette)
        if arr.shape != (len(names), 3) or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255:
            raise DatasetError(f"{path}: 'palette' must be one [r, g, b] (0..255) per class, {len(names)} in all.")
        palette = arr.astype(np.uint8)
    return tuple(n.strip() for n in names), int(ignore), palette


def read_depth_meta(meta: dict[str, Any], path: str | os.PathLike = DEPTH_FILE) -> tuple[float, float, str]:
    """``(scale, max_depth, scene)`` from parsed ``depth.json`` (metres = stored value / scale)."""
    values = []
    for key in ("scale", "max_depth"):
        v = meta.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise DatasetError(f"{path}: {key!r} must be a positive number, got {v!r}.")
        values.append(float(v))
    scene = meta.get("scene", "scene")
    if not isinstance(scene, str) or not scene.strip():
        raise DatasetError(f"{path}: 'scene' must be a word for the prompt (e.g. \"room\"), got {scene!r}.")
    return values[0], values[1], scene.strip()


def list_pairs(data_dir: str | os.PathLike, split: str, target: str, check_sizes: bool = True) -> DiskPairs:
    """The (image, target) pairs of ``split`` ('train' or 'val') paired by stem, sorted by name;
    every image must have its target and every target its image, of the same size (read from the
    headers, nothing decoded)."""
    root = Path(data_dir)
    meta = CLASSES_FILE if target == "labels" else DEPTH_FILE
    image_dir, target_dir = root / "images" / split, root / target / split
    if not image_dir.is_dir() or not target_dir.is_dir():
        raise DatasetError(f"no {image_dir} or {target_dir}: {_layout(target, meta)}.")
    images: dict[str, Path] = {}
    for p in sorted(image_dir.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            if p.stem in images:
                raise DatasetError(f"{images[p.stem]} and {p} have the same stem: keep one image per stem.")
            images[p.stem] = p
    targets = {p.stem: p for p in sorted(target_dir.glob("*.png"))}
    if not images:
        raise DatasetError(f"no images in {image_dir}: {_layout(target, meta)}.")
    for stem, img in images.items():
        if stem not in targets:
            raise DatasetError(f"the image {img} has no {target_dir / (stem + '.png')}: add it or remove the image.")
    for stem, tgt in targets.items():
        if stem not in images:
            raise DatasetError(f"{tgt} has no image {image_dir / stem}.jpg/.png: add it or remove {tgt.name}.")
    pairs = [(images[s], targets[s]) for s in sorted(images)]
    if check_sizes:
        for img, tgt in pairs:
            a, b = image_size(img), image_size(tgt)
            if a != b:
                raise DatasetError(f"the image {img} is {a[0]}x{a[1]} but {tgt} is {b[0]}x{b[1]}: they must have "
                                   "the same size.")
    return DiskPairs(pairs, [img.name for img, _ in pairs])


def map_labels(label: np.ndarray, num_classes: int, ignore: int, name: str) -> np.ndarray:
    """Class ids kept, ``ignore`` -> 255; any other value is a :class:`DataValueError` naming ``name``."""
    bad = (label >= num_classes) & (label != ignore)
    if bad.any():
        v = int(label[bad][0])
        raise DataValueError(f"the label map {name} holds the value {v}, but {CLASSES_FILE} lists {num_classes} "
                             f"classes (0..{num_classes - 1}) and ignore_index {ignore}: fix the label map or "
                             f"{CLASSES_FILE}.")
    out = label.astype(np.uint8, copy=True)
    out[label == ignore] = transforms.IGNORE_INDEX
    return out


class LabelMapSource(SegmentationFileSource):
    """Segmentation over (image, label PNG) pairs with mmseg's ADE20K-style pipeline.

    Subclasses set ``class_names`` and implement ``_labels(label, name)`` (stored values ->
    uint8 class ids, 255 = ignore). ``img_scale`` is the training rescale scale (long, short);
    ``None`` = ``(4 s, s)``, ``s = min(crop_size)``.
    """

    task = "seg"
    batch_keys = ("image", "label")

    def __init__(self, train_files: PairFiles, val_files: PairFiles, crop_size: Sequence[int], seed: int,
                 num_workers: int | None, img_scale: Sequence[int] | None = None, pad_value: int = 0) -> None:
        self.set_train_resize(img_scale, pad_value)
        super().__init__(train_files, val_files, crop_size, seed, num_workers)

    def set_train_resize(self, img_scale: Sequence[int] | None, pad_value: int) -> None:
        """The training rescale scale (long, short; None = the default) and pad colour, checked."""
        if img_scale is not None and (len(img_scale) != 2 or min(int(s) for s in img_scale) <= 0):
            raise ConfigError(f"data.img_scale must be (long, short) positive integers or (), got {tuple(img_scale)}.")
        if not 0 <= int(pad_value) <= 255:
            raise ConfigError(f"data.pad_value must be a uint8 colour in [0, 255], got {pad_value}.")
        self.img_scale = tuple(int(s) for s in img_scale) if img_scale else None
        self.pad_value = int(pad_value)

    def _labels(self, label: np.ndarray, name: str) -> np.ndarray:
        raise NotImplementedError

    def _decode(self, files: PairFiles, index: int) -> Example:
        image_file, label_file = files.open(index)
        image, label = load_rgb(image_file), load_label(label_file)
        if image.shape[:2] != label.shape:
            raise DataValueError(f"the image {files.name(index)} is {image.shape[0]}x{image.shape[1]} but its label "
                                 f"map is {label.shape[0]}x{label.shape[1]}: they must have the same size.")
        return {"image": image, "label": self._labels(label, _target_name(label_file, files.name(index)))}

    def _train_transform(self, ex: Example, rng: np.random.Generator) -> Example:
        image, label = transforms.ade20k_train_transform(ex["image"], ex["label"], rng, self.crop_size,
                                                         img_scale=self.img_scale, pad_value=self.pad_value)
        return {"image": image, "label": label}


def _target_name(file: Any, fallback: str) -> str:
    return str(file) if isinstance(file, (str, os.PathLike)) else getattr(file, "name", fallback)


def train_scale(cfg_data) -> tuple[int, ...] | None:
    """``data.img_scale`` as a tuple, None when empty (the source's default)."""
    value = tuple(cfg_data.get("img_scale", ()) or ())
    return tuple(int(v) for v in value) if value else None


class FolderSegSource(LabelMapSource):
    """A user's segmentation folder (a :class:`~iedp_jax.data.sources.DataSource`), classes from
    ``classes.json``. ``files = (train, val)`` and ``meta`` (the parsed classes.json) replace the
    folder (the prepared source)."""

    def __init__(self, data_dir: str | os.PathLike | None, crop_size: Sequence[int] = (512, 512), seed: int = 0, *,
                 num_workers: int | None = None, files: tuple[PairFiles, PairFiles] | None = None,
                 meta: dict[str, Any] | None = None, img_scale: Sequence[int] | None = None,
                 pad_value: int = 0) -> None:
        where = Path(data_dir or ".") / CLASSES_FILE
        self.class_names, self.ignore_value, self.palette = read_classes(
            read_meta(data_dir, CLASSES_FILE) if meta is None else meta, where)
        if files is None:
            files = tuple(list_pairs(data_dir, s, "labels") for s in SPLITS)
        super().__init__(files[0], files[1], crop_size, seed, num_workers, img_scale, pad_value)

    @classmethod
    def from_config(cls, cfg_data, seed: int) -> FolderSegSource:
        """:meth:`FileSource.from_config` with ``data.img_scale`` and ``data.pad_value``."""
        source = super().from_config(cfg_data, seed)
        source.set_train_resize(train_scale(cfg_data), int(cfg_data.pad_value))
        return source

    @classmethod
    def from_prepared(cls, builder, crop_size: Sequence[int] = (512, 512), seed: int = 0, **kwargs: Any
                      ) -> FolderSegSource:
        """The source over a prepared :class:`IedpFolderSeg` (classes.json kept in its metadata)."""
        files = tuple(RecordPairs(builder, split, ("image", "label")) for split in ("train", "validation"))
        return cls(None, crop_size, seed, files=files, meta=prepared_meta(builder), **kwargs)

    def _labels(self, label: np.ndarray, name: str) -> np.ndarray:
        return map_labels(label, self.num_classes, self.ignore_value, name)


class FolderDepthSource(FileSource):
    """A user's depth folder (a :class:`~iedp_jax.data.sources.DataSource`): uint16 PNG / scale
    metres, depth above ``max_depth`` treated as no value; one scene, ``depth.json``'s.
    ``files`` and ``meta`` (the parsed depth.json) replace the folder (the prepared source)."""

    task = "depth"
    batch_keys = ("image", "depth", "scene")

    def __init__(self, data_dir: str | os.PathLike | None, crop_size: Sequence[int] = (480, 480), seed: int = 0, *,
                 num_workers: int | None = None, files: tuple[PairFiles, PairFiles] | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        where = Path(data_dir or ".") / DEPTH_FILE
        self.scale, self.max_depth, scene = read_depth_meta(read_meta(data_dir, DEPTH_FILE) if meta is None else meta,
                                                            where)
        self.scene_names = (scene,)
        if files is None:
            files = tuple(list_pairs(data_dir, s, "depth") for s in SPLITS)
        super().__init__(files[0], files[1], crop_size, seed, num_workers)

    @classmethod
    def from_prepared(cls, builder, crop_size: Sequence[int] = (480, 480), seed: int = 0, **kwargs: Any
                      ) -> FolderDepthSource:
        """The source over a prepared :class:`IedpFolderDepth` (depth.json kept in its metadata)."""
        files = tuple(RecordPairs(builder, split, ("image", "depth")) for split in ("train", "validation"))
        return cls(None, crop_size, seed, files=files, meta=prepared_meta(builder), **kwargs)

    def _decode(self, files: PairFiles, index: int) -> Example:
        image, depth = self._read_pair(files, index, lambda f: load_depth_png(f, self.scale), "depth map")
        depth = np.where(depth <= self.max_depth, depth, 0.0).astype(np.float32)
        return {"image": image, "depth": depth, "scene": np.int32(0)}

    def _train_transform(self, ex: Example, rng: np.random.Generator) -> Example:
        image, depth = depth_train_transform(ex["image"], ex["depth"], rng, self.crop_size)
        return {"image": image, "depth": depth, "scene": ex["scene"]}

    def _val_transform(self, ex: Example) -> Example:
        image, depth = transforms.depth_eval_transform(ex["image"], ex["depth"], self.crop_size, eigen_crop=False)
        return {"image": image, "depth": depth, "scene": ex["scene"]}

    def _full_resolution(self, ex: Example) -> Example:
        return {"image": ex["image"], "depth": ex["depth"], "mask": np.ones(ex["depth"].shape, bool),
                "scene": ex["scene"]}

    def _pad(self) -> Example:
        return {"image": np.zeros(self.crop_size + (3,), np.uint8),
                "depth": np.zeros(self.crop_size, np.float32), "scene": np.int32(0)}


def depth_train_transform(image: np.ndarray, depth: np.ndarray, rng: np.random.Generator, crop_size: Sequence[int],
                          brightness_range: Sequence[float] = (0.9, 1.1)) -> tuple[np.ndarray, np.ndarray]:
    """BTS's training steps after its dataset crops: a random ``crop_size`` window, a flip with
    probability 0.5, then (probability 0.5) gamma / brightness / colour (``bts_color_jitter``;
    KITTI's brightness range U(0.9, 1.1) by default). Returns uint8 [ch, cw, 3], float32 [ch, cw]."""
    ch, cw = int(crop_size[0]), int(crop_size[1])
    h, w = image.shape[:2]
    if h < ch or w < cw:
        raise ConfigError(f"a {h}x{w} image is smaller than the {ch}x{cw} crop: lower data.crop_size.")
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    image, depth = image[y:y + ch, x:x + cw], depth[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        image, depth = transforms.hflip(image), transforms.hflip(depth)
    image = transforms.bts_color_jitter(image, rng, brightness_range=brightness_range)
    return np.ascontiguousarray(image), np.ascontiguousarray(depth, dtype=np.float32)


def prepared_meta(builder) -> dict[str, Any]:
    """The classes.json / depth.json a folder was prepared with (kept in the builder's metadata)."""
    try:
        return json.loads(builder.info.metadata["folder_meta"])
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{builder.data_dir} was not prepared by this version of iedp_jax (no folder metadata): "
                           "delete it and rerun to prepare it again.") from e


class _FolderBuilder(FolderBuilder):
    SPLITS = {"train": "train", "validation": "val"}
    TARGET = FEATURE = META = ""

    def _features(self) -> dict[str, Any]:
        return {"image": bytes_feature(), self.FEATURE: bytes_feature(), "file_name": tfds.features.Text()}

    def _examples(self, manual_dir: Path, split: str):
        meta = read_meta(manual_dir, self.META)
        (read_classes if self.META == CLASSES_FILE else read_depth_meta)(meta, Path(manual_dir) / self.META)
        pairs = list_pairs(manual_dir, split, self.TARGET)
        return [(name, {"image": img, self.FEATURE: tgt, "file_name": name})
                for (img, tgt), name in zip(pairs.pairs, pairs.names, strict=True)]

    def _split_generators(self, dl_manager):
        generators = super()._split_generators(dl_manager)
        self.info.metadata["folder_meta"] = json.dumps(read_meta(Path(dl_manager.manual_dir), self.META))
        return generators


class IedpFolderSeg(_FolderBuilder):
    """A user's segmentation folder (images/, labels/, classes.json); image and label PNG bytes."""

    VERSION = tfds.core.Version("1.0.0") if tfds else None
    TARGET, FEATURE, META = "labels", "label", CLASSES_FILE
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Point the manual directory at the folder holding classes.json, images/ and labels/."


class IedpFolderDepth(_FolderBuilder):
    """A user's depth folder (images/, depth/, depth.json); image and uint16 depth PNG bytes."""

    VERSION = tfds.core.Version("1.0.0") if tfds else None
    TARGET, FEATURE, META = "depth", "depth", DEPTH_FILE
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Point the manual directory at the folder holding depth.json, images/ and depth/."


FolderSegSource.BUILDER = IedpFolderSeg
FolderDepthSource.BUILDER = IedpFolderDepth
