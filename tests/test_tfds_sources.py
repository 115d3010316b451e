"""tfds builders over fake ADE20K / NYUv2 folders: prepared once, read back identical to the
folder readers (training, centred-crop and full-resolution examples), streamed through the grain
pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iedp_jax.config import base_config
from iedp_jax.data.ade20k import ADE20KSource, IedpAde20k
from iedp_jax.data.catalog import make_dataset
from iedp_jax.data.nyu import IedpNyuDepthV2, NYUv2Source
from iedp_jax.data.pipeline import next_step, step_state, train_iterator
from iedp_jax.infra import tfds
from iedp_jax.infra.errors import ConfigError, DatasetError
from tests.fakes import NYU_TEST, write_ade, write_nyu
from tests.helpers import train_batch

CROP = (32, 32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    ade = write_ade(root / "ade")
    write_nyu(root / "nyu")
    return {"ade": ade, "nyu": root / "nyu", "tfds": root / "prepared",
            "ade_b": tfds.prepare(IedpAde20k, ade, root / "prepared"),
            "nyu_b": tfds.prepare(IedpNyuDepthV2, root / "nyu", root / "prepared")}


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_array_record_files_and_index(prepared):
    b = prepared["ade_b"]
    assert b.info.splits["train"].num_examples == 6 and b.info.splits["validation"].num_examples == 3
    assert list(Path(b.data_dir).glob("*.array_record-*")), "expected array_record shards"
    names = b.info.metadata["index"]["train"]["file_name"]
    assert names == sorted(names)  # records keep the layout's sorted order
    rec = tfds.data_source(b, "train")[2]
    assert rec["file_name"].decode() == names[2]
    img, _ = ADE20KSource(prepared["ade"]).train_files.open(2)
    assert rec["image"] == img.read_bytes()  # the original JPEG bytes, not re-encoded


def test_prepare_is_done_once(prepared):
    files = sorted(Path(prepared["ade_b"].data_dir).glob("*"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = tfds.prepare(IedpAde20k, "/nonexistent/folder", prepared["tfds"])  # prepared: folder unused
    assert again.data_dir == prepared["ade_b"].data_dir
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_ade_prepared_equals_folders(prepared):
    kw = dict(img_scale=(160, 40))
    folder = ADE20KSource(prepared["ade"], CROP, seed=3, num_workers=0, **kw)
    tfds_src = ADE20KSource.from_prepared(prepared["ade_b"], CROP, seed=3, num_workers=0, **kw)
    assert (tfds_src.num_train, tfds_src.num_val) == (folder.num_train, folder.num_val)
    for step in (0, 1, 4):
        _same(train_batch(tfds_src, step, 4, slice(None)), train_batch(folder, step, 4, slice(None)))
    for a, b in zip(tfds_src.val_batches(2, slice(None)), folder.val_batches(2, slice(None)), strict=True):
        _same(a, b)
    for i in range(folder.num_val):  # what the evaluation protocols read (the bug of the record names)
        _same(tfds_src.val_image(i), folder.val_image(i))
        assert tfds_src.val_size(i) == folder.val_size(i) and tfds_src.val_name(i) == folder.val_name(i)


def test_nyu_prepared_equals_folders(prepared):
    folder = NYUv2Source(prepared["nyu"], CROP, seed=1, num_workers=0)
    tfds_src = NYUv2Source.from_prepared(prepared["nyu_b"], CROP, seed=1, num_workers=0)
    assert tfds_src.scene_names == folder.scene_names
    for step in (0, 3):
        _same(train_batch(tfds_src, step, 2, slice(None)), train_batch(folder, step, 2, slice(None)))
    for a, b in zip(tfds_src.val_batches(2, slice(None)), folder.val_batches(2, slice(None)), strict=True):
        _same(a, b)
    for i in range(folder.num_val):
        _same(tfds_src.val_image(i), folder.val_image(i))
        assert tfds_src.val_size(i) == folder.val_size(i) and tfds_src.val_name(i) == folder.val_name(i)
        # the published protocol prompts VPD's rung with each test image's own scene folder
        assert tfds_src.val_image(i)["scene"] == folder.scene_names.index(NYU_TEST[i])


def test_grain_pipeline_streams_the_step_batches(prepared):
    src = ADE20KSource.from_prepared(prepared["ade_b"], CROP, seed=0, img_scale=(160, 40))
    rows = slice(2, 4)  # the second of two processes
    it = train_iterator(src, 4, rows, num_steps=6, num_threads=3)
    for step in range(3):
        _same(next(it), train_batch(src, step, 4, rows))
    state = it.get_state()
    assert next_step(state, 2) == 3
    resumed = train_iterator(src, 4, rows, num_steps=6, num_threads=0)
    resumed.set_state(state)
    _same(next(resumed), train_batch(src, 3, 4, rows))
    at5 = train_iterator(src, 4, rows, num_steps=6, start_step=5)
    assert next_step(at5.get_state(), 2) == 5 and next_step(step_state(at5, 2, 2), 2) == 2
    _same(next(at5), train_batch(src, 5, 4, rows))
    with pytest.raises(StopIteration):
        next(at5)


def test_config_format_tfds_and_errors(prepared, tmp_path):
    cfg = base_config().data
    cfg.update(dict(name="nyu", data_dir=str(prepared["nyu"]), crop_size=CROP, format="tfds",
                    tfds_dir=str(prepared["tfds"])))
    src = make_dataset(cfg, seed=0)
    assert isinstance(src, NYUv2Source) and src.num_val == 3
    cfg.format = "parquet"
    with pytest.raises(ConfigError, match="data.format='parquet' is not known"):
        make_dataset(cfg, seed=0)
    cfg.format, cfg.tfds_dir, cfg.data_dir = "tfds", str(tmp_path / "empty"), str(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no NYUv2 dataset at .*missing"):
        make_dataset(cfg, seed=0)
    with pytest.raises(DatasetError, match="not prepared in .* no dataset folder is given"):
        tfds.prepare(IedpNyuDepthV2, "", tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    with pytest.raises(DatasetError, match="no NYUv2 dataset at"):
        tfds.prepare(IedpNyuDepthV2, tmp_path / "bad", tmp_path / "t2")
