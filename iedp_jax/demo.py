"""A trained IEDP run in the browser:
``python -m iedp_jax.demo --workdir RUN [--checkpoint C] [--port P] [--host 127.0.0.1] [--share]``.

Upload a photo; the run predicts it with its own classes (:func:`iedp_jax.load_trained`: the
run's ``config.json``, ``run.json`` and latest checkpoint, no dataset): segmentation shows the
class colours over the photo with a legend of the classes present, depth a viridis preview with a
colour bar in metres. Segmentation offers the run's single-scale protocol (sliding window) or its
multi-scale protocol (``eval.scales`` x flip); depth runs its windows + flip protocol. The workdir
of the README's first command (``--config smoke_seg``) is enough to try it.

Compilations. The protocols compile once per input shape, so the photo is resized to a
canonical size of its aspect-ratio bucket (:func:`iedp_jax.infra.webapp.aspect_size`: 1:1, 5:4,
4:3, 3:2, 16:9, 2:1, 5:2, 3:1, either orientation, at the protocol's short side) and the
prediction is resized back to the photo (nearest for classes, bilinear for depth): one compile
per (protocol, bucket), at most a few percent of stretch.

Bad input (no image, an undecodable upload, an unknown protocol) is one sentence in the status
box; a photo with a side above ``--max-side`` is downscaled with a note. The launch, queue,
uploads and error display are :mod:`iedp_jax.infra.webapp`'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from iedp_jax.eval.plan import protocol_from_config
from iedp_jax.eval.runner import make_protocol_steps
from iedp_jax.infra import visualize, webapp
from iedp_jax.infra.errors import ConfigError, UserError
from iedp_jax.model import SEG
from iedp_jax.sd.weights import WeightsError
from iedp_jax.trained import TrainedModel, load_trained

__all__ = ["IEDPDemo", "build_blocks", "main"]

ALPHA = 0.5
SINGLE, MULTISCALE = "single", "multiscale"


class IEDPDemo:
    """The demo's state: the trained model (one per protocol, sharing the parameters) and the
    request handler :meth:`predict` (a plain function: the tests call it without a browser)."""

    def __init__(self, trained: TrainedModel, max_side: int = webapp.MAX_SIDE) -> None:
        self.trained, self.max_side = trained, int(max_side)
        self.modes = (SINGLE, MULTISCALE) if trained.task == SEG else (SINGLE,)
        self._models = {trained.protocol.mode: trained}
        self._lock = threading.Lock()
        self.shapes: set[tuple[str, tuple[int, int]]] = set()   # (mode, canonical size) predicted

    @property
    def default_mode(self) -> str:
        return self.trained.protocol.mode

    def model(self, mode: str) -> TrainedModel:
        """The trained model under protocol ``mode`` (the run's eval section, another mode)."""
        if mode not in self.modes:
            raise ConfigError(f"protocol {mode!r} is not one of {', '.join(self.modes)} for this "
                              f"{'segmentation' if self.trained.task == SEG else 'depth'} run.")
        if mode not in self._models:
            base = self.trained
            config = base.config.copy_and_resolve_references()
            config.eval.mode = mode
            protocol = protocol_from_config(config, base.task)
            steps = make_protocol_steps(base.model, protocol, base.mesh, float(config.data.min_depth))
            self._models[mode] = dataclasses.replace(base, config=config, protocol=protocol, steps=steps)
        return self._models[mode]

    def canonical_size(self, model: TrainedModel, hw: tuple[int, int]) -> tuple[int, int]:
        """The size the photo is predicted at (one compiled shape per aspect bucket)."""
        p = model.protocol
        short = int(p.img_scale[1]) if model.task == SEG else int(min(p.crop))
        return webapp.aspect_size(hw, short)

    def predict(self, image: Any, mode: str | None = None) -> tuple[np.ndarray, list[str], bool]:
        """(picture, status lines, whether a new shape was compiled) for one upload.

        Raises:
          UserError: one sentence; the demo stays usable.
        """
        started = time.perf_counter()
        mode = mode or self.default_mode
        upload = webapp.decode_upload(image, self.max_side)
        photo = upload.image
        with self._lock:
            model = self.model(mode)
            size = self.canonical_size(model, photo.shape[:2])
            fresh = (mode, size) not in self.shapes
            resized = np.asarray(Image.fromarray(photo).resize((size[1], size[0]), Image.BILINEAR))
            t0 = time.perf_counter()
            pred = model.predict([resized])[0]
            run_s = time.perf_counter() - t0
            self.shapes.add((mode, size))
        h, w = photo.shape[:2]
        if model.task == SEG:
            labels = np.asarray(Image.fromarray(pred.astype(np.int32)).resize((w, h), Image.NEAREST))
            picture = _overlay(photo, labels, model.class_names)
            present = [model.class_names[k] for k in np.unique(labels) if 0 <= k < len(model.class_names)]
            what = f"classes present: {', '.join(present) or 'none'}"
        else:
            depth = np.asarray(Image.fromarray(pred.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
            picture, what = _depth_preview(depth)
        status = [f"{mode} protocol at {size[1]}x{size[0]}: {run_s:.2f} s"
                  + (" (a new shape: compiled first)" if fresh else "")
                  + f", {time.perf_counter() - started:.2f} s in all; {what}."]
        status += [f"Note: {n}" for n in upload.notes]
        return picture, status, fresh

    def handle(self, image: Any, mode: str | None) -> tuple[Any, str]:
        """The gradio event: (picture, status); a user error is the status."""
        def run() -> tuple[Any, str]:
            picture, status, _ = self.predict(image, mode)
            return picture, webapp.status_text(status)

        return webapp.on_page(run, 1, (WeightsError,))()

    def header(self) -> str:
        t = self.trained
        task = "segmentation" if t.task == SEG else "depth"
        classes = (f" Classes: {', '.join(t.class_names)}." if t.task == SEG and len(t.class_names) <= 40
                   else f" {len(t.class_names)} classes." if t.task == SEG else "")
        return (f"# IEDP: {task}\n\nRun `{t.workdir}`, step {t.step} (`{t.checkpoint}`).{classes} Upload a photo "
                f"and predict; uploads above {self.max_side} px are downscaled.")


def _overlay(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    colours = visualize.palette(max(len(class_names), 1))
    top = visualize.overlay_labels(image, labels, colours, ALPHA, ignore_index=-1)
    present = [int(k) for k in np.unique(labels) if 0 <= k < len(class_names)]
    return visualize.above(top, visualize.legend([(class_names[k], colours[k]) for k in present], image.shape[1]))


def _depth_preview(depth: np.ndarray) -> tuple[np.ndarray, str]:
    ok = np.isfinite(depth) & (depth > 0)
    lo, hi = (float(depth[ok].min()), float(depth[ok].max())) if ok.any() else (0.0, 1.0)
    picture = visualize.above(visualize.colorize_depth(depth, lo, hi),
                              webapp.colour_bar(lo, hi, depth.shape[1]))
    return picture, f"depth {lo:.2f} to {hi:.2f} m"


def build_blocks(demo: IEDPDemo) -> Any:
    """The gradio page (an ``api_name='predict'`` endpoint: image, protocol -> picture, status)."""
    gr = webapp.require_gradio()
    with gr.Blocks(title="IEDP demo", analytics_enabled=False) as blocks:
        gr.Markdown(demo.header())
        with gr.Row():
            with gr.Column():
                image = webapp.safe_image(gr, label="Photo")
                mode = gr.Radio(list(demo.modes), value=demo.default_mode, label="Protocol")
                button = gr.Button("Predict", variant="primary")
            with gr.Column():
                status = gr.Markdown()
                picture = gr.Image(label="Prediction", type="numpy", format="png")
        button.click(demo.handle, [image, mode], [picture, status], api_name="predict")
    return blocks


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m iedp_jax.demo",
                                description="A trained IEDP run in the browser (gradio): upload a photo, see its "
                                            "segmentation or depth.")
    p.add_argument("--workdir", required=True, help="a training workdir (config.json, run.json, checkpoints/)")
    p.add_argument("--checkpoint", default=None,
                   help="a checkpoint step folder (default: the latest in WORKDIR/checkpoints)")
    webapp.add_server_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: serves until interrupted; 1 with one ``error:`` sentence on a user error."""
    args = _parser().parse_args(argv)
    try:
        webapp.check_server_args(args)
        webapp.require_gradio()  # before the model loads
        trained = load_trained(Path(args.workdir).expanduser(), args.checkpoint or None)
        demo = IEDPDemo(trained, args.max_side)
        blocks = build_blocks(demo)
    except (UserError, WeightsError) as e:  # anything else is a bug: keep its traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    webapp.launch(blocks, args.host, args.port, args.share, args.concurrency, args.max_queue)
    return 0


if __name__ == "__main__":
    sys.exit(main())
