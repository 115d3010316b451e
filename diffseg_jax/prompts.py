"""DiffSegmenter prompts: one prompt per candidate class, token weights and class-token up-weighting.

Host side (numpy, once per class list or per image when captions are used):

- :func:`build_prompt` -- the text of one class's prompt, optionally extended with a caption;
- :func:`encode_class_prompts` -- token ids ``[K, 77]``, the per-token weights ``[K, 77]`` that
  select the class's cross-attention map (its last sub-token; averaged with the next token when
  the next word ends in "ing") and the class-token mask ``[K, 77]`` used for up-weighting (the
  sub-tokens of the name's last word, as compel's ``"name++"``; or of every word);
- :func:`encode_with_fallback` -- the same, where a class whose caption cannot hold its token
  falls back to the plain template (counted by the evaluator, never an error);
- :func:`pad_class_prompts` -- stacks per-image prompt sets into ``[B, K, 77]`` arrays with a
  ``valid [B, K]`` mask;
- :func:`read_captions` / :func:`caption_for` -- JSON lines ``{"image", "caption"}`` (one caption
  per image) and ``{"image", "class", "caption"}`` (one per class, as the original makes them).

Device side (jittable): :func:`upweight_class_tokens`, ``z' = z_empty + w (z - z_empty)`` at the
class positions, where ``z_empty`` are the CLIP text states of the empty prompt ``""`` (compel's
rule, which the original uses through its ``"{class}++"`` syntax: ``++`` = 1.1**2 = 1.21).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffseg_jax.config import UPWEIGHTS
from iedp_jax.infra.errors import ConfigError, InputError
from iedp_jax.sd.tokenizer import Tokenizer

CAPTION_SEPARATOR = ", "
_NEXT_WORD = re.compile(r"\s+([^\s]+)")
_COMPEL_UP = re.compile(r"(?<=\S)\+\+")  # compel's "word++" marker (the up-weighting is done apart)
_LETTERS = re.compile(r"[^\W\d_]+")       # a run of letters: CLIP's pre-tokenizer keeps it one word

CaptionKey = str | tuple[str, str]


class ClassPrompts(NamedTuple):
    """Encoded prompts of K classes (host numpy arrays).

    ids: [K, L] int32 token ids (L = the tokenizer's max_length, 77).
    token_weights: [K, L] float32, sums to 1 per row: which tokens' cross-attention maps make the
      class map.
    class_positions: [K, L] bool, the sub-tokens up-weighted by ``token_weight`` (the name's last
      word, or the whole name).
    """

    ids: np.ndarray
    token_weights: np.ndarray
    class_positions: np.ndarray


def _clean_name(name: str) -> str:
    """``potted_plant`` -> ``potted plant``; surrounding whitespace removed."""
    return " ".join(name.replace("_", " ").split())


def _split_template(template: str) -> tuple[str, str]:
    if template.count("{}") != 1:
        raise ConfigError(f"prompt template {template!r} must contain '{{}}' exactly once (the class name).")
    prefix, suffix = template.split("{}")
    return prefix, suffix


def _continuation(prompt: str, caption: str) -> str | None:
    """What a class-conditioned caption adds after ``prompt`` (None: it does not continue it).

    The caption's compel markers (``cat++``) are dropped. When the caption continues inside the
    prompt's last word (BLIP writes "cows" after "a photograph of cow") the rest of that word is
    dropped too: the class word takes that word's place, as the original does for Pascal Context
    and COCO (``out_prompt[2 + word_len] = last_word + "++"``).
    """
    caption = _COMPEL_UP.sub("", " ".join(caption.split()))
    if not caption.lower().startswith(prompt.lower()):
        return None
    rest = caption[len(prompt):]
    word = _LETTERS.match(rest)
    if word is not None and prompt[-1:].isalpha():
        rest = rest[word.end():]
    return rest


def build_prompt(template: str, class_name: str, caption: str | None = None) -> str:
    """The prompt text of one class.

    ``template.format(name)`` (``"a photograph of cat"``), where ``name`` is the class name with
    underscores as spaces. With a caption (stripped, non-empty):

    - a caption that starts with that prompt (case-insensitively) is a class-conditioned caption
      continuing it, as the original generates with BLIP (``"a photograph of cat sitting on a
      couch"``): the prompt followed by the caption's continuation (the original's
      ``prompt + "++" + out[len(prompt):]``, with compel's ``++`` marker turned into the
      up-weighting of :func:`upweight_class_tokens`). A ``++`` in the caption is dropped, and a
      continuation inside the class word ("a photograph of cows grazing" for "cow") keeps the
      class word and drops the rest of that word: "a photograph of cow grazing";
    - any other caption is appended after a comma: ``"a photograph of cat, a cat on a couch"``
      **(ours)** (the comma keeps the caption's first word from triggering the "-ing" rule).
    """
    prompt = template.format(_clean_name(class_name))
    if caption is None or not caption.strip():
        return prompt
    rest = _continuation(prompt, caption)
    if rest is not None:
        return prompt + rest
    return prompt + CAPTION_SEPARATOR + " ".join(caption.split())


def caption_text(template: str, class_name: str | None, caption: str | None) -> str:
    """The words a caption says about the image beyond its prompt: a class-conditioned caption's
    continuation, or the whole caption (for the caption-noun filter, which must not find the
    class name the caption was conditioned on)."""
    if not caption:
        return ""
    if class_name is not None:
        rest = _continuation(template.format(_clean_name(class_name)), caption)
        if rest is not None:
            return rest.strip()
    return _COMPEL_UP.sub("", " ".join(caption.split()))


def _next_word(rest: str) -> str | None:
    """The whitespace-separated word right after the class name, trailing punctuation removed."""
    m = _NEXT_WORD.match(rest)
    if m is None:
        return None
    return m.group(1).rstrip(".,;:!?\"')]}") or None


def class_token_weights(tokenizer: Tokenizer, template: str, class_name: str, caption: str | None = None,
                        ing_rule: bool = True, upweight: str = "last_word") -> ClassPrompts:
    """Ids, token weights and class mask of one class's prompt (each of shape [L]).

    The class name's sub-tokens are located from the template's prefix (CLIP's BPE splits text
    into words first, so the prefix's tokens are a prefix of the prompt's tokens); the weight
    goes to the name's last sub-token, or half to it and half to the following token when
    ``ing_rule`` and the next word of the prompt ends in "ing". The mask covers the sub-tokens of
    the name's last word (``upweight='last_word'``, compel's ``"name++"``) or of the whole name
    (``'all_words'``).

    Raises:
      InputError: an empty class name, a class name cut off by the tokenizer's truncation, or a
        class name that does not tokenize separately from the template's prefix and the caption.
      ConfigError: a template without exactly one ``{}``, or an unknown ``upweight``.
    """
    if upweight not in UPWEIGHTS:
        raise ConfigError(f"upweight {upweight!r} is not one of {', '.join(UPWEIGHTS)}.")
    name = _clean_name(class_name)
    if not name:
        raise InputError(f"class name {class_name!r} is empty.")
    prefix, _ = _split_template(template)
    text = build_prompt(template, class_name, caption)
    ids = np.asarray(tokenizer([text])[0], np.int32)  # [L]
    length = ids.shape[0]
    name_ids = tokenizer.encode_words(name)
    prefix_ids = tokenizer.encode_words(prefix.strip()) if prefix.strip() else []
    start = 1 + len(prefix_ids)
    end = start + len(name_ids)
    if not name_ids:
        raise InputError(f"class name {class_name!r} has no tokens.")
    if end > length - 1:  # the last position always holds end-of-text after truncation
        raise InputError(f"class name {name!r} is cut off by the tokenizer's max_length {length} "
                         f"in the prompt {text!r}: shorten the caption or the template.")
    if list(ids[1:start]) != list(prefix_ids) or list(ids[start:end]) != list(name_ids):
        raise InputError(f"the class name {name!r} does not tokenize on its own inside the template "
                         f"{template!r} (prompt {text!r}): separate '{{}}' from the words around it.")
    weights = np.zeros(length, np.float32)
    rest = text[len(prefix) + len(name):]
    word = _next_word(rest)
    has_next = end < length - 1 and ids[end] not in (tokenizer.eos_id, tokenizer.pad_id)
    if ing_rule and word is not None and word.lower().endswith("ing") and has_next:
        weights[end - 1] = 0.5
        weights[end] = 0.5
    else:
        weights[end - 1] = 1.0
    mask = np.zeros(length, bool)
    first = start
    if upweight == "last_word" and " " in name:
        last = tokenizer.encode_words(name.rsplit(" ", 1)[1])
        if last and list(name_ids[-len(last):]) == list(last):
            first = end - len(last)
    mask[first:end] = True
    return ClassPrompts(ids, weights, mask)


def _per_class(captions: str | Sequence[str | None] | None, k: int) -> list[str | None]:
    if captions is None or isinstance(captions, str):
        return [captions] * k
    captions = list(captions)
    if len(captions) != k:
        raise ValueError(f"{len(captions)} captions for {k} class names.")
    return captions


def encode_class_prompts(tokenizer: Tokenizer, class_names: Sequence[str], template: str,
                         caption: str | Sequence[str | None] | None = None, *, ing_rule: bool = True,
                         upweight: str = "last_word") -> ClassPrompts:
    """Encodes one prompt per class (host side, once per class list / per image caption).

    Args:
      tokenizer: the Stable Diffusion CLIP tokenizer (:func:`iedp_jax.sd.load_tokenizer`).
      class_names: K candidate class names (underscores read as spaces).
      template: e.g. ``"a photograph of {}"`` (:meth:`DiffSegConfig.template`).
      caption: optional image caption appended to every prompt (:func:`build_prompt`), or one
        caption (or None) per class (the original's per-class BLIP captions).
      ing_rule: apply the "-ing" rule (:func:`class_token_weights`).
      upweight: 'last_word' or 'all_words' (:func:`class_token_weights`).

    Returns:
      ``ClassPrompts(ids [K, L] int32, token_weights [K, L] float32, class_positions [K, L] bool)``.
    """
    if len(class_names) == 0:
        raise ValueError("encode_class_prompts needs at least one class name.")
    caps = _per_class(caption, len(class_names))
    rows = [class_token_weights(tokenizer, template, c, cap, ing_rule, upweight) for c, cap in zip(class_names, caps)]
    return ClassPrompts(*(np.stack(x) for x in zip(*rows)))


def encode_with_fallback(tokenizer: Tokenizer, class_names: Sequence[str], template: str,
                         caption: str | Sequence[str | None] | None = None, *, ing_rule: bool = True,
                         upweight: str = "last_word") -> tuple[ClassPrompts, list[str | None]]:
    """:func:`encode_class_prompts`, where a class whose captioned prompt cannot place its token
    (the caption pushes it past the 77 tokens, or glues a word to it) gets the plain template.

    Returns:
      ``(prompts, reasons)``: ``reasons[k]`` is None, or the sentence saying why class k fell
      back to the plain template.

    Raises:
      InputError: a class whose plain template cannot place it either (an empty or overlong name).
    """
    if len(class_names) == 0:
        raise ValueError("encode_with_fallback needs at least one class name.")
    rows, reasons = [], []
    for c, cap in zip(class_names, _per_class(caption, len(class_names))):
        try:
            rows.append(class_token_weights(tokenizer, template, c, cap, ing_rule, upweight))
            reasons.append(None)
        except InputError as e:
            if cap is None or not cap.strip():
                raise
            rows.append(class_token_weights(tokenizer, template, c, None, ing_rule, upweight))
            reasons.append(str(e))
    return ClassPrompts(*(np.stack(x) for x in zip(*rows))), reasons


def empty_prompt_ids(tokenizer: Tokenizer) -> np.ndarray:
    """Ids [L] of the empty prompt ``""`` (bos, eos, padding): its text states are ``z_empty``."""
    return np.asarray(tokenizer([""])[0], np.int32)


def pad_class_prompts(prompts: Sequence[ClassPrompts], tokenizer: Tokenizer, num_classes: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stacks per-image prompt sets into a batch, padding the class axis.

    Args:
      prompts: B results of :func:`encode_class_prompts` (K_b classes each).
      num_classes: padded K (default: the largest K_b); a fixed value keeps the jitted
        segmenter's shapes constant across batches.

    Returns:
      ids [B, K, L] (padding rows: the empty prompt), token_weights [B, K, L] (padding: 0),
      class_positions [B, K, L] (padding: False), valid [B, K] bool.
    """
    k = max(p.ids.shape[0] for p in prompts) if num_classes is None else int(num_classes)
    if any(p.ids.shape[0] > k for p in prompts):
        raise ValueError(f"an image has more than num_classes={k} candidate classes.")
    length = prompts[0].ids.shape[1]
    b = len(prompts)
    ids = np.broadcast_to(empty_prompt_ids(tokenizer), (b, k, length)).copy()
    weights = np.zeros((b, k, length), np.float32)
    pos = np.zeros((b, k, length), bool)
    valid = np.zeros((b, k), bool)
    for i, p in enumerate(prompts):
        n = p.ids.shape[0]
        ids[i, :n], weights[i, :n], pos[i, :n], valid[i, :n] = p.ids, p.token_weights, p.class_positions, True
    return ids, weights, pos, valid


def upweight_class_tokens(z: jax.Array, z_empty: jax.Array, class_positions: jax.Array,
                          weight: float | jax.Array) -> jax.Array:
    """``z' = z_empty + w (z - z_empty)`` at the class positions, ``z`` elsewhere (jittable).

    Args:
      z: [..., L, D] CLIP text states of the prompts.
      z_empty: [L, D] (or broadcastable) text states of the empty prompt ``""``.
      class_positions: [..., L] bool.
      weight: the up-weighting factor (1.21).
    """
    z_empty = jnp.asarray(z_empty, z.dtype)
    boosted = z_empty + jnp.asarray(weight, z.dtype) * (z - z_empty)
    return jnp.where(class_positions[..., None], boosted, z)


def read_captions(path: str | os.PathLike) -> dict[CaptionKey, str]:
    """Reads captions from JSON lines, one caption per image or per (image, class).

    ``{"image": "2007_000032.jpg", "caption": "..."}`` is keyed by the image;
    ``{"image": "2007_000032.jpg", "class": "plane", "caption": "a photograph of plane flying ..."}``
    (what ``python -m diffseg_jax.captions --dataset voc`` writes) by ``(image, class)``. Blank lines
    are skipped; other keys (e.g. ``"prompt"``) are ignored; the image key is kept as written.

    Raises:
      FileNotFoundError: no such file.
      InputError: a line that is not a JSON object with string ``image`` and ``caption`` (and
        ``class`` when present), or a key listed twice (the message names the file and line).
    """
    out: dict[CaptionKey, str] = {}
    first_line: dict[CaptionKey, int] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{os.fspath(path)}:{n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: not valid JSON ({e.msg}): {line.strip()[:80]!r}") from None
            if not isinstance(rec, dict):
                raise InputError(f"{where}: expected a JSON object with 'image' and 'caption', "
                                 f"got {type(rec).__name__}.")
            for key in ("image", "caption"):
                if not isinstance(rec.get(key), str):
                    raise InputError(f"{where}: missing or non-string {key!r} "
                                     "(expected {\"image\": ..., \"caption\": ...}).")
            if "class" in rec and not isinstance(rec["class"], str):
                raise InputError(f"{where}: a non-string 'class' (expected {{\"image\": ..., \"class\": ..., "
                                 "\"caption\": ...}).")
            key: CaptionKey = (rec["image"], rec["class"]) if "class" in rec else rec["image"]
            if key in out:
                what = f"image {key!r}" if isinstance(key, str) else f"image {key[0]!r} and class {key[1]!r}"
                raise InputError(f"{where}: {what} already has a caption (line {first_line[key]}).")
            out[key] = rec["caption"]
            first_line[key] = n
    return out


def caption_for(captions: Mapping[CaptionKey, str], image_keys: Sequence[str], class_names: Sequence[str] = ()
                ) -> str | None:
    """The caption of an image (tried under each of ``image_keys``, e.g. its file name and id)
    for a class (tried under each of ``class_names``, e.g. its prompt and dataset names): a
    per-class caption first, else the image's caption, else None."""
    for image in image_keys:
        for name in class_names:
            if (image, name) in captions:
                return captions[(image, name)]
    for image in image_keys:
        if image in captions:
            return captions[image]
    return None


__all__ = ["CAPTION_SEPARATOR", "CaptionKey", "ClassPrompts", "build_prompt", "caption_for",
           "caption_text", "class_token_weights", "empty_prompt_ids", "encode_class_prompts", "encode_with_fallback",
           "pad_class_prompts", "read_captions", "upweight_class_tokens"]
