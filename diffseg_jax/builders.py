"""tfds builders for the DiffSegmenter benchmarks (VOC 2012, Pascal Context 60, COCO-Object),
prepared once from the local folders into array_record files, and the reader over them.

Records keep the original JPEG / PNG bytes in the folder's order; the reader is the folder's
:class:`~diffseg_jax.datasets.SegDataset` over :class:`~iedp_jax.infra.tfds.RecordPairs`, so
``data.format='tfds'`` and ``'folders'`` decode identical arrays. Image sizes and file names are
kept in the dataset's metadata, so sizing the batch canvas reads no record.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from diffseg_jax.datasets import BENCHMARKS, SegDataset, benchmark, find_files
from iedp_jax.infra.images import image_size
from iedp_jax.infra.tfds import FolderBuilder, RecordPairs, bytes_feature, prepare_once, record_index, tfds

_VERSION = tfds.core.Version("1.0.0") if tfds else None
SPLIT = "validation"


class _DiffSegBuilder(FolderBuilder):
    KEY = ""
    INDEXED = ("file_name", "height", "width")

    def _features(self) -> dict[str, Any]:
        return {"image": bytes_feature(), "label": bytes_feature(),
                "file_name": tfds.features.Text(), "name": tfds.features.Text(),
                "height": tfds.features.Scalar(dtype=np.int32), "width": tfds.features.Scalar(dtype=np.int32)}

    def _examples(self, manual_dir: Path, split: str):
        files = find_files(self.KEY, manual_dir, split)
        out = []
        for i in range(len(files)):
            image, label = files.open(i)
            h, w = image_size(image)
            out.append((image.stem, {"image": image, "label": label, "file_name": image.name, "name": image.stem,
                                     "height": h, "width": w}))
        return out


class DiffsegVoc2012(_DiffSegBuilder):
    """PASCAL VOC 2012 val with SegmentationClassAug labels (21 classes), from VOCdevkit/VOC2012."""

    VERSION, KEY, SPLITS = _VERSION, "voc", {SPLIT: BENCHMARKS["voc"].split}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Point the manual directory at the folder holding VOCdevkit/VOC2012/."


class DiffsegPascalContext60(_DiffSegBuilder):
    """Pascal Context 60 val (mmseg's converted layout), from VOCdevkit/VOC2010."""

    VERSION, KEY, SPLITS = _VERSION, "context", {SPLIT: BENCHMARKS["context"].split}
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point the manual directory at the folder holding VOCdevkit/VOC2010/ with "
                                    "SegmentationClassContext/.")


class DiffsegCocoObject(_DiffSegBuilder):
    """COCO-Object val2017 (81 classes), from coco/images/val2017 and its object labels."""

    VERSION, KEY, SPLITS = _VERSION, "coco", {SPLIT: BENCHMARKS["coco"].split}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Point the manual directory at the folder holding coco/images/val2017/."


BUILDERS = {"voc": DiffsegVoc2012, "context": DiffsegPascalContext60, "coco": DiffsegCocoObject}


def make_prepared_dataset(name: str, data_dir: str | os.PathLike, tfds_dir: str | os.PathLike | None = None,
                          num_images: int = 0) -> SegDataset:
    """Prepares ``name`` ('voc', 'context', 'coco') from ``data_dir`` on first use (process 0; the
    others wait) and returns the reader over the prepared validation split."""
    b = benchmark(name)
    builder = prepare_once(BUILDERS[name], data_dir, tfds_dir or None)
    sizes = zip(record_index(builder, SPLIT, "height"), record_index(builder, SPLIT, "width"), strict=True)
    return SegDataset(b, RecordPairs(builder, SPLIT, ("image", "label")), list(sizes)).head(num_images)


__all__ = ["BUILDERS", "DiffsegCocoObject", "DiffsegPascalContext60", "DiffsegVoc2012", "make_prepared_dataset"]
