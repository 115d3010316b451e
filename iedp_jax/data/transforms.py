"""NumPy/PIL data transforms for the VPD training recipes (ADE20K segmentation, NYUv2 depth).

Every transform is a pure function of its inputs and a :class:`numpy.random.Generator`: the same
arrays and the same generator state give the same output, so a batch is reproducible from
``(seed, step, row)`` alone. Images are ``uint8 [H, W, 3]`` RGB, segmentation labels ``uint8
[H, W]`` (255 = ignore), depth ``float32 [H, W]`` in metres (0 = invalid).

Segmentation (mmseg 0.x, as VPD's ADE20K config uses it)::

    reduce_zero_label -> Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)
    -> RandomCrop(crop_size, cat_max_ratio=0.75) -> RandomFlip(0.5) -> PhotoMetricDistortion
    -> Pad(crop_size, pad_val=data.pad_value, seg_pad_val=255)   (VPD: Normalize then pad 0)

Depth (VPD's ``depth/dataset/base_dataset.py``, taken from GLPDepth)::

    CutDepth -> HorizontalFlip(0.5) -> RandomCrop(480, 480) -> RandomBrightnessContrast
    -> RandomGamma -> HueSaturationValue            (albumentations defaults, each p = 0.5)

Where we depart from the reference implementations (see each function):

- Resizing uses PIL (bilinear with antialiasing for images, nearest for labels) instead of
  OpenCV's ``INTER_LINEAR``; output sizes follow mmcv's ``rescale_size`` exactly.
- Colour operations run in float32 (clipped after each step, rounded once at the end) with an
  exact float HSV conversion, where mmcv/albumentations round to uint8 after every step.
- VPD applies CutDepth to every 4th sample a data-loader worker produces (``count % 4 == 0``,
  ``depth/dataset/base_dataset.py``); by default it is a Bernoulli draw here with the same rate,
  0.25. ``cutdepth=True/False`` lets the caller decide instead (the NYUv2 source's
  ``data.cutdepth="vpd"``: every 4th sample of the training stream). Its ``p = 0.75`` scales the
  strip width, as in VPD.
- VPD pastes the raw millimetre depth into the uint8 image (it wraps modulo 256); by default we
  paste the depth rendered as a grey image ``255 * clip(depth / max_depth, 0, 1)``
  (``render="vpd"`` reproduces the wrap-around).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from iedp_jax.infra.errors import ConfigError

IGNORE_INDEX = 255

# NYUv2 Eigen crop (Eigen et al. 2014, as used by BTS/GLPDepth/VPD) for 480x640 images.
EIGEN_CROP_480x640 = (45, 471, 41, 601)  # top, bottom, left, right (exclusive)

__all__ = [
    "IGNORE_INDEX",
    "EIGEN_CROP_480x640",
    "reduce_zero_label",
    "rescale_size",
    "resize_image",
    "resize_label",
    "random_rescale",
    "crop_bbox",
    "random_crop",
    "hflip",
    "pad_to",
    "center_crop_or_pad",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "photometric_distortion",
    "ade20k_train_transform",
    "seg_eval_transform",
    "cutdepth_box",
    "render_depth",
    "paste_depth",
    "vpd_color_jitter",
    "bts_color_jitter",
    "nyu_train_transform",
    "eigen_crop_mask",
    "depth_eval_transform",
]


# --------------------------------------------------------------------------------------------
# Labels and geometry
# --------------------------------------------------------------------------------------------

def reduce_zero_label(label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 (ADE20K "other") -> ignore, every other class minus 1.

    A pixel that already holds ``ignore_index`` stays ignored.
    """
    label = np.asarray(label)
    out = label.astype(np.int32) - 1
    out[label == 0] = ignore_index
    out[label == ignore_index] = ignore_index
    return out.astype(np.uint8)


def rescale_size(hw: Sequence[int], scale: Sequence[int]) -> tuple[int, int]:
    """mmcv ``rescale_size`` with a tuple scale: the largest keep-ratio size whose long side is
    <= max(scale) and short side <= min(scale). Returns ``(new_h, new_w)``."""
    h, w = int(hw[0]), int(hw[1])
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return max(int(h * factor + 0.5), 1), max(int(w * factor + 0.5), 1)


