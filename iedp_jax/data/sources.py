"""The data-source protocol every IEDP dataset implements, and the shared file-backed base.

A source answers everything the trainer, the evaluator and the prediction code ask of a dataset,
whichever format backs it (a folder in its release layout, prepared tfds records, or a generator):

- training examples by ``(step, row)``, a pure function of the seed (:mod:`iedp_jax.data.order`),
  so a resumed run sees the batches an uninterrupted one would;
- fixed-size validation batches (a centred crop) for the trainer's quick check;
- full-resolution validation examples for the published protocols;
- class or scene names, the task, and the order's state for checkpoints.

Real datasets subclass :class:`FileSource`, which holds one
:class:`~iedp_jax.infra.files.PairFiles` per split: the same reader decodes files on disk or the
bytes of prepared records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Any, Protocol

import numpy as np

from iedp_jax.data import transforms
from iedp_jax.data.order import EpochOrder
from iedp_jax.infra.errors import ConfigError, DatasetError
from iedp_jax.infra.files import PairFiles
from iedp_jax.infra.images import image_size, load_rgb
from iedp_jax.infra.tfds import prepare_once, require_tfds
from iedp_jax.infra.threads import config_threads, default_threads

Example = dict[str, np.ndarray]


class DataSource(Protocol):
    """What every IEDP dataset provides (ADE20K, NYUv2, the synthetic sets)."""

    task: str                          # "seg" or "depth"
    class_names: tuple[str, ...]       # segmentation classes in label order (empty for depth)
    scene_names: tuple[str, ...]       # depth scene types, indexed by an example's "scene"
    num_classes: int                   # len(class_names)
    num_train: int
    num_val: int
    batch_keys: tuple[str, ...]        # ("image", "label") or ("image", "depth", "scene")

    def train_example(self, step: int, row: int, batch_size: int) -> Example:
        """Global row ``row`` of the batch of ``step``, decoded and augmented: ``image`` uint8
        [h, w, 3] at the crop size plus ``label`` uint8 [h, w] (255 = ignore) or ``depth``
        float32 [h, w] metres (0 = invalid) and ``scene`` int32."""

    def val_batches(self, batch_size: int, rows: slice) -> Iterator[Example]:
        """The validation split at the crop size (centred crop), in fixed-size batches (this
        process's ``rows`` of each); the last batch is padded with rows that count for nothing."""

    def val_size(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of full-resolution validation example ``index``, without decoding it."""

    def val_name(self, index: int) -> str:
        """A file-name-safe name of validation example ``index`` (for written predictions)."""

    def val_image(self, index: int) -> Example:
        """Full-resolution validation example ``index`` as the protocols score it: ``image``
        uint8 [H, W, 3] plus ``label`` uint8 [H, W] (reduced, 255 = ignore), or ``depth`` float32
        [H, W] metres plus ``mask`` bool [H, W] (the pixels that are scored) and ``scene`` int32
        (the image's own scene: VPD's context conditions on it at test time)."""

    def state(self, next_step: int) -> dict[str, Any]:
        """What a checkpoint records about the training order."""

    def restore(self, state: dict[str, Any]) -> None:
        """Checks that a checkpoint's order is this source's order (a clear error if not)."""


def safe_name(name: str) -> str:
    """``kitchen/rgb_00045.jpg`` -> ``kitchen_rgb_00045``: a relative file name as one file stem."""
    return str(PurePosixPath(name).with_suffix("")).replace("/", "_")


class FileSource(EpochOrder):
    """Batching, ordering, padding and full-resolution access over two :class:`PairFiles`.

    Subclasses set ``task``, ``batch_keys`` and the names, and implement ``_decode(files, i)``
    (one decoded pair), ``_train_transform``, ``_val_transform`` (the centred crop), ``_pad`` and
    ``_full_resolution`` (the protocols' example).
    """

    task: str
    batch_keys: tuple[str, ...]
    class_names: tuple[str, ...] = ()
    scene_names: tuple[str, ...] = ()
    BUILDER: type  # the dataset's tfds builder (its release layout -> array_record)

    @classmethod
    def from_config(cls, cfg_data, seed: int) -> FileSource:
        """The source over ``data.data_dir``: prepared records (``data.format='tfds'``, prepared
        into ``data.tfds_dir`` on first use) or the folder itself (``'folders'``)."""
        common = {"crop_size": tuple(cfg_data.crop_size), "seed": seed,
                  "num_workers": config_threads(cfg_data.num_workers)}
        if cfg_data.format == "tfds":
            require_tfds()
            return cls.from_prepared(prepare_once(cls.BUILDER, cfg_data.data_dir, cfg_data.tfds_dir or None), **common)
        return cls(cfg_data.data_dir, **common)

    def __init__(self, train_files: PairFiles, val_files: PairFiles, crop_size: Sequence[int], seed: int,
                 num_workers: int | None) -> None:
        if len(crop_size) != 2 or min(int(c) for c in crop_size) <= 0:
            raise ConfigError(f"data.crop_size must be (height, width), got {tuple(crop_size)}.")
        self.train_files, self.val_files = train_files, val_files
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.seed = int(seed)
        self.num_train, self.num_val = len(train_files), len(val_files)
        self.num_classes = len(self.class_names)
        self.num_workers = default_threads() if num_workers is None else int(num_workers)
        self._pool: ThreadPoolExecutor | None = None

    # -- per dataset -------------------------------------------------------------------------
    def _decode(self, files: PairFiles, index: int) -> Example:
        raise NotImplementedError

    def _train_transform(self, example: Example, rng: np.random.Generator) -> Example:
        raise NotImplementedError

    def _val_transform(self, example: Example) -> Example:
        raise NotImplementedError

    def _full_resolution(self, example: Example) -> Example:
        raise NotImplementedError

    def _pad(self) -> Example:
        raise NotImplementedError

    def _read_pair(self, files: PairFiles, index: int, load_target: Callable[[Any], np.ndarray],
                   what: str) -> tuple[np.ndarray, np.ndarray]:
        """Pair ``index`` decoded: the RGB image [H, W, 3] and its target [H, W] (``what`` names it
        in the error when the two sizes differ, which only a damaged copy can cause)."""
        image_file, target_file = files.open(index)
        image, target = load_rgb(image_file), load_target(target_file)
        if image.shape[:2] != target.shape:
            raise DatasetError(f"{type(self).__name__} image {files.name(index)} is {image.shape[:2]} but its "
                               f"{what} is {target.shape}: the dataset copy is damaged.")
        return image, target

    # -- the protocol --------------------------------------------------------------------------
    def train_example(self, step: int, row: int, batch_size: int) -> Example:
        rng = np.random.default_rng((self.seed, int(step), int(row)))
        index = self.train_index(step, row, batch_size)
        return self._train_transform(self._decode(self.train_files, index), rng)

    def val_batches(self, batch_size: int, rows: slice) -> Iterator[Example]:
        def one(i: int) -> Example:
            return self._val_transform(self._decode(self.val_files, i)) if i < self.num_val else self._pad()

        for start in range(0, self.num_val, batch_size):
            yield self._stack(self._map(one, [start + r for r in list(range(batch_size))[rows]]))

    def val_size(self, index: int) -> tuple[int, int]:
        return image_size(self.val_files.open(index)[0])

    def val_name(self, index: int) -> str:
        return safe_name(self.val_files.name(index))

    def val_image(self, index: int) -> Example:
        return self._full_resolution(self._decode(self.val_files, index))

    def close(self) -> None:
        """Stops the decoding threads (optional; they are idle between batches)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- helpers -------------------------------------------------------------------------------
    def _map(self, fn: Callable[[int], Example], items: Sequence[int]) -> list[Example]:
        if self.num_workers <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="iedp-data")
        return list(self._pool.map(fn, items))

    def _stack(self, examples: list[Example]) -> Example:
        if not examples:
            template = self._pad()
            return {k: np.zeros((0,) + np.shape(template[k]), np.asarray(template[k]).dtype) for k in self.batch_keys}
        return {k: np.stack([e[k] for e in examples]) for k in self.batch_keys}


class SegmentationFileSource(FileSource):
    """A :class:`FileSource` of (image, label map) pairs: what every segmentation dataset shares
    (the centre-crop evaluation transform, full resolution as read, ignore-filled padding);
    each dataset adds its decoding and its training transform."""

    def _val_transform(self, ex: Example) -> Example:
        image, label = transforms.seg_eval_transform(ex["image"], ex["label"], self.crop_size)
        return {"image": image, "label": label}

    def _full_resolution(self, ex: Example) -> Example:
        return ex

    def _pad(self) -> Example:
        return {"image": np.zeros(self.crop_size + (3,), np.uint8),
                "label": np.full(self.crop_size, transforms.IGNORE_INDEX, np.uint8)}
