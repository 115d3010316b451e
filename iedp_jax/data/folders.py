"""Real datasets read straight from their usual folder layouts (``data.format='folders'``).

Both sources implement the trainer's source interface (see :mod:`iedp_jax.data.datasets`):
``task``, ``class_names``, ``scene_names``, ``num_classes``, ``num_train``, ``num_val``,
``batch_keys``, ``train_batch(step, batch_size, rows)``, ``val_batches(batch_size, rows)``,
``state(next_step)`` and ``restore(state)``.

- Global row ``i`` of step ``s`` is training example ``perm_e[(s * B + i) % n]`` with
  ``perm_e = default_rng((seed, e)).permutation(n)`` and ``e = (s * B + i) // n``, exactly as
  :class:`~iedp_jax.data.datasets.SyntheticSource` does; its augmentation draws come from
  ``default_rng((seed, s, i))``. A batch is therefore a pure function of ``(seed, step)`` and a
  resumed run sees the batches an uninterrupted one would.
- Each process decodes only its own rows (``rows``), with a small thread pool (PIL decoding and
  NumPy release the GIL).
- Validation batches have a fixed size; the rows past the end of the split are padding that
  counts for nothing (image 0, label 255 / depth 0, scene 0).

Layouts::

    ADE20K   DATA_DIR/ADEChallengeData2016/images/{training,validation}/*.jpg
             DATA_DIR/ADEChallengeData2016/annotations/{training,validation}/*.png
             (DATA_DIR may also be ADEChallengeData2016 itself; image and annotation paired by
             file stem)
    NYUv2    BTS "sync" layout (also accepted under DATA_DIR/nyu_depth_v2/, VPD's layout):
             DATA_DIR/sync/<scene>_<NNNN>[a-z]/rgb_00045.jpg, sync_depth_00045.png  (train)
             DATA_DIR/official_splits/test/<scene>/rgb_00045.jpg, sync_depth_00045.png (test)
             split files nyudepthv2_train_files_with_gt.txt / nyudepthv2_test_files_with_gt.txt,
             looked up in DATA_DIR/splits/, DATA_DIR/ and DATA_DIR/train_test_inputs/ (BTS's
             folder) unless given; lines ``rgb_relpath depth_relpath [focal]``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from iedp_jax.data import transforms as T
from iedp_jax.data.order import EpochOrder
from iedp_jax.data.pipeline import config_threads, default_threads

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

NYU_TRAIN_SPLIT = "nyudepthv2_train_files_with_gt.txt"
NYU_TEST_SPLIT = "nyudepthv2_test_files_with_gt.txt"

_SCENE_SUFFIX = re.compile(r"_\d+[a-z]?$")

__all__ = [
    "ADE20K_CLASSES",
    "ADE20KSource",
    "NYUv2Source",
    "NYU_TEST_SPLIT",
    "NYU_TRAIN_SPLIT",
    "load_depth_png",
    "load_label",
    "load_rgb",
    "make_folder_dataset",
    "scene_from_path",
]


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------

def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """A JPEG/PNG as uint8 RGB ``[H, W, 3]`` (grey and palette images are converted)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_label(path: str | os.PathLike) -> np.ndarray:
    """A single-channel label PNG (mode L or P: the stored indices) as uint8 ``[H, W]``."""
    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise ValueError(f"{path} is not a single-channel label map (shape {arr.shape}).")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"{path} holds label values outside 0..255.")
        arr = arr.astype(np.uint8)
    return arr


def load_depth_png(path: str | os.PathLike, scale: float = 1000.0) -> np.ndarray:
    """A uint16 depth PNG in millimetres as float32 metres ``[H, W]`` (0 stays 0 = invalid)."""
    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise ValueError(f"{path} is not a single-channel depth map (shape {arr.shape}).")
    return (arr.astype(np.float32) / np.float32(scale)).astype(np.float32)


