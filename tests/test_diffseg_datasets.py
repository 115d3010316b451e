"""DiffSegmenter benchmarks: the three folder layouts and their tfds copies, the running-best
arithmetic of the evaluation, and ``diffseg_jax.evaluate`` on tiny fake copies (tiny backbone,
64 px) against the pipeline. The shipped configs through the command line: test_diffseg_configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from diffseg_jax.attention import label_map
from diffseg_jax.builders import BUILDERS, make_prepared_dataset
from diffseg_jax.config import default_config
from diffseg_jax.datasets import COCO_OBJECT_CLASSES, CONTEXT_CLASSES, VOC_CLASSES, SegDataset, make_dataset
from diffseg_jax.evaluate import evaluate, labels_at, update_best
from diffseg_jax.filtering import load_clip_filter
from iedp_jax.infra.errors import ConfigError, DatasetError
from iedp_jax.infra.files import DiskPairs
from iedp_jax.infra.metrics import confusion_matrix, segmentation_metrics
from iedp_jax.infra.tfds import RecordPairs
from iedp_jax.sd.tiny import write_tiny_backbone
from tests.fakes import DIFFSEG_WRITERS, write_coco, write_tiny_clip, write_voc

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"voc": [(48, 64)] * 3, "context": [(48, 64), (40, 56), (48, 64)], "coco": [(44, 64), (48, 60), (48, 64)]}
NUM_CLASSES = {"voc": 21, "context": 60, "coco": 81}


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    base = tmp_path_factory.mktemp("diffseg_data")
    return {name: DIFFSEG_WRITERS[name](base / name, 3, sizes, seed=i) for i, (name, sizes) in enumerate(SIZES.items())}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return write_tiny_backbone(tmp_path_factory.getbasetemp() / "diffseg_tiny_sd")


# ----------------------------------------------------------------------------------------------
# Layouts.


def test_fake_layouts_load(fake):
    for name, classes in (("voc", VOC_CLASSES), ("context", CONTEXT_CLASSES), ("coco", COCO_OBJECT_CLASSES)):
        ds = make_dataset(name, fake[name])
        assert ds.num_images == 3 and ds.class_names == classes and len(classes) == NUM_CLASSES[name]
        assert classes[0] == "background" and len(ds.prompt_names) == len(classes) - 1
        assert isinstance(ds.files, DiskPairs)
        for i in range(3):
            image, label, ident = ds.load(i)
            assert image.dtype == np.uint8 and image.shape == SIZES[name][i] + (3,)
            assert label.dtype == np.uint8 and label.shape == SIZES[name][i]
            assert ds.size(i) == SIZES[name][i] and ident == ds.name(i) and ds.file_name(i) == ident + ".jpg"
            values = set(np.unique(label).tolist())
            assert 0 in values and len(values - {0, 255}) >= 1 and max(values - {255}) < len(classes)
        assert make_dataset(name, fake[name], num_images=2).num_images == 2
    voc = make_dataset("voc", fake["voc"])
    assert 255 in voc.load(0)[1]  # VOC's ignore border
    assert voc.name(0) == "2007_000000"
    # Word substitutions for names that are not words.
    names = dict(zip(VOC_CLASSES[1:], voc.prompt_names))
    assert names["pottedplant"] == "potted plant" and names["tvmonitor"] == "monitor"
    assert names["diningtable"] == "table" and names["aeroplane"] == "aeroplane"
    coco = dict(zip(COCO_OBJECT_CLASSES[1:], make_dataset("coco", fake["coco"]).prompt_names))
    assert coco["tv"] == "television" and coco["hair drier"] == "hair dryer" and coco["person"] == "person"


def test_other_accepted_layouts(fake, tmp_path):
    # data_dir may be the inner folder.
    assert make_dataset("voc", fake["voc"] / "VOCdevkit" / "VOC2012").num_images == 3
    assert make_dataset("context", fake["context"] / "VOCdevkit").num_images == 3
    assert make_dataset("coco", fake["coco"] / "coco_stuff164k").num_images == 3
    labels = [make_dataset(name, fake[name]).load(i)[1] for name in ("voc", "coco") for i in range(3)]
    # COCO-Object as coco/annotations/object_val2017/<id>.png: the same examples.
    alt = make_dataset("coco", write_coco(tmp_path / "coco", 3, SIZES["coco"], seed=2, layout="object"))
    assert alt.num_images == 3 and all((alt.load(i)[1] == labels[3 + i]).all() for i in range(3))
    # VOC's official release, without SegmentationClassAug: indexed PNGs with the VOC palette, whose
    # stored indices are the labels.
    voc = make_dataset("voc", write_voc(tmp_path / "voc", 3, SIZES["voc"], seed=0, aug=False))
    with Image.open(voc.files.open(0)[1]) as im:
        assert im.mode == "P" and voc.files.open(0)[1].parent.name == "SegmentationClass"
    assert all((voc.load(i)[1] == labels[i]).all() for i in range(3))


def _one_sentence(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg.endswith(".") and "\n" not in msg and msg.count(". ") == 0, msg
    return msg


def test_wrong_folders_are_one_sentence(fake, tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as e:
        make_dataset("voc", tmp_path / "nope")
    _one_sentence(e)
    with pytest.raises(DatasetError, match="no data folder given") as e:
        make_dataset("context", "")
    _one_sentence(e)
    with pytest.raises(DatasetError, match="does not hold a PASCAL VOC 2012 folder") as e:
        make_dataset("voc", tmp_path)
    _one_sentence(e)
    with pytest.raises(DatasetError, match="does not hold a COCO-Object folder") as e:
        make_dataset("coco", fake["voc"])
    _one_sentence(e)
    with pytest.raises(DatasetError, match="split file .*test.txt does not exist") as e:
        make_dataset("voc", fake["voc"], split="test")
    _one_sentence(e)
    # A listed image that is missing.
    split = fake["context"] / "VOCdevkit/VOC2010/ImageSets/SegmentationContext/extra.txt"
    split.write_text("2008_000000\n2008_999999\n")
    with pytest.raises(DatasetError, match="1 of the 2 Pascal Context examples miss .* the first missing file "
                                           "is .*2008_999999.jpg") as e:
        make_dataset("context", fake["context"], split="extra")
    _one_sentence(e)
    split.write_text("\n")
    with pytest.raises(DatasetError, match="lists no image"):
        make_dataset("context", fake["context"], split="extra")
    with pytest.raises(ConfigError, match="unknown dataset 'ade': use one of voc, context, coco"):
        make_dataset("ade", fake["voc"])


# ----------------------------------------------------------------------------------------------
# The evaluation's running best against the pipeline's label rule.


def test_running_best_equals_label_map_at_every_threshold():
    rng = np.random.default_rng(1)
    b, k, h, w = 2, 7, 6, 5
    maps = rng.random((b, k, h, w)).astype(np.float32)
    maps[0, 3] = maps[0, 1]  # a tie: the lower class wins
    valid = rng.random((b, k)) > 0.25
    valid[:, 0] = True
    class_ids = np.tile(np.arange(1, k + 1), (b, 1)).astype(np.int32)
    best = jnp.full((b, h, w), -jnp.inf)
    arg = jnp.zeros((b, h, w), jnp.int32)
    for start in range(0, k, 3):  # chunks of 3 classes, the last one short
        sl = slice(start, start + 3)
        best, arg = update_best(best, arg, jnp.asarray(maps[:, sl]), jnp.asarray(valid[:, sl]),
                                jnp.asarray(class_ids[:, sl]))
    for t in (0.0, 0.3, 0.5, 0.8, 1.0):
        np.testing.assert_array_equal(np.asarray(labels_at(best, arg, t)),
                                      np.asarray(label_map(jnp.asarray(maps), jnp.asarray(valid), t)))


@pytest.mark.parametrize("name", ["voc", "context", "coco"])
def test_prepared_tfds_copy_reads_like_the_folder(name, fake, tmp_path):
    folder = make_dataset(name, fake[name])
    ds = make_prepared_dataset(name, fake[name], tmp_path)
    assert isinstance(ds, SegDataset) and isinstance(ds.files, RecordPairs)
    assert list(tmp_path.glob(f"{BUILDERS[name]().name}/*/*.array_record-*"))
    assert (ds.key, ds.class_names, ds.prompt_names) == (folder.key, folder.class_names, folder.prompt_names)
    assert ds.num_images == folder.num_images == 3
    for i in range(3):
        assert ds.size(i) == folder.size(i) and ds.name(i) == folder.name(i)
        assert ds.file_name(i) == folder.file_name(i)
        (a, la, na), (b, lb, nb) = ds.load(i), folder.load(i)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
        assert na == nb
    assert make_prepared_dataset(name, "/not/needed/once/prepared", tmp_path, num_images=2).num_images == 2
    with pytest.raises(DatasetError, match="does not exist"):
        make_prepared_dataset(name, tmp_path / "nowhere", tmp_path / "other")


# ----------------------------------------------------------------------------------------------
# End to end.


def _config(name, backbone, data_dir, **eval_overrides):
    c = default_config(name)
    c.pretrained = str(backbone)
    c.data.data_dir = str(data_dir)
    c.data.tfds_dir = str(Path(data_dir).parent / "tfds")  # the default format: prepared once per copy
    c.diffseg.image_size = 64
    c.filtering.mode = "all"
    c.eval.batch_size = 2  # 3 images: the second batch has a padding row
    c.eval.rows_per_call = 16  # 40 rows in the first batch, 20 in the second: blocks of 16 (one compiled shape)
    c.eval.bucket_rows = False
    for k, v in eval_overrides.items():
        c.eval[k] = v
    return c


@pytest.fixture(scope="module")
def voc_results(backbone, fake, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("diffseg_eval_voc")
    r = evaluate(_config("voc", backbone, fake["voc"], sweep_thresholds=(0.3, 0.5, 0.7)), workdir)
    return r, workdir


def test_evaluate_voc_matches_the_pipeline(voc_results, backbone, fake):
    """The batched, chunked, canvas evaluation gives the metrics of DiffSegmenter.segment run on
    the three images with all 20 classes, scored at the label resolution."""
    from diffseg_jax import DiffSegConfig, load_diffsegmenter, pad_class_prompts

    r, workdir = voc_results
    saved = json.loads((workdir / "results.json").read_text())
    assert saved == json.loads(json.dumps(r))
    assert r["num_images"] == 3 and r["num_classes"] == 21 and r["filtering"] == "all"
    assert r["protocol"].startswith("PASCAL VOC 2012 val (3 images), mIoU over 21 classes with the background")
    assert len(r["IoU"]) == 21 and list(r["IoU"]) == list(VOC_CLASSES) and r["threshold"] == 0.5
    assert r["images_per_s"] > 0 and r["mean_candidates"] == 20 and r["published_mIoU"] == pytest.approx(0.601)
    assert r["rows_useful"] == 60 and r["rows_computed"] == 16 * 3 + 16 * 2  # 40 + 20 pairs in blocks of 16
    assert r["prompt_fallbacks"] == 0 and r["num_skipped_images"] == 0 and r["split"] == "val"
    # The sweep is a separate entry; its 0.5 column is the fixed-threshold result.
    s = r["threshold_sweep"]
    assert s["thresholds"] == [0.3, 0.5, 0.7] and len(s["mIoU"]) == 3
    assert s["mIoU"][1] == pytest.approx(r["mIoU"]) and s["best_mIoU"] == max(s["mIoU"])

    # The paper's settings: the native size (64 px for the tiny backbone), a posterior sample, the
    # original's prompt names.
    seg, params = load_diffsegmenter(backbone, DiffSegConfig(dataset="voc", posterior="sample"))
    assert seg.config.image_size == 64
    ds = make_dataset("voc", fake["voc"])
    examples = [ds.load(i) for i in range(3)]
    prompts = seg.encode_prompts(list(ds.benchmark.official_names))
    ids, tw, pos, valid = pad_class_prompts([prompts] * 3, seg.tokenizer)
    _, maps = seg.segment(params, np.stack([e[0] for e in examples]), ids, tw, pos, valid, 0)
    labels = np.stack([e[1] for e in examples])
    for t, want in [(0.5, r["mIoU"])] + list(zip(s["thresholds"], s["mIoU"])):
        pred = label_map(maps, jnp.asarray(valid), t)
        conf = np.asarray(confusion_matrix(pred, jnp.asarray(labels), 21))
        assert segmentation_metrics(conf, absent_iou=r["absent_class_iou"])["mIoU"] == pytest.approx(want, abs=1e-3), t


def test_given_and_clip_filtering(backbone, fake, tmp_path):
    """'given' reads the classes of the label (an oracle, said so in results.json); 'clip' runs
    the CLIP filter, and a caption noun adds its class."""
    ds = make_dataset("voc", fake["voc"])
    cfg = _config("voc", backbone, fake["voc"])
    cfg.filtering.mode = "given"
    r = evaluate(cfg, tmp_path / "given")
    assert r["filtering"] == "given" and "oracle" in r["filtering_note"] and "ground-truth" in r["protocol"]
    present = [sorted(set(np.unique(ds.load(i)[1]).tolist()) - {0, 255}) for i in range(3)]
    got = [json.loads(line) for line in (tmp_path / "given" / "candidates.jsonl").read_text().splitlines()]
    assert got == [{"image": ds.name(i), "classes": [VOC_CLASSES[c] for c in present[i]]} for i in range(3)]

    clip = write_tiny_clip(tmp_path / "clip", backbone)
    (tmp_path / "captions.jsonl").write_text(json.dumps({"image": "2007_000001.jpg", "caption": "a sofa"}) + "\n")
    cfg.filtering.mode = "clip"
    cfg.filtering.clip_path = str(clip)
    cfg.captions = str(tmp_path / "captions.jsonl")
    r = evaluate(cfg, tmp_path / "clip_run")
    assert r["filtering"] == "clip" and "filtering_note" not in r and len(r["IoU"]) == 21
    got = [json.loads(line) for line in (tmp_path / "clip_run" / "candidates.jsonl").read_text().splitlines()]
    assert [g["image"] for g in got] == [ds.name(i) for i in range(3)] and all(g["classes"] for g in got)
    assert "sofa" in got[1]["classes"]
    filt, params = load_clip_filter(clip)  # without the caption, CLIP alone does not pick "sofa"
    assert VOC_CLASSES.index("sofa") - 1 not in filt.select(params, [ds.load(1)[0]], ds.prompt_names)[0]


def test_command_line(backbone, fake, tmp_path, voc_results):
    """``python -m diffseg_jax.evaluate`` with --config overrides, on 2 (fake CPU) devices, each
    with one image of the batch: the same metrics as the 1-device run. A wrong folder is one line
    on stderr."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    base = [sys.executable, "-m", "diffseg_jax.evaluate", "--config", str(ROOT / "diffseg_jax/configs/diffseg_voc.py"),
            f"--config.pretrained={backbone}", "--config.diffseg.image_size=64", "--config.filtering.mode=all",
            "--config.eval.batch_size=2", "--config.eval.rows_per_call=16", "--config.eval.bucket_rows=False",
            "--config.data.format=folders"]
    res = subprocess.run(base + [f"--config.data.data_dir={fake['voc']}", "--workdir", str(tmp_path / "w"),
                                 "--config.eval.sweep_thresholds=(0.3,0.5,0.7)"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads((tmp_path / "w" / "results.json").read_text())
    want = voc_results[0]
    assert got["setup"]["devices"] == 2 and got["setup"]["batch_size"] == 2
    # The same metrics up to a few pixels: XLA's 2-device programs round differently (latents differ by
    # ~2e-7, maps by ~5e-6, and the random tiny backbone's maps have near-ties at the thresholds).
    assert got["mIoU"] == pytest.approx(want["mIoU"], abs=1e-4)
    assert got["threshold_sweep"]["mIoU"] == pytest.approx(want["threshold_sweep"]["mIoU"], abs=1e-4)
    assert (got["rows_useful"], got["rows_computed"]) == (want["rows_useful"], want["rows_computed"])
    assert "[diffseg] voc (3 images, filtering all): mIoU" in res.stdout
    res = subprocess.run(base + [f"--config.data.data_dir={tmp_path / 'nowhere'}", "--workdir", str(tmp_path / "x")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"[diffseg] the PASCAL VOC 2012 data folder '{tmp_path / 'nowhere'}' does not exist or is not a folder."]
