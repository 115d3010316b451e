"""KITTI depth, Eigen split with the annotated ground truth (BTS / VPD-family layout): the folder
reader, its tfds builder, and the source.

Layout (``data.data_dir``)::

    <date>/<drive>_sync/image_02/data/NNNNNNNNNN.png                          (raw RGB)
    data_depth_annotated/<drive>_sync/proj_depth/groundtruth/image_02/NNNNNNNNNN.png
    kitti_eigen_train_files_with_gt.txt, kitti_eigen_test_files_with_gt.txt

The ground truth may also stay in the release's ``data_depth_annotated/{train,val}/`` folders.
The split files (BTS's ``eigen_*_files_with_gt.txt`` names are accepted too) are looked up in the
data folder, ``splits/`` and ``train_test_inputs/``; their lines are ``rgb gt focal``, and a line
whose gt is ``None`` (a frame without annotated depth) is skipped, as BTS's evaluation skips it.
Depth PNGs are uint16 metres x 256 and sparse (0 = no value).

The protocol (BTS ``bts_eval.py``): every image is cut to the KITTI benchmark crop (KB crop,
352x1216 at the bottom centre: top = H - 352, left = (W - 1216) // 2) for training and testing;
the scored pixels are the Garg crop (or the Eigen crop) of the full-size frame with
1e-3 < gt < 80 m. Training (``bts_dataloader.py``): KB crop, rotation U(-1, 1) degrees, a random
352x704 window, flip, gamma / brightness / colour with KITTI's ranges.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from iedp_jax.data import transforms
from iedp_jax.data.folder import depth_train_transform
from iedp_jax.data.sources import Example, FileSource
from iedp_jax.infra.errors import ConfigError, DatasetError
from iedp_jax.infra.files import DiskPairs, PairFiles
from iedp_jax.infra.images import image_size, load_depth_png
from iedp_jax.infra.tfds import FolderBuilder, RecordPairs, bytes_feature, tfds

SPLIT_FILES = {"train": ("kitti_eigen_train_files_with_gt.txt", "eigen_train_files_with_gt.txt"),
               "test": ("kitti_eigen_test_files_with_gt.txt", "eigen_test_files_with_gt.txt")}
GT_FOLDER = "data_depth_annotated"
DEPTH_SCALE = 256.0           # uint16 PNG / 256 = metres
KB_CROP = (352, 1216)         # (height, width) of the KITTI benchmark crop
# BTS bts_eval.py: rows int(a * H):int(b * H), cols int(c * W):int(d * W) of the full-size frame.
EVAL_CROPS = {"garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
              "eigen": (0.3324324, 0.91351351, 0.0359477, 0.96405229),
              "none": None}
SCENE = "street"              # the explicit branch's prompt word (ours: KITTI has no scene labels)

_LAYOUT = ("expected the BTS KITTI layout <date>/<drive>_sync/image_02/data/*.png, "
           f"{GT_FOLDER}/<drive>_sync/proj_depth/groundtruth/image_02/*.png and the split files "
           f"{SPLIT_FILES['train'][0]} / {SPLIT_FILES['test'][0]} in the data folder, splits/ or train_test_inputs/")


def kb_crop_box(h: int, w: int, size: Sequence[int] = KB_CROP) -> tuple[int, int]:
    """``(top, left)`` of the KB crop of an ``h x w`` frame (BTS: ``int(h - 352)``, ``int((w - 1216) / 2)``)."""
    kh, kw = int(size[0]), int(size[1])
    if h < kh or w < kw:
        raise ConfigError(f"a {h}x{w} KITTI frame is smaller than the {kh}x{kw} KB crop: lower data.kb_crop.")
    return int(h - kh), int((w - kw) / 2)


def eval_crop_mask(h: int, w: int, crop: str = "garg") -> np.ndarray:
    """bool [h, w]: BTS's Garg or Eigen crop of a full-size ``h x w`` frame (all True for 'none')."""
    if crop not in EVAL_CROPS:
        raise ConfigError(f"data.eval_crop must be one of {', '.join(EVAL_CROPS)}, got {crop!r}.")
    if EVAL_CROPS[crop] is None:
        return np.ones((h, w), bool)
    a, b, c, d = EVAL_CROPS[crop]
    mask = np.zeros((h, w), bool)
    mask[int(a * h):int(b * h), int(c * w):int(d * w)] = True
    return mask


