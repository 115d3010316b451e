"""Prediction images in NumPy + PIL (no matplotlib): ADE20K-palette label overlays, a viridis
colour map for depth, and side-by-side ``image | prediction | ground truth`` PNGs."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from etils import epath
from PIL import Image, ImageDraw, ImageFont

from iedp_jax.infra.paths import as_path

__all__ = [
    "ADE20K_PALETTE",
    "VIRIDIS",
    "palette",
    "colorize_labels",
    "overlay_labels",
    "apply_colormap",
    "colorize_depth",
    "side_by_side",
    "save_png",
    "write_segmentation_panel",
    "write_depth_panel",
]

# mmseg ADE20KDataset.PALETTE: the colour of classes 0..149 (after reduce_zero_label).
ADE20K_PALETTE = np.array([
    [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3], [120, 120, 80],
    [140, 140, 140], [204, 5, 255], [230, 230, 230], [4, 250, 7], [224, 5, 255], [235, 255, 7],
    [150, 5, 61], [120, 120, 70], [8, 255, 51], [255, 6, 82], [143, 255, 140], [204, 255, 4],
    [255, 51, 7], [204, 70, 3], [0, 102, 200], [61, 230, 250], [255, 6, 51], [11, 102, 255],
    [255, 7, 71], [255, 9, 224], [9, 7, 230], [220, 220, 220], [255, 9, 92], [112, 9, 255],
    [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10], [7, 255, 255],
    [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7], [255, 122, 8], [0, 255, 20],
    [255, 8, 41], [255, 5, 153], [6, 51, 255], [235, 12, 255], [160, 150, 20], [0, 163, 255],
    [140, 140, 140], [250, 10, 15], [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0],
    [153, 255, 0], [0, 0, 255], [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255],
    [11, 200, 200], [255, 82, 0], [0, 255, 245], [0, 61, 255], [0, 255, 112], [0, 255, 133],
    [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0], [0, 143, 255], [51, 255, 0],
    [0, 82, 255], [0, 255, 41], [0, 255, 173], [10, 0, 255], [173, 255, 0], [0, 255, 153],
    [255, 92, 0], [255, 0, 255], [255, 0, 245], [255, 0, 102], [255, 173, 0], [255, 0, 20],
    [255, 184, 184], [0, 31, 255], [0, 255, 61], [0, 71, 255], [255, 0, 204], [0, 255, 194],
    [0, 255, 82], [0, 10, 255], [0, 112, 255], [51, 0, 255], [0, 194, 255], [0, 122, 255],
    [0, 255, 163], [255, 153, 0], [0, 255, 10], [255, 112, 0], [143, 255, 0], [82, 0, 255],
    [163, 255, 0], [255, 235, 0], [8, 184, 170], [133, 0, 255], [0, 255, 92], [184, 0, 255],
    [255, 0, 31], [0, 184, 255], [0, 214, 255], [255, 0, 112], [92, 255, 0], [0, 224, 255],
    [112, 224, 255], [70, 184, 160], [163, 0, 255], [153, 0, 255], [71, 255, 0], [255, 0, 163],
    [255, 204, 0], [255, 0, 143], [0, 255, 235], [133, 255, 0], [255, 0, 235], [245, 0, 255],
    [255, 0, 122], [255, 245, 0], [10, 190, 212], [214, 255, 0], [0, 204, 255], [20, 0, 255],
    [255, 255, 0], [0, 153, 255], [0, 41, 255], [0, 255, 204], [41, 0, 255], [41, 255, 0],
    [173, 0, 255], [0, 245, 255], [71, 0, 255], [122, 0, 255], [0, 255, 184], [0, 92, 255],
    [184, 255, 0], [0, 133, 255], [255, 214, 0], [25, 194, 194], [102, 255, 0], [92, 0, 255],
], np.uint8)
assert ADE20K_PALETTE.shape == (150, 3)

# matplotlib's viridis at 0, 1/8, ..., 1 (interpolated linearly in between).
VIRIDIS = np.array([
    [68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
    [31, 158, 137], [53, 183, 121], [110, 206, 88], [253, 231, 37],
], np.float32)


def palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """``[num_classes, 3]`` uint8 colours: the ADE20K palette for the first 150 classes, seeded
    random colours after that."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}.")
    if num_classes <= len(ADE20K_PALETTE):
        return ADE20K_PALETTE[:num_classes].copy()
    extra = np.random.default_rng(seed).integers(0, 256, (num_classes - len(ADE20K_PALETTE), 3))
    return np.concatenate([ADE20K_PALETTE, extra.astype(np.uint8)])


