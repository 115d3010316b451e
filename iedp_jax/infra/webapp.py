"""The method-agnostic pieces of the browser demos (``python -m diffseg_jax.demo``,
``python -m iedp_jax.demo``): launching a gradio app with safe defaults, uploads decoded and
downscaled, user errors shown on the page, and a few drawing helpers.

- Launch (:func:`launch`, :func:`add_server_args`): the server listens on 127.0.0.1 unless asked
  otherwise; ``--host 0.0.0.0`` or ``--share`` print a warning line (:func:`exposure_warnings`).
  Requests go through gradio's queue with a bounded concurrency (default 1: one request on the
  device at a time, so two users cannot run it out of memory) and a bounded queue length.
- Uploads (:func:`decode_upload`): a file path (what the upload component hands over), bytes or
  an array become uint8 RGB ``[H, W, 3]``, turned upright by their EXIF orientation; an image
  larger than ``max_side`` is downscaled with a note, one beyond ``max_pixels`` or one that does
  not decode is an :class:`~iedp_jax.infra.errors.InputError` sentence.
- Errors (:func:`on_page`): a handler's :class:`~iedp_jax.infra.errors.UserError` (or another
  type the app names) becomes a message in the page's status box and empty outputs; the next
  request runs as usual. Anything else is a bug and keeps its traceback (gradio shows an error).
- Compilations (:class:`CompileWatch`): counts JAX tracing / compilation events during a request,
  so an app can say (and a test can check) whether a request compiled.

gradio is an optional dependency (the ``demo`` extra); it is imported only by
:func:`require_gradio`, so the helpers here run without it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from iedp_jax.infra.errors import ConfigError, InputError, MissingDependency, UserError
from iedp_jax.infra.images import load_rgb
from iedp_jax.infra.visualize import VIRIDIS, apply_colormap

LOCAL_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_SIDE = 1024              # uploads with a longer side are downscaled (with a note)
MAX_PIXELS = 64_000_000      # uploads beyond this many pixels are refused (decoding alone would take GBs)
MAX_FILE_SIZE = "64mb"       # gradio refuses larger uploads before they reach a handler
CONCURRENCY = 1              # requests on the device at once
MAX_QUEUE = 16               # requests waiting; more are turned away by gradio
ERROR_PREFIX = "**Error:** "

__all__ = ["CONCURRENCY", "DEFAULT_PORT", "ERROR_PREFIX", "LOCAL_HOST", "MAX_PIXELS", "MAX_SIDE", "CompileWatch",
           "Upload", "add_server_args", "aspect_size", "colour_bar", "decode_upload", "default_cache_dir",
           "check_server_args", "downscale", "exposure_warnings", "launch", "on_page", "quiet_logger", "require_gradio",
           "safe_image", "status_text"]


# ------------------------------------------------------------------------------ gradio


def require_gradio() -> Any:
    """The gradio module, or a :class:`MissingDependency` sentence saying how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine unasked
    try:
        import gradio  # noqa: PLC0415 - optional: the [demo] extra
    except ImportError as e:
        raise MissingDependency(f"the demo needs gradio ({e}): pip install 'iedp-jax[demo]'.") from None
    return gradio


def safe_image(gr: Any, **kwargs: Any) -> Any:
    """A ``gr.Image`` (``type='filepath'``) whose upload never fails inside gradio: a file that
    PIL cannot open is handed to the handler as its path, so :func:`decode_upload` turns it into
    a message on the page instead of gradio's generic error."""

    kwargs.setdefault("sources", ["upload", "webcam", "clipboard"])
    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    preprocess = component.preprocess

    def tolerant(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except Exception:  # an undecodable or oversized upload: decode_upload says why
            return None if payload is None else getattr(payload, "path", None)

    # On the instance: a gr.Image subclass would make gradio write a .pyi stub next to this file.
    component.preprocess = tolerant
    return component


# ------------------------------------------------------------------------------ launch


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """``--host``, ``--port``, ``--share``, ``--concurrency``, ``--max-queue`` and ``--max-side``."""
    parser.add_argument("--host", default=LOCAL_HOST,
                        help=f"address to listen on ({LOCAL_HOST}: this machine only; 0.0.0.0 exposes the demo to "
                             "the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port ({DEFAULT_PORT}; 0 = the first free one from {DEFAULT_PORT})")
    parser.add_argument("--share", action="store_true",
                        help="also serve through a public gradio.live link (anyone with the link can use it)")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY,
                        help=f"requests run at once ({CONCURRENCY}); the others wait in the queue")
    parser.add_argument("--max-queue", type=int, default=MAX_QUEUE,
                        help=f"requests that may wait ({MAX_QUEUE}); later ones are turned away")
    parser.add_argument("--max-side", type=int, default=MAX_SIDE,
                        help=f"uploads with a longer side are downscaled to it, with a note ({MAX_SIDE})")


