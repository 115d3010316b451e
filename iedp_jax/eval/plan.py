"""The evaluation plan on the host: what ``config.eval`` resolves to (:class:`Protocol`), images
grouped into compiled shapes (:func:`plan_groups`), and the rows of each batch
(:func:`build_row`), read from the data source's full-resolution examples."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
from ml_collections import ConfigDict

from iedp_jax.data import transforms
from iedp_jax.data.sources import DataSource
from iedp_jax.eval.windows import eval_resize_hw, pad_windows, slide_grid
from iedp_jax.infra.errors import ConfigError
from iedp_jax.model import SEG

MODES = ("single", "multiscale")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What ``cfg.eval`` resolves to for one task (see ``config.base_config``)."""

    task: str
    mode: str
    crop: tuple[int, int]
    stride: tuple[int, int]
    img_scale: tuple[int, int]       # segmentation test resize (long, short); unused for depth
    scales: tuple[float, ...]        # ratios of img_scale, one pass each (and one more with flip)
    flip: bool
    clip_depth: bool = True          # depth: clip predictions to the valid range (BTS) or not (VPD)

    @property
    def passes(self) -> list[tuple[int, bool]]:
        """``(scale index, flip)`` of every segmentation pass, in mmseg's order."""
        return [(i, f) for i in range(len(self.scales)) for f in ((False, True) if self.flip else (False,))]

    def describe(self) -> dict:
        d = {"crop": list(self.crop), "stride": list(self.stride), "flip": self.flip}
        if self.task == SEG:
            d.update(img_scale=list(self.img_scale), scales=list(self.scales))
        else:
            d.update(clip_depth=self.clip_depth)
        return d