def colorize_labels(label: np.ndarray, colours: np.ndarray, ignore_index: int = 255,
                    ignore_colour: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """``label [H, W]`` (ints) -> ``[H, W, 3]`` uint8; ``ignore_index`` and labels without a
    colour get ``ignore_colour``."""
    label = np.asarray(label).astype(np.int64)
    colours = np.asarray(colours, np.uint8)
    known = (label >= 0) & (label < len(colours)) & (label != ignore_index)
    out = colours[np.where(known, label, 0)]
    out[~known] = np.asarray(ignore_colour, np.uint8)
    return out


def overlay_labels(image: np.ndarray, label: np.ndarray, colours: np.ndarray, alpha: float = 0.5,
                   ignore_index: int = 255) -> np.ndarray:
    """The label colours blended over ``image [H, W, 3]`` uint8 (``alpha`` = label weight, as
    mmseg's ``show_result`` ``opacity``); ignored pixels show the image unchanged."""
    image = np.asarray(image)
    label = np.asarray(label)
    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} differ in size.")
    colour = colorize_labels(label, colours, ignore_index).astype(np.float32)
    known = ((label.astype(np.int64) != ignore_index) & (label >= 0) & (label < len(colours)))[..., None]
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colour
    return np.where(known, np.clip(np.rint(blended), 0, 255), image).astype(np.uint8)


