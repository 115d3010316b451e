"""Export a trained IEDP checkpoint as a diffusers folder plus the IEDP weights:
``python -m iedp_jax.export --workdir DIR --out OUT [--checkpoint C]``.

``OUT`` is a Stable Diffusion pipeline folder with the fine-tuned UNet:

- ``unet/``: ``config.json`` (the pretrained UNet's) and ``diffusion_pytorch_model.safetensors``
  (float32), readable by ``diffusers.UNet2DConditionModel.from_pretrained`` and our loaders;
- ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``: copied from the pretrained folder
  (TensorFlow / Flax / ONNX weights, and ``.bin`` files beside a ``.safetensors``, are left out);
- ``image_encoder/``: the CLIP vision folder the implicit branch reads (none for VPD's context);
- ``model_index.json``: the pretrained one, with the components not written set to ``[null, null]``;
- ``iedp/heads.safetensors``: every trained parameter outside the UNet (``implicit``,
  ``adapter``, ``head``) under ``/``-joined keys (``head/fpn_0/conv/kernel``, Flax layouts), and
  for VPD's context the fixed ``class_embeddings`` table;
- ``iedp/config.json``: the model's static config (the ``IEDPConfig`` fields) plus
  ``class_names``, ``scene_names`` and the checkpoint's ``step``.

The folder is written beside ``OUT`` and renamed into place when complete; a non-empty ``OUT``
is never overwritten. An entry point only: nothing imports it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils
from ml_collections import ConfigDict
from safetensors.numpy import save_file

from iedp_jax.build import resolve_backbone
from iedp_jax.configs import FOLDER as CONFIGS
from iedp_jax.infra.cli import run
from iedp_jax.infra.distributed import barrier
from iedp_jax.infra.errors import InputError, output_error
from iedp_jax.infra.lock import _pid_alive
from iedp_jax.infra.logs import log_line
from iedp_jax.run_files import read_config
from iedp_jax.sd.export import save_component
from iedp_jax.sd.names import flatten
from iedp_jax.sd.weights import WeightsError
from iedp_jax.trained import TrainedModel, load_trained

PyTree = Any

UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
HEADS_FILE = "heads.safetensors"
COPIED = ("vae", "text_encoder", "tokenizer", "scheduler")  # from the pretrained folder, as they are
# Weights of other frameworks, never read by diffusers / transformers' PyTorch classes.
SKIPPED_SUFFIXES = (".h5", ".msgpack", ".onnx", ".ckpt", ".pb", ".ot")
_DEFAULT_INDEX = {
    "_class_name": "StableDiffusionPipeline", "requires_safety_checker": False,
    "feature_extractor": [None, None], "safety_checker": [None, None],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "scheduler": ["diffusers", "PNDMScheduler"], "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
}


def check_out(out: Path) -> None:
    """A clear error unless ``out`` is new or an empty folder."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: pass a new or empty folder to export into.")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"--out {out} is not empty: pass a new or empty folder (export never overwrites).")
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise InputError(f"--out {out} cannot be created: {above} is a file, not a folder; pass a folder path.")


def clean_stale_tmp(out: Path) -> list[Path]:
    """Removes the unfinished export folders a killed export into ``out`` left
    (``.OUT.tmpPID`` beside it, whose process is gone), one line each; returns them."""
    removed = []
    for tmp in sorted(out.parent.glob(f".{out.name}.tmp*")) if out.parent.is_dir() else []:
        pid = tmp.name[len(f".{out.name}.tmp"):]
        if not pid.isdigit() or not tmp.is_dir() or (int(pid) != os.getpid() and _pid_alive(int(pid))):
            continue  # another export still writing, or not ours
        shutil.rmtree(tmp, ignore_errors=True)
        log_line(f"removed {tmp}, the unfinished folder of an export that was killed (pid {pid})")
        removed.append(tmp)
    return removed


