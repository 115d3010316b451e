"""The one naming rule between Flax parameter paths and PyTorch (diffusers / transformers) keys.

Flax names list members ``<name>_<index>`` (``down_blocks_0``); PyTorch separates the index with
a dot (``down_blocks.0``). Only diffusers' ``TimestepEmbedding.linear_1`` / ``linear_2`` spell an
``_<digit>`` suffix literally. Loading (:mod:`iedp_jax.sd.weights`), export
(:mod:`iedp_jax.sd.export`) and the attention-map readers all go through these functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from flax import traverse_util

_LITERAL = re.compile(r"linear_\d+")
_INDEX = re.compile(r"_(\d+)$")


def torch_key_to_flax_path(key: str) -> tuple[tuple[str, ...], str]:
    """``a.0.b.to_out.0.weight`` -> (``('a_0', 'b', 'to_out_0')``, ``'weight'``): a numeric
    segment joins the name before it, the way Flax names list members."""
    parts = key.split(".")
    module: list[str] = []
    for part in parts[:-1]:
        if part.isdigit() and module:
            module[-1] = f"{module[-1]}_{part}"
        else:
            module.append(part)
    return tuple(module), parts[-1]


def flax_path_to_module_name(path: tuple[str, ...]) -> str:
    """``('up_blocks_1', 'attentions_2', 'attn2')`` -> ``'up_blocks.1.attentions.2.attn2'``
    (``linear_1`` / ``linear_2`` stay names)."""
    return ".".join(p if _LITERAL.fullmatch(p) else _INDEX.sub(r".\1", p) for p in path)


def flatten(tree: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    """A nested params dict as ``{path tuple: leaf}`` (flax's ``traverse_util``)."""
    return traverse_util.flatten_dict(dict(tree))


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten`."""
    return traverse_util.unflatten_dict(dict(flat))