def check_server_args(args: argparse.Namespace) -> None:
    """A :class:`~iedp_jax.infra.errors.ConfigError` sentence for values that cannot work."""
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a port number (0..65535; 0 = any free port).")
    for flag, value in (("--concurrency", args.concurrency), ("--max-queue", args.max_queue),
                        ("--max-side", args.max_side)):
        if value < 1:
            raise ConfigError(f"{flag} {value} must be positive.")


def exposure_warnings(host: str, share: bool) -> list[str]:
    """The warning lines for a server reachable from beyond this machine (none for loopback)."""
    out = []
    if host not in (LOCAL_HOST, "localhost", "::1"):
        out.append(f"warning: listening on {host}: anyone who can reach this machine on the network can use the "
                   f"demo and its device; use --host {LOCAL_HOST} to keep it local.")
    if share:
        out.append("warning: --share serves the demo through a public gradio.live link: anyone with the link can "
                   "upload images and run the model.")
    return out


def launch(blocks: Any, host: str = LOCAL_HOST, port: int = DEFAULT_PORT, share: bool = False,
           concurrency: int = CONCURRENCY, max_queue: int = MAX_QUEUE, block: bool = True, quiet: bool = False
           ) -> str:
    """Queues ``blocks`` (``concurrency`` requests at once, ``max_queue`` waiting) and serves it;
    returns the local URL. ``block=False`` returns at once (close with ``blocks.close()``)."""
    for line in exposure_warnings(host, share):
        print(line, file=sys.stderr, flush=True)
    blocks.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    _, url, _ = blocks.launch(server_name=host, server_port=port or None, share=share, prevent_thread_lock=True,
                              max_file_size=MAX_FILE_SIZE, quiet=quiet, ssr_mode=False, show_error=True)
    if block:
        with contextlib.suppress(KeyboardInterrupt):
            blocks.block_thread()
    return url