def scene_from_path(path: str) -> str:
    """NYUv2 scene type from a split-file path: the folder name without its ``_NNNN[a-z]``
    suffix (``/kitchen_0028b/rgb_00045.jpg`` -> ``kitchen``, ``bathroom/rgb_1.jpg`` ->
    ``bathroom``)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if len(parts) < 2:
        raise ValueError(f"cannot tell the scene of {path!r}: expected <scene folder>/<file>.")
    return _SCENE_SUFFIX.sub("", parts[-2])


# --------------------------------------------------------------------------------------------
# Shared source machinery
# --------------------------------------------------------------------------------------------

class _FolderSource(EpochOrder):
    """Batching, ordering, padding and state shared by the folder sources."""

    task: str
    batch_keys: tuple[str, ...]
    class_names: tuple[str, ...] = ()
    scene_names: tuple[str, ...] = ()

    def __init__(self, crop_size: Sequence[int], seed: int, num_train: int, num_val: int,
                 num_workers: int | None) -> None:
        if len(crop_size) != 2 or min(int(c) for c in crop_size) <= 0:
            raise ValueError(f"data.crop_size must be (height, width), got {tuple(crop_size)}.")
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.seed = int(seed)
        self.num_train, self.num_val = int(num_train), int(num_val)
        self.num_classes = len(self.class_names)
        self.num_workers = default_threads() if num_workers is None else int(num_workers)
        self._pool: ThreadPoolExecutor | None = None

    # -- per-example work (subclasses) ---------------------------------------------------------
    def _files(self, entry: tuple) -> tuple[Any, Any]:
        """The two encoded files of an entry: paths here; prepared-tfds sources return file
        objects over the stored bytes (:mod:`iedp_jax.data.builders`)."""
        return entry[0], entry[1]

    def _train_example(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _val_example(self, index: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _pad_example(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    # -- batching ------------------------------------------------------------------------------
    def _map(self, fn: Callable[[Any], dict[str, np.ndarray]], items: Sequence[Any]) -> list[dict[str, np.ndarray]]:
        if self.num_workers <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="iedp-data")
        return list(self._pool.map(fn, items))

    def _stack(self, examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if not examples:
            template = self._pad_example()
            return {k: np.zeros((0,) + np.shape(template[k]), np.asarray(template[k]).dtype)
                    for k in self.batch_keys}
        return {k: np.stack([e[k] for e in examples]) for k in self.batch_keys}

    def train_example(self, step: int, row: int, batch_size: int) -> dict[str, np.ndarray]:
        """Global row ``row`` of the batch of ``step``, decoded and augmented."""
        rng = np.random.default_rng((self.seed, int(step), int(row)))
        return self._train_example(self.train_index(step, row, batch_size), rng)

    def train_batch(self, step: int, batch_size: int, rows: slice) -> dict[str, np.ndarray]:
        """This process's rows of the global batch of ``step`` (the trainer streams the same
        examples through :func:`iedp_jax.data.pipeline.train_iterator`)."""
        return self._stack(self._map(lambda row: self.train_example(step, row, batch_size),
                                     list(range(batch_size))[rows]))

    def val_batches(self, batch_size: int, rows: slice) -> Iterator[dict[str, np.ndarray]]:
        """The validation split in fixed-size batches (this process's rows of each); the last is
        padded with rows that count for nothing."""
        for start in range(0, self.num_val, batch_size):
            wanted = [start + r for r in list(range(batch_size))[rows]]
            yield self._stack(self._map(
                lambda i: self._val_example(i) if i < self.num_val else self._pad_example(), wanted))

    def close(self) -> None:
        """Stops the decoding threads (optional; they are idle between batches)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


# --------------------------------------------------------------------------------------------
# ADE20K
# --------------------------------------------------------------------------------------------

_ADE_LAYOUT = ("expected ADEChallengeData2016/images/{training,validation}/*.jpg with matching "
               "annotations/{training,validation}/*.png (data.data_dir may be the folder that holds "
               "ADEChallengeData2016 or ADEChallengeData2016 itself)")


def _ade_pairs(root: Path, split: str, data_dir: str) -> list[tuple[Path, Path]]:
    images = sorted((root / "images" / split).glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"no ADE20K {split} images under {data_dir!r}: {_ADE_LAYOUT}.")
    ann_dir = root / "annotations" / split
    pairs, missing = [], []
    for img in images:
        ann = ann_dir / (img.stem + ".png")
        (pairs if ann.is_file() else missing).append((img, ann))
    if missing:
        more = f" (and {len(missing) - 1} more images)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"ADE20K image {missing[0][0]} has no annotation "
                                f"{missing[0][1]}{more}.")
    return pairs


