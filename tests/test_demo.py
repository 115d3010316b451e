"""The browser demos: ``python -m diffseg_jax.demo`` and ``python -m iedp_jax.demo``.

The request handlers are plain functions (no browser): the DiffSegmenter demo on the embedded
default (the tiny random pipeline) compiles once per (size, class bucket), answers bad input with
one sentence and keeps working; the IEDP demo predicts a tiny run's classes. One test serves the
page on 127.0.0.1 and calls it over HTTP with gradio_client.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffseg_jax import demo as diffseg_demo
from diffseg_jax.demo import DiffSegDemo, class_buckets, parse_class_list
from iedp_jax.infra import webapp
from iedp_jax.infra.errors import ConfigError, InputError
from iedp_jax.infra.webapp import CompileWatch, decode_upload
from iedp_jax.sd.tiny import write_tiny_backbone
from tests.helpers import quick_compile, small


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return write_tiny_backbone(tmp_path_factory.getbasetemp() / "diffseg_tiny_sd")


@pytest.fixture(scope="module")
def seg_demo(tiny_sd) -> DiffSegDemo:
    """The demo on the embedded default, its bucket-4 program at the native 64 px compiled once."""
    demo = DiffSegDemo(tiny_sd, embedded=True, max_side=96)
    with quick_compile():
        first = demo.segment(_photo(60, 80), "red, blue")
    assert first.compiled and "compiled first" in first.status[0]
    return demo


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------ method-agnostic pieces


def test_webapp_helpers(tmp_path):
    assert webapp.exposure_warnings("127.0.0.1", False) == []
    assert len(webapp.exposure_warnings("0.0.0.0", False)) == 1
    assert len(webapp.exposure_warnings("127.0.0.1", True)) == 1
    assert class_buckets(32) == (4, 8, 16, 32) and class_buckets(20) == (4, 8, 16, 20) and class_buckets(3) == (3,)
    assert parse_class_list(" cat,  potted   plant ,sofa") == ["cat", "potted plant", "sofa"]
    assert webapp.aspect_size((480, 640), 64) == (64, 85) and webapp.aspect_size((700, 500), 64) == (85, 64)
    assert webapp.colour_bar(0.5, 3.0, 200).shape[1] == 200
    # files as uploads: 16-bit grey, RGBA, a huge one downscaled with a note, one beyond the pixel limit
    Image.fromarray(np.full((20, 30), 65535, np.uint16)).save(tmp_path / "grey16.png")
    Image.fromarray(np.zeros((20, 30, 4), np.uint8)).save(tmp_path / "rgba.png")
    Image.fromarray(_photo(300, 400)).save(tmp_path / "big.jpg")
    assert decode_upload(str(tmp_path / "grey16.png")).image.max() == 255
    assert decode_upload(str(tmp_path / "rgba.png")).image.shape == (20, 30, 3)
    big = decode_upload(str(tmp_path / "big.jpg"), max_side=100)
    assert big.image.shape == (75, 100, 3) and big.original == (300, 400) and "downscaled to 100x75" in big.notes[0]
    with pytest.raises(InputError, match="megapixels"):
        decode_upload(str(tmp_path / "big.jpg"), max_pixels=10_000)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    for bad in (None, "", b"not an image", str(tmp_path / "broken.png"), str(tmp_path / "gone.png")):
        with pytest.raises(InputError):
            decode_upload(bad)


# ------------------------------------------------------------------------------ DiffSegmenter


def test_segment_gives_overlay_label_map_and_heat_maps_at_the_photo_size(seg_demo):
    r = seg_demo.segment(_photo(50, 70, seed=1), "cat, sofa, plant", caption="a cat on a sofa", threshold=0.3)
    assert r.overlay.shape[1] >= 70 and r.overlay.shape[0] > 50  # the photo above its legend
    assert r.label_map.shape == (50, 70, 3) and r.labels.shape == (50, 70) and r.maps.shape == (3, 50, 70)
    assert r.labels.min() >= 0 and r.labels.max() <= 3 and 0.0 <= r.maps.min() <= r.maps.max() <= 1.0
    assert [name for _, name in r.heat_maps] == ["cat", "sofa", "plant"]
    assert all(im.shape[:2][1] == 70 for im, _ in r.heat_maps)
    assert any("embedded default" in line for line in r.status)
    assert "embedded default" in seg_demo.header()


def test_a_new_class_list_of_the_same_bucket_does_not_compile_again(seg_demo):
    programs = set(seg_demo.programs)
    with CompileWatch() as watch:  # 1 -> 4 classes (bucket 4), another photo size, template, seed
        for classes, hw, template in (("dots", (40, 90), "voc"), ("red, green, blue, dots", (64, 64), "context"),
                                      ("square, stripes, checkers", (90, 30), "coco")):
            r = seg_demo.segment(_photo(*hw, seed=2), classes, template=template, threshold=0.6, seed=3)
            assert not r.compiled and r.labels.shape == hw
    assert watch.compiles == 0, "a request of a compiled (size, bucket) traced or compiled again"
    assert seg_demo.programs == programs


def test_bad_input_is_a_message_and_the_next_request_works(seg_demo, tmp_path):
    photo = _photo(40, 40, seed=4)
    (tmp_path / "junk.png").write_bytes(b"definitely not a png")
    bad = [
        ((photo, ""), "no class to segment"),
        ((photo, " , "), "no class to segment"),
        ((photo, "cat,,sofa"), "is empty"),
        ((photo, "cat, Cat"), "listed twice"),
        ((photo, ",".join(f"c{i}" for i in range(33))), "more than this demo's 32"),
        ((photo, "cat", None, 1.5), "outside [0, 1]"),
        ((photo, "cat", None, -0.1), "outside [0, 1]"),
        ((photo, "cat", None, float("nan")), "outside [0, 1]"),
        ((None, "cat"), "no image"),
        ((str(tmp_path / "junk.png"), "cat"), "not an image"),
        ((photo, "cat", None, 0.5, 48), "image size 48 is not one of"),
        ((photo, "cat", None, 0.5, 64, "ade"), "template 'ade'"),
    ]
    for args, words in bad:
        args = args + (None, 0.5, 64, "voc", None, 0)[len(args) - 2:]
        overlay, label_map, heat, status = seg_demo.handle(*args)
        assert overlay is None and label_map is None and heat is None, args
        assert status.startswith(webapp.ERROR_PREFIX) and words in status, (args, status)
        overlay, _, heat, status = seg_demo.handle(photo, "cat, sofa", None, 0.5, 64, "voc", None, 0)
        assert overlay is not None and len(heat) == 2 and webapp.ERROR_PREFIX not in status
    big = seg_demo.segment(_photo(150, 200, seed=5), "cat")  # max_side 96: downscaled, with a note
    assert big.labels.shape == (72, 96) and any("downscaled to 96x72" in line for line in big.status)


def test_the_command_line_says_what_is_wrong(tmp_path, capsys):
    pytest.importorskip("gradio")
    assert diffseg_demo.main(["--pretrained", str(tmp_path / "missing")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    assert diffseg_demo.main(["--port", "70000"]) == 1
    assert "not a port number" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--max-classes 0 must be positive"):
        DiffSegDemo(tmp_path / "not_loaded", max_classes=0)  # refused before any weight is read


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword)")  # gradio's queue, on pandas 3
def test_the_page_is_served_on_localhost_and_answers_over_http(seg_demo, tmp_path):
    """The gradio page on 127.0.0.1: the HTML, then the segment endpoint through gradio_client:
    a photo + "cat,sofa" gives an image at least the photo's size; an empty class list a message,
    and the next call works."""
    pytest.importorskip("gradio")
    import httpx
    from gradio_client import Client, handle_file

    blocks = diffseg_demo.build_blocks(seg_demo)
    url = webapp.launch(blocks, port=_free_port(), block=False, quiet=True)
    try:
        assert url.startswith("http://127.0.0.1:")
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and "DiffSegmenter" in page.text
        Image.fromarray(_photo(60, 80, seed=6)).save(tmp_path / "photo.png")
        client = Client(url, verbose=False)
        args = dict(caption="", threshold=0.5, image_size=64, template="voc", dtype="float32", seed=0,
                    api_name="/segment")
        overlay, label_map, heat, status = client.predict(handle_file(str(tmp_path / "photo.png")), "cat,sofa",
                                                          **args)
        with Image.open(overlay) as im:
            assert im.size[0] >= 80 and im.size[1] >= 60, im.size
        assert len(heat) == 2 and webapp.ERROR_PREFIX not in status
        *outputs, status = client.predict(handle_file(str(tmp_path / "photo.png")), "", **args)
        assert outputs[0] is None and "no class to segment" in status
        (tmp_path / "junk.png").write_bytes(b"not a png at all")  # gradio's own decoding would fail first
        *outputs, status = client.predict(handle_file(str(tmp_path / "junk.png")), "sofa", **args)
        assert outputs[0] is None and "not an image" in status
        overlay, *_ = client.predict(handle_file(str(tmp_path / "photo.png")), "sofa", **args)
        assert overlay is not None
    finally:
        blocks.close()


# ------------------------------------------------------------------------------ IEDP


def _tiny_run(workdir: Path, tiny_sd: Path) -> Path:
    """A seg workdir as training leaves it (config.json, run.json, the initial state saved as
    checkpoint 1) on the shared tiny backbone, without training or the memory guard's compile."""
    import jax

    from iedp_jax.data.pipeline import train_iterator
    from iedp_jax.infra import sharding
    from iedp_jax.infra.checkpoint import Checkpointer
    from iedp_jax.run_files import write_run_files
    from iedp_jax.trainer import build_trainer

    cfg = small("smoke_seg", **{"train.memory_guard": False, "model.tiny_backbone": False,
                                "model.pretrained": str(tiny_sd), "model.clip_vision": str(tiny_sd / "image_encoder")})
    t = build_trainer(cfg, workdir, sharding.make_mesh((1, 1), jax.devices()[:1]))
    ckpt = Checkpointer(workdir / "checkpoints", cfg.train.ckpt_every, cfg.train.keep_checkpoints)
    batches = train_iterator(t.dataset, cfg.train.batch_size, slice(None), num_steps=2, start_step=1, num_threads=0)
    ckpt.save(1, t.state, batches, t.dataset.state(1), force=True)
    ckpt.close()
    write_run_files(workdir, cfg, t.dataset)
    return workdir