def read_split(path: Path) -> list[tuple[str, str]]:
    """``(rgb, gt)`` relative paths of a split file; lines whose gt is ``None`` are skipped."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DatasetError(f"{path}:{n}: expected 'rgb_path gt_path focal', got {line.strip()!r}.")
        if fields[1] != "None":
            out.append((fields[0].lstrip("/"), fields[1].lstrip("/")))
    return out


def find_split(data_dir: Path, split: str, given: str | os.PathLike | None = None) -> Path:
    """The split file of ``split`` ('train' or 'test'): ``given`` (absolute or under the data
    folder) or the first known name in the data folder, ``splits/`` or ``train_test_inputs/``."""
    if given:
        for cand in (Path(given), data_dir / given):
            if cand.is_file():
                return cand
        raise DatasetError(f"the KITTI split file {str(given)!r} does not exist (also tried under {str(data_dir)!r}).")
    for folder in (data_dir, data_dir / "splits", data_dir / "train_test_inputs"):
        for name in SPLIT_FILES[split]:
            if (folder / name).is_file():
                return folder / name
    raise DatasetError(f"no KITTI split file {SPLIT_FILES[split][0]} under {str(data_dir)!r}: {_LAYOUT}.")


def _gt_path(gt_root: Path, rel: str) -> Path:
    for cand in (gt_root / rel, gt_root / "train" / rel, gt_root / "val" / rel):
        if cand.is_file():
            return cand
    return gt_root / rel


def list_split(data_dir: str | os.PathLike, split: str, split_file: str | os.PathLike | None = None) -> DiskPairs:
    """The (rgb, gt) pairs of ``split`` ('train' or 'test') with ground truth, named by the RGB
    path relative to the data folder; every listed file is checked to exist."""
    base = Path(data_dir)
    if not (base / GT_FOLDER).is_dir():
        raise DatasetError(f"no KITTI dataset at {str(data_dir)!r} (no {GT_FOLDER}/): {_LAYOUT}.")
    path = find_split(base, split, split_file)
    lines = read_split(path)
    if not lines:
        raise DatasetError(f"the KITTI split file {path} lists no image with ground truth: {_LAYOUT}.")
    pairs = [(base / rgb, _gt_path(base / GT_FOLDER, gt)) for rgb, gt in lines]
    for (rgb, gt), (rgb_rel, _) in zip(pairs, lines, strict=True):
        for p in (rgb, gt):
            if not p.is_file():
                raise DatasetError(f"{path} lists {rgb_rel}, but {p} does not exist: fix the split file or the "
                                   "dataset copy.")
    return DiskPairs(pairs, [rgb for rgb, _ in lines])


def random_rotate(image: np.ndarray, depth: np.ndarray, rng: np.random.Generator, degree: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """BTS ``rotate_image``: both turned by ``U(-degree, degree)`` degrees (PIL, counter-clockwise),
    the image bilinear, the sparse depth nearest (never interpolated); corners become 0."""
    angle = (rng.random() - 0.5) * 2 * float(degree)
    if degree <= 0:
        return image, depth
    image = np.asarray(Image.fromarray(image).rotate(angle, resample=Image.BILINEAR))
    depth = np.asarray(Image.fromarray(depth.astype(np.float32)).rotate(angle, resample=Image.NEAREST))
    return image, depth.astype(np.float32)


class KittiSource(FileSource):
    """KITTI Eigen depth with BTS's protocol (a :class:`~iedp_jax.data.sources.DataSource`).

    Train: KB crop, :func:`random_rotate` (``rotate_degree``), then
    :func:`~iedp_jax.data.folder.depth_train_transform` (random ``crop_size`` window, flip, KITTI
    colour ranges). Val: KB crop, depth outside ``eval_crop`` set to 0, centred crop. Full
    resolution: the KB crop of the image and depth, with the ``eval_crop`` of the full frame
    (cut the same way) as the scored mask. ``files`` = (train, test) replace the folder listing.
    """

    task = "depth"
    batch_keys = ("image", "depth", "scene")
    scene_names = (SCENE,)

    def __init__(self, data_dir: str | os.PathLike | None, crop_size: Sequence[int] = (352, 704), seed: int = 0,
                 train_split_file: str | os.PathLike | None = None,
                 test_split_file: str | os.PathLike | None = None, *, num_workers: int | None = None,
                 files: tuple[PairFiles, PairFiles] | None = None, kb_crop: Sequence[int] = KB_CROP,
                 eval_crop: str = "garg", rotate_degree: float = 1.0) -> None:
        if files is None:
            files = (list_split(data_dir, "train", train_split_file), list_split(data_dir, "test", test_split_file))
        self.set_protocol(kb_crop, eval_crop)
        self.rotate_degree = float(rotate_degree)
        super().__init__(files[0], files[1], crop_size, seed, num_workers)

    def set_protocol(self, kb_crop: Sequence[int], eval_crop: str) -> None:
        """The KB crop size (h, w) and the scored region ('garg', 'eigen' or 'none'), checked."""
        if len(kb_crop) != 2 or min(int(v) for v in kb_crop) <= 0:
            raise ConfigError(f"data.kb_crop must be (height, width), got {tuple(kb_crop)}.")
        eval_crop_mask(1, 1, eval_crop)
        self.kb_crop, self.eval_crop = (int(kb_crop[0]), int(kb_crop[1])), eval_crop

    @classmethod
    def from_config(cls, cfg_data, seed: int) -> KittiSource:
        """:meth:`FileSource.from_config` with ``data.kb_crop`` and ``data.eval_crop``."""
        source = super().from_config(cfg_data, seed)
        source.set_protocol(tuple(cfg_data.kb_crop), str(cfg_data.eval_crop))
        return source

    @classmethod
    def from_prepared(cls, builder, crop_size: Sequence[int] = (352, 704), seed: int = 0, **kwargs: Any
                      ) -> KittiSource:
        """The source over a prepared :class:`IedpKittiEigen` (its stored bytes, decoded here)."""
        files = (RecordPairs(builder, "train", ("image", "depth")), RecordPairs(builder, "test", ("image", "depth")))
        return cls(None, crop_size, seed, files=files, **kwargs)

    def _decode(self, files: PairFiles, index: int) -> Example:
        image, depth = self._read_pair(files, index, lambda f: load_depth_png(f, DEPTH_SCALE), "ground truth")
        return {"image": image, "depth": depth, "scene": np.int32(0)}

    def _kb(self, ex: Example) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The KB crop of the image, the depth and the scored mask of the full frame."""
        h, w = ex["depth"].shape
        top, left = kb_crop_box(h, w, self.kb_crop)
        win = (slice(top, top + self.kb_crop[0]), slice(left, left + self.kb_crop[1]))
        return ex["image"][win], ex["depth"][win], eval_crop_mask(h, w, self.eval_crop)[win]

    def _train_transform(self, ex: Example, rng: np.random.Generator) -> Example:
        image, depth, _ = self._kb(ex)
        image, depth = random_rotate(image, depth, rng, self.rotate_degree)
        image, depth = depth_train_transform(image, depth, rng, self.crop_size)
        return {"image": image, "depth": depth, "scene": ex["scene"]}

    def _val_transform(self, ex: Example) -> Example:
        image, depth, mask = self._kb(ex)
        depth = np.where(mask, depth, 0.0).astype(np.float32)
        return {"image": transforms.center_crop_or_pad(image, self.crop_size, 0),
                "depth": transforms.center_crop_or_pad(depth, self.crop_size, 0.0), "scene": ex["scene"]}

    def _full_resolution(self, ex: Example) -> Example:
        image, depth, mask = self._kb(ex)
        return {"image": np.ascontiguousarray(image), "depth": np.ascontiguousarray(depth), "mask": mask,
                "scene": ex["scene"]}

    def val_size(self, index: int) -> tuple[int, int]:
        h, w = image_size(self.val_files.open(index)[0])
        kb_crop_box(h, w, self.kb_crop)
        return self.kb_crop

    def _pad(self) -> Example:
        return {"image": np.zeros(self.crop_size + (3,), np.uint8),
                "depth": np.zeros(self.crop_size, np.float32), "scene": np.int32(0)}


class IedpKittiEigen(FolderBuilder):
    """KITTI depth, Eigen split with annotated ground truth (BTS layout); RGB and uint16 depth PNG bytes."""

    VERSION = tfds.core.Version("1.0.0") if tfds else None
    SPLITS = {"train": "train", "test": "test"}
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point the manual directory at the KITTI folder holding the raw <date>/ folders, "
                                    f"{GT_FOLDER}/ and the kitti_eigen_*_files_with_gt.txt split files.")

    def _features(self) -> dict[str, Any]:
        return {"image": bytes_feature(), "depth": bytes_feature(), "file_name": tfds.features.Text()}

    def _examples(self, manual_dir: Path, split: str):
        pairs = list_split(manual_dir, split)
        return [(name, {"image": rgb, "depth": gt, "file_name": name})
                for (rgb, gt), name in zip(pairs.pairs, pairs.names, strict=True)]


KittiSource.BUILDER = IedpKittiEigen
