"""PyTorch checkpoint -> Flax parameter conversion, checked against the module's own shapes.

Checkpoints are read tensor by tensor from memory-mapped safetensors files (our own reader: it
handles bf16/fp16 without torch), renamed from the PyTorch key layout
(``down_blocks.0.attentions.1.to_out.0.weight``) to the Flax path layout
(``down_blocks_0/attentions_1/to_out_0/kernel``), transposed (conv OIHW -> HWIO, linear ``.T``)
and cast, one tensor at a time, so that loading holds at most the mapped file plus one converted
copy in host memory. Every tensor is compared with ``jax.eval_shape`` of the module's ``init``:
a missing, unexpected or mis-shaped tensor raises :class:`WeightsError` naming it.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from iedp_jax.sd.names import flatten, flax_path_to_module_name, torch_key_to_flax_path, unflatten

PyTree = Any
T = TypeVar("T")

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class WeightsError(ValueError):
    """A checkpoint folder or file does not match what the module expects."""


# ----------------------------------------------------------------------------------------------
# Finding and reading checkpoint files.


def resolve_component(path: str | os.PathLike, subfolder: str, what: str, layout: str) -> Path:
    """Returns the folder holding ``config.json`` for a component.

    ``path`` may be a diffusers pipeline root (``path/subfolder/config.json``) or the component
    folder itself (``path/config.json``).
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise WeightsError(
            f"{what} folder {str(root)!r} does not exist: point it at a local {layout}."
        )
    for candidate in (root / subfolder, root) if subfolder else (root,):
        if (candidate / "config.json").is_file():
            return candidate
    raise WeightsError(
        f"No {what} config.json under {str(root)!r}: expected a local {layout}."
    )


def read_config(folder: Path) -> dict[str, Any]:
    """Reads ``folder/config.json``.

    Raises:
      WeightsError: the file is not a JSON object (naming it).
    """
    path = folder / "config.json"
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{str(path)!r} holds a JSON {type(config).__name__}, not an object.")
    return config


def parse_config(folder: Path, parse: Callable[[dict[str, Any]], T]) -> T:
    """``parse(read_config(folder))``, with the file named in a :class:`WeightsError` it raises.

    ``parse`` is a config class's ``from_dict`` (or a wrapper of it) that raises
    :class:`WeightsError` for a config it does not support.
    """
    config = read_config(folder)
    try:
        return parse(config)
    except WeightsError as e:
        raise WeightsError(f"{str(folder / 'config.json')!r}: {e}") from None


def checkpoint_files(folder: Path, stem: str) -> list[Path]:
    """Lists the weight files of a component folder, in the order to read them.

    Prefers ``{stem}.safetensors``, then a sharded ``{stem}.safetensors.index.json``, then a single
    other ``*.safetensors`` (e.g. an ``.fp16`` variant), then ``{stem}.bin`` / ``*.bin``.
    """
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise WeightsError(f"{str(index)!r} lists {len(shards)} shards but {', '.join(missing)} "
                               f"{'is' if len(missing) == 1 else 'are'} missing: copy the whole folder again.")
        return [folder / s for s in shards]
    others = sorted(folder.glob("*.safetensors"))
    if len(others) == 1:
        return others
    if len(others) > 1:
        raise WeightsError(
            f"{str(folder)!r} holds several safetensors files ({', '.join(p.name for p in others)}) "
            f"and no {stem}.safetensors: keep one of them or add the .index.json."
        )
    bins = [folder / f"{stem}.bin"] if (folder / f"{stem}.bin").is_file() else sorted(folder.glob("*.bin"))
    if bins:
        return bins
    raise WeightsError(
        f"No weights in {str(folder)!r}: expected {stem}.safetensors (or {stem}.bin) beside config.json."
    )


def _safetensors_header(path: Path, f: BinaryIO, size: int) -> tuple[int, dict[str, Any]]:
    """``(data start, tensor entries)`` of an open safetensors file of ``size`` bytes, each entry's
    dtype, shape and offsets checked against the file size (a truncated or partly copied file
    fails here, naming it, instead of in numpy)."""
    where = f"safetensors file {str(path)!r} ({size} bytes)"
    if size < 8:
        raise WeightsError(f"{where} is too short to hold a header: is it truncated?")
    header_len = int.from_bytes(f.read(8), "little")
    if 8 + header_len > size:
        raise WeightsError(f"{where} is shorter than its {header_len}-byte header: is it truncated "
                           "or not a safetensors file?")
    try:
        header = json.loads(f.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{where} has an unreadable header ({e}): is it a safetensors file?") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{where} has a header that is not a JSON object.")
    base = 8 + header_len
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    for key, info in entries.items():
        if not (isinstance(info, dict) and len(info.get("data_offsets") or ()) == 2
                and isinstance(info.get("shape"), list)):
            raise WeightsError(f"Tensor {key!r} in {where} has a malformed header entry {info!r}.")
        if info.get("dtype") not in _SAFETENSORS_DTYPES:
            raise WeightsError(f"Tensor {key!r} in {str(path)!r} has unsupported dtype {info.get('dtype')}.")
        start, end = info["data_offsets"]
        nbytes = int(np.prod(info["shape"], dtype=np.int64)) * np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).itemsize
        if not 0 <= start <= end or end - start != nbytes:
            raise WeightsError(f"Tensor {key!r} in {where} has data offsets {[start, end]} that do not "
                               f"match its shape {info['shape']} and dtype {info['dtype']}: the file is corrupt.")
        if base + end > size:
            raise WeightsError(f"{where} ends before the data of tensor {key!r} (bytes {base + start} to "
                               f"{base + end}): the file is truncated or partly copied.")
    return base, entries


