"""The trainer's validation: the centre-crop proxy, fast and of one compiled shape.

Scores the implicit branch (no labels) on the source's fixed-size validation batches (a centred
crop at the training crop size) and returns the metrics with ``protocol = "center-crop proxy"``:
a number to follow during training, not the published protocol (``python -m iedp_jax.evaluate``
gives that). The jitted steps are built once, so validating every ``train.eval_every`` steps
compiles once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from iedp_jax.data.sources import DataSource
from iedp_jax.eval.runner import finalize, zero_metrics
from iedp_jax.infra import sharding, visualize
from iedp_jax.infra.compile import Synchronized, compiler_options
from iedp_jax.infra.logs import progress
from iedp_jax.infra.metrics import confusion_matrix, depth_metric_sums
from iedp_jax.model import IEDP, SEG
from iedp_jax.sd.layers import resize_bilinear

PyTree = Any
PROTOCOL = "center-crop proxy"


class CenterCropValidation:
    """``validate(params, frozen) -> metrics`` and ``panels(params, frozen, n)`` over ``dataset``."""

    def __init__(self, model: IEDP, dataset: DataSource, mesh, batch_size: int, min_depth: float) -> None:
        self.model, self.dataset, self.mesh, self.batch_size = model, dataset, mesh, int(batch_size)
        c = model.config
        repl = sharding.replicated(mesh)

        def predict(params, frozen, images, scenes):  # [B, h, w, 3] -> labels [B, h, w] or depth [B, h, w]
            pred = model.predict(params, frozen, images, scenes).astype(jnp.float32)
            if c.task != SEG:
                return pred
            return jnp.argmax(resize_bilinear(pred, images.shape[1:3]), -1).astype(jnp.int32)

        def step(acc, params, frozen, batch):
            if c.task == SEG:
                label = batch["label"]
                logits = resize_bilinear(model.predict(params, frozen, batch["image"]).astype(jnp.float32),
                                         label.shape[1:3])
                return acc + confusion_matrix(jnp.argmax(logits, -1), label, c.num_classes, c.ignore_index)
            # the scene is used only by VPD's depth context (it conditions on the scene class)
            pred = model.predict(params, frozen, batch["image"], batch.get("scene")).astype(jnp.float32)
            return jax.tree.map(jnp.add, acc, depth_metric_sums(pred, batch["depth"], min_depth, c.max_depth))

        self._step = Synchronized(jax.jit(step, out_shardings=repl, donate_argnums=(0,)), "validation step")
        self._predict = jax.jit(predict, out_shardings=repl, compiler_options=compiler_options() or None)
        self._zero = jax.device_get(zero_metrics(c.num_classes if c.task == SEG else None))  # host: never donated

    def validate(self, params: PyTree, frozen: PyTree) -> dict:
        """The metrics over the whole validation split, plus ``num_images`` and ``protocol``."""
        acc = jax.device_put(self._zero, sharding.replicated(self.mesh))
        rows = sharding.process_rows(self.batch_size)
        with progress(-(-self.dataset.num_val // self.batch_size), "validation", "batch") as bar:
            for batch in self.dataset.val_batches(self.batch_size, rows):
                acc = self._step(acc, params, frozen, sharding.global_batch(self.mesh, batch))
                bar.update(1)
        return {**finalize(acc, self.model.config.task, self.dataset.class_names), "num_images": self.dataset.num_val,
                "protocol": PROTOCOL}

    def panels(self, params: PyTree, frozen: PyTree, count: int) -> list[np.ndarray]:
        """``image | prediction | ground truth`` uint8 panels of the first ``count`` validation
        images (process 0's view; empty for ``count`` 0)."""
        if count <= 0:
            return []
        batch = next(iter(self.dataset.val_batches(self.batch_size, sharding.process_rows(self.batch_size))))
        placed = sharding.global_batch(self.mesh, batch)
        pred = np.asarray(jax.device_get(self._predict(params, frozen, placed["image"], placed.get("scene"))))
        c = self.model.config
        out = []
        for i in range(min(count, len(batch["image"]), self.dataset.num_val)):
            image = batch["image"][i]
            if c.task == SEG:
                colours = visualize.palette(max(c.num_classes, 1))
                views = [visualize.overlay_labels(image, p, colours, ignore_index=c.ignore_index)
                         for p in (pred[i], batch["label"][i])]
            else:
                gt = batch["depth"][i]
                ok = gt > 0
                lo, hi = (float(gt[ok].min()), float(gt[ok].max())) if ok.any() else (0.0, c.max_depth)
                views = [visualize.colorize_depth(d, lo, hi) for d in (pred[i], gt)]
            out.append(visualize.side_by_side([image, *views]))
        return out
