"""Datasets as the trainer sees them: deterministic train batches by step, padded val batches.

A training batch is a pure function of ``(seed, step)`` (:mod:`iedp_jax.data.order`), so a
resumed run sees exactly the batches an uninterrupted run would, and each process loads only its
own rows. The trainer streams ``train_example`` through grain (:mod:`iedp_jax.data.pipeline`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from ml_collections import ConfigDict

from iedp_jax.data.order import EpochOrder
from iedp_jax.data.synthetic import SyntheticDepth, SyntheticSegmentation


class SyntheticSource(EpochOrder):
    """Adapts a synthetic dataset (``batch(split, indices)``) to the trainer's interface."""

    def __init__(self, data, task: str, train_size: int, val_size: int, seed: int,
                 ignore_index: int = 255) -> None:
        if train_size <= 0 or val_size <= 0:
            raise ValueError("data.train_size and data.val_size must be positive.")
        self.data, self.task = data, task
        self.num_train, self.num_val = int(train_size), int(val_size)
        self.seed, self.ignore_index = seed, ignore_index
        self.class_names: tuple[str, ...] = tuple(getattr(data, "class_names", ()))
        self.scene_names: tuple[str, ...] = tuple(getattr(data, "scene_names", ()))
        self.num_classes = len(self.class_names)
        self.batch_keys = ("image", "label") if task == "seg" else ("image", "depth", "scene")


    def _select(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: batch[k] for k in self.batch_keys}
        if "scene" in out:
            out["scene"] = out["scene"].astype(np.int32)
        if "depth" in out:
            out["depth"] = out["depth"].astype(np.float32)
        return out

    def train_example(self, step: int, row: int, batch_size: int) -> dict[str, np.ndarray]:
        """Global row ``row`` of the batch of ``step``."""
        batch = self._select(self.data.batch("train", [self.train_index(step, row, batch_size)]))
        return {k: v[0] for k, v in batch.items()}

    def train_batch(self, step: int, batch_size: int, rows: slice) -> dict[str, np.ndarray]:
        """This process's rows of the global batch of ``step``."""
        return self._select(self.data.batch("train", self.train_indices(step, batch_size)[rows].tolist()))

    def val_batches(self, batch_size: int, rows: slice) -> Iterator[dict[str, np.ndarray]]:
        """The validation split in fixed-size batches; the last is padded with rows that count
        for nothing (ignore label / zero depth)."""
        for start in range(0, self.num_val, batch_size):
            idx = np.arange(start, start + batch_size)
            valid = idx < self.num_val
            batch = self._select(self.data.batch("val", np.minimum(idx, self.num_val - 1).tolist()))
            if "label" in batch:
                batch["label"] = np.where(valid[:, None, None], batch["label"], self.ignore_index).astype(np.uint8)
            if "depth" in batch:
                batch["depth"] = np.where(valid[:, None, None], batch["depth"], 0.0).astype(np.float32)
            yield {k: v[rows] for k, v in batch.items()}



def make_dataset(cfg: ConfigDict, seed: int):
    """The dataset named by ``config.data.name``."""
    if cfg.name in ("ade20k", "nyu"):
        from iedp_jax.data.folders import make_folder_dataset  # noqa: PLC0415

        return make_folder_dataset(cfg, seed)
    h, w = cfg.crop_size
    if h != w:
        raise ValueError(f"synthetic datasets are square: set data.crop_size to (N, N), got {tuple(cfg.crop_size)}.")
    if cfg.name == "synthetic_seg":
        data = SyntheticSegmentation(num_classes=cfg.num_classes, image_size=h, seed=seed)
        return SyntheticSource(data, "seg", cfg.train_size, cfg.val_size, seed, cfg.ignore_index)
    if cfg.name == "synthetic_depth":
        data = SyntheticDepth(image_size=h, seed=seed)
        return SyntheticSource(data, "depth", cfg.train_size, cfg.val_size, seed, cfg.ignore_index)
    raise ValueError(f"data.name={cfg.name!r} is not known: use ade20k, nyu, synthetic_seg or synthetic_depth.")
