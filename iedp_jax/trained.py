"""A trained IEDP model as an artifact: :func:`load_trained` rebuilds it from a training workdir
(``config.json``, ``run.json``, a checkpoint; no dataset on disk) and
:meth:`TrainedModel.predict` runs the evaluation protocol of the run's config on any images.

    model = iedp_jax.load_trained("/runs/ade")     # latest checkpoint, all devices
    labels = model.predict([image])                # uint8 [H, W, 3] -> class ids [H, W]

Prediction is the code path of ``python -m iedp_jax.evaluate``
(:func:`iedp_jax.eval.runner.protocol_batches`) over images without labels: the sliding window
(``eval.mode=single``) or multi-scale + flip (``multiscale``) for segmentation, the windows + flip
for depth, at each image's own size, batched over the mesh (``eval.batch_size``; 0 = one image per
device) and compiled once per shape group (landscape / portrait canvas).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from iedp_jax.eval.plan import Protocol, protocol_from_config
from iedp_jax.eval.runner import ProtocolSteps, make_protocol_steps, protocol_batches, restore_model
from iedp_jax.infra import sharding
from iedp_jax.infra.checkpoint import resolve_checkpoint
from iedp_jax.infra.errors import ConfigError, InputError
from iedp_jax.model import IEDP, SEG, VPD_CONTEXT
from iedp_jax.run_files import read_config, read_dataset_info

PyTree = Any

__all__ = ["ImageSource", "TrainedModel", "load_trained"]


class ImageSource:
    """Unlabelled images as the protocols read a data source (``val_size``, ``val_image``,
    ``val_name``): ``load(i)`` gives image ``i`` (uint8 [H, W, 3] of size ``sizes[i]``) when its
    batch is built; the label (or depth and mask) is a placeholder that scores nothing."""

    def __init__(self, task: str, sizes: Sequence[tuple[int, int]], load: Callable[[int], np.ndarray],
                 names: Sequence[str] | None = None, ignore_index: int = 255) -> None:
        self.task, self.sizes, self.load = task, [tuple(int(v) for v in s) for s in sizes], load
        self.names = list(names) if names is not None else [f"image_{i:05d}" for i in range(len(self.sizes))]
        self.ignore_index = int(ignore_index)

    @classmethod
    def from_arrays(cls, task: str, images: Sequence[np.ndarray], ignore_index: int = 255) -> ImageSource:
        """In-memory images, each checked to be uint8 [H, W, 3]."""
        arrays = [np.asarray(im) for im in images]
        for i, a in enumerate(arrays):
            if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or min(a.shape[:2]) < 1:
                raise InputError(f"image {i} must be a uint8 [H, W, 3] RGB array, got {a.dtype} {a.shape}.")
        return cls(task, [a.shape[:2] for a in arrays], arrays.__getitem__, ignore_index=ignore_index)

    def __len__(self) -> int:
        return len(self.sizes)

    def val_size(self, index: int) -> tuple[int, int]:
        return self.sizes[index]

    def val_name(self, index: int) -> str:
        return self.names[index]

    def val_image(self, index: int) -> dict[str, np.ndarray]:
        image = np.asarray(self.load(index))
        if image.shape != (*self.sizes[index], 3):
            raise InputError(f"{self.names[index]} changed size while predicting: it was {self.sizes[index]}, "
                             f"now {image.shape[:2]}.")
        hw = self.sizes[index]
        if self.task == SEG:
            return {"image": image, "label": np.full(hw, self.ignore_index, np.uint8)}
        return {"image": image, "depth": np.zeros(hw, np.float32), "mask": np.zeros(hw, bool)}


def _all_rows(x: jax.Array) -> np.ndarray:
    """Every row of a batch-sharded array on this host (gathered across processes if needed)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@dataclasses.dataclass
class TrainedModel:
    """A restored IEDP checkpoint and the evaluation protocol of its run (see :func:`load_trained`).

    ``params`` / ``frozen`` live on ``mesh``; ``config`` is the run's config (with any overrides);
    ``step`` the number of training steps of the checkpoint.
    """

    model: IEDP
    params: PyTree
    frozen: PyTree
    config: ConfigDict
    mesh: jax.sharding.Mesh
    class_names: tuple[str, ...]
    scene_names: tuple[str, ...]
    step: int
    checkpoint: Path
    workdir: Path
    protocol: Protocol
    steps: ProtocolSteps      # the jitted protocol steps, kept so repeated calls reuse compilations

    @property
    def task(self) -> str:
        """'seg' or 'depth'."""
        return self.model.config.task

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Predictions for uint8 ``[H, W, 3]`` RGB images of any sizes, in order: class ids
        ``[H, W]`` (uint8, or int32 beyond 256 classes) for segmentation, depth ``[H, W]``
        float32 metres for depth, each at its image's own size."""
        source = ImageSource.from_arrays(self.task, images, self.model.config.ignore_index)
        out: list[np.ndarray | None] = [None] * len(source)
        for i, pred in self.iter_predict(source):
            out[i] = pred
        return out  # type: ignore[return-value]

    def iter_predict(self, source: ImageSource) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, prediction)`` for every image of ``source``, batch by batch (grouped by
        orientation, not in index order); every process gets every prediction."""
        if len(source) == 0:
            return
        for batch in protocol_batches(self.model, self.params, self.frozen, source, len(source), self.mesh,
                                      self.config, self.steps, desc="predict"):
            pred = _all_rows(batch.pred)  # [B, Hl, Wl]
            for r, i in enumerate(batch.indices):
                if i >= 0:
                    h, w = batch.group.sizes[i]
                    yield i, np.array(pred[r, :h, :w])


def load_trained(workdir: str | os.PathLike, checkpoint: str | os.PathLike | None = None, mesh=None,
                 config: ConfigDict | None = None) -> TrainedModel:
    """The model of a training workdir with the parameters of one of its checkpoints.

    Args:
      workdir: a training workdir (``config.json`` and ``run.json`` written at the start of
        training, checkpoints in ``workdir/checkpoints``); the dataset is not read.
      checkpoint: a step folder (``workdir/checkpoints/2000``) or a folder of them; default the
        latest step of ``workdir/checkpoints``.
      mesh: a ``('data', 'fsdp')`` mesh; default ``config.mesh.shape`` over all devices.
      config: the config to use instead of ``workdir/config.json`` (e.g. with another ``eval``
        section); the model fields must be the run's.

    Returns:
      A :class:`TrainedModel` whose ``predict`` follows ``config.eval``.
    """
    workdir = Path(workdir)
    config = config if config is not None else read_config(workdir)
    info = read_dataset_info(workdir)
    directory, step = resolve_checkpoint(workdir, checkpoint)
    protocol = protocol_from_config(config, info.task)  # a bad eval section fails before any load
    if info.task != SEG and config.model.context == VPD_CONTEXT:
        raise ConfigError(f"{workdir} is a VPD depth baseline, which conditions on each image's ground-truth "
                          "scene class: it cannot predict unlabelled images; score it with python -m "
                          "iedp_jax.evaluate, which reads the scenes.")
    mesh = mesh or sharding.make_mesh(tuple(config.mesh.shape))
    model, params, frozen, trained_steps = restore_model(config, info, workdir, directory, step, mesh)
    steps = make_protocol_steps(model, protocol, mesh, float(config.data.min_depth))
    return TrainedModel(model, params, frozen, config, mesh, info.class_names, info.scene_names, trained_steps,
                        directory / str(step), workdir, protocol, steps)
