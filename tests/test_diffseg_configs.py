"""The shipped DiffSegmenter configs on the default user path: ``python -m diffseg_jax.evaluate
--config diffseg_jax/configs/diffseg_<name>.py`` as shipped plus only what a user must give (the Stable
Diffusion and CLIP folders, the dataset folder in its release layout) and a small image size,
through the default data format (tfds: the folder is prepared into array_record first) and the
default CLIP category filter. The schema itself and its one-sentence errors are checked first.

The in-process evaluation against the pipeline, the 'all' / 'given' modes and the 'folders'
format on two devices are in test_diffseg_datasets."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from diffseg_jax.builders import BUILDERS
from diffseg_jax.config import (
    CLIP_TEMPLATE,
    NOUN_THRESHOLD,
    PAPER_DIFFSEG,
    PAPER_SWEEP,
    RATIO,
    SCHEMA_FIELDS,
    DiffSegConfig,
    default_config,
    diffseg_config,
    jnp_dtype,
)
from diffseg_jax.datasets import BENCHMARKS
from diffseg_jax.evaluate import open_dataset, setup
from iedp_jax.infra import sharding
from iedp_jax.infra.errors import ConfigError
from iedp_jax.sd.tiny import write_tiny_backbone
from tests.fakes import DIFFSEG_WRITERS, write_tiny_clip
from tests.helpers import load_config

pytestmark = pytest.mark.xdist_group("diffseg_configs")

ROOT = Path(__file__).resolve().parents[1]
# Two images of different sizes per dataset: the canvas is their largest height and width.
SIZES = {"voc": [(48, 64), (40, 56)], "context": [(44, 64), (48, 60)], "coco": [(48, 52), (40, 64)]}
RESULT_KEYS = {"dataset", "split", "protocol", "num_images", "num_classes", "filtering", "threshold", "mIoU",
               "absent_class_iou", "aAcc",
               "mAcc", "IoU", "Acc", "images_per_s", "images_per_s_after_first_batch", "seconds", "mean_candidates",
               "rows_computed", "rows_useful", "prompt_fallbacks", "skipped_images", "num_skipped_images",
               "published_mIoU", "setup", "threshold_sweep"}


def test_shipped_configs_are_the_schema_defaults():
    """Each shipped config is ``default_config(name)``, whose method section maps back to the
    dataclass defaults but for the paper's choices (a posterior sample); the schema restates no
    default. The paper's protocol: the original's prompt names, the last word up-weighted, the
    native image size, the threshold grid 0.30..0.74."""
    for name, b in BENCHMARKS.items():
        c = load_config(f"diffseg_{name}")
        assert c == default_config(name)
        assert diffseg_config(c) == DiffSegConfig(dataset=name, **PAPER_DIFFSEG)
        assert c.data.name == name and c.data.format == "tfds" and c.filtering.mode == "clip"
        assert c.published_miou == b.published_miou
        assert c.prompt_names == "official" and c.diffseg.upweight == "last_word" and c.diffseg.image_size == 0
        assert tuple(c.eval.sweep_thresholds) == PAPER_SWEEP
        doc = (ROOT / f"diffseg_jax/configs/diffseg_{name}.py").read_text()
        assert f"{b.published_miou}" in doc and "python -m diffseg_jax.evaluate" in doc
    assert PAPER_SWEEP[0] == 0.3 and PAPER_SWEEP[-1] == 0.74 and len(PAPER_SWEEP) == 45
    c = default_config("coco")
    assert (c.filtering.ratio, c.filtering.noun_threshold, c.filtering.template) == (RATIO, NOUN_THRESHOLD,
                                                                                      CLIP_TEMPLATE)
    # Overrides reach the dataclass; every field is in the schema but the derived or fixed ones.
    c.diffseg.threshold, c.diffseg.cross_resolutions = 0.4, ((8, 1.0),)
    assert diffseg_config(c) == DiffSegConfig(threshold=0.4, cross_resolutions=((8, 1.0),), dataset="coco",
                                              **PAPER_DIFFSEG)
    fields = {f.name for f in dataclasses.fields(DiffSegConfig)}
    assert fields - set(SCHEMA_FIELDS) == {"dataset", "latent_scale", "templates", "eps"}


def test_config_errors_are_one_sentence(tmp_path):
    c = default_config("voc")
    c.filtering.mode = "gt"
    with pytest.raises(ConfigError, match=r"^filtering.mode 'gt' is not one of clip, all, given\.$"):
        setup(c)
    c.filtering.mode = "clip"
    with pytest.raises(ConfigError, match="needs filtering.clip_path"):
        setup(c)
    c.filtering.mode = "all"
    with pytest.raises(ConfigError, match="config.pretrained is empty"):
        setup(c)
    two, four = (types.SimpleNamespace(devices=np.empty(n)) for n in (2, 4))  # meshes of 2 and 4 devices
    with pytest.raises(ConfigError, match=r"^eval.batch_size=3 must be a multiple of the 2 devices"):
        sharding.batch_per_step(3, two, "eval.batch_size")
    assert sharding.batch_per_step(0, four, "b") == 4 and sharding.batch_per_step(8, four, "b") == 8
    with pytest.raises(ConfigError, match=r"^dtype='float64' is not one of float32, bfloat16, float16\.$"):
        jnp_dtype("float64")
    c.data.format = "zip"
    with pytest.raises(ConfigError, match="data.format='zip' is not known: use one of tfds, folders"):
        open_dataset(c.data)
    c.data.format, c.data.split = "tfds", "train"
    with pytest.raises(ConfigError, match="prepares the validation split 'val' only"):
        open_dataset(c.data)
    with pytest.raises(ConfigError, match="unknown dataset 'ade'"):
        default_config("ade")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    backbone = write_tiny_backbone(tmp_path_factory.getbasetemp() / "diffseg_tiny_sd")
    return backbone, write_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), backbone)


@pytest.mark.parametrize("name", ["voc", "context", "coco"])
def test_shipped_config_from_the_command_line(name, models, tmp_path):
    backbone, clip = models
    data = DIFFSEG_WRITERS[name](tmp_path / "data", 2, SIZES[name], seed=3)
    tfds_dir = tmp_path / "tfds"  # tfds's default location, as the user's environment sets it
    env = dict(os.environ, JAX_PLATFORMS="cpu", TFDS_DATA_DIR=str(tfds_dir))
    res = subprocess.run(
        [sys.executable, "-m", "diffseg_jax.evaluate", "--config", str(ROOT / f"diffseg_jax/configs/diffseg_{name}.py"),
         "--workdir", str(tmp_path / "w"), f"--config.pretrained={backbone}", f"--config.data.data_dir={data}",
         f"--config.filtering.clip_path={clip}", "--config.eval.sweep_thresholds=(0.4,0.5)"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"[diffseg] {name} (2 images, filtering clip): mIoU" in res.stdout

    b = BENCHMARKS[name]
    r = json.loads((tmp_path / "w" / "results.json").read_text())
    assert set(r) == RESULT_KEYS  # no sweep, no oracle note
    assert r["dataset"] == name and r["num_images"] == 2 and r["num_classes"] == len(b.class_names)
    assert list(r["IoU"]) == list(b.class_names) and 0.0 <= r["mIoU"] <= 1.0 and 0.0 <= r["aAcc"] <= 1.0
    assert r["filtering"] == "clip" and r["threshold"] == 0.5 and r["published_mIoU"] == b.published_miou / 100
    assert r["protocol"] == (f"{b.title} {b.split} (2 images), mIoU over {len(b.class_names)} classes with the "
                             "background, label 255 ignored, at each image's full resolution; background = the "
                             "constant threshold 0.5; candidate classes: the CLIP category filter.")
    want_canvas = [max(h for h, _ in SIZES[name]), max(w for _, w in SIZES[name])]
    # The native size of the tiny backbone (UNet sample_size 8 x VAE factor 8), without --config.diffseg.image_size.
    assert r["setup"]["canvas"] == want_canvas and r["setup"]["image_size"] == 64
    assert r["setup"]["prompt_names"] == "official" and r["setup"]["posterior"] == "sample"
    assert r["threshold_sweep"]["thresholds"] == [0.4, 0.5] and r["rows_useful"] <= r["rows_computed"]
    assert r["setup"]["template"] == ("a photograph of {}" if name == "voc" else "a photography of {}")
    # The default format prepared the folder into tfds's data directory first.
    assert list(tfds_dir.glob(f"{BUILDERS[name].name}/*/*.array_record-*"))
    candidates = [json.loads(line) for line in (tmp_path / "w" / "candidates.jsonl").read_text().splitlines()]
    assert len(candidates) == 2 and all(c["classes"] and set(c["classes"]) <= set(b.class_names[1:])
                                        for c in candidates)
    assert r["mean_candidates"] == sum(len(c["classes"]) for c in candidates) / 2
