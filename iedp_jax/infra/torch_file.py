"""Read one tensor saved by ``torch.save`` without torch, running nothing from the file.

A ``.pth`` file from ``torch.save`` (PyTorch >= 1.6) is a zip archive: ``<name>/data.pkl`` (a
pickle that rebuilds the tensor), ``<name>/data/<key>`` (the raw storages) and
``<name>/version``. A pickle can call any importable function while it loads, so the pickle is
read by :class:`_TensorUnpickler`, which resolves exactly the names a saved tensor uses (the
tensor rebuild functions, the storage types and ``collections.OrderedDict``) to local stand-ins
and refuses every other name before anything is called: a file whose pickle names ``os.system``
(or anything else) is an :class:`~iedp_jax.infra.errors.InputError` and nothing in it runs.

:func:`load_array` reads such a ``.pth`` or a ``.npy`` (``allow_pickle=False``) into a NumPy array.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from iedp_jax.infra.errors import InputError

# torch.<Name>Storage -> the NumPy dtype of its elements (the types torch.save names in a pickle)
_STORAGES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
             "BFloat16Storage": None, "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
             "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class _Storage:
    """A stand-in for ``torch.<Name>Storage``: only its name is kept."""

    def __init__(self, name: str) -> None:
        self.name = name


class _Refused(InputError):
    pass


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    *unused: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor(_v2)``: the strided view of ``storage``, copied."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if any(s < 0 for s in size) or any(s < 0 for s in stride) or int(offset) < 0:
        raise _Refused("the tensor in the file has a negative size, stride or offset: the file is damaged.")
    last = int(offset) + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if all(size) else int(offset)
    if all(size) and last >= storage.size:
        raise _Refused("the tensor in the file reaches past its storage: the file is damaged.")
    flat = storage.reshape(-1)[int(offset):]
    item = flat.itemsize
    return np.array(np.lib.stride_tricks.as_strided(flat, size, tuple(s * item for s in stride)), copy=True)


def _rebuild_parameter(data: np.ndarray, *unused: Any) -> np.ndarray:
    """``torch._utils._rebuild_parameter``: an ``nn.Parameter`` is its data here."""
    return data


_ALLOWED = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("collections", "OrderedDict"): dict}


class _TensorUnpickler(pickle.Unpickler):
    """Resolves only a saved tensor's names; storages come from the archive's ``data/`` folder."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGES:
            return _Storage(name)
        raise _Refused(f"{self.path} is not a plain saved tensor: its pickle names {module}.{name}, which is "
                       "refused and not run; save the array with numpy.save (or torch.save of one tensor).")

    def persistent_load(self, pid: Any) -> np.ndarray:
        # ('storage', storage type, key, location, number of elements)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise _Refused(f"{self.path} holds a persistent object other than a tensor storage: it is refused.")
        dtype = _STORAGES[pid[1].name]
        entry = f"{self.prefix}data/{pid[2]}"
        try:
            raw = self.archive.read(entry)
        except KeyError:
            raise _Refused(f"{self.path} lacks the storage {entry}: the file is damaged.") from None
        if dtype is None:  # bfloat16: the high half of a float32
            return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        return np.frombuffer(raw, dtype).copy()


def load_torch_tensor(path: str | os.PathLike) -> np.ndarray:
    """The one tensor of a ``torch.save`` zip archive as a NumPy array (bfloat16 as float32)."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise InputError(f"{path} is not a torch.save zip archive (PyTorch >= 1.6): save the array with "
                         "numpy.save and pass the .npy file.") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise InputError(f"{path} holds {len(pickles)} pickles where a torch.save archive has one data.pkl.")
        prefix = pickles[0][: -len("data.pkl")]
        order = archive.read(f"{prefix}byteorder").decode().strip() if f"{prefix}byteorder" in archive.namelist() \
            else "little"
        if order != "little":
            raise InputError(f"{path} was saved on a {order}-endian machine: load it there and save it with "
                             "numpy.save.")
        try:
            out = _TensorUnpickler(archive.read(pickles[0]), archive, prefix, str(path)).load()
        except _Refused:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise InputError(f"{path} could not be read as a saved tensor ({e}): the file is damaged.") from None
    if not isinstance(out, np.ndarray):
        raise InputError(f"{path} holds a {type(out).__name__}, not one tensor: torch.save the tensor itself.")
    return out


def load_array(path: str | os.PathLike) -> np.ndarray:
    """A ``.npy`` (no pickles) or a ``.pth`` / ``.pt`` of one tensor (:func:`load_torch_tensor`)."""
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise InputError(f"{path} does not exist: pass a .npy file or a torch.save .pth file of one tensor.")
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as e:
            raise InputError(f"{path} could not be read as a .npy array without pickles ({e}).") from None
    if path.suffix in (".pth", ".pt"):
        return load_torch_tensor(path)
    raise InputError(f"{path} is neither a .npy nor a .pth / .pt file: save the array with numpy.save.")
