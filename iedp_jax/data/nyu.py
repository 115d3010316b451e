"""NYU Depth v2 (BTS "sync" training set, official 654-image test split): the folder reader, its
tfds builder, and the source.

Layout (also accepted under ``data.data_dir/nyu_depth_v2/``, VPD's layout)::

    sync/<scene>_<NNNN>[a-z]/rgb_00045.jpg, sync_depth_00045.png          (train)
    official_splits/test/<scene>/rgb_00045.jpg, sync_depth_00045.png       (test)
    nyudepthv2_train_files_with_gt.txt, nyudepthv2_test_files_with_gt.txt

The split files are looked up in ``splits/``, the data folder and ``train_test_inputs/`` (BTS's
folder) unless given; their lines are ``rgb_relpath depth_relpath [focal]``. Depth PNGs are uint16
millimetres, returned in metres.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iedp_jax.data import transforms
from iedp_jax.data.sources import Example, FileSource
from iedp_jax.infra.errors import ConfigError, DatasetError
from iedp_jax.infra.files import DiskPairs, PairFiles
from iedp_jax.infra.images import load_depth_png
from iedp_jax.infra.tfds import (
    FolderBuilder,
    RecordPairs,
    bytes_feature,
    record_index,
    tfds,
)

TRAIN_SPLIT = "nyudepthv2_train_files_with_gt.txt"
TEST_SPLIT = "nyudepthv2_test_files_with_gt.txt"

# data.cutdepth: ours = Bernoulli(0.25) per sample, depth drawn as grey 255 * d / 10; vpd = VPD's
# depth/dataset/base_dataset.py (every 4th sample, count % 4 == 0; the raw millimetres assigned into
# the uint8 image, i.e. modulo 256; a full-height strip, p = 0.75, as ours); none = off.
CUTDEPTH = ("ours", "vpd", "none")
CUTDEPTH_EVERY = 4

_SCENE_SUFFIX = re.compile(r"_\d+[a-z]?$")
_LAYOUT = ("expected the BTS layout sync/<scene>_<NNNN>/{rgb,sync_depth}_*.{jpg,png} for "
           "training, official_splits/test/<scene>/... for testing, and the split files "
           f"{TRAIN_SPLIT} / {TEST_SPLIT} in splits/ or the data folder itself "
           "(data.data_dir may also hold them under nyu_depth_v2/)")


def scene_from_path(path: str) -> str:
    """The scene type of a split-file path: its folder without the ``_NNNN[a-z]`` suffix
    (``/kitchen_0028b/rgb_00045.jpg`` -> ``kitchen``, ``bathroom/rgb_1.jpg`` -> ``bathroom``)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if len(parts) < 2:
        raise DatasetError(f"cannot tell the NYUv2 scene of {path!r}: expected <scene folder>/<file>.")
    return _SCENE_SUFFIX.sub("", parts[-2])


