"""DiffSegmenter prompts: one prompt per candidate class, token weights and class-token up-weighting.

Host side (numpy, once per class list or per image when captions are used):

- :func:`build_prompt` -- the text of one class's prompt, optionally extended with a caption;
- :func:`encode_class_prompts` -- token ids ``[K, 77]``, the per-token weights ``[K, 77]`` that
  select the class's cross-attention map (its last sub-token; averaged with the next token when
  the next word ends in "ing") and the class-token mask ``[K, 77]`` used for up-weighting;
- :func:`pad_class_prompts` -- stacks per-image prompt sets into ``[B, K, 77]`` arrays with a
  ``valid [B, K]`` mask;
- :func:`read_captions` -- ``{"image": ..., "caption": ...}`` JSON lines.

Device side (jittable): :func:`upweight_class_tokens`, ``z' = z_empty + w (z - z_empty)`` at the
class positions, where ``z_empty`` are the CLIP text states of the empty prompt ``""`` (compel's
rule, which the original uses through its ``"{class}++"`` syntax: ``++`` = 1.1**2 = 1.21).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from iedp_jax.infra.errors import ConfigError, InputError
from iedp_jax.sd.tokenizer import Tokenizer

CAPTION_SEPARATOR = ", "
_NEXT_WORD = re.compile(r"\s+([^\s]+)")


class ClassPrompts(NamedTuple):
    """Encoded prompts of K classes (host numpy arrays).

    ids: [K, L] int32 token ids (L = the tokenizer's max_length, 77).
    token_weights: [K, L] float32, sums to 1 per row: which tokens' cross-attention maps make the
      class map.
    class_positions: [K, L] bool, the class name's sub-tokens (up-weighted by ``token_weight``).
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


def build_prompt(template: str, class_name: str, caption: str | None = None) -> str:
    """The prompt text of one class.

    ``template.format(name)`` (``"a photograph of cat"``), where ``name`` is the class name with
    underscores as spaces. With a caption (stripped, non-empty):

    - a caption that starts with that prompt (case-insensitively) is a class-conditioned caption
      continuing it, as the original generates with BLIP (``"a photograph of cat sitting on a
      couch"``): the prompt followed by the caption's continuation is used, i.e.
      ``prompt + caption[len(prompt):]`` (the original's ``prompt + "++" + out[len(prompt):]``
      with compel's ``++`` marker turned into the up-weighting of :func:`upweight_class_tokens`);
    - any other caption is appended after a comma: ``"a photograph of cat, a cat on a couch"``
      **(ours)** (the comma keeps the caption's first word from triggering the "-ing" rule).
    """
    prompt = template.format(_clean_name(class_name))
    if caption is None or not caption.strip():
        return prompt
    caption = " ".join(caption.split())
    if caption.lower().startswith(prompt.lower()):
        return prompt + caption[len(prompt):]
    return prompt + CAPTION_SEPARATOR + caption


def _next_word(rest: str) -> str | None:
    """The whitespace-separated word right after the class name, trailing punctuation removed."""
    m = _NEXT_WORD.match(rest)
    if m is None:
        return None
    return m.group(1).rstrip(".,;:!?\"')]}") or None


def class_token_weights(tokenizer: Tokenizer, template: str, class_name: str, caption: str | None = None,
                        ing_rule: bool = True) -> ClassPrompts:
    """Ids, token weights and class mask of one class's prompt (each of shape [L]).

    The class name's sub-tokens are located from the template's prefix (CLIP's BPE splits text
    into words first, so the prefix's tokens are a prefix of the prompt's tokens); the weight
    goes to the name's last sub-token, or half to it and half to the following token when
    ``ing_rule`` and the next word of the prompt ends in "ing".

    Raises:
      InputError: an empty class name, a class name cut off by the tokenizer's truncation, or a
        class name that does not tokenize separately from the template's prefix.
      ConfigError: a template without exactly one ``{}``.
    """
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
    mask[start:end] = True
    return ClassPrompts(ids, weights, mask)


def encode_class_prompts(tokenizer: Tokenizer, class_names: Sequence[str], template: str,
                         caption: str | None = None, *, ing_rule: bool = True) -> ClassPrompts:
    """Encodes one prompt per class (host side, once per class list / per image caption).

    Args:
      tokenizer: the Stable Diffusion CLIP tokenizer (:func:`iedp_jax.sd.load_tokenizer`).
      class_names: K candidate class names (underscores read as spaces).
      template: e.g. ``"a photograph of {}"`` (:meth:`DiffSegConfig.template`).
      caption: optional image caption appended to every prompt (:func:`build_prompt`).
      ing_rule: apply the "-ing" rule (:func:`class_token_weights`).

    Returns:
      ``ClassPrompts(ids [K, L] int32, token_weights [K, L] float32, class_positions [K, L] bool)``.
    """
    if len(class_names) == 0:
        raise ValueError("encode_class_prompts needs at least one class name.")
    rows = [class_token_weights(tokenizer, template, c, caption, ing_rule) for c in class_names]
    return ClassPrompts(*(np.stack(x) for x in zip(*rows)))


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


def read_captions(path: str | os.PathLike) -> dict[str, str]:
    """Reads image captions from JSON lines ``{"image": "2007_000032.jpg", "caption": "..."}``.

    Blank lines are skipped; other keys are ignored; the image key is kept as written.

    Raises:
      FileNotFoundError: no such file.
      InputError: a line that is not a JSON object with string ``image`` and ``caption``, or an
        image listed twice (the message names the file and line).
    """
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
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
            image = rec["image"]
            if image in out:
                raise InputError(f"{where}: image {image!r} already has a caption (line {first_line[image]}).")
            out[image] = rec["caption"]
            first_line[image] = n
    return out


__all__ = ["CAPTION_SEPARATOR", "ClassPrompts", "build_prompt", "class_token_weights", "empty_prompt_ids",
           "encode_class_prompts", "pad_class_prompts", "read_captions", "upweight_class_tokens"]