def apply_colormap(values: np.ndarray, anchors: np.ndarray = VIRIDIS) -> np.ndarray:
    """Values in [0, 1] (clipped; NaN -> 0) -> ``[..., 3]`` uint8 by linear interpolation between
    evenly spaced ``anchors [N, 3]``."""
    v = np.nan_to_num(np.asarray(values, np.float32), nan=0.0)
    t = np.clip(v, 0.0, 1.0) * (len(anchors) - 1)
    i0 = np.minimum(np.floor(t).astype(np.int64), len(anchors) - 2)
    frac = (t - i0)[..., None]
    rgb = (1.0 - frac) * anchors[i0] + frac * anchors[i0 + 1]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def colorize_depth(depth: np.ndarray, vmin: float | None = None, vmax: float | None = None,
                   valid: np.ndarray | None = None, invalid_colour: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """Depth ``[H, W]`` -> viridis ``[H, W, 3]`` uint8 (near dark purple, far yellow).

    ``vmin``/``vmax`` default to the range of the valid pixels (``valid``, default ``depth > 0``
    and finite); invalid pixels get ``invalid_colour``.
    """
    depth = np.asarray(depth, np.float32)
    ok = np.isfinite(depth) & (depth > 0)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    lo = float(depth[ok].min()) if vmin is None and ok.any() else float(vmin or 0.0)
    hi = float(depth[ok].max()) if vmax is None and ok.any() else float(vmax if vmax is not None else 1.0)
    out = apply_colormap((depth - lo) / max(hi - lo, 1e-6))
    out[~ok] = np.asarray(invalid_colour, np.uint8)
    return out


def side_by_side(panels: Sequence[np.ndarray], gap: int = 4, gap_colour: Sequence[int] = (255, 255, 255)
                 ) -> np.ndarray:
    """Panels ``[H, W_i, 3]`` (same ``H``) side by side with ``gap`` pixels between them."""
    panels = [np.asarray(p, np.uint8) for p in panels]
    if not panels:
        raise ValueError("side_by_side needs at least one panel.")
    h = panels[0].shape[0]
    if any(p.ndim != 3 or p.shape[0] != h or p.shape[2] != 3 for p in panels):
        raise ValueError(f"panels must be [H, W, 3] with the same H, got {[p.shape for p in panels]}.")
    sep = np.empty((h, gap, 3), np.uint8)
    sep[:] = np.asarray(gap_colour, np.uint8)
    parts = []
    for i, p in enumerate(panels):
        if i and gap > 0:
            parts.append(sep)
        parts.append(p)
    return np.concatenate(parts, axis=1)


def save_png(path: str | os.PathLike, image: np.ndarray) -> epath.Path:
    """Writes a uint8 ``[H, W, 3]`` (or ``[H, W]``) array as a PNG, creating the folder (local
    or ``gs://``)."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        Image.fromarray(np.asarray(image, np.uint8)).save(f, format="PNG")
    return path


def write_segmentation_panel(path: str | os.PathLike, image: np.ndarray, pred: np.ndarray,
                             label: np.ndarray | None, colours: np.ndarray, alpha: float = 0.5,
                             ignore_index: int = 255, gap: int = 4) -> epath.Path:
    """``image | prediction overlay | ground-truth overlay`` (the last left out without a label)."""
    panels = [image, overlay_labels(image, pred, colours, alpha, ignore_index)]
    if label is not None:
        panels.append(overlay_labels(image, label, colours, alpha, ignore_index))
    return save_png(path, side_by_side(panels, gap))


def write_depth_panel(path: str | os.PathLike, image: np.ndarray, pred: np.ndarray,
                      gt: np.ndarray | None, vmin: float | None = None, vmax: float | None = None,
                      gap: int = 4) -> epath.Path:
    """``image | predicted depth | ground-truth depth`` on one colour scale (by default the range
    of the valid ground truth, else of the prediction); invalid ground truth is black."""
    if gt is not None and vmin is None and vmax is None:
        ok = np.isfinite(gt) & (gt > 0)
        if ok.any():
            vmin, vmax = float(gt[ok].min()), float(gt[ok].max())
    if vmin is None or vmax is None:
        ok = np.isfinite(pred) & (pred > 0)
        lo, hi = (float(pred[ok].min()), float(pred[ok].max())) if ok.any() else (0.0, 1.0)
        vmin, vmax = (lo if vmin is None else vmin), (hi if vmax is None else vmax)
    panels = [image, colorize_depth(pred, vmin, vmax)]
    if gt is not None:
        panels.append(colorize_depth(gt, vmin, vmax))
    return save_png(path, side_by_side(panels, gap))


_SWATCH, _GAP, _PAD, _SPACING = 12, 4, 6, 14  # legend geometry (pixels)


def legend(entries: Sequence[tuple[str, Sequence[int] | None]], width: int) -> np.ndarray:
    """A white strip ``[h, max(width, widest entry), 3]`` uint8 with one swatch and name per entry
    ``(name, RGB colour or None for an empty swatch)``, wrapped into rows."""
    font = ImageFont.load_default()
    boxes = [font.getbbox(name) for name, _ in entries]
    entry_w = [_SWATCH + _GAP + (b[2] - b[0]) for b in boxes]
    width = max(int(width), max(entry_w, default=0) + 2 * _PAD)
    row_h = max([_SWATCH] + [b[3] - b[1] for b in boxes]) + _PAD
    rows: list[list[int]] = [[]]
    x = _PAD
    for i, w in enumerate(entry_w):
        if rows[-1] and x + w > width - _PAD:
            rows.append([])
            x = _PAD
        rows[-1].append(i)
        x += w + _SPACING
    strip = Image.new("RGB", (width, 2 * _PAD + len(rows) * row_h), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    y = _PAD
    for row in rows:
        x = _PAD
        for i in row:
            name, colour = entries[i]
            fill = (255, 255, 255) if colour is None else tuple(int(c) for c in colour)
            draw.rectangle((x, y, x + _SWATCH - 1, y + _SWATCH - 1), fill=fill, outline=(0, 0, 0))
            left, top, _, bottom = boxes[i]
            draw.text((x + _SWATCH + _GAP - left, y + (_SWATCH - (bottom - top)) // 2 - top), name,
                      fill=(0, 0, 0), font=font)
            x += entry_w[i] + _SPACING
        y += row_h
    return np.asarray(strip)


def above(top: np.ndarray, strip: np.ndarray) -> np.ndarray:
    """``top [h, w, 3]`` stacked above ``strip``; white fills the right side when one is wider."""
    h, w = top.shape[:2]
    out = np.full((h + strip.shape[0], max(w, strip.shape[1]), 3), 255, np.uint8)
    out[:h, :w] = top
    out[h:, : strip.shape[1]] = strip
    return out
