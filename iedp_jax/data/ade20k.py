"""ADE20K SceneParsing (150 classes): the folder reader, its tfds builder, and the source.

Layout (``data.data_dir`` may be the folder that holds ``ADEChallengeData2016`` or that folder)::

    ADEChallengeData2016/images/{training,validation}/*.jpg
    ADEChallengeData2016/annotations/{training,validation}/*.png   (paired by file stem)

``data.format='tfds'`` prepares the folder once into array_record files (:class:`IedpAde20k`,
raw JPEG / PNG bytes) and reads those; ``'folders'`` reads the files. Both decode with the same
functions, so they give identical examples.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iedp_jax.data import transforms
from iedp_jax.data.sources import Example, SegmentationFileSource
from iedp_jax.infra.errors import ConfigError, DatasetError
from iedp_jax.infra.files import DiskPairs, PairFiles
from iedp_jax.infra.images import check_label_values, load_label
from iedp_jax.infra.tfds import FolderBuilder, RecordPairs, bytes_feature, tfds

# mmseg ADE20KDataset.CLASSES (the SceneParsing 150), in label order 0..149 after
# reduce_zero_label. mmseg spells class 7 'bed ' with a trailing space; we strip it.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
assert len(ADE20K_CLASSES) == 150

_LAYOUT = ("expected ADEChallengeData2016/images/{training,validation}/*.jpg with matching "
           "annotations/{training,validation}/*.png (data.data_dir may be the folder that holds "
           "ADEChallengeData2016 or ADEChallengeData2016 itself)")


def find_root(data_dir: str | os.PathLike) -> Path:
    """The ``ADEChallengeData2016`` folder under or at ``data_dir``, or a :class:`DatasetError`."""
    for cand in (Path(data_dir) / "ADEChallengeData2016", Path(data_dir)):
        if (cand / "images").is_dir() and (cand / "annotations").is_dir():
            return cand
    raise DatasetError(f"no ADE20K dataset at {str(data_dir)!r}: {_LAYOUT}.")


def list_pairs(root: Path, split: str) -> DiskPairs:
    """The (image, annotation) pairs of ``split`` ('training' or 'validation'), sorted by name."""
    images = sorted((root / "images" / split).glob("*.jpg"))
    if not images:
        raise DatasetError(f"no ADE20K {split} images under {str(root)!r}: {_LAYOUT}.")
    pairs = [(img, root / "annotations" / split / (img.stem + ".png")) for img in images]
    missing = [p for p in pairs if not p[1].is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more images)" if len(missing) > 1 else ""
        raise DatasetError(f"ADE20K image {missing[0][0]} has no annotation {missing[0][1]}{more}.")
    return DiskPairs(pairs)


class ADE20KSource(SegmentationFileSource):
    """ADE20K with VPD's mmseg pipeline (a :class:`~iedp_jax.data.sources.DataSource`).

    Train: :func:`~iedp_jax.data.transforms.ade20k_train_transform` (rescale ratio 0.5-2.0 of
    ``img_scale``, crop with ``cat_max_ratio=0.75``, flip, photometric distortion, pad).
    Val: :func:`~iedp_jax.data.transforms.seg_eval_transform` (short side to the crop, centre
    crop). Labels go through ``reduce_zero_label`` (0 -> 255, k -> k - 1).

    ``files = (train, val)`` :class:`PairFiles` replace the folder listing (the prepared source
    passes :class:`~iedp_jax.infra.tfds.RecordPairs`). ``split_sizes = (n_train, n_val)`` keeps
    the first files of each split (``None``: all). ``img_scale`` defaults to ``(4 s, s)`` with
    ``s = min(crop_size)`` (mmseg's (2048, 512) for 512 crops).
    """

    task = "seg"
    batch_keys = ("image", "label")
    class_names = ADE20K_CLASSES

    def __init__(self, data_dir: str | os.PathLike | None, crop_size: Sequence[int] = (512, 512),
                 seed: int = 0, split_sizes: Sequence[int | None] | None = None, *,
                 img_scale: Sequence[int] | None = None, ratio_range: Sequence[float] = (0.5, 2.0),
                 cat_max_ratio: float = 0.75, photometric: bool = True, num_workers: int | None = None,
                 files: tuple[PairFiles, PairFiles] | None = None, pad_value: int = 0) -> None:
        if files is None:
            root = find_root(data_dir)
            files = (list_pairs(root, "training"), list_pairs(root, "validation"))
        train, val = files
        if split_sizes is not None:
            if any(n is not None and int(n) <= 0 for n in split_sizes):
                raise ConfigError(f"split_sizes must be positive or None, got {tuple(split_sizes)}.")
            train, val = train.head(split_sizes[0]), val.head(split_sizes[1])
        self.img_scale = img_scale
        self.ratio_range = tuple(ratio_range)
        self.cat_max_ratio = float(cat_max_ratio)
        self.photometric = bool(photometric)
        self.pad_value = int(pad_value)
        super().__init__(train, val, crop_size, seed, num_workers)

    @classmethod
    def from_config(cls, cfg_data, seed: int) -> ADE20KSource:
        """:meth:`FileSource.from_config` with the training pad colour ``data.pad_value``."""
        source = super().from_config(cfg_data, seed)
        if not 0 <= int(cfg_data.pad_value) <= 255:
            raise ConfigError(f"data.pad_value must be a uint8 colour in [0, 255], got {cfg_data.pad_value}.")
        source.pad_value = int(cfg_data.pad_value)
        return source

    @classmethod
    def from_prepared(cls, builder, crop_size: Sequence[int] = (512, 512), seed: int = 0, **kwargs: Any
                      ) -> ADE20KSource:
        """The source over a prepared :class:`IedpAde20k` (its stored bytes, decoded here)."""
        files = (RecordPairs(builder, "train", ("image", "annotation")),
                 RecordPairs(builder, "validation", ("image", "annotation")))
        return cls(None, crop_size, seed, files=files, **kwargs)

    def _decode(self, files: PairFiles, index: int) -> Example:
        image, label = self._read_pair(files, index, load_label, "annotation")
        if label.size and label.max() > len(ADE20K_CLASSES):  # raw 0..150 (0 = other): refused by file name
            check_label_values(label, len(ADE20K_CLASSES) + 1, None, files.open(index)[1])
        return {"image": image, "label": transforms.reduce_zero_label(label)}

    def _train_transform(self, ex: Example, rng: np.random.Generator) -> Example:
        image, label = transforms.ade20k_train_transform(
            ex["image"], ex["label"], rng, self.crop_size, img_scale=self.img_scale,
            ratio_range=self.ratio_range, cat_max_ratio=self.cat_max_ratio, photometric=self.photometric,
            pad_value=self.pad_value)
        return {"image": image, "label": label}


class IedpAde20k(FolderBuilder):
    """ADE20K SceneParsing (150 classes) from ADEChallengeData2016/; JPEG and annotation PNG bytes."""

    VERSION = tfds.core.Version("1.0.0") if tfds else None
    SPLITS = {"train": "training", "validation": "validation"}
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point the manual directory at the folder holding "
                                    "ADEChallengeData2016/ (or at ADEChallengeData2016 itself).")

    def _features(self) -> dict[str, Any]:
        return {"image": bytes_feature(), "annotation": bytes_feature(), "file_name": tfds.features.Text()}

    def _examples(self, manual_dir: Path, split: str):
        pairs = list_pairs(find_root(manual_dir), split)
        return [(img.stem, {"image": img, "annotation": ann, "file_name": img.name}) for img, ann in pairs.pairs]


ADE20KSource.BUILDER = IedpAde20k