def _host(tree: PyTree) -> PyTree:
    """The arrays of ``tree`` as NumPy on every host (a collective with several processes)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def _ignore(folder: str, names: list[str]) -> set[str]:
    """What :func:`shutil.copytree` leaves out: hidden files, other frameworks' weights, and
    ``.bin`` weights when safetensors ones are there."""
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    return {n for n in names if n.startswith(".") or n.endswith(SKIPPED_SUFFIXES)
            or (has_safetensors and n.endswith(".bin"))}


def head_tensors(params: PyTree) -> dict[str, np.ndarray]:
    """The trained parameters outside the UNet as ``{'implicit/proj_1/kernel': float32 array}``."""
    out = {}
    for path, leaf in flatten({k: v for k, v in params.items() if k != "unet"}).items():
        arr = np.asarray(leaf)
        out["/".join(path)] = np.ascontiguousarray(arr.astype(np.float32) if arr.dtype.kind == "f" else arr)
    return out


def iedp_config(trained: TrainedModel) -> dict[str, Any]:
    """``iedp/config.json``: the ``IEDPConfig`` fields, the class / scene names and the step."""
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(trained.model.config).items()}
    return {**fields, "class_names": list(trained.class_names), "scene_names": list(trained.scene_names),
            "step": int(trained.step)}


def _model_index(sd: Path, written: set[str]) -> dict[str, Any]:
    """The pretrained ``model_index.json`` (or SD 1.5's) listing only the components written."""
    index = json.loads((sd / "model_index.json").read_text()) if (sd / "model_index.json").is_file() \
        else dict(_DEFAULT_INDEX)
    for name, value in list(index.items()):
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and name not in written:
            index[name] = [None, None]
    if "image_encoder" in written and not (index.get("image_encoder") or [None])[0]:
        index["image_encoder"] = list(_DEFAULT_INDEX["image_encoder"])
    return index


def export_trained(trained: TrainedModel, out: str | os.PathLike) -> Path:
    """Writes ``trained`` into the new folder ``out`` (see the module docstring) and returns it.

    All processes call it (the parameters are gathered); process 0 writes."""
    out = Path(out).expanduser().absolute()
    check_out(out)
    sd, clip = resolve_backbone(trained.config, trained.workdir)
    params = _host(trained.params)
    if jax.process_index() == 0:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise (output_error(e, f"--out {out}", "the export") or e) from e
        clean_stale_tmp(out)
        tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            unet_config = json.loads((sd / "unet" / "config.json").read_text())
            save_component(tmp / "unet", unet_config, params["unet"], UNET_WEIGHTS)
            written = {"unet"} | ({"image_encoder"} if clip else set())
            for name in COPIED:
                if (sd / name).is_dir():
                    shutil.copytree(sd / name, tmp / name, ignore=_ignore)
                    written.add(name)
            if clip:  # the implicit branch's CLIP image tower (none with VPD's context)
                shutil.copytree(clip, tmp / "image_encoder", ignore=_ignore)
            (tmp / "model_index.json").write_text(json.dumps(_model_index(sd, written), indent=2) + "\n")
            (tmp / "iedp").mkdir()
            tensors = head_tensors(params)
            if "class_embeddings" in trained.frozen:  # VPD's fixed context table [K, D]
                tensors["class_embeddings"] = np.asarray(jax.device_get(trained.frozen["class_embeddings"]),
                                                         np.float32)
            save_file(tensors, str(tmp / "iedp" / HEADS_FILE), metadata={"format": "iedp"})
            os.chmod(tmp / "iedp" / HEADS_FILE, 0o644)  # safetensors creates the file 0o600
            (tmp / "iedp" / "config.json").write_text(json.dumps(iedp_config(trained), indent=2) + "\n")
            check_out(out)  # nothing appeared meanwhile
            os.rename(tmp, out)  # replaces an empty folder
        except OSError as e:  # a read-only or full folder is one sentence; anything else a bug
            if (err := output_error(e, f"--out {out}", "the export")) is None:
                raise
            raise err from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    barrier("export written")
    log_line(f"exported step {trained.step} of {trained.workdir} to {out}")
    return out


def export_workdir(workdir: str | os.PathLike, out: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
                   config: ConfigDict | None = None) -> Path:
    """What the command runs: checks ``out``, restores the checkpoint (:func:`iedp_jax.load_trained`)
    and writes it (:func:`export_trained`)."""
    check_out(Path(out).expanduser())
    return export_trained(load_trained(workdir, checkpoint, config=config), out)


def main(config: ConfigDict, workdir: str, flag_values: dict) -> None:
    export_workdir(workdir, flag_values["out"], flag_values.get("checkpoint") or None, config=config)


def _define_flags() -> None:
    flags.DEFINE_string("out", None, "A new (or empty) folder to write the export into.")
    flags.DEFINE_string("checkpoint", None, "A checkpoint step folder (WORKDIR/checkpoints/STEP) or a folder of "
                        "them; default: the latest step in WORKDIR/checkpoints.")
    flags.mark_flag_as_required("out")


def entry() -> None:
    """The console script (the same as ``python -m iedp_jax.export``)."""
    run(main, _define_flags, user_errors=(WeightsError,), config_from_workdir=read_config, configs=CONFIGS)


if __name__ == "__main__":
    entry()