def resize_image(image: np.ndarray, hw: Sequence[int]) -> np.ndarray:
    """Bilinear resize of a uint8 RGB image to ``(h, w)`` (PIL, antialiased when shrinking)."""
    h, w = int(hw[0]), int(hw[1])
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def resize_label(label: np.ndarray, hw: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 label map (or float32 depth map) to ``(h, w)``."""
    h, w = int(hw[0]), int(hw[1])
    if label.shape[:2] == (h, w):
        return label
    if label.dtype not in (np.uint8, np.float32):
        raise TypeError(f"resize_label takes uint8 labels or float32 depth, got {label.dtype}.")
    return np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))


def random_rescale(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                   img_scale: Sequence[int] = (2048, 512),
                   ratio_range: Sequence[float] = (0.5, 2.0)) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``Resize(img_scale, ratio_range, keep_ratio=True)``: draw ``r ~ U(ratio_range)``,
    target scale ``(int(img_scale[0] * r), int(img_scale[1] * r))``, then keep-ratio rescale so
    the long side <= the larger and the short side <= the smaller of the two."""
    lo, hi = ratio_range
    ratio = rng.random() * (hi - lo) + lo
    scale = (int(img_scale[0] * ratio), int(img_scale[1] * ratio))
    hw = rescale_size(image.shape[:2], scale)
    return resize_image(image, hw), resize_label(label, hw)


def crop_bbox(hw: Sequence[int], crop_size: Sequence[int],
              rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random crop window ``(y1, y2, x1, x2)`` (mmseg ``RandomCrop.get_crop_bbox``); a side
    smaller than the crop is kept whole (padding comes later)."""
    margin_h = max(int(hw[0]) - int(crop_size[0]), 0)
    margin_w = max(int(hw[1]) - int(crop_size[1]), 0)
    y1 = int(rng.integers(0, margin_h + 1))
    x1 = int(rng.integers(0, margin_w + 1))
    return y1, y1 + int(crop_size[0]), x1, x1 + int(crop_size[1])


def random_crop(image: np.ndarray, label: np.ndarray, crop_size: Sequence[int],
                rng: np.random.Generator, cat_max_ratio: float = 0.75,
                ignore_index: int = IGNORE_INDEX,
                max_tries: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``RandomCrop(crop_size, cat_max_ratio)``.

    With ``cat_max_ratio < 1`` a window is accepted when its label holds at least two classes
    (``ignore_index`` not counted) and the most frequent covers less than ``cat_max_ratio`` of
    the labelled pixels; after ``max_tries`` rejections one more window is drawn and used as is.
    """
    y1, y2, x1, x2 = crop_bbox(image.shape[:2], crop_size, rng)
    if cat_max_ratio < 1.0:
        for _ in range(max_tries):
            values, counts = np.unique(label[y1:y2, x1:x2], return_counts=True)
            counts = counts[values != ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y1, y2, x1, x2 = crop_bbox(image.shape[:2], crop_size, rng)
    return image[y1:y2, x1:x2], label[y1:y2, x1:x2]


def hflip(array: np.ndarray) -> np.ndarray:
    """Horizontal mirror of an ``[H, W, ...]`` array."""
    return np.ascontiguousarray(array[:, ::-1])


def pad_to(array: np.ndarray, size: Sequence[int], value) -> np.ndarray:
    """mmseg ``Pad(size)``: pad at the bottom and the right up to ``size = (h, w)``."""
    ph, pw = max(int(size[0]) - array.shape[0], 0), max(int(size[1]) - array.shape[1], 0)
    if ph == 0 and pw == 0:
        return array
    widths = [(0, ph), (0, pw)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, constant_values=value)


def center_crop_or_pad(array: np.ndarray, size: Sequence[int], value) -> np.ndarray:
    """The centred ``(h, w)`` window of ``array``; sides smaller than it are padded evenly
    (the extra pixel, if any, at the bottom/right) with ``value``."""
    out = array
    for axis, target in enumerate((int(size[0]), int(size[1]))):
        n = out.shape[axis]
        if n > target:
            start = (n - target) // 2
            out = np.take(out, np.arange(start, start + target), axis=axis)
        elif n < target:
            before = (target - n) // 2
            widths = [(0, 0)] * out.ndim
            widths[axis] = (before, target - n - before)
            out = np.pad(out, widths, constant_values=value)
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------

def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """Float RGB ``[..., 3]`` (any scale) -> HSV with H in degrees [0, 360), S in [0, 1] and
    V on the input's scale."""
    rgb = np.asarray(rgb, np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    d = v - rgb.min(-1)
    safe_d = np.where(d > 0, d, 1.0)
    s = np.where(v > 0, d / np.where(v > 0, v, 1.0), 0.0)
    h = np.where(v == r, ((g - b) / safe_d) % 6.0,
                 np.where(v == g, (b - r) / safe_d + 2.0, (r - g) / safe_d + 4.0))
    h = np.where(d > 0, h * 60.0, 0.0)
    return np.stack([h, s, v], -1).astype(np.float32)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    out = []
    for n in (5.0, 3.0, 1.0):
        k = (n + h / 60.0) % 6.0
        out.append(v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return np.stack(out, -1).astype(np.float32)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator,
                           brightness_delta: float = 32,
                           contrast_range: Sequence[float] = (0.5, 1.5),
                           saturation_range: Sequence[float] = (0.5, 1.5),
                           hue_delta: int = 18) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion`` on a uint8 RGB image.

    Brightness (add ``U(-32, 32)``), then with probability 1/2 contrast (multiply by
    ``U(0.5, 1.5)``) before the HSV part and otherwise after it; saturation (multiply S by
    ``U(0.5, 1.5)``); hue (shift by an integer in [-18, 18] OpenCV hue units = 2 degrees each).
    Each of the four is applied with probability 1/2. Values are clipped to [0, 255] after each
    step as in mmseg; unlike mmseg the HSV round trip is exact float (no uint8 quantisation), and
    the hue shift range is symmetric (mmseg's ``numpy.random.randint(-18, 18)`` stops at 17).
    """
    img = image.astype(np.float32)

    def contrast(x):
        if rng.integers(2):
            x = np.clip(x * rng.uniform(contrast_range[0], contrast_range[1]), 0, 255)
        return x

    if rng.integers(2):
        img = np.clip(img + rng.uniform(-brightness_delta, brightness_delta), 0, 255)
    mode = int(rng.integers(2))
    if mode == 1:
        img = contrast(img)
    do_sat = bool(rng.integers(2))
    sat = rng.uniform(saturation_range[0], saturation_range[1]) if do_sat else 1.0
    do_hue = bool(rng.integers(2))
    hue = int(rng.integers(-hue_delta, hue_delta + 1)) if do_hue else 0
    if do_sat or do_hue:
        hsv = rgb_to_hsv(img)
        if do_sat:
            hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0.0, 1.0)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0] + 2.0 * hue) % 360.0
        img = np.clip(hsv_to_rgb(hsv), 0, 255)
    if mode == 0:
        img = contrast(img)
    return _to_uint8(img)


# --------------------------------------------------------------------------------------------
# Segmentation pipelines
# --------------------------------------------------------------------------------------------

def ade20k_train_transform(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                           crop_size: Sequence[int] = (512, 512), *,
                           img_scale: Sequence[int] | None = None,
                           ratio_range: Sequence[float] = (0.5, 2.0),
                           cat_max_ratio: float = 0.75, flip_prob: float = 0.5,
                           photometric: bool = True,
                           ignore_index: int = IGNORE_INDEX,
                           pad_value: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """VPD's ADE20K training pipeline on an RGB image and an already reduced label.

    ``img_scale`` defaults to ``(4 * s, s)`` with ``s = min(crop_size)``, i.e. mmseg's
    ``(2048, 512)`` for 512 crops. ``photometric=False`` skips the colour distortion (its random
    draws are skipped too). ``pad_value`` is the uint8 colour of the padding: VPD normalises
    first and pads 0, which is 127.5 here (128 is the nearest uint8, 1/255 from it); 0 pads black
    (-1 after normalisation). Returns ``uint8 [ch, cw, 3]`` and ``uint8 [ch, cw]``.
    """
    if not 0 <= int(pad_value) <= 255:
        raise ConfigError(f"data.pad_value must be a uint8 colour in [0, 255], got {pad_value}.")
    crop_size = (int(crop_size[0]), int(crop_size[1]))
    if img_scale is None:
        s = min(crop_size)
        img_scale = (4 * s, s)
    image, label = random_rescale(image, label, rng, img_scale, ratio_range)
    image, label = random_crop(image, label, crop_size, rng, cat_max_ratio, ignore_index)
    if rng.random() < flip_prob:
        image, label = hflip(image), hflip(label)
    if photometric:
        image = photometric_distortion(image, rng)
    image = pad_to(image, crop_size, np.uint8(pad_value))
    label = pad_to(label, crop_size, ignore_index)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def seg_eval_transform(image: np.ndarray, label: np.ndarray, crop_size: Sequence[int],
                       ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray]:
    """The end-of-training check's fixed-size view: keep-ratio resize so the short side is
    ``min(crop_size)`` (image bilinear, label nearest), then the centred ``crop_size`` window
    (padding: image 0, label ``ignore_index``).

    This is not the official protocol (sliding window over the short-side-512 image, scored at
    the original label resolution); it is a cheap, fixed-shape proxy.
    """
    h, w = image.shape[:2]
    short = min(int(crop_size[0]), int(crop_size[1]))
    factor = short / min(h, w)
    hw = (max(int(h * factor + 0.5), 1), max(int(w * factor + 0.5), 1))
    image, label = resize_image(image, hw), resize_label(label, hw)
    return center_crop_or_pad(image, crop_size, 0), center_crop_or_pad(label, crop_size, ignore_index)


# --------------------------------------------------------------------------------------------
# Depth pipelines
# --------------------------------------------------------------------------------------------

def cutdepth_box(height: int, width: int, rng: np.random.Generator, p: float = 0.75,
                 full_height: bool = True) -> tuple[int, int, int, int]:
    """The CutDepth region ``(top, left, h, w)``.

    ``full_height=True`` (VPD/GLPDepth, "vertical CutDepth"): ``alpha, beta ~ U(0, 1)``,
    ``left = int(alpha W)``, ``w = int(max((W - alpha W) beta p, 1))``, all rows.
    ``full_height=False`` (the CutDepth paper's rectangle, same ``alpha, beta`` for both axes):
    also ``top = int(alpha H)``, ``h = int(max((H - alpha H) beta p, 1))``.
    ``p`` in [0, 1] caps the region at a fraction ``p`` of the remaining width (and height).
    """
    alpha, beta = rng.random(), rng.random()
    left = int(alpha * width)
    w = int(max((width - alpha * width) * beta * p, 1))
    w = min(w, width - left)
    if full_height:
        return 0, left, height, w
    top = int(alpha * height)
    h = int(max((height - alpha * height) * beta * p, 1))
    h = min(h, height - top)
    return top, left, h, w


def render_depth(depth: np.ndarray, max_depth: float = 10.0, render: str = "scaled") -> np.ndarray:
    """Depth in metres as a uint8 grey image: ``"scaled"`` = ``255 * clip(depth / max_depth, 0,
    1)`` rounded; ``"vpd"`` = millimetres modulo 256 (what VPD's uint8 assignment produces)."""
    depth = np.asarray(depth, np.float32)
    if render == "scaled":
        return _to_uint8(255.0 * np.clip(depth / max_depth, 0.0, 1.0))
    if render == "vpd":
        return (np.rint(depth * 1000.0).astype(np.int64) % 256).astype(np.uint8)
    raise ConfigError(f"render={render!r} is not known: use 'scaled' or 'vpd'.")


def paste_depth(image: np.ndarray, depth: np.ndarray, box: tuple[int, int, int, int],
                max_depth: float = 10.0, render: str = "scaled") -> np.ndarray:
    """A copy of ``image`` whose ``box = (top, left, h, w)`` shows the rendered depth on all
    three channels."""
    top, left, h, w = box
    out = image.copy()
    patch = render_depth(depth[top:top + h, left:left + w], max_depth, render)
    out[top:top + h, left:left + w] = patch[..., None]
    return out


def vpd_color_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """VPD's colour augmentation: albumentations ``RandomBrightnessContrast()``,
    ``RandomGamma()``, ``HueSaturationValue()`` with their default parameters, each p = 0.5.

    - brightness/contrast: ``x * (1 + U(-0.2, 0.2)) + 255 * U(-0.2, 0.2)``;
    - gamma: ``255 * (x / 255) ** U(0.8, 1.2)``;
    - HSV: hue + ``U(-20, 20)`` OpenCV units (2 degrees each), S + ``U(-30, 30) / 255``,
      V + ``U(-20, 20)``, clipped.
    """
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        alpha = 1.0 + rng.uniform(-0.2, 0.2)
        beta = rng.uniform(-0.2, 0.2)
        img = np.clip(img * alpha + beta * 255.0, 0, 255)
    if rng.random() < 0.5:
        gamma = rng.uniform(80, 120) / 100.0
        img = 255.0 * (img / 255.0) ** gamma
    if rng.random() < 0.5:
        hue, sat, val = rng.uniform(-20, 20), rng.uniform(-30, 30), rng.uniform(-20, 20)
        hsv = rgb_to_hsv(img)
        hsv[..., 0] = (hsv[..., 0] + 2.0 * hue) % 360.0
        hsv[..., 1] = np.clip(hsv[..., 1] + sat / 255.0, 0.0, 1.0)
        hsv[..., 2] = np.clip(hsv[..., 2] + val, 0.0, 255.0)
        img = np.clip(hsv_to_rgb(hsv), 0, 255)
    return _to_uint8(img)


def bts_color_jitter(image: np.ndarray, rng: np.random.Generator, prob: float = 0.5,
                     gamma_range: Sequence[float] = (0.9, 1.1),
                     brightness_range: Sequence[float] = (0.75, 1.25),
                     color_range: Sequence[float] = (0.9, 1.1)) -> np.ndarray:
    """BTS ``augment_image`` (with probability ``prob``): on ``x / 255``, gamma ``U(0.9, 1.1)``,
    brightness x ``U(0.75, 1.25)`` (BTS's NYU range), per-channel colour x ``U(0.9, 1.1)``,
    clip to [0, 1]."""
    if rng.random() >= prob:
        return image
    x = image.astype(np.float32) / 255.0
    x = x ** rng.uniform(*gamma_range)
    x = x * rng.uniform(*brightness_range)
    x = x * rng.uniform(color_range[0], color_range[1], size=3).astype(np.float32)
    return _to_uint8(np.clip(x, 0.0, 1.0) * 255.0)


def nyu_train_transform(image: np.ndarray, depth: np.ndarray, rng: np.random.Generator,
                        crop_size: Sequence[int] = (480, 480), *,
                        cutdepth_prob: float = 0.25, cutdepth_p: float = 0.75,
                        cutdepth_full_height: bool = True, cutdepth_render: str = "scaled",
                        max_depth: float = 10.0, flip_prob: float = 0.5,
                        color_jitter: str | None = "vpd", cutdepth: bool | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """VPD's NYUv2 training pipeline: CutDepth (on the full image), flip, random crop, colour.

    ``color_jitter``: ``"vpd"`` (:func:`vpd_color_jitter`), ``"bts"`` (:func:`bts_color_jitter`)
    or ``None``. The image must be at least ``crop_size`` (NYUv2 is 480x640). Depth travels
    with the image through flip and crop and is never interpolated. ``cutdepth`` (True / False)
    replaces the Bernoulli(``cutdepth_prob``) draw; the draw is made either way, so the rest of
    the augmentation sees the same random numbers.
    """
    ch, cw = int(crop_size[0]), int(crop_size[1])
    h, w = image.shape[:2]
    if depth.shape != (h, w):
        raise ValueError(f"image {image.shape[:2]} and depth {depth.shape} differ in size.")
    if h < ch or w < cw:
        raise ConfigError(f"a {h}x{w} image is smaller than the {ch}x{cw} crop: lower data.crop_size.")
    drawn = rng.random() < cutdepth_prob
    if drawn if cutdepth is None else cutdepth:
        box = cutdepth_box(h, w, rng, cutdepth_p, cutdepth_full_height)
        image = paste_depth(image, depth, box, max_depth, cutdepth_render)
    if rng.random() < flip_prob:
        image, depth = hflip(image), hflip(depth)
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    image, depth = image[y:y + ch, x:x + cw], depth[y:y + ch, x:x + cw]
    if color_jitter == "vpd":
        image = vpd_color_jitter(image, rng)
    elif color_jitter == "bts":
        image = bts_color_jitter(image, rng)
    elif color_jitter is not None:
        raise ConfigError(f"color_jitter={color_jitter!r} is not known: use 'vpd', 'bts' or None.")
    return np.ascontiguousarray(image), np.ascontiguousarray(depth, dtype=np.float32)


def eigen_crop_mask(h: int, w: int) -> np.ndarray:
    """Boolean ``[h, w]`` mask of the Eigen crop: rows 45:471, cols 41:601 of a 480x640 NYUv2
    image; other sizes get the same window scaled proportionally (rounded)."""
    top, bottom, left, right = EIGEN_CROP_480x640
    if (h, w) != (480, 640):
        top, bottom = round(top * h / 480), round(bottom * h / 480)
        left, right = round(left * w / 640), round(right * w / 640)
    mask = np.zeros((h, w), bool)
    mask[top:bottom, left:right] = True
    return mask


def depth_eval_transform(image: np.ndarray, depth: np.ndarray, crop_size: Sequence[int],
                         eigen_crop: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The end-of-training check's view: depth outside the Eigen crop set to 0 (invalid), then
    the centred ``crop_size`` window of both (padded with 0 where the image is smaller).

    VPD scores the full 480x640 image with two 480-wide windows and flipping; this is a single
    centred window (cols 80:560 of a 640-wide image)."""
    depth = np.asarray(depth, np.float32)
    if eigen_crop:
        depth = np.where(eigen_crop_mask(*depth.shape), depth, 0.0).astype(np.float32)
    return center_crop_or_pad(image, crop_size, 0), center_crop_or_pad(depth, crop_size, 0.0)
