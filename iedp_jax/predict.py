"""Predict with a trained IEDP checkpoint on your own images:
``python -m iedp_jax.predict --workdir DIR --image PATH --out OUT [--checkpoint C] [--config.eval.mode=multiscale]``.

``PATH`` is an image file or a folder of them (jpg, jpeg, png, bmp, webp; sorted by name, not
recursive). The model, its classes and the protocol come from the run (``DIR/config.json``,
``DIR/run.json``, the latest checkpoint or ``--checkpoint``): no dataset is read
(:func:`iedp_jax.load_trained`). Per image ``<stem>``:

- segmentation: ``OUT/<stem>.png``, the class ids at the image's size as a palette PNG (mode P,
  the colours of :func:`iedp_jax.infra.visualize.palette`; 16-bit grey beyond 256 classes), and
  ``OUT/<stem>_overlay.png``, the image with the class colours blended over it above a legend of
  the classes present;
- depth: ``OUT/<stem>.png``, uint16 millimetres at the image's size, and ``OUT/<stem>_preview.png``
  (viridis, near = dark).

An image of a folder that cannot be decoded is skipped with one line; the exit status is 1 when
nothing was written. Predict never replaces an input image, nor a file of ``OUT`` that it did not
write itself (``OUT/.iedp_predict.json`` lists what it wrote) unless ``--overwrite`` is given; a
read-only or full ``OUT`` is one sentence. An entry point only: nothing imports it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
from absl import flags
from ml_collections import ConfigDict
from PIL import Image

from iedp_jax.configs import FOLDER as CONFIGS
from iedp_jax.infra import visualize
from iedp_jax.infra.cli import run
from iedp_jax.infra.errors import InputError, check_writable, output_error
from iedp_jax.infra.images import load_rgb
from iedp_jax.infra.logs import log_line
from iedp_jax.infra.threads import default_threads
from iedp_jax.model import SEG
from iedp_jax.run_files import read_config
from iedp_jax.sd.weights import WeightsError
from iedp_jax.trained import ImageSource, TrainedModel, load_trained

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
WRITTEN = ".iedp_predict.json"   # in OUT: the files predict wrote there (it may replace only these)
ALPHA = 0.5                      # opacity of the class colours in the overlay


# ------------------------------------------------------------------------------ inputs


def list_images(path: Path) -> list[Path]:
    """``path`` itself, or the images of the folder ``path`` sorted by name; a clear error if
    there is nothing to predict."""
    if not path.exists():
        raise InputError(f"--image {path} does not exist: pass an image file or a folder of images.")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise InputError(f"the folder {path} holds no image ({', '.join(EXTENSIONS)}): pass an image file or a "
                         "folder of images.")
    return files


def _reason(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def readable_images(files: Sequence[Path]) -> tuple[list[Path], list[tuple[int, int]], list[tuple[Path, str]]]:
    """``(files that decode, their (H, W), [(file, why not)] for the others)``."""
    def check(path: Path) -> tuple[int, int] | str:
        try:
            return load_rgb(path, orient=True).shape[:2]
        except Exception as e:  # any decoding failure of a user file skips it
            return _reason(e)

    with ThreadPoolExecutor(max(1, min(default_threads(), 8))) as pool:
        results = list(pool.map(check, files))
    good, sizes, bad = [], [], []
    for path, res in zip(files, results):
        if isinstance(res, str):
            bad.append((path, res))
        else:
            good.append(path)
            sizes.append(res)
    return good, sizes, bad


def output_stems(files: Sequence[Path]) -> list[str]:
    """The output name of each file: its stem, or ``stem_ext`` when two files share a stem."""
    count: dict[str, int] = {}
    for p in files:
        count[p.stem] = count.get(p.stem, 0) + 1
    return [p.stem if count[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}" for p in files]


# ------------------------------------------------------------------------------ outputs


def output_names(task: str, stems: Sequence[str]) -> list[str]:
    """The file names written for ``stems`` (the prediction and its overlay / preview)."""
    extra = "_overlay" if task == SEG else "_preview"
    return [name for stem in stems for name in (f"{stem}.png", f"{stem}{extra}.png")]


def _written_before(out: Path) -> set[str]:
    try:
        return set(json.loads((out / WRITTEN).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def check_outputs(out: Path, names: Sequence[str], inputs: Sequence[Path], overwrite: bool = False) -> None:
    """A clear error before anything is written when an output name would replace an input image
    (always refused), or a file of ``out`` that predict did not write (unless ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: pass a folder to write the predictions into.")
    if not out.is_dir():
        return
    given = {os.path.realpath(p) for p in inputs}
    ours = _written_before(out)
    for name in names:
        target = out / name
        if os.path.realpath(target) in given:
            raise InputError(f"--out {out} would replace the input image {target} with a prediction: pass another "
                             "--out folder than the images' one.")
        if name not in ours and (target.exists() or target.is_symlink()) and not overwrite:
            raise InputError(f"--out {out} already holds {name}, which predict did not write: pass another --out "
                             "folder, or --overwrite to replace it.")


def _record_written(out: Path, names: Sequence[str]) -> None:
    """Adds ``names`` to ``out``'s record of the files predict wrote (before they are written)."""
    files = sorted(_written_before(out) | set(names))
    tmp = out / f"{WRITTEN}.tmp{os.getpid()}"
    tmp.write_text(json.dumps({"files": files}, indent=0) + "\n")
    tmp.replace(out / WRITTEN)


def overlay_with_legend(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """``image [H, W, 3]`` with the colours of ``labels [H, W]`` blended at :data:`ALPHA`, above
    a legend of the classes present (white fills the right side when the legend is wider)."""
    colours = visualize.palette(max(len(class_names), 1))
    top = visualize.overlay_labels(image, labels, colours, ALPHA, ignore_index=-1)
    present = [int(k) for k in np.unique(labels) if 0 <= k < len(class_names)]
    return visualize.above(top, visualize.legend([(class_names[k], colours[k]) for k in present], image.shape[1]))


def save_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    """Class ids as a palette PNG (mode P, :func:`visualize.palette`), or 16-bit grey beyond 256."""
    if num_classes > 256:
        Image.fromarray(labels.astype(np.uint16)).save(path, format="PNG")
        return
    im = Image.fromarray(labels.astype(np.uint8), mode="L")
    im.putpalette(visualize.palette(max(num_classes, 1)).reshape(-1).tolist())  # L -> P
    im.save(path, format="PNG")


def save_depth(path: Path, depth: np.ndarray) -> None:
    """Depth in metres as a uint16 PNG in millimetres (0 = none, 65535 = 65.5 m or more)."""
    mm = np.clip(np.rint(np.asarray(depth, np.float64) * 1000.0), 0, 65535).astype(np.uint16)
    Image.fromarray(mm).save(path, format="PNG")


def write_prediction(trained: TrainedModel, out: Path, stem: str, image: np.ndarray, pred: np.ndarray
                     ) -> list[Path]:
    """The two PNGs of one image (see the module docstring); returns their paths."""
    main = out / f"{stem}.png"
    if trained.task == SEG:
        save_labels(main, pred, len(trained.class_names))
        extra = visualize.save_png(out / f"{stem}_overlay.png", overlay_with_legend(image, pred, trained.class_names))
    else:
        save_depth(main, pred)
        extra = visualize.save_png(out / f"{stem}_preview.png", visualize.colorize_depth(pred))
    return [main, extra]


def predict_files(trained: TrainedModel, files: Sequence[Path], sizes: Sequence[tuple[int, int]], out: Path
                  ) -> int:
    """Predicts every file (checked readable, of size ``sizes``) and writes its PNGs into
    ``out`` (process 0); returns how many images were written."""
    writer = jax.process_index() == 0
    decoded: dict[int, np.ndarray] = {}  # this process's images of the current batch, for the overlays

    def load(i: int) -> np.ndarray:
        image = load_rgb(files[i], orient=True)
        if writer:
            decoded[i] = image
        return image

    stems = output_stems(files)
    source = ImageSource(trained.task, sizes, load, [str(f) for f in files], trained.model.config.ignore_index)
    try:
        if writer:
            out.mkdir(parents=True, exist_ok=True)
            _record_written(out, output_names(trained.task, stems))
        written = 0
        for i, pred in trained.iter_predict(source):
            if writer:
                image = decoded.pop(i, None)
                image = image if image is not None else load_rgb(files[i], orient=True)
                write_prediction(trained, out, stems[i], image, pred)
            written += 1
    except OSError as e:  # a read-only or full --out is the machine's, not a bug
        if (err := output_error(e, f"--out {out}", "the predictions")) is None:
            raise
        raise err from e
    return written


def main(config: ConfigDict, workdir: str, flag_values: dict) -> None:
    path, out = Path(flag_values["image"]).expanduser(), Path(flag_values["out"]).expanduser()
    listed = list_images(path)
    good, sizes, bad = readable_images(listed)
    if path.is_file() and bad:
        raise InputError(f"the image {path} cannot be read ({bad[0][1]}).")
    for file, why in bad:
        log_line(f"skipped {file}: {why}")
    if not good:
        raise InputError(f"none of the {len(bad)} images in {path} can be read: nothing was written.")
    overwrite = bool(flag_values.get("overwrite"))
    check_outputs(out, [f"{stem}.png" for stem in output_stems(good)], listed, overwrite)  # before the model loads
    check_writable(out, "the predictions", f"--out {out}")
    trained = load_trained(workdir, flag_values.get("checkpoint") or None, config=config)
    check_outputs(out, output_names(trained.task, output_stems(good)), listed, overwrite)
    written = predict_files(trained, good, sizes, out)
    log_line(f"wrote the predictions of {written} image{'s' * (written != 1)} "
             f"(step {trained.step}, {trained.protocol.mode}) to {out}")


def _define_flags() -> None:
    flags.DEFINE_string("image", None, "An image file or a folder of images (jpg, jpeg, png, bmp, webp).")
    flags.DEFINE_string("out", None, "The folder to write the predictions into (created if missing).")
    flags.DEFINE_string("checkpoint", None, "A checkpoint step folder (WORKDIR/checkpoints/STEP) or a folder of "
                        "them; default: the latest step in WORKDIR/checkpoints.")
    flags.DEFINE_bool("overwrite", False, "Replace files of --out that predict did not write (an input image is "
                      "never replaced).")
    flags.mark_flag_as_required("image")
    flags.mark_flag_as_required("out")


def entry() -> None:
    """The console script (the same as ``python -m iedp_jax.predict``)."""
    run(main, _define_flags, user_errors=(WeightsError,), config_from_workdir=read_config, configs=CONFIGS)


if __name__ == "__main__":
    entry()
