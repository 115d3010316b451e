"""Category filtering: which classes of a vocabulary are candidates for an image (DESIGN.md 4).

DiffSegmenter segments only the classes a zero-shot classifier believes are in the image:

- **image-text**: CLIP (ViT-L/14 in the paper) logits ``100 * cos(image_embeds,
  text_embeds("A photo of a {label}"))``; a label is kept when its logit is at least
  ``ratio`` (0.97) times the image's largest logit. (Written ``logit >= max - (1 - ratio) *
  |max|``, which is the same for the positive logits CLIP gives and always keeps the best label.)
- **caption nouns** (when a caption is given): a label is also kept when some noun of the caption
  is similar to it: cosine > 0.8 between the mean of the CLIP text token states (last layer,
  after the final layer norm) over the noun's tokens and the same mean over the label's tokens,
  each encoded on its own (``"<bos> word <eos>"``).
- the candidates are the **union** of the two.

Nouns are found simply **(ours)**: the caption is lower-cased, split into runs of letters, and
every word of two or more letters that is not in :data:`STOPWORDS` (articles, pronouns,
prepositions, auxiliaries, numbers and a few caption fillers such as "photo", "picture") counts as
a noun. No part-of-speech tagger: verbs and adjectives also pass, and rarely reach the 0.8
similarity to a class name.

Modes of :func:`candidate_classes` (:data:`~diffseg_jax.config.FILTER_MODES`): ``'clip'`` (the
rule above), ``'all'`` (every class), ``'given'`` (a given list per image: the evaluator replays a
candidate file, :func:`read_given_file`, e.g. the original's ``predict_syn_txt_0.8_img_0.97.json``;
without one each image's ground-truth classes, an oracle upper bound).

The original's candidate files are one JSON object with three sections (``synonym_matching``,
``image_similarity``, ``text_similarity``), each ``{image: [prompt name, ...]}``; its scripts
segment the union of ``image_similarity`` and ``text_similarity``. Image keys are absolute paths
(VOC), file names (Context) or ``COCO_val2014_<id>.jpg`` (COCO): :func:`image_key` reduces each
to the id our readers use (the file stem, ``<id>`` for COCO). The CLIP model is our Flax CLIP
(:mod:`iedp_jax.sd.clip`) loaded from a full ``CLIPModel`` folder
(``openai/clip-vit-large-patch14`` saved with ``save_pretrained``): both towers, both
projections, and the tokenizer files in the same folder (or ``tokenizer/``).

Host/device split: images are resized (shorter side, bicubic) and centre-cropped on the host
with PIL exactly as transformers' ``CLIPImageProcessor``; the towers, the logits, the ratio rule
and the noun similarity are jitted (:func:`clip_logits`, :func:`keep_by_ratio`,
:func:`similar_labels` are pure ``jnp`` functions).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from diffseg_jax.config import CLIP_TEMPLATE, GIVEN_KEYS, NOUN_THRESHOLD, RATIO, filter_mode
from diffseg_jax.datasets import Benchmark
from iedp_jax.infra.errors import ConfigError, InputError
from iedp_jax.sd import Tokenizer, load_clip_text, load_clip_vision, load_tokenizer
from iedp_jax.sd.clip import CLIPTextTransformer, CLIPVisionTransformer, clip_preprocess
from iedp_jax.sd.weights import WeightsError

Params = dict[str, Any]

LOGIT_SCALE = 100.0

STOPWORDS = frozenset("""
a an the this that these those there here it its it's they them their theirs he him his she her hers
we us our ours you your yours i me my mine one ones some any each every all both few many much more
most other another such no nor not only own same so than too very just also
and or but if then else while as of at by for with about against between into through during before
after above below to from up down in out on off over under again further once near next onto upon
beside besides behind beneath around across along among toward towards inside outside within without
is are was were be been being am do does did doing have has had having can could will would shall
should may might must
what which who whom whose when where why how
two three four five six seven eight nine ten several lot lots
photo photograph photography picture image view close closeup shot front top side back left right
""".split())  # noqa: SIM905 - one word list, easier to read as text

__all__ = ["LOGIT_SCALE", "STOPWORDS", "CLIPFilter", "candidate_classes", "caption_nouns", "clip_crop", "clip_logits",
           "image_key", "keep_by_ratio", "load_clip_filter", "read_given_file", "similar_labels"]


# ----------------------------------------------------------------------------------------------
# Pure functions (jittable).


def _normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def clip_logits(image_embeds: jax.Array, text_embeds: jax.Array, scale: float = LOGIT_SCALE) -> jax.Array:
    """``scale * cos(image, text)``: [B, P] x [K, P] -> [B, K] (embeddings need not be normalised)."""
    return scale * jnp.matmul(_normalize(image_embeds), _normalize(text_embeds).T,
                              precision=jax.lax.Precision.HIGHEST)


def keep_by_ratio(logits: jax.Array, ratio: float = RATIO, valid: jax.Array | None = None) -> jax.Array:
    """Labels whose logit is at least ``ratio`` x the row's largest (over ``valid`` labels).

    ``logits`` [..., K]; returns bool [..., K]. Written ``logit >= max - (1 - ratio) * |max|``: the
    same as ``logit >= ratio * max`` for a positive max, and the best label is always kept.
    """
    logits = logits.astype(jnp.float32)
    if valid is None:
        valid = jnp.ones(logits.shape, bool)
    masked = jnp.where(valid, logits, -jnp.inf)
    best = masked.max(axis=-1, keepdims=True)
    return valid & (masked >= best - (1.0 - ratio) * jnp.abs(best))


def similar_labels(noun_vecs: jax.Array, noun_valid: jax.Array, label_vecs: jax.Array,
                   threshold: float = NOUN_THRESHOLD) -> jax.Array:
    """Labels some valid noun is similar to: ``any_n cos(noun_n, label_k) > threshold``.

    ``noun_vecs`` [..., N, D], ``noun_valid`` [..., N], ``label_vecs`` [K, D]; returns bool [..., K].
    """
    cos = jnp.einsum("...nd,kd->...nk", _normalize(noun_vecs), _normalize(label_vecs),
                     precision=jax.lax.Precision.HIGHEST)
    return jnp.any((cos > threshold) & noun_valid[..., :, None], axis=-2)


# ----------------------------------------------------------------------------------------------
# Host helpers.


_WORD = re.compile(r"[a-z]+")


def caption_nouns(caption: str | None) -> list[str]:
    """The caption's words that are not stopwords (lower case, letters only, >= 2 letters, first
    occurrence order, no repeats). ``"a cat sitting on a red sofa"`` -> ``['cat', 'sitting',
    'red', 'sofa']``."""
    if not caption:
        return []
    out: list[str] = []
    for w in _WORD.findall(caption.lower()):
        if len(w) >= 2 and w not in STOPWORDS and w not in out:
            out.append(w)
    return out


def clip_crop(image: np.ndarray, size: int) -> np.ndarray:
    """CLIP's image preprocessing up to the normalisation, on the host: the shorter side resized
    to ``size`` (PIL bicubic, the longer ``int(size * long / short)``), then a centre crop
    ``size x size``, as transformers' ``CLIPImageProcessor``. uint8 [H, W, 3] -> uint8 [S, S, 3]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}.")
    h, w = image.shape[:2]
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = size, int(size * long / short)
    nh, nw = (new_short, new_long) if h <= w else (new_long, new_short)
    im = Image.fromarray(image.astype(np.uint8))
    if (nh, nw) != (h, w):
        im = im.resize((nw, nh), resample=Image.BICUBIC)
    arr = np.asarray(im)
    top, left = (nh - size) // 2, (nw - size) // 2
    return arr[top:top + size, left:left + size]