def protocol_from_config(cfg: ConfigDict, task: str) -> Protocol:
    """The protocol of ``cfg.eval`` for ``task`` ('seg' or 'depth'), or a clear error."""
    e = cfg.eval
    if e.mode not in MODES:
        raise ConfigError(f"eval.mode must be 'single' or 'multiscale', got {e.mode!r}.")

    def pair(value, name, default):
        v = tuple(int(x) for x in value) if len(value) else tuple(int(x) for x in default)
        if len(v) != 2 or min(v) < 1:
            raise ConfigError(f"eval.{name} must be (height, width) positive integers or (), got {tuple(value)}.")
        return v

    crop = pair(e.crop, "crop", cfg.data.crop_size)
    stride = pair(e.stride, "stride", [max(c * 2 // 3, 1) for c in crop])
    if stride[0] > crop[0] or stride[1] > crop[1]:  # windows would leave strips of pixels unpredicted
        raise ConfigError(f"eval.stride={stride} is larger than eval.crop={crop}: the sliding windows would leave "
                          "pixels between them unpredicted; set --config.eval.stride to at most the crop.")
    img_scale = pair(e.img_scale, "img_scale", (4 * min(crop), min(crop)))
    if task == SEG:
        scales = tuple(float(r) for r in e.scales) if e.mode == "multiscale" else (1.0,)
        if not scales or min(scales) <= 0:
            raise ConfigError(f"eval.scales must be positive ratios, got {tuple(e.scales)}.")
        flip = bool(e.flip) and e.mode == "multiscale"
    else:
        if e.mode == "multiscale":
            raise ConfigError("eval.mode='multiscale' is a segmentation protocol: depth is scored with VPD's "
                             "sliding windows and flip (eval.mode='single', eval.flip=True).")
        scales, flip = (1.0,), bool(e.flip)
    return Protocol(task, e.mode, crop, stride, img_scale, scales, flip, bool(e.clip_depth))


@dataclasses.dataclass
class ShapeGroup:
    """Images evaluated by one compiled shape: one orientation (landscape h <= w, or portrait)."""

    name: str
    indices: list[int]                      # sorted: most windows first
    sizes: dict[int, tuple[int, int]]       # original (H, W)
    resized: dict[int, list[tuple[int, int]]]   # per scale
    windows: dict[int, list[np.ndarray]]        # per scale, slide_grid offsets
    canvases: list[tuple[int, int]]         # per scale (Hc, Wc)
    max_windows: list[int]                  # per scale K
    label_size: tuple[int, int]             # (Hl, Wl)


def plan_groups(sizes: Sequence[tuple[int, int]], protocol: Protocol) -> list[ShapeGroup]:
    """Host-side plan: per image and scale, the resized size and the window offsets; images
    grouped by orientation, each group with canvas sizes that fit all its images."""
    groups: dict[str, ShapeGroup] = {}
    for i, (h, w) in enumerate(sizes):
        key = "landscape" if h <= w else "portrait"
        g = groups.setdefault(key, ShapeGroup(key, [], {}, {}, {}, [], [], (0, 0)))
        g.indices.append(i)
        g.sizes[i] = (h, w)
        rs = [eval_resize_hw((h, w), protocol.img_scale, r) if protocol.task == SEG else (h, w)
              for r in protocol.scales]
        g.resized[i] = rs
        g.windows[i] = [slide_grid(r, protocol.crop, protocol.stride) for r in rs]
    ch, cw = protocol.crop
    out = []
    for key in ("landscape", "portrait"):
        if key not in groups:
            continue
        g = groups[key]
        g.indices.sort(key=lambda i: (-sum(len(o) for o in g.windows[i]), i))
        for s in range(len(protocol.scales)):
            g.canvases.append((max(max(g.resized[i][s][0] for i in g.indices), ch),
                               max(max(g.resized[i][s][1] for i in g.indices), cw)))
            g.max_windows.append(max(len(g.windows[i][s]) for i in g.indices))
        g.label_size = (max(g.sizes[i][0] for i in g.indices), max(g.sizes[i][1] for i in g.indices))
        out.append(g)
    return out


def batch_indices(group: ShapeGroup, batch_size: int) -> Iterator[list[int]]:
    """The group's images in fixed-size batches; -1 marks a padding row."""
    for start in range(0, len(group.indices), batch_size):
        chunk = group.indices[start:start + batch_size]
        yield chunk + [-1] * (batch_size - len(chunk))


def _pad_into(a: np.ndarray, size: tuple[int, int], value) -> np.ndarray:
    out = np.full(tuple(size) + a.shape[2:], value, a.dtype)
    out[: a.shape[0], : a.shape[1]] = a
    return out


def build_row(dataset: DataSource, group: ShapeGroup, protocol: Protocol, index: int, ignore_index: int
              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """One row of a batch (host arrays: per scale the resized image in its canvas, its size and
    windows; the label or depth at full resolution) and the full-resolution example itself
    (None for a padding row, ``index`` -1)."""
    seg = protocol.task == SEG
    row: dict[str, np.ndarray] = {}
    ex = dataset.val_image(index) if index >= 0 else None
    for s in range(len(protocol.scales)):
        canvas = group.canvases[s]
        if ex is None:
            image, hw, windows = np.zeros(canvas + (3,), np.uint8), (1, 1), np.zeros((0, 2), np.int32)
        else:
            hw, windows = group.resized[index][s], group.windows[index][s]
            image = _pad_into(transforms.resize_image(ex["image"], hw), canvas, 0)
        offsets, valid = pad_windows([windows], group.max_windows[s])  # [1, K, 2], [1, K]
        row.update({f"image{s}": image, f"hw{s}": np.asarray(hw, np.int32), f"offsets{s}": offsets[0],
                    f"valid{s}": valid[0]})
    hl = group.label_size
    row["label_hw"] = np.asarray(group.sizes[index] if ex is not None else (1, 1), np.int32)
    if seg:
        row["label"] = (_pad_into(ex["label"], hl, ignore_index) if ex is not None
                        else np.full(hl, ignore_index, np.uint8))
    else:
        row["depth"] = _pad_into(ex["depth"], hl, 0.0) if ex is not None else np.zeros(hl, np.float32)
        row["mask"] = _pad_into(ex["mask"], hl, False) if ex is not None else np.zeros(hl, bool)
        # the scene conditions only VPD's depth context (model.context="vpd"); others ignore it
        row["scene"] = np.int32(ex["scene"]) if ex is not None and "scene" in ex else np.int32(0)
    return row, ex