def test_iedp_demo_predicts_the_runs_classes(tiny_sd, tmp_path_factory, tmp_path):
    from iedp_jax import demo as iedp_demo
    from iedp_jax import load_trained

    workdir = _tiny_run(tmp_path_factory.mktemp("demo_run"), tiny_sd)
    demo = iedp_demo.IEDPDemo(load_trained(workdir), max_side=120)
    assert demo.modes == ("single", "multiscale") and "red square" in demo.header()
    with quick_compile():
        picture, status, fresh = demo.predict(_photo(60, 80, seed=7))
    assert fresh and picture.shape[1] >= 80 and picture.shape[0] > 60 and "classes present" in status[0]
    with CompileWatch() as watch:  # another size of the same aspect bucket, downscaled: no compile
        picture, status, fresh = demo.predict(_photo(150, 200, seed=8))
    assert watch.compiles == 0 and not fresh and picture.shape[1] >= 120
    assert any("downscaled to 120x90" in line for line in status)
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    for image, mode, words in ((None, None, "no image"), (str(tmp_path / "junk.jpg"), None, "not an image"),
                               (_photo(60, 80), "fast", "protocol 'fast'")):
        out, message = demo.handle(image, mode)
        assert out is None and message.startswith(webapp.ERROR_PREFIX) and words in message
    out, message = demo.handle(_photo(60, 80, seed=9), "single")
    assert out is not None and webapp.ERROR_PREFIX not in message
    pytest.importorskip("gradio")
    iedp_demo.build_blocks(demo)  # the page builds (the launch is the DiffSegmenter test's)
    assert iedp_demo.main(["--workdir", str(tmp_path / "no_run")]) == 1