def default_cache_dir() -> Path:
    """``$IEDP_CACHE`` or ``$XDG_CACHE_HOME/iedp_jax`` (``~/.cache/iedp_jax``): where a demo keeps
    what it writes once (the embedded default backbone)."""
    if os.environ.get("IEDP_CACHE"):
        return Path(os.environ["IEDP_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "iedp_jax"


# ------------------------------------------------------------------------------ uploads


@dataclasses.dataclass(frozen=True)
class Upload:
    """A decoded upload: ``image`` uint8 RGB ``[H, W, 3]`` (downscaled when it was huge), the
    ``original`` (H, W), and ``notes`` for the page."""

    image: np.ndarray
    original: tuple[int, int]
    notes: tuple[str, ...] = ()


def downscale(image: np.ndarray, max_side: int) -> tuple[np.ndarray, str | None]:
    """``image`` itself when its longer side is at most ``max_side``, else a copy resized
    (antialiased, aspect kept) so that it is, with a note saying so."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, None
    scale = max_side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(Image.fromarray(image).resize((nw, nh), Image.LANCZOS))
    return small, f"the {w}x{h} image was downscaled to {nw}x{nh} (--max-side {max_side})."


def decode_upload(value: Any, max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS) -> Upload:
    """An upload as an :class:`Upload`.

    Args:
      value: a file path (the upload component's), bytes, a PIL image or an array (uint8 RGB,
        grey or RGBA); None when nothing was uploaded.
      max_side: longer sides above it are downscaled, with a note.
      max_pixels: larger images are refused before they are decoded.

    Raises:
      InputError: nothing uploaded, a file that is not an image (or is truncated), an image
        beyond ``max_pixels``, or an empty one.
    """
    if value is None or (isinstance(value, str) and not value):
        raise InputError("no image: upload a photo (or paste one, or take one with the webcam) first.")
    if isinstance(value, Image.Image):
        value = np.asarray(value.convert("RGB"))
    if isinstance(value, np.ndarray):
        image = _array_rgb(value)
    else:
        image = _decode_file(io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else value, max_pixels)
    if min(image.shape[:2]) < 1:
        raise InputError(f"the image is empty ({image.shape[1]}x{image.shape[0]}): upload another one.")
    original = (int(image.shape[0]), int(image.shape[1]))
    if original[0] * original[1] > max_pixels:
        raise InputError(f"the image is {original[1]}x{original[0]}, beyond the demo's {max_pixels / 1e6:g} "
                         "megapixels: upload a smaller one.")
    image, note = downscale(image, max_side)
    return Upload(np.ascontiguousarray(image), original, (note,) if note else ())


def _decode_file(file: Any, max_pixels: int) -> np.ndarray:
    name = "the upload"
    try:
        with Image.open(file) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        raise InputError(f"{name} is too large to decode (PIL's decompression-bomb limit): upload an image of at "
                         f"most {max_pixels / 1e6:g} megapixels.") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{name} is not an image (no format PIL reads): upload a JPEG, PNG or WebP photo.") from None
    except FileNotFoundError:
        raise InputError(f"{name} is gone from the server's temporary folder: upload it again.") from None
    except Exception as e:  # not an image (or a format PIL cannot read): the user's file
        raise InputError(f"{name} is not an image that can be read ({_reason(e)}): upload a JPEG, PNG or WebP "
                         "photo.") from None
    if w * h > max_pixels:
        raise InputError(f"{name} is {w}x{h}, beyond the demo's {max_pixels / 1e6:g} megapixels: upload a smaller "
                         "image.")
    if hasattr(file, "seek"):
        file.seek(0)
    try:
        return load_rgb(file, orient=True)
    except Exception as e:  # truncated or corrupt data: the user's file
        raise InputError(f"{name} cannot be decoded ({_reason(e)}): upload another image.") from None


def _reason(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _array_rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"expected an image [H, W, 3] (or grey / RGBA), got an array of shape {a.shape}.")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and float(np.nanmax(a)) <= 1.0:
            a = np.rint(np.nan_to_num(a) * 255.0)
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.shape[-1] in (2, 4):
        a = a[..., :-1]
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def aspect_size(hw: Sequence[int], short_side: int,
                aspects: Sequence[float] = (1.0, 1.25, 4 / 3, 1.5, 16 / 9, 2.0, 2.5, 3.0)) -> tuple[int, int]:
    """A canonical ``(h, w)`` for an image of size ``hw``: the nearest aspect ratio of ``aspects``
    (long / short, same orientation) at ``short_side``. A model compiled per input shape then
    compiles once per aspect bucket, whatever the uploads' sizes."""
    h, w = int(hw[0]), int(hw[1])
    ratio = max(h, w) / max(min(h, w), 1)
    best = min(aspects, key=lambda a: abs(np.log(a / ratio)))
    long = max(int(round(short_side * best)), short_side)
    return (short_side, long) if h <= w else (long, short_side)


# ------------------------------------------------------------------------------ errors


def status_text(lines: Sequence[str]) -> str:
    """The page's status box: one Markdown paragraph per line."""
    return "\n\n".join(str(line) for line in lines if line)


def on_page(handler: Callable[..., tuple], num_outputs: int,
            user_errors: tuple[type[BaseException], ...] = ()) -> Callable[..., tuple]:
    """``handler`` (returning its ``num_outputs`` outputs and then the status text) with user
    errors shown on the page: a :class:`~iedp_jax.infra.errors.UserError` (or one of
    ``user_errors``) gives ``num_outputs`` Nones and ``**Error:** <sentence>`` as the status.
    Other exceptions propagate (bugs keep their tracebacks)."""

    def wrapped(*args: Any) -> tuple:
        try:
            return handler(*args)
        except (UserError, *user_errors) as e:
            return (None,) * num_outputs + (ERROR_PREFIX + str(e),)

    wrapped.__name__ = getattr(handler, "__name__", "handler")
    wrapped.__doc__ = handler.__doc__
    return wrapped


# ------------------------------------------------------------------------------ compilations

_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration")
_count = [0]
_listening = threading.Lock()
_registered = [False]


def _listener(event: str, duration: float, **kwargs: Any) -> None:
    if event in _EVENTS:
        _count[0] += 1


class CompileWatch:
    """Counts JAX tracing and backend compilations (of the whole process) while inside.

        with CompileWatch() as watch:
            run()
        watch.compiles   # 0 when every program was already compiled
    """

    def __init__(self) -> None:
        with _listening:
            if not _registered[0]:
                jax.monitoring.register_event_duration_secs_listener(_listener)
                _registered[0] = True
        self._start = 0
        self.compiles = 0

    def __enter__(self) -> CompileWatch:
        self._start = _count[0]
        return self

    def __exit__(self, *exc: Any) -> None:
        self.compiles = _count[0] - self._start


@contextlib.contextmanager
def quiet_logger(name: str, level: int) -> Iterator[None]:
    """``logging.getLogger(name)`` at ``level`` or above while inside (e.g. the tokenizer's
    "sequence too long" warning, which the app says in its own words)."""
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(max(level, old))
    try:
        yield
    finally:
        logger.setLevel(old)


# ------------------------------------------------------------------------------ drawing


def colour_bar(vmin: float, vmax: float, width: int, unit: str = "m", height: int = 14) -> np.ndarray:
    """A white strip ``[h, width, 3]`` uint8: the viridis scale from ``vmin`` (left) to ``vmax``
    (right) with both values written under it (PIL's default font)."""
    width = max(int(width), 120)
    bar = apply_colormap(np.broadcast_to(np.linspace(0.0, 1.0, width - 12, dtype=np.float32), (height, width - 12)),
                         VIRIDIS)
    font = ImageFont.load_default()
    strip = Image.new("RGB", (width, height + 24), (255, 255, 255))
    strip.paste(Image.fromarray(bar), (6, 4))
    draw = ImageDraw.Draw(strip)
    low, high = f"{vmin:.2f} {unit}", f"{vmax:.2f} {unit}"
    draw.text((6, height + 8), low, fill=(0, 0, 0), font=font)
    right = font.getbbox(high)[2]
    draw.text((width - 6 - right, height + 8), high, fill=(0, 0, 0), font=font)
    return np.asarray(strip)