def _bucket(n: int, minimum: int = 8) -> int:
    """Padded batch size (a power of two, at least ``minimum``): bounds the number of compiles."""
    b = minimum
    while b < n:
        b *= 2
    return b


# ----------------------------------------------------------------------------------------------
# The filter.


@dataclasses.dataclass(frozen=True, eq=False)
class CLIPFilter:
    """Zero-shot category filter with a full CLIP model (both towers and projections).

    Parameters travel separately as ``params = {'vision': ..., 'text': ...}``.

    Attributes:
      vision, text: the Flax CLIP towers (with projections).
      tokenizer: the CLIP tokenizer of the same folder.
      template: the label prompt ("A photo of a {}").
      ratio: keep labels with logit >= ratio x max (0.97).
      noun_threshold: caption-noun / label cosine above which a label is kept (0.8).
      scale: the logit scale (100).
    """

    vision: CLIPVisionTransformer
    text: CLIPTextTransformer
    tokenizer: Tokenizer
    template: str = CLIP_TEMPLATE
    ratio: float = RATIO
    noun_threshold: float = NOUN_THRESHOLD
    scale: float = LOGIT_SCALE
    _label_cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def image_size(self) -> int:
        return self.vision.config.image_size

    # --- jitted towers ---------------------------------------------------------------------------

    @functools.cached_property
    def _image_fn(self):
        def fn(params, pixels):  # uint8 [B, S, S, 3], already S = image_size: only the mean/std apply
            x = clip_preprocess(pixels.astype(jnp.float32) / 255.0, self.image_size)
            return self.vision.apply({"params": params}, x).image_embeds

        return jax.jit(fn)

    @functools.cached_property
    def _text_fn(self):
        return jax.jit(lambda params, ids: self.text.apply({"params": params}, ids).text_embeds)

    @functools.cached_property
    def _states_fn(self):
        def fn(params, ids, mask):  # mean of the last token states over mask
            z = self.text.apply({"params": params}, ids).last_hidden_state.astype(jnp.float32)  # [N, L, D]
            m = mask.astype(jnp.float32)[..., None]
            return (z * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

        return jax.jit(fn)

    # --- host API -------------------------------------------------------------------------------

    def pixels(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 [B, S, S, 3] CLIP crops of RGB images of any sizes (:func:`clip_crop`)."""
        return np.stack([clip_crop(im, self.image_size) for im in images])

    def encode_images(self, params: Params, images: Sequence[np.ndarray]) -> jax.Array:
        """Image embeddings [B, P] (not normalised) of RGB uint8 images of any sizes."""
        return self._image_fn(params["vision"], jnp.asarray(self.pixels(images)))

    def _padded(self, rows: np.ndarray) -> np.ndarray:
        n = rows.shape[0]
        pad = _bucket(n) - n
        return np.concatenate([rows, np.repeat(rows[:1], pad, 0)]) if pad else rows

    def encode_labels(self, params: Params, names: Sequence[str]) -> jax.Array:
        """Text embeddings [K, P] (not normalised) of ``template.format(name)``."""
        if not names:
            raise ValueError("encode_labels needs at least one class name.")
        ids = self.tokenizer([self.template.format(n) for n in names])
        return self._text_fn(params["text"], jnp.asarray(self._padded(ids)))[: len(names)]

    def word_states(self, params: Params, words: Sequence[str]) -> jax.Array:
        """Mean CLIP text token states [N, D] over each word's (or phrase's) own tokens, each
        encoded alone as ``<bos> word <eos>``."""
        if not words:
            raise ValueError("word_states needs at least one word.")
        ids = self.tokenizer(list(words))
        mask = np.zeros(ids.shape, bool)
        for r, w in enumerate(words):
            n = min(len(self.tokenizer.encode_words(w)), ids.shape[1] - 2)
            if n == 0:
                raise ValueError(f"{w!r} has no tokens.")
            mask[r, 1:1 + n] = True
        out = self._states_fn(params["text"], jnp.asarray(self._padded(ids)), jnp.asarray(self._padded(mask)))
        return out[: len(words)]

    def logits(self, params: Params, images: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
        """``100 cos`` image-label logits [B, K] (host numpy)."""
        return np.asarray(clip_logits(self.encode_images(params, images), self.encode_labels(params, names),
                                      self.scale))

    def _cached(self, kind: str, params: Params, names: Sequence[str], fn):
        """``fn(params, names)``, remembered for these very params (identity) and names."""
        key = (kind, tuple(names))
        hit = self._label_cache.get(key)
        if hit is None or hit[0] is not params["text"]:
            hit = (params["text"], fn(params, list(names)))
            self._label_cache[key] = hit
        return hit[1]

    def select(self, params: Params, images: Sequence[np.ndarray], names: Sequence[str],
               captions: Sequence[str | None] | None = None, label_embeds: jax.Array | None = None
               ) -> list[list[int]]:
        """Indices into ``names`` kept for each image: the ratio rule on the CLIP logits, united
        with the labels similar to a caption noun (when ``captions[b]`` is given).

        The labels' embeddings and token states are cached per (params, names): a dataset's
        vocabulary is encoded once. ``label_embeds`` (from :meth:`encode_labels`) overrides.
        """
        if label_embeds is None:
            label_embeds = self._cached("embeds", params, names, self.encode_labels)
        logits = clip_logits(self.encode_images(params, images), label_embeds, self.scale)
        keep = np.array(keep_by_ratio(logits, self.ratio))  # [B, K], writable
        if captions is not None:
            if len(captions) != len(images):
                raise ValueError(f"{len(captions)} captions for {len(images)} images.")
            nouns = [caption_nouns(c) for c in captions]
            if any(nouns):
                label_vecs = self._cached("states", params, names, self.word_states)
                for b, ns in enumerate(nouns):
                    if ns:
                        vecs = self.word_states(params, ns)
                        keep[b] |= np.asarray(similar_labels(vecs, jnp.ones(len(ns), bool), label_vecs,
                                                             self.noun_threshold))
        return [np.flatnonzero(row).tolist() for row in keep]


def load_clip_filter(path: str | os.PathLike, *, template: str = CLIP_TEMPLATE, ratio: float = RATIO,
                     noun_threshold: float = NOUN_THRESHOLD, dtype: Any = jnp.float32) -> tuple[CLIPFilter, Params]:
    """Loads a full CLIP model folder (``CLIPModel``: config.json with text_config and
    vision_config, model.safetensors, tokenizer files) as a :class:`CLIPFilter`.

    Returns:
      ``(filter, {'vision': ..., 'text': ...})``.

    Raises:
      WeightsError: missing folder / files, or a CLIP without one of the two projections.
    """
    if "{}" not in template:
        raise ConfigError(f"the CLIP label template {template!r} must contain '{{}}'.")
    vision, vparams = load_clip_vision(path, dtype=dtype)
    text, tparams = load_clip_text(path, dtype=dtype)
    if not (vision.config.with_projection and text.config.with_projection):
        raise WeightsError(f"{os.fspath(path)!r} is not a full CLIP model: category filtering needs both the "
                           "visual and the text projection (a CLIPModel folder such as "
                           "openai/clip-vit-large-patch14).")
    if vision.config.projection_dim != text.config.projection_dim:
        raise WeightsError(f"{os.fspath(path)!r}: the image and text projections differ in size "
                           f"({vision.config.projection_dim} vs {text.config.projection_dim}).")
    tokenizer = load_tokenizer(path, max_length=text.config.max_position_embeddings)
    return (CLIPFilter(vision, text, tokenizer, template, ratio, noun_threshold),
            {"vision": vparams, "text": tparams})


def candidate_classes(mode: str, class_names: Sequence[str], num_images: int, *,
                      images: Sequence[np.ndarray] | None = None, given: Sequence | None = None,
                      clip_filter: CLIPFilter | None = None, params: Params | None = None,
                      captions: Sequence[str | None] | None = None) -> list[list[int]]:
    """Candidate classes (sorted indices into ``class_names``) of ``num_images`` images.

    Args:
      mode: 'clip' (needs ``images``, ``clip_filter``, ``params``; ``captions`` optional),
        'all' (every class for every image) or 'given' (``given``: one list of classes for all
        images, or one list per image; a class is a name in ``class_names`` or an index into it).

    Raises:
      ConfigError: unknown mode, or a given class not in ``class_names``.
      ValueError: the inputs the mode needs are missing.
    """
    filter_mode(mode)
    if mode == "all":
        return [list(range(len(class_names))) for _ in range(num_images)]
    if mode == "given":
        if given is None:
            raise ValueError("filtering mode 'given' needs the classes of each image.")
        shared = all(isinstance(g, (str, numbers.Integral)) for g in given)
        per_image = [given] * num_images if shared else list(given)
        if len(per_image) != num_images:
            raise ValueError(f"{len(per_image)} class lists for {num_images} images.")
        return [sorted({_class_index(c, class_names) for c in classes}) for classes in per_image]
    if images is None or clip_filter is None or params is None:
        raise ValueError("filtering mode 'clip' needs the images, a CLIPFilter and its params.")
    if len(images) != num_images:
        raise ValueError(f"{len(images)} images for num_images={num_images}.")
    return clip_filter.select(params, images, class_names, captions)


def _class_index(c: str | int, class_names: Sequence[str]) -> int:
    if isinstance(c, numbers.Integral):
        if not 0 <= c < len(class_names):
            raise ConfigError(f"given class index {c} is outside the vocabulary of {len(class_names)} classes.")
        return int(c)
    if c not in class_names:
        raise ConfigError(f"given class {c!r} is not in the vocabulary.")
    return list(class_names).index(c)


# ----------------------------------------------------------------------------------------------
# Given candidate lists (the original's files, or our candidates.jsonl).

_COCO_PREFIX = re.compile(r"^COCO_[A-Za-z]+[0-9]*_")


def image_key(name: str) -> str:
    """The id of an image named by a path or file name: the stem, without the ``COCO_val2014_``
    prefix of COCO 2014 names (``/data/VOC2012/JPEGImages/2007_000033.jpg`` -> ``2007_000033``,
    ``COCO_val2014_000000182611.jpg`` -> ``000000182611``)."""
    base = PureWindowsPath(name).name if "\\" in name else PurePosixPath(name).name
    stem = base.rsplit(".", 1)[0] if "." in base else base
    return _COCO_PREFIX.sub("", stem)


def read_given_file(path: str | os.PathLike, bench: Benchmark, keys: Sequence[str] = GIVEN_KEYS
                    ) -> dict[str, list[int]]:
    """Candidate labels per image id (:func:`image_key`) from a candidate file.

    Two formats: the original's JSON object of sections (the union of the ``keys`` sections is
    taken, as its scripts do with ``image_similarity`` and ``text_similarity``), or JSON lines
    ``{"image": ..., "classes": [...]}`` (what ``diffseg_jax.evaluate`` writes as
    ``candidates.jsonl``). Class names may come from any of the benchmark's tables (dataset,
    official prompt or readable names).

    Raises:
      InputError: not one of the two formats, a missing section, or a class the benchmark does
        not have (one sentence naming the file).
    """
    where = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, Mapping) and not {"image", "classes"} <= set(data):
        missing = [k for k in keys if k not in data]
        if missing or not keys:
            name = repr(missing[0]) if missing else "(none asked)"
            raise InputError(f"the candidate file {where!r} has no section {name} (it has "
                             f"{', '.join(map(repr, data)) or 'none'}): set filtering.given_keys.")
        entries: dict[str, list[str]] = {}
        for k in keys:
            section = data[k]
            if not isinstance(section, Mapping):
                raise InputError(f"the candidate file {where!r}: section {k!r} is not an object of image -> classes.")
            for image, names in section.items():
                entries.setdefault(str(image), []).extend(names)
    else:
        entries = {}
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}:{n}: neither the original's candidate JSON nor JSON lines "
                                 f"({e.msg}).") from None
            if not (isinstance(rec, Mapping) and isinstance(rec.get("image"), str)
                    and isinstance(rec.get("classes"), list)):
                raise InputError(f"{where}:{n}: expected {{\"image\": ..., \"classes\": [...]}}.")
            entries.setdefault(rec["image"], []).extend(rec["classes"])
    out: dict[str, list[int]] = {}
    for image, names in entries.items():
        labels = set()
        for name in names:
            label = bench.label_of(str(name))
            if label is None:
                raise InputError(f"the candidate file {where!r} names the class {name!r} (image {image!r}), which "
                                 f"{bench.title} does not have.")
            labels.add(label)
        out.setdefault(image_key(image), [])
        out[image_key(image)] = sorted(set(out[image_key(image)]) | labels)
    return out
