"""Cityscapes semantic segmentation (19 classes, gtFine): the folder reader, its tfds builder, and
the source.

Layout (the release zips leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip unpacked;
``data.data_dir`` may also hold them under ``cityscapes/``)::

    leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The ``_gtFine_color.png``, ``_gtFine_instanceIds.png`` and ``_gtFine_polygons.json`` files beside
the labels are not read. The 34 label ids are mapped to the 19 train ids (255 = ignore) here, by
the table of cityscapesScripts' ``helpers/labels.py`` (:data:`LABELS`), so no conversion script
has to be run first; a label id above 33 is refused with the file's name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iedp_jax.data import transforms
from iedp_jax.data.folder import LabelMapSource, train_scale
from iedp_jax.infra.errors import DatasetError, DataValueError
from iedp_jax.infra.files import DiskPairs, PairFiles
from iedp_jax.infra.tfds import FolderBuilder, RecordPairs, bytes_feature, tfds

IGNORE = transforms.IGNORE_INDEX

# cityscapesScripts helpers/labels.py: (name, id, trainId); trainId 255 = not evaluated. The
# license plate (id -1) is never stored in a labelIds PNG and is left out.
LABELS: tuple[tuple[str, int, int], ...] = (
    ("unlabeled", 0, IGNORE), ("ego vehicle", 1, IGNORE), ("rectification border", 2, IGNORE),
    ("out of roi", 3, IGNORE), ("static", 4, IGNORE), ("dynamic", 5, IGNORE), ("ground", 6, IGNORE),
    ("road", 7, 0), ("sidewalk", 8, 1), ("parking", 9, IGNORE), ("rail track", 10, IGNORE),
    ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4), ("guard rail", 14, IGNORE),
    ("bridge", 15, IGNORE), ("tunnel", 16, IGNORE), ("pole", 17, 5), ("polegroup", 18, IGNORE),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9),
    ("sky", 23, 10), ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14),
    ("bus", 28, 15), ("caravan", 29, IGNORE), ("trailer", 30, IGNORE), ("train", 31, 16),
    ("motorcycle", 32, 17), ("bicycle", 33, 18),
)
assert [i for _, i, _ in LABELS] == list(range(34))

# The 19 evaluated classes in train-id order (mmseg's CityscapesDataset.CLASSES).
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(n for n, _, t in sorted(LABELS, key=lambda x: x[2]) if t != IGNORE)
assert len(CITYSCAPES_CLASSES) == 19

# label id -> train id for every uint8 value; ids above 33 are refused before the lookup.
LABEL_TO_TRAIN = np.full(256, IGNORE, np.uint8)
for _, _id, _train in LABELS:
    LABEL_TO_TRAIN[_id] = _train

IMAGE_SUFFIX, LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"
_LAYOUT = ("expected leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
           "gtFine/{train,val}/<city>/*_gtFine_labelIds.png (data.data_dir may also hold them under cityscapes/)")


def find_root(data_dir: str | os.PathLike) -> Path:
    """The folder holding ``leftImg8bit/`` and ``gtFine/`` at or under ``data_dir``."""
    for cand in (Path(data_dir), Path(data_dir) / "cityscapes"):
        if (cand / "leftImg8bit").is_dir() and (cand / "gtFine").is_dir():
            return cand
    raise DatasetError(f"no Cityscapes dataset at {str(data_dir)!r}: {_LAYOUT}.")


def list_pairs(root: Path, split: str) -> DiskPairs:
    """The (image, labelIds) pairs of ``split`` ('train' or 'val'), sorted, named
    ``<city>/<file>``; every image must have its labelIds file."""
    images = sorted((root / "leftImg8bit" / split).glob(f"*/*{IMAGE_SUFFIX}"))
    if not images:
        raise DatasetError(f"no Cityscapes {split} images under {str(root)!r}: {_LAYOUT}.")
    pairs = [(img, root / "gtFine" / split / img.parent.name / (img.name[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX))
             for img in images]
    missing = [p for p in pairs if not p[1].is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more images)" if len(missing) > 1 else ""
        raise DatasetError(f"the Cityscapes image {missing[0][0]} has no {missing[0][1]}{more}: unpack "
                           "gtFine_trainvaltest.zip beside leftImg8bit/.")
    return DiskPairs(pairs, [f"{img.parent.name}/{img.name}" for img, _ in pairs])


def to_train_ids(label_ids: np.ndarray, name: str) -> np.ndarray:
    """uint8 label ids [H, W] -> train ids (0..18, 255 = ignore); an id above 33 is a
    :class:`DataValueError` naming ``name``."""
    if label_ids.size and int(label_ids.max()) > 33:
        raise DataValueError(f"the Cityscapes label map {name} holds the value {int(label_ids.max())}, but label ids "
                             "go to 33: use the *_gtFine_labelIds.png files of gtFine_trainvaltest.zip.")
    return LABEL_TO_TRAIN[label_ids]


class CityscapesSource(LabelMapSource):
    """Cityscapes with mmseg's Cityscapes pipeline (a :class:`~iedp_jax.data.sources.DataSource`).

    Train: rescale ratio 0.5-2.0 of ``img_scale`` (default mmseg's (2048, 1024)), crop with
    ``cat_max_ratio=0.75``, flip, photometric distortion, pad. Val: short side to the crop, centre
    crop. Full resolution: the 2048x1024 image and its train-id label.
    """

    class_names = CITYSCAPES_CLASSES

    def __init__(self, data_dir: str | os.PathLike | None, crop_size: Sequence[int] = (512, 1024), seed: int = 0, *,
                 num_workers: int | None = None, files: tuple[PairFiles, PairFiles] | None = None,
                 img_scale: Sequence[int] | None = (2048, 1024), pad_value: int = 0) -> None:
        if files is None:
            root = find_root(data_dir)
            files = (list_pairs(root, "train"), list_pairs(root, "val"))
        super().__init__(files[0], files[1], crop_size, seed, num_workers, img_scale, pad_value)

    @classmethod
    def from_config(cls, cfg_data, seed: int) -> CityscapesSource:
        """:meth:`FileSource.from_config` with ``data.img_scale`` (() = (2048, 1024)) and ``data.pad_value``."""
        source = super().from_config(cfg_data, seed)
        source.set_train_resize(train_scale(cfg_data) or (2048, 1024), int(cfg_data.pad_value))
        return source

    @classmethod
    def from_prepared(cls, builder, crop_size: Sequence[int] = (512, 1024), seed: int = 0, **kwargs: Any
                      ) -> CityscapesSource:
        """The source over a prepared :class:`IedpCityscapes`."""
        files = (RecordPairs(builder, "train", ("image", "annotation")),
                 RecordPairs(builder, "validation", ("image", "annotation")))
        return cls(None, crop_size, seed, files=files, **kwargs)

    def _labels(self, label: np.ndarray, name: str) -> np.ndarray:
        return to_train_ids(label, name)


class IedpCityscapes(FolderBuilder):
    """Cityscapes gtFine (19 classes) from leftImg8bit/ and gtFine/; image and labelIds PNG bytes."""

    VERSION = tfds.core.Version("1.0.0") if tfds else None
    SPLITS = {"train": "train", "validation": "val"}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Point the manual directory at the folder holding leftImg8bit/ and gtFine/."

    def _features(self) -> dict[str, Any]:
        return {"image": bytes_feature(), "annotation": bytes_feature(), "file_name": tfds.features.Text()}

    def _examples(self, manual_dir: Path, split: str):
        pairs = list_pairs(find_root(manual_dir), split)
        return [(name, {"image": img, "annotation": ann, "file_name": name})
                for (img, ann), name in zip(pairs.pairs, pairs.names, strict=True)]


CityscapesSource.BUILDER = IedpCityscapes
