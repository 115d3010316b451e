"""Synthetic datasets for smoke runs and tests, as data sources (the tiny backbone they pair with
is :mod:`iedp_jax.sd.tiny`).

- :class:`SyntheticSegmentation` and :class:`SyntheticDepth` are infinite, fully deterministic
  datasets (a function of ``(seed, split, index)``) that a tiny model can learn: textured
  rectangles on an 8-pixel grid (so 1/8-resolution logits can be exact) and per-scene smooth depth
  fields whose image brightness encodes the depth.
- :class:`SyntheticSource` serves either as a :class:`~iedp_jax.data.sources.DataSource`.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from iedp_jax.data.order import EpochOrder
from iedp_jax.infra.errors import ConfigError

# ----------------------------------------------------------------------------------------------
# Datasets.


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one example: a function of (seed, split, index) only."""
    if index < 0:
        raise IndexError(f"Synthetic example index {index} is negative.")
    return np.random.default_rng([int(seed), zlib.crc32(split.encode("utf-8")), int(index)])


def _stack(examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


GRID = 8  # rectangle edges lie on multiples of this (the latent stride)

# (name, RGB) of the foreground colours, in class order; far apart in hue.
_COLOURS = (
    ("red", (220, 40, 40)), ("green", (40, 200, 60)), ("blue", (50, 80, 235)),
    ("yellow", (235, 220, 40)), ("cyan", (40, 215, 220)), ("magenta", (215, 50, 205)),
    ("orange", (245, 140, 30)), ("purple", (125, 45, 185)), ("white", (240, 240, 240)),
    ("pink", (250, 160, 190)), ("brown", (125, 75, 35)), ("gray", (150, 150, 150)),
)
# Texture nouns, in class order (cycled): solid, horizontal stripes, checkerboard, dots.
_PATTERNS = ("square", "stripes", "checkers", "dots")
BACKGROUND_COLOUR = (60, 60, 60)
DARK = 0.55  # brightness of a pattern's "off" pixels
NOISE_STD = 5.0  # per-pixel Gaussian noise, in uint8 levels


def _pattern_masks(size: int) -> np.ndarray:
    """[P, H, W] bool "on" pixels of each texture, in absolute image coordinates."""
    y, x = np.mgrid[:size, :size]
    return np.stack([
        np.ones((size, size), bool),  # solid
        (y // 2) % 2 == 0,  # horizontal stripes, period 4
        ((y // 2) + (x // 2)) % 2 == 0,  # checkerboard of 2x2 cells
        (y % 4 < 2) & (x % 4 < 2),  # dots
    ])


class SyntheticSegmentation:
    """Textured axis-aligned rectangles on a grey background, with their label maps.

    Class 0 is the background (flat grey, everywhere not covered); each image has 1-3 rectangles
    whose edges lie on the 8-pixel grid, each of a random foreground class, painted in order
    (later ones cover earlier ones, in the image and the label alike). Class ``c >= 1`` has colour
    ``class_colours[c]`` and texture ``_PATTERNS[(c - 1) % 4]`` (solid, stripes, checkers, dots:
    "off" pixels at 55% brightness), plus Gaussian noise (std 5 levels). ``class_names`` are
    lower-case English words (``"red square"``, ``"green stripes"``, ...), tokenizable by the tiny
    backbone's tokenizer.

    Examples are a function of ``(seed, split, index)`` only; there is no length.
    """

    max_classes = 1 + len(_COLOURS)

    def __init__(self, num_classes: int = 5, image_size: int = 64, seed: int = 0) -> None:
        if not 2 <= num_classes <= self.max_classes:
            raise ConfigError(f"num_classes must be in [2, {self.max_classes}], got {num_classes}.")
        if image_size < 2 * GRID or image_size % GRID:
            raise ConfigError(f"image_size must be a multiple of {GRID} and at least {2 * GRID}, "
                             f"got {image_size}.")
        self.num_classes = num_classes
        self.image_size = image_size
        self.seed = seed
        fg = range(num_classes - 1)
        self.class_names: tuple[str, ...] = ("background",) + tuple(
            f"{_COLOURS[i][0]} {_PATTERNS[i % len(_PATTERNS)]}" for i in fg)
        self.class_colours = np.array([BACKGROUND_COLOUR] + [_COLOURS[i][1] for i in fg], np.float32)
        self.class_patterns = np.array([0] + [i % len(_PATTERNS) for i in fg], np.int64)
        self._masks = _pattern_masks(image_size)  # [P, H, W]

    def rectangles(self, split: str, index: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
        """``(boxes [n, 4] as (y0, y1, x0, x1) pixels, classes [n], rng)`` of one example."""
        rng = _rng(self.seed, split, index)
        cells = self.image_size // GRID
        n = int(rng.integers(1, 4))
        ys = np.sort(np.stack([rng.choice(cells + 1, 2, replace=False) for _ in range(n)]), axis=1)
        xs = np.sort(np.stack([rng.choice(cells + 1, 2, replace=False) for _ in range(n)]), axis=1)
        classes = rng.integers(1, self.num_classes, size=n)
        return np.concatenate([ys, xs], axis=1) * GRID, classes, rng

    def example(self, split: str, index: int) -> dict[str, np.ndarray]:
        """``{"image": uint8 [H, W, 3], "label": uint8 [H, W]}``."""
        return {k: v[0] for k, v in self.batch(split, [index]).items()}

    def batch(self, split: str, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Stacked examples: ``{"image": uint8 [B, H, W, 3], "label": uint8 [B, H, W]}``."""
        s = self.image_size
        b = len(indices)
        boxes = np.zeros((b, 3, 4), np.int64)  # empty boxes paint nothing
        classes = np.zeros((b, 3), np.int64)
        noise = np.empty((b, s, s, 3), np.float32)
        for i, index in enumerate(indices):
            bx, cl, rng = self.rectangles(split, int(index))
            boxes[i, : len(bx)] = bx
            classes[i, : len(cl)] = cl
            noise[i] = rng.standard_normal((s, s, 3), np.float32)
        y = np.arange(s)[None, None, :, None]
        x = np.arange(s)[None, None, None, :]
        inside = ((y >= boxes[..., 0, None, None]) & (y < boxes[..., 1, None, None])
                  & (x >= boxes[..., 2, None, None]) & (x < boxes[..., 3, None, None]))  # [B,3,H,W]
        label = np.zeros((b, s, s), np.int64)
        for r in range(3):  # paint in order
            label = np.where(inside[:, r], classes[:, r, None, None], label)
        on = self._masks[self.class_patterns[label], np.arange(s)[:, None], np.arange(s)[None, :]]
        image = self.class_colours[label] * np.where(on, 1.0, DARK)[..., None].astype(np.float32)
        image = np.clip(np.rint(image + NOISE_STD * noise), 0, 255).astype(np.uint8)
        return {"image": image, "label": label.astype(np.uint8)}


# (scene name, RGB tint: one channel at 1 so the brightest channel encodes depth)
_SCENES = (
    ("bedroom", (1.0, 0.8, 0.6)),
    ("kitchen", (0.7, 1.0, 0.75)),
    ("office", (0.65, 0.8, 1.0)),
    ("bathroom", (1.0, 0.65, 1.0)),
)
MIN_DEPTH, MAX_DEPTH = 0.5, 9.5  # exclusive bounds of every depth value


class SyntheticDepth:
    """Smooth per-scene depth fields whose image brightness encodes the depth.

    Each example picks a scene and a random layout: ``bedroom`` a floor-like vertical gradient
    (near at the bottom), ``kitchen`` a left/right wall gradient, ``office`` a corridor (far in the
    middle), ``bathroom`` a tilted plane; plus a Gaussian bump (an object nearer the camera).
    Depth lies in [0.6, 9.4] metres, inside (0.5, 9.5). The image is
    ``255 * tint[scene] * (0.1 + 0.9 * (9.5 - depth) / 9)`` plus Gaussian noise (std 2 levels):
    near is bright, and the brightest channel gives the depth back to about 0.1 m.

    Examples are a function of ``(seed, split, index)`` only; there is no length.
    """

    scene_names: tuple[str, ...] = tuple(n for n, _ in _SCENES)
    scene_tints = np.array([t for _, t in _SCENES], np.float32)
    min_depth, max_depth = MIN_DEPTH, MAX_DEPTH

    def __init__(self, image_size: int = 64, seed: int = 0) -> None:
        if image_size < 8:
            raise ConfigError(f"image_size must be at least 8, got {image_size}.")
        self.image_size = image_size
        self.seed = seed

    def depth(self, split: str, index: int) -> tuple[np.ndarray, int, np.random.Generator]:
        """``(depth float32 [H, W], scene, rng)`` of one example."""
        rng = _rng(self.seed, split, index)
        scene = int(rng.integers(len(_SCENES)))
        s = self.image_size
        v, u = np.mgrid[:s, :s].astype(np.float32) / np.float32(s - 1)  # rows, cols in [0, 1]
        near = rng.uniform(0.8, 2.5)
        far = rng.uniform(near + 3.0, 9.0)
        if scene == 0:  # floor: near at the bottom
            t = 1.0 - v
        elif scene == 1:  # side wall: near on one side
            t = u if rng.random() < 0.5 else 1.0 - u
        elif scene == 2:  # corridor: far in the middle
            cy, cx = rng.uniform(0.35, 0.65, size=2)
            t = 1.0 - np.clip(np.hypot(v - cy, u - cx) / 0.75, 0.0, 1.0) ** 2
        else:  # tilted plane
            angle = rng.uniform(0, 2 * np.pi)
            t = np.cos(angle) * (u - 0.5) + np.sin(angle) * (v - 0.5)
            t = (t - t.min()) / (t.max() - t.min())
        d = near + (far - near) * t
        cy, cx = rng.uniform(0.2, 0.8, size=2)
        sigma = rng.uniform(0.1, 0.2)
        bump = np.exp(-((v - cy) ** 2 + (u - cx) ** 2) / (2 * sigma ** 2))
        d = d - rng.uniform(0.3, 0.6) * (d - near) * bump  # an object nearer than the layout
        return np.clip(d, 0.6, 9.4).astype(np.float32), scene, rng

    def example(self, split: str, index: int) -> dict[str, Any]:
        """``{"image": uint8 [H, W, 3], "depth": float32 [H, W] metres, "scene": int}``."""
        d, scene, rng = self.depth(split, index)
        s = self.image_size
        level = 0.1 + 0.9 * (MAX_DEPTH - d) / (MAX_DEPTH - MIN_DEPTH)  # [H, W] in (0.1, 1)
        image = 255.0 * self.scene_tints[scene] * level[..., None]
        image = image + 2.0 * rng.standard_normal((s, s, 3), np.float32)
        return {"image": np.clip(np.rint(image), 0, 255).astype(np.uint8), "depth": d, "scene": scene}

    def batch(self, split: str, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Stacked examples; ``"scene"`` is an int32 [B] array."""
        out = _stack([self.example(split, int(i)) for i in indices])
        out["scene"] = out["scene"].astype(np.int32)
        return out


class SyntheticSource(EpochOrder):
    """A synthetic dataset as a :class:`~iedp_jax.data.sources.DataSource`; its full resolution
    is the crop size (every pixel is scored)."""

    def __init__(self, data, task: str, train_size: int, val_size: int, seed: int,
                 ignore_index: int = 255) -> None:
        if train_size <= 0 or val_size <= 0:
            raise ConfigError("data.train_size and data.val_size must be positive.")
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
        batch = self._select(self.data.batch("train", [self.train_index(step, row, batch_size)]))
        return {k: v[0] for k, v in batch.items()}

    def val_batches(self, batch_size: int, rows: slice) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.num_val, batch_size):
            idx = np.arange(start, start + batch_size)
            valid = idx < self.num_val
            batch = self._select(self.data.batch("val", np.minimum(idx, self.num_val - 1).tolist()))
            if "label" in batch:
                batch["label"] = np.where(valid[:, None, None], batch["label"], self.ignore_index).astype(np.uint8)
            if "depth" in batch:
                batch["depth"] = np.where(valid[:, None, None], batch["depth"], 0.0).astype(np.float32)
            yield {k: v[rows] for k, v in batch.items()}

    def val_size(self, index: int) -> tuple[int, int]:
        return self.data.image_size, self.data.image_size

    def val_name(self, index: int) -> str:
        return f"val_{index:05d}"

    def val_image(self, index: int) -> dict[str, np.ndarray]:
        ex = self.data.example("val", index)
        if self.task == "seg":
            return {"image": np.asarray(ex["image"], np.uint8), "label": np.asarray(ex["label"], np.uint8)}
        depth = np.asarray(ex["depth"], np.float32)
        return {"image": np.asarray(ex["image"], np.uint8), "depth": depth, "mask": np.ones(depth.shape, bool),
                "scene": np.int32(ex["scene"])}


def open_source(cfg_data, seed: int) -> SyntheticSource:
    """The source of ``data.name`` in {'synthetic_seg', 'synthetic_depth'} (square crops)."""
    h, w = cfg_data.crop_size
    if h != w:
        raise ConfigError("synthetic datasets are square: set data.crop_size to (N, N), got "
                          f"{tuple(cfg_data.crop_size)}.")
    if cfg_data.name == "synthetic_seg":
        data = SyntheticSegmentation(num_classes=cfg_data.num_classes, image_size=h, seed=seed)
        return SyntheticSource(data, "seg", cfg_data.train_size, cfg_data.val_size, seed, cfg_data.ignore_index)
    data = SyntheticDepth(image_size=h, seed=seed)
    return SyntheticSource(data, "depth", cfg_data.train_size, cfg_data.val_size, seed, cfg_data.ignore_index)
