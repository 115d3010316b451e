"""Flax params -> PyTorch checkpoint layout: the inverse of the loaders, without torch.

:func:`torch_state_dict` renames a params tree to the diffusers / transformers key layout and
tensor layouts (``down_blocks_0/attentions_1/to_out_0/kernel`` ->
``down_blocks.0.attentions.1.to_out.0.weight``, conv kernels HWIO -> OIHW, dense kernels ``.T``,
norm ``scale`` -> ``weight``, ``embedding`` -> ``weight``); :func:`save_component` writes a
component folder (``config.json`` plus a float32 safetensors file) that both our loaders and
``from_pretrained`` of diffusers / transformers read.

Special cases (checked against every module of :mod:`iedp_jax.sd`):

- A numeric suffix ``name_N`` is a list index (``name.N``) except for the module names that
  diffusers spells with an underscore and a digit: ``time_embedding.linear_1`` / ``linear_2``
  (the one rule of :mod:`iedp_jax.sd.names`).
- The loaders accept legacy layouts (1x1-conv-shaped linear weights, the VAE's
  ``query/key/value/proj_attn``); export always writes the current diffusers layout, which is
  what the modules mirror: a Dense kernel becomes a 2-D linear weight, a Conv kernel (1x1
  included: ``quant_conv``, conv ``proj_in``/``proj_out``) a 4-D OIHW weight.
- transformers CLIP checkpoints keep the projections (``text_projection``, ``visual_projection``)
  outside the tower prefix (``text_model.`` / ``vision_model.``): a ``prefix`` is not applied to
  the top-level names in ``unprefixed``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from iedp_jax.sd.names import flatten, flax_path_to_module_name

PyTree = Any

# Top-level names a CLIP checkpoint keeps outside its ``text_model.`` / ``vision_model.`` prefix.
CLIP_UNPREFIXED = ("text_projection", "visual_projection")


def _torch_leaf(name: str, arr: np.ndarray) -> tuple[str, np.ndarray]:
    """Flax leaf name and layout -> PyTorch parameter name and layout."""
    if name == "kernel":
        if arr.ndim == 4:
            return "weight", arr.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        if arr.ndim == 2:
            return "weight", arr.T  # [in, out] -> [out, in]
        raise ValueError(f"Cannot export a {arr.ndim}-D kernel {arr.shape}: only Dense (2-D) and "
                         "Conv2D (4-D) kernels have a PyTorch layout.")
    if name in ("scale", "embedding"):
        return "weight", arr
    return name, arr  # bias, class_embedding, ...


def torch_state_dict(params: PyTree, prefix: str = "",
                     unprefixed: Collection[str] = CLIP_UNPREFIXED) -> dict[str, np.ndarray]:
    """Converts a Flax params tree to a PyTorch state dict (numpy, float32, contiguous).

    Args:
      params: a params tree (``variables['params']`` or the tree the loaders return); a
        ``{'params': ...}`` dict is unwrapped.
      prefix: prepended to every key, e.g. ``'text_model.'`` / ``'vision_model.'`` for the
        layout of transformers 4 CLIP checkpoints (real Stable Diffusion folders) and of the
        ``*WithProjection`` models.
      unprefixed: top-level names that get no ``prefix`` (the CLIP projections).

    Returns:
      ``{torch_key: array}``; floating arrays are float32 (bf16/fp16 params are upcast).

    Raises:
      ValueError: a kernel that is neither 2-D nor 4-D, or two leaves mapping to the same key.
    """
    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]
    out: dict[str, np.ndarray] = {}
    for path, leaf in flatten(params).items():
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.floating) or arr.dtype.name == "bfloat16":
            arr = arr.astype(np.float32)
        name, arr = _torch_leaf(path[-1], arr)
        key = ".".join(filter(None, (flax_path_to_module_name(path[:-1]), name)))
        if prefix and path[0] not in unprefixed:
            key = prefix + key
        if key in out:
            raise ValueError(f"Two parameters map to the PyTorch key {key!r}.")
        out[key] = np.ascontiguousarray(arr)
    return out


def save_component(folder: str | os.PathLike, config: Mapping[str, Any], params: PyTree,
                   weights_name: str, prefix: str = "",
                   unprefixed: Collection[str] = CLIP_UNPREFIXED) -> Path:
    """Writes ``folder/config.json`` and ``folder/<weights_name>`` (float32 safetensors).

    Args:
      folder: the component folder (created with its parents).
      config: the ``config.json`` content (a diffusers or transformers config dict).
      params: the Flax params tree.
      weights_name: e.g. ``'diffusion_pytorch_model.safetensors'`` (diffusers) or
        ``'model.safetensors'`` (transformers).
      prefix, unprefixed: as in :func:`torch_state_dict`.

    Returns:
      The folder.
    """
    if not weights_name.endswith(".safetensors"):
        raise ValueError(f"weights_name {weights_name!r} must be a .safetensors file name.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = torch_state_dict(params, prefix, unprefixed)
    with open(folder / "config.json", "w", encoding="utf-8") as f:
        json.dump(dict(config), f, indent=2, sort_keys=True)
        f.write("\n")
    # "format": "pt" is what transformers / diffusers check before reading a safetensors file.
    save_file(state, str(folder / weights_name), metadata={"format": "pt"})
    os.chmod(folder / weights_name, 0o644)  # safetensors creates the file 0o600
    return folder


__all__ = ["CLIP_UNPREFIXED", "save_component", "torch_state_dict"]