def _read_split(path: Path) -> list[tuple[str, str]]:
    """``(rgb_relpath, depth_relpath)`` of a BTS split file; lines whose depth is ``None``
    (frames without ground truth) are skipped."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise DatasetError(f"{path}:{n}: expected 'rgb_path depth_path [focal]', got {line.strip()!r}.")
            if fields[1] != "None":
                out.append((fields[0], fields[1]))
    return out


def _find_split(given: str | os.PathLike | None, name: str, search: Sequence[Path], data_dir: str) -> Path:
    if given is not None:
        for cand in (Path(given), Path(data_dir) / given):
            if cand.is_file():
                return cand
        raise DatasetError(f"the NYUv2 split file {str(given)!r} does not exist (also tried under {data_dir!r}).")
    for folder in search:
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"no NYUv2 split file {name} under {data_dir!r}: {_LAYOUT}.")


def list_split(data_dir: str | os.PathLike, split: str, split_file: str | os.PathLike | None = None
               ) -> tuple[DiskPairs, list[str]]:
    """The (rgb, depth) pairs of ``split`` ('train' or 'test'), named by their path relative to
    the split's root, and their scene types; every listed file is checked to exist."""
    data_dir = str(data_dir)
    base = Path(data_dir)
    if not (base / "sync").is_dir() and (base / "nyu_depth_v2").is_dir():
        base = base / "nyu_depth_v2"
    root = base / "sync" if split == "train" else base / "official_splits" / "test"
    if not (base / "sync").is_dir() or not (base / "official_splits" / "test").is_dir():
        raise DatasetError(f"no NYUv2 dataset at {data_dir!r}: {_LAYOUT}.")
    search = list(dict.fromkeys([base / "splits", base, base / "train_test_inputs",
                                 Path(data_dir) / "splits", Path(data_dir)]))
    lines = _read_split(_find_split(split_file, TRAIN_SPLIT if split == "train" else TEST_SPLIT, search, data_dir))
    if not lines:
        raise DatasetError(f"the NYUv2 {split} split file lists no image with depth: {_LAYOUT}.")
    pairs = [(root / rgb.lstrip("/"), root / dep.lstrip("/")) for rgb, dep in lines]
    missing = [p for pair in pairs for p in pair if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more files)" if len(missing) > 1 else ""
        raise DatasetError(f"the NYUv2 {split} split lists {missing[0]}, which does not exist{more}.")
    names = [str(rgb.relative_to(root)) for rgb, _ in pairs]
    return DiskPairs(pairs, names), [scene_from_path(rgb) for rgb, _ in lines]