def _iter_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yields ``(key, array)`` from a safetensors file; arrays are read-only views of a mmap.

    Raises:
      WeightsError: a header that does not fit the file (truncated, partly copied, not safetensors)
        or an unsupported dtype, naming the file.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        base, entries = _safetensors_header(path, f, size)
        if not entries:
            return
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    for key, info in entries.items():
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        start, end = info["data_offsets"]
        arr = np.frombuffer(buf, dtype=dtype, count=(end - start) // dtype.itemsize, offset=base + start)
        yield key, arr.reshape(info["shape"])


def _iter_torch_bin(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yields tensors of a PyTorch ``.bin`` checkpoint; needs torch, which the library does not."""
    try:
        import torch  # noqa: PLC0415 - optional, only for legacy .bin checkpoints
    except ImportError as e:
        raise WeightsError(
            f"{str(path)!r} is a PyTorch .bin checkpoint: install torch to read it, or save the "
            "model as safetensors."
        ) from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in list(state):
        t = state.pop(key)
        yield key, (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def iter_checkpoint(files: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    """Yields every ``(key, array)`` of a checkpoint, one tensor at a time."""
    for path in files:
        yield from (_iter_safetensors(path) if path.suffix == ".safetensors" else _iter_torch_bin(path))


# ----------------------------------------------------------------------------------------------
# Key and layout conversion.


def _convert_leaf(module_path: tuple[str, ...], name: str, arr: np.ndarray,
                  expected: Mapping[str, jax.ShapeDtypeStruct]) -> tuple[str, np.ndarray]:
    """Maps a PyTorch parameter to the Flax leaf name and layout the module expects."""
    if name == "weight":
        if "kernel" in expected:
            if arr.ndim == 4 and len(expected["kernel"].shape) == 4:
                return "kernel", arr.transpose(2, 3, 1, 0)  # OIHW -> HWIO
            if arr.ndim == 4 and arr.shape[2:] == (1, 1):
                arr = arr[:, :, 0, 0]  # 1x1 conv stored where a linear layer is expected
            if arr.ndim == 2:
                return "kernel", arr.T  # [out, in] -> [in, out]
            return "kernel", arr
        if "scale" in expected:
            return "scale", arr
        if "embedding" in expected:
            return "embedding", arr
    return name, arr


def convert_state(
    tensors: Iterator[tuple[str, np.ndarray]],
    shapes: PyTree,
    dtype: Any,
    rename: Callable[[str], str | None] = lambda k: k,
    where: str = "checkpoint",
) -> PyTree:
    """Converts PyTorch tensors into a Flax params tree with exactly the structure of ``shapes``.

    Args:
      tensors: ``(torch_key, array)`` pairs.
      shapes: ``jax.eval_shape`` output of the module's ``init(...)["params"]``.
      dtype: dtype of the returned floating-point parameters.
      rename: maps a PyTorch key to the key in our layout, or None to skip it (buffers such as
        ``position_ids``, towers that are not being loaded).
      where: the file or folder named in errors.

    Raises:
      WeightsError: naming every missing, unexpected or mis-shaped tensor.
    """
    flat_shapes = flatten(shapes)
    out: dict[tuple[str, ...], jax.Array] = {}
    unexpected, misshaped = [], []
    seen_bad: set[tuple[str, ...]] = set()
    for torch_key, arr in tensors:
        key = rename(torch_key)
        if key is None:
            continue
        module_path, name = torch_key_to_flax_path(key)
        expected = {p[-1]: s for p, s in flat_shapes.items() if p[:-1] == module_path}
        shape = tuple(arr.shape)
        leaf, arr = _convert_leaf(module_path, name, arr, expected)
        path = module_path + (leaf,)
        if path not in flat_shapes:
            unexpected.append(torch_key)
            continue
        want = flat_shapes[path].shape
        if tuple(arr.shape) != tuple(want):
            misshaped.append(f"{torch_key} {shape} (our {leaf} expects {tuple(want)})")
            seen_bad.add(path)
            continue
        target = dtype if jnp.issubdtype(arr.dtype, jnp.floating) else arr.dtype
        out[path] = jnp.asarray(np.asarray(arr, dtype=target))  # one converted copy per tensor
    missing = [flax_path_to_module_name(p[:-1]) + "." + p[-1] for p in flat_shapes
               if p not in out and p not in seen_bad]
    problems = []
    if missing:
        problems.append(f"missing tensors for {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected tensors {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
    if misshaped:
        problems.append(f"wrong shapes: {'; '.join(misshaped[:8])}" + (" ..." if len(misshaped) > 8 else ""))
    if problems:
        raise WeightsError(
            f"{where} does not match the model its config.json describes ({'; '.join(problems)}): "
            "check that the weights and config.json come from the same model."
        )
    return unflatten(out)


def load_params(
    folder: Path,
    stem: str,
    init_fn: Callable[[], PyTree],
    dtype: Any,
    rename: Callable[[str], str | None] = lambda k: k,
    abstract: bool = False,
) -> PyTree:
    """Reads a component's weights into a params tree shaped like ``init_fn()['params']``.

    ``init_fn`` is traced with ``jax.eval_shape``: no parameter is ever materialised by init.
    ``abstract=True`` returns that tree as ``jax.ShapeDtypeStruct``s in ``dtype`` without reading
    the weights (memory plans and compile-only checks before a run loads gigabytes).
    """
    shapes = jax.eval_shape(init_fn)["params"]
    files = checkpoint_files(folder, stem)
    if abstract:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), shapes)
    return convert_state(iter_checkpoint(files), shapes, dtype, rename, where=str(files[0]))
