"""tfds builders for the DiffSegmenter benchmarks (VOC 2012, Pascal Context 60, COCO-Object),
prepared once from the local folders into array_record files, and a reader over them with the
folder readers' interface (:class:`diffseg_jax.datasets.SegFolder`).

Records keep the original JPEG / PNG bytes in the folder reader's order and are decoded by the
same functions, so ``data.format='tfds'`` and ``'folders'`` evaluate identical arrays. Image sizes
and file names are kept in the dataset's metadata, so sizing the batch canvas reads no record.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from diffseg_jax import datasets as D
from iedp_jax.data.builders import FolderBuilder, as_file, data_source, prepare_once, tfds

_VERSION = tfds.core.Version("1.0.0") if tfds else None


class _DiffSegBuilder(FolderBuilder):
    KEY = ""
    SPLIT = "val"
    INDEXED = ("file_name", "name", "height", "width")

    def _features(self) -> dict[str, Any]:
        return {"image": tfds.features.Tensor(shape=(), dtype=np.object_),
                "label": tfds.features.Tensor(shape=(), dtype=np.object_),
                "file_name": tfds.features.Text(), "name": tfds.features.Text(),
                "height": tfds.features.Scalar(dtype=np.int32), "width": tfds.features.Scalar(dtype=np.int32)}

    def _examples(self, manual_dir: Path, split: str):
        ds = D.make_dataset(self.KEY, manual_dir, split)
        out = []
        for i in range(ds.num_images):
            h, w = ds.size(i)
            out.append((ds.name(i), {"image": ds.image_path(i), "label": ds.label_path(i),
                                     "file_name": ds.image_path(i).name, "name": ds.name(i),
                                     "height": h, "width": w}))
        return out


class DiffsegVoc2012(_DiffSegBuilder):
    """PASCAL VOC 2012 val with SegmentationClassAug labels (21 classes), from VOCdevkit/VOC2012."""

    VERSION, KEY, SPLITS = _VERSION, "voc", {"validation": "val"}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Point the manual directory at the folder holding VOCdevkit/VOC2012/."


class DiffsegPascalContext60(_DiffSegBuilder):
    """Pascal Context 60 val (mmseg's converted layout), from VOCdevkit/VOC2010."""

    VERSION, KEY, SPLITS = _VERSION, "context", {"validation": "val"}
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point the manual directory at the folder holding VOCdevkit/VOC2010/ with "
                                    "SegmentationClassContext/.")


class DiffsegCocoObject(_DiffSegBuilder):
    """COCO-Object val2017 (81 classes), from coco/images/val2017 and its object labels."""

    VERSION, KEY, SPLITS = _VERSION, "coco", {"validation": "val2017"}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Point the manual directory at the folder holding coco/images/val2017/."


BUILDERS = {"voc": DiffsegVoc2012, "context": DiffsegPascalContext60, "coco": DiffsegCocoObject}


class PreparedSegDataset(D.SegFolder):
    """The reader interface of :class:`~diffseg_jax.datasets.SegFolder` over a prepared split."""

    def __init__(self, builder, reader: type[D.SegFolder]) -> None:
        self.key, self.class_names, self.substitutions = reader.key, reader.class_names, reader.substitutions
        self._source = data_source(builder, "validation")
        index = builder.info.metadata["index"]["validation"]
        self._files = [Path(f) for f in index["file_name"]]
        self._sizes = [(int(h), int(w)) for h, w in zip(index["height"], index["width"], strict=True)]
        super().__init__(Path(builder.data_dir), list(range(len(self._files))), index["name"])

    def image_path(self, i: int) -> Path:
        """The original file name (captions files are keyed by it)."""
        return self._files[self._pairs[i]]

    def label_path(self, i: int) -> Path:
        return Path(f"{self.root}/validation[{self._pairs[i]}]:label")

    def size(self, i: int) -> tuple[int, int]:
        return self._sizes[self._pairs[i]]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        record = self._source[self._pairs[i]]
        image, label = D._load_rgb(as_file(record["image"])), D._load_label(as_file(record["label"]))  # noqa: SLF001
        if image.shape[:2] != label.shape:
            raise ValueError(f"record {self._names[i]} of {self.root}: image {image.shape[:2]} != label {label.shape}.")
        return image, label, self._names[i]


def make_prepared_dataset(name: str, data_dir: str | os.PathLike, tfds_dir: str | os.PathLike | None = None,
                          num_images: int = 0) -> PreparedSegDataset:
    """Prepares ``name`` ('voc', 'context', 'coco') from ``data_dir`` on first use (process 0; the
    others wait) and returns the reader over the prepared validation split."""
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(D.DATASETS)}.")
    builder = prepare_once(BUILDERS[name], data_dir, tfds_dir or None)
    return PreparedSegDataset(builder, D._READERS[name]).limit(num_images)  # noqa: SLF001