class NYUv2Source(FileSource):
    """NYUv2 depth with VPD's pipeline (a :class:`~iedp_jax.data.sources.DataSource`).

    Train: :func:`~iedp_jax.data.transforms.nyu_train_transform` (CutDepth, flip, random crop,
    VPD colour jitter). Val: :func:`~iedp_jax.data.transforms.depth_eval_transform` (depth
    outside the Eigen crop set to 0, centred crop). Full resolution: the whole image with the
    Eigen crop as the scored mask. ``scene`` is the index in ``scene_names`` (sorted scene types
    of train + test).

    ``files`` / ``scenes`` = (train, test) replace the folder listing (the prepared source).
    ``cutdepth`` is one of :data:`CUTDEPTH` (``data.cutdepth``); with ``"vpd"`` sample
    ``step * batch_size + row`` of the training stream gets CutDepth when it is a multiple of 4
    (VPD's per-worker counter: the same rate and spacing; which rows depends on VPD's worker
    count, which is not part of a batch here). Extra keywords go to the training transform (e.g.
    ``color_jitter="bts"``, ``cutdepth_prob``).
    """

    task = "depth"
    batch_keys = ("image", "depth", "scene")

    def __init__(self, data_dir: str | os.PathLike | None, crop_size: Sequence[int] = (480, 480),
                 seed: int = 0, train_split_file: str | os.PathLike | None = None,
                 test_split_file: str | os.PathLike | None = None, *, num_workers: int | None = None,
                 files: tuple[PairFiles, PairFiles] | None = None,
                 scenes: tuple[Sequence[str], Sequence[str]] | None = None, cutdepth: str = "ours",
                 **train_transform_kwargs: Any) -> None:
        if files is None:
            (train, train_scenes), (val, val_scenes) = (list_split(data_dir, "train", train_split_file),
                                                        list_split(data_dir, "test", test_split_file))
            files, scenes = (train, val), (train_scenes, val_scenes)
        self.train_scenes, self.val_scenes = list(scenes[0]), list(scenes[1])
        self.scene_names = tuple(sorted(set(self.train_scenes) | set(self.val_scenes)))
        self._scene_index = {s: i for i, s in enumerate(self.scene_names)}
        self.train_transform_kwargs = dict(train_transform_kwargs)
        self.cutdepth = _cutdepth(cutdepth)
        super().__init__(files[0], files[1], crop_size, seed, num_workers)

    @classmethod
    def from_config(cls, cfg_data, seed: int) -> NYUv2Source:
        """:meth:`FileSource.from_config` with VPD's or our CutDepth (``data.cutdepth``)."""
        cutdepth = _cutdepth(cfg_data.get("cutdepth", "ours"))
        source = super().from_config(cfg_data, seed)
        source.cutdepth = cutdepth
        return source

    @classmethod
    def from_prepared(cls, builder, crop_size: Sequence[int] = (480, 480), seed: int = 0, **kwargs: Any
                      ) -> NYUv2Source:
        """The source over a prepared :class:`IedpNyuDepthV2` (its stored bytes, decoded here)."""
        files = (RecordPairs(builder, "train", ("image", "depth")), RecordPairs(builder, "test", ("image", "depth")))
        scenes = (record_index(builder, "train", "scene"), record_index(builder, "test", "scene"))
        return cls(None, crop_size, seed, files=files, scenes=scenes, **kwargs)

    def _decode(self, files: PairFiles, index: int) -> Example:
        image, depth = self._read_pair(files, index, load_depth_png, "depth map")
        scenes = self.train_scenes if files is self.train_files else self.val_scenes
        return {"image": image, "depth": depth, "scene": np.int32(self._scene_index[scenes[index]])}

    def train_example(self, step: int, row: int, batch_size: int) -> Example:
        rng = np.random.default_rng((self.seed, int(step), int(row)))
        ex = self._decode(self.train_files, self.train_index(step, row, batch_size))
        return self._train_transform(ex, rng, int(step) * int(batch_size) + int(row))

    def _train_transform(self, ex: Example, rng: np.random.Generator, position: int = 0) -> Example:
        kwargs = dict(self.train_transform_kwargs)
        if self.cutdepth == "vpd":
            kwargs.update(cutdepth=position % CUTDEPTH_EVERY == 0, cutdepth_render="vpd")
        elif self.cutdepth == "none":
            kwargs.update(cutdepth=False)
        image, depth = transforms.nyu_train_transform(ex["image"], ex["depth"], rng, self.crop_size, **kwargs)
        return {"image": image, "depth": depth, "scene": ex["scene"]}

    def _val_transform(self, ex: Example) -> Example:
        image, depth = transforms.depth_eval_transform(ex["image"], ex["depth"], self.crop_size)
        return {"image": image, "depth": depth, "scene": ex["scene"]}

    def _full_resolution(self, ex: Example) -> Example:
        # the scene travels to the protocols: VPD's context conditions each test image on its own scene
        return {"image": ex["image"], "depth": ex["depth"], "mask": transforms.eigen_crop_mask(*ex["depth"].shape),
                "scene": ex["scene"]}

    def _pad(self) -> Example:
        return {"image": np.zeros(self.crop_size + (3,), np.uint8),
                "depth": np.zeros(self.crop_size, np.float32), "scene": np.int32(0)}


def _cutdepth(value: str) -> str:
    if value not in CUTDEPTH:
        raise ConfigError(f"data.cutdepth must be one of {', '.join(CUTDEPTH)}, got {value!r}.")
    return value


class IedpNyuDepthV2(FolderBuilder):
    """NYU Depth v2 in the BTS "sync" layout with its split files; JPEG and uint16 depth PNG bytes."""

    VERSION = tfds.core.Version("1.0.0") if tfds else None
    SPLITS = {"train": "train", "test": "test"}
    INDEXED = ("file_name", "scene")
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point the manual directory at the BTS NYUv2 folder (sync/, "
                                    "official_splits/test/ and the nyudepthv2_*_files_with_gt.txt split files).")

    def _features(self) -> dict[str, Any]:
        return {"image": bytes_feature(), "depth": bytes_feature(), "scene": tfds.features.Text(),
                "file_name": tfds.features.Text()}

    def _examples(self, manual_dir: Path, split: str):
        pairs, scenes = list_split(manual_dir, split)
        return [(name, {"image": rgb, "depth": dep, "scene": scene, "file_name": name})
                for (rgb, dep), name, scene in zip(pairs.pairs, pairs.names, scenes, strict=True)]


NYUv2Source.BUILDER = IedpNyuDepthV2
