"""Explicit-branch prompts built from labels inside the jitted step.

The class names are tokenized once on the host into a table; per batch, the prompt
``"a photo of wall, floor, bed"`` for the classes present in each crop is assembled with array
operations only (cumulative sums and one scatter), so the train step does no Python work per
example and its shapes never change.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from iedp_jax.infra.errors import ConfigError
from iedp_jax.sd.tokenizer import Tokenizer


@flax.struct.dataclass
class ClassPromptTable:
    """Token ids of a prompt template and of every class name (host-built, device-resident)."""

    prefix: jax.Array      # [P] bos + template tokens before the class list
    class_ids: jax.Array   # [C, T] sub-token ids of each class name, zero-padded
    class_len: jax.Array   # [C] number of sub-tokens of each class name
    comma_id: int = flax.struct.field(pytree_node=False)
    eos_id: int = flax.struct.field(pytree_node=False)
    pad_id: int = flax.struct.field(pytree_node=False)
    length: int = flax.struct.field(pytree_node=False)


def _word_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode_words(text))


def class_prompt_table(tokenizer: Tokenizer, class_names: Sequence[str],
                       template: str = "a photo of {}") -> ClassPromptTable:
    """Tokenizes ``template`` (which must end with ``{}``) and every class name once."""
    if not template.endswith("{}"):
        raise ConfigError(f"prompt template {template!r} must end with '{{}}' (the class list goes last).")
    prefix = [tokenizer.bos_id] + _word_ids(tokenizer, template[:-2].strip())
    ids = [_word_ids(tokenizer, name.replace("_", " ")) for name in class_names]
    if any(len(i) == 0 for i in ids):
        raise ValueError("every class name must contain at least one token.")
    t = max(len(i) for i in ids)
    table = np.zeros((len(ids), t), np.int32)
    for c, i in enumerate(ids):
        table[c, : len(i)] = i
    comma = _word_ids(tokenizer, ",")
    return ClassPromptTable(
        prefix=jnp.asarray(prefix, jnp.int32), class_ids=jnp.asarray(table),
        class_len=jnp.asarray([len(i) for i in ids], jnp.int32), comma_id=int(comma[0]),
        eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, length=tokenizer.max_length)


def present_classes(labels: jax.Array, num_classes: int, ignore_index: int = 255) -> jax.Array:
    """[B, H, W] int labels -> [B, C] bool: which classes appear in each label map."""
    b = labels.shape[0]
    flat = labels.reshape(b, -1).astype(jnp.int32)
    flat = jnp.where((flat == ignore_index) | (flat >= num_classes) | (flat < 0), num_classes, flat)
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], flat.shape)
    return jnp.zeros((b, num_classes + 1), bool).at[rows, flat].set(True)[:, :num_classes]


def build_prompts(table: ClassPromptTable, present: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Assembles ``prefix + "c1, c2, ..." + eos`` for the present classes, in class order.

    Args:
      present: [B, C] bool.

    Returns:
      ids [B, L] int32 (padded with ``pad_id``; classes that do not fit are dropped), and
      last [B, C] int32: position of each class's last sub-token, -1 for absent or dropped ones.
    """
    b, c = present.shape
    p, t, length = table.prefix.shape[0], table.class_ids.shape[1], table.length
    later = jnp.flip(jnp.cumsum(jnp.flip(present, 1), 1), 1) - present  # present classes after c
    comma = present & (later > 0)
    span = jnp.where(present, table.class_len[None] + comma, 0)            # [B, C]
    start = p + jnp.cumsum(span, 1) - span                                  # [B, C]
    end = start + table.class_len[None]                                    # one past last sub-token
    fits = present & (end <= length - 1)  # room for eos; `end` grows with c, so a prefix fits

    ids = jnp.full((b, length), table.pad_id, jnp.int32)
    ids = ids.at[:, :p].set(table.prefix[None])
    rows = jnp.broadcast_to(jnp.arange(b)[:, None, None], (b, c, t))
    pos = start[:, :, None] + jnp.arange(t)[None, None]                    # [B, C, T]
    valid = fits[:, :, None] & (jnp.arange(t)[None, None] < table.class_len[None, :, None])
    ids = ids.at[rows, jnp.where(valid, pos, length)].set(
        jnp.broadcast_to(table.class_ids[None], (b, c, t)), mode="drop")
    comma_pos = jnp.where(fits & comma, end, length)
    ids = ids.at[jnp.arange(b)[:, None], comma_pos].set(table.comma_id, mode="drop")
    # eos right after the last class that fits (overwriting its comma if a later one was dropped).
    eos_pos = jnp.max(jnp.where(fits, end, p), axis=1)
    ids = ids.at[jnp.arange(b), eos_pos].set(table.eos_id)
    last = jnp.where(fits, end - 1, -1)
    return ids, last


def scene_prompt_ids(tokenizer: Tokenizer, scene_names: Sequence[str],
                     template: str = "a photo of a {}") -> jax.Array:
    """[S, L] token ids of one prompt per scene (depth's explicit branch), host-built once."""
    return jnp.asarray(tokenizer([template.format(s.replace("_", " ")) for s in scene_names]))