class ADE20KSource(_FolderSource):
    """ADE20K (SceneParsing, 150 classes) with VPD's mmseg training pipeline.

    Train: :func:`~iedp_jax.data.transforms.ade20k_train_transform` (rescale ratio 0.5-2.0 of
    ``img_scale``, crop with ``cat_max_ratio=0.75``, flip, photometric distortion, pad).
    Val: :func:`~iedp_jax.data.transforms.seg_eval_transform` (short side to the crop, centre
    crop). Labels go through ``reduce_zero_label`` (0 -> 255, k -> k - 1).

    ``split_sizes = (n_train, n_val)`` keeps only the first files of each split (sorted by
    name; ``None`` for all), e.g. for quick runs. ``files`` = (train, val) entries replaces the
    folder listing (used by the prepared-tfds source). ``img_scale`` defaults to ``(4 s, s)`` with
    ``s = min(crop_size)`` (mmseg's (2048, 512) for 512 crops). ``photometric=False`` turns the
    colour distortion off.
    """

    task = "seg"
    batch_keys = ("image", "label")
    class_names = ADE20K_CLASSES

    def __init__(self, data_dir: str | os.PathLike, crop_size: Sequence[int] = (512, 512),
                 seed: int = 0, split_sizes: Sequence[int | None] | None = None, *,
                 img_scale: Sequence[int] | None = None,
                 ratio_range: Sequence[float] = (0.5, 2.0), cat_max_ratio: float = 0.75,
                 photometric: bool = True, num_workers: int | None = None,
                 files: tuple[list, list] | None = None) -> None:
        if files is None:
            data_dir = str(data_dir)
            root = None
            for cand in (Path(data_dir) / "ADEChallengeData2016", Path(data_dir)):
                if (cand / "images").is_dir() and (cand / "annotations").is_dir():
                    root = cand
                    break
            if root is None:
                raise FileNotFoundError(f"no ADE20K dataset at {data_dir!r}: {_ADE_LAYOUT}.")
            self.root = root
            files = (_ade_pairs(root, "training", data_dir), _ade_pairs(root, "validation", data_dir))
        self.train_files, self.val_files = list(files[0]), list(files[1])
        if split_sizes is not None:
            n_train, n_val = split_sizes
            if any(n is not None and int(n) <= 0 for n in (n_train, n_val)):
                raise ValueError(f"split_sizes must be positive or None, got {tuple(split_sizes)}.")
            self.train_files = self.train_files[:n_train] if n_train is not None else self.train_files
            self.val_files = self.val_files[:n_val] if n_val is not None else self.val_files
        self.img_scale = img_scale
        self.ratio_range = tuple(ratio_range)
        self.cat_max_ratio = float(cat_max_ratio)
        self.photometric = bool(photometric)
        super().__init__(crop_size, seed, len(self.train_files), len(self.val_files), num_workers)

    def _load(self, pair: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
        image_file, label_file = self._files(pair)
        image, label = load_rgb(image_file), load_label(label_file)
        if image.shape[:2] != label.shape:
            raise ValueError(f"{pair[0]} is {image.shape[:2]} but its annotation {pair[1]} is {label.shape}.")
        return image, T.reduce_zero_label(label)

    def _train_example(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        image, label = self._load(self.train_files[index])
        image, label = T.ade20k_train_transform(
            image, label, rng, self.crop_size, img_scale=self.img_scale,
            ratio_range=self.ratio_range, cat_max_ratio=self.cat_max_ratio,
            photometric=self.photometric)
        return {"image": image, "label": label}

    def _val_example(self, index: int) -> dict[str, np.ndarray]:
        image, label = T.seg_eval_transform(*self._load(self.val_files[index]), self.crop_size)
        return {"image": image, "label": label}

    def _pad_example(self) -> dict[str, np.ndarray]:
        return {"image": np.zeros(self.crop_size + (3,), np.uint8),
                "label": np.full(self.crop_size, T.IGNORE_INDEX, np.uint8)}


# --------------------------------------------------------------------------------------------
# NYUv2
# --------------------------------------------------------------------------------------------

_NYU_LAYOUT = ("expected the BTS layout sync/<scene>_<NNNN>/{rgb,sync_depth}_*.{jpg,png} for "
               "training, official_splits/test/<scene>/... for testing, and the split files "
               f"{NYU_TRAIN_SPLIT} / {NYU_TEST_SPLIT} in splits/ or the data folder itself "
               "(data.data_dir may also hold them under nyu_depth_v2/)")


def _read_split(path: Path) -> list[tuple[str, str]]:
    """``(rgb_relpath, depth_relpath)`` of a BTS split file; lines whose depth is None are
    skipped (BTS marks frames without ground truth that way)."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise ValueError(f"{path}:{n}: expected 'rgb_path depth_path [focal]', got {line.strip()!r}.")
            if fields[1] == "None":
                continue
            out.append((fields[0], fields[1]))
    return out


class NYUv2Source(_FolderSource):
    """NYU Depth v2, BTS "sync" training set and the official 654-image test split.

    Train: :func:`~iedp_jax.data.transforms.nyu_train_transform` (CutDepth, flip, random
    crop, VPD colour jitter). Val: :func:`~iedp_jax.data.transforms.depth_eval_transform`
    (depth outside the Eigen crop set to 0, centred crop). Depth PNGs are uint16 millimetres,
    returned in metres. ``scene`` is the index in ``scene_names`` (sorted scene types of
    train + test, from the folder names).

    ``train_split_file`` / ``test_split_file``: paths (absolute, or relative to the working
    directory or to ``data_dir``); by default ``nyudepthv2_{train,test}_files_with_gt.txt`` in
    ``data_dir/splits/``, ``data_dir/`` or ``data_dir/train_test_inputs/``. Extra keywords go to
    the training transform (e.g. ``color_jitter="bts"``, ``cutdepth_prob``). ``files`` = (train,
    test) entries ``(rgb, depth, scene)`` replaces the folder listing (prepared-tfds source).
    """

    task = "depth"
    batch_keys = ("image", "depth", "scene")

    def __init__(self, data_dir: str | os.PathLike, crop_size: Sequence[int] = (480, 480),
                 seed: int = 0, train_split_file: str | os.PathLike | None = None,
                 test_split_file: str | os.PathLike | None = None, *,
                 num_workers: int | None = None, files: tuple[list, list] | None = None,
                 **train_transform_kwargs: Any) -> None:
        if files is None:
            files = self._list(str(data_dir), train_split_file, test_split_file)
        self.train_files, self.val_files = list(files[0]), list(files[1])
        self.scene_names = tuple(sorted({f[2] for f in self.train_files + self.val_files}))
        self._scene_index = {s: i for i, s in enumerate(self.scene_names)}
        self.train_transform_kwargs = dict(train_transform_kwargs)
        super().__init__(crop_size, seed, len(self.train_files), len(self.val_files), num_workers)

    def _list(self, data_dir: str, train_split_file, test_split_file) -> tuple[list, list]:
        """(train, test) entries ``(rgb, depth, scene)`` from the BTS layout, checked to exist."""
        base = Path(data_dir)
        if not (base / "sync").is_dir() and (base / "nyu_depth_v2").is_dir():
            base = base / "nyu_depth_v2"
        self.root = base
        self.train_root = base / "sync"
        self.test_root = base / "official_splits" / "test"
        if not self.train_root.is_dir() or not self.test_root.is_dir():
            raise FileNotFoundError(f"no NYUv2 dataset at {data_dir!r}: {_NYU_LAYOUT}.")
        search = list(dict.fromkeys([base / "splits", base, base / "train_test_inputs",
                                     Path(data_dir) / "splits", Path(data_dir)]))
        train_list = _read_split(self._find_split(train_split_file, NYU_TRAIN_SPLIT, search, data_dir))
        test_list = _read_split(self._find_split(test_split_file, NYU_TEST_SPLIT, search, data_dir))
        train_files = [self._entry(self.train_root, rgb, dep) for rgb, dep in train_list]
        val_files = [self._entry(self.test_root, rgb, dep) for rgb, dep in test_list]
        for split, files in (("train", train_files), ("test", val_files)):
            if not files:
                raise FileNotFoundError(f"the NYUv2 {split} split file lists no image with depth: {_NYU_LAYOUT}.")
            missing = [p for f in files for p in f[:2] if not p.is_file()]
            if missing:
                more = f" (and {len(missing) - 1} more files)" if len(missing) > 1 else ""
                raise FileNotFoundError(f"the NYUv2 {split} split lists {missing[0]}, which does not exist{more}.")
        return train_files, val_files

    @staticmethod
    def _find_split(given, name: str, search: list[Path], data_dir: str) -> Path:
        if given is not None:
            for cand in (Path(given), Path(data_dir) / given):
                if cand.is_file():
                    return cand
            raise FileNotFoundError(f"the NYUv2 split file {str(given)!r} does not exist (also "
                                    f"tried under {data_dir!r}).")
        for folder in search:
            if (folder / name).is_file():
                return folder / name
        raise FileNotFoundError(f"no NYUv2 split file {name} under {data_dir!r}: {_NYU_LAYOUT}.")

    @staticmethod
    def _entry(root: Path, rgb: str, depth: str) -> tuple[Path, Path, str]:
        return root / rgb.lstrip("/"), root / depth.lstrip("/"), scene_from_path(rgb)

    def _load(self, entry: tuple[Path, Path, str]) -> tuple[np.ndarray, np.ndarray, np.int32]:
        image_file, depth_file = self._files(entry)
        image, depth = load_rgb(image_file), load_depth_png(depth_file)
        if image.shape[:2] != depth.shape:
            raise ValueError(f"{entry[0]} is {image.shape[:2]} but its depth {entry[1]} is {depth.shape}.")
        return image, depth, np.int32(self._scene_index[entry[2]])

    def _train_example(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        image, depth, scene = self._load(self.train_files[index])
        image, depth = T.nyu_train_transform(image, depth, rng, self.crop_size,
                                             **self.train_transform_kwargs)
        return {"image": image, "depth": depth, "scene": scene}

    def _val_example(self, index: int) -> dict[str, np.ndarray]:
        image, depth, scene = self._load(self.val_files[index])
        image, depth = T.depth_eval_transform(image, depth, self.crop_size)
        return {"image": image, "depth": depth, "scene": scene}

    def _pad_example(self) -> dict[str, np.ndarray]:
        return {"image": np.zeros(self.crop_size + (3,), np.uint8),
                "depth": np.zeros(self.crop_size, np.float32), "scene": np.int32(0)}


# --------------------------------------------------------------------------------------------

def make_folder_dataset(cfg_data, seed: int):
    """The source named by ``cfg_data.name`` (``'ade20k'`` or ``'nyu'``) over
    ``cfg_data.data_dir`` with ``cfg_data.crop_size``: prepared tfds files when
    ``cfg_data.format == 'tfds'``, the files themselves when ``'folders'``."""
    name = cfg_data.name
    if not cfg_data.data_dir:
        what = ("ADE20K (the ADEChallengeData2016 folder)" if name == "ade20k"
                else "NYUv2 in the BTS layout (sync/, official_splits/test/ and the split files)")
        raise ValueError(f"data.name={name!r} reads {what} from disk: download it and pass "
                         "--config.data.data_dir=/path/to/it.")
    fmt = cfg_data.get("format", "folders")
    if fmt == "tfds":
        from iedp_jax.data.builders import make_prepared_dataset  # noqa: PLC0415 - optional deps

        return make_prepared_dataset(cfg_data, seed)
    if fmt != "folders":
        raise ValueError(f"data.format={fmt!r} is not known: use 'tfds' or 'folders'.")
    threads = config_threads(cfg_data.get("num_workers", -1))
    if name == "ade20k":
        return ADE20KSource(cfg_data.data_dir, tuple(cfg_data.crop_size), seed, num_workers=threads)
    if name == "nyu":
        return NYUv2Source(cfg_data.data_dir, tuple(cfg_data.crop_size), seed, num_workers=threads)
    raise ValueError(f"data.name={name!r} is not a folder dataset: use 'ade20k' or 'nyu'.")
