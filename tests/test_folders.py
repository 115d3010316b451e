"""The ADE20K and NYUv2 folder sources on tiny fake copies of the real layouts: the trainer's
interface, shapes and dtypes, determinism by (seed, step), process rows, padding of the last
validation batch, reduce_zero_label, scene names, millimetres -> metres, and clear errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from iedp_jax.config import base_config
from iedp_jax.data.ade20k import ADE20K_CLASSES, ADE20KSource
from iedp_jax.data.catalog import make_dataset
from iedp_jax.data.nyu import NYUv2Source, scene_from_path
from iedp_jax.infra.errors import ConfigError, DatasetError
from tests.fakes import NYU_TEST, H, W, write_ade, write_nyu
from tests.helpers import train_batch

CROP = (32, 32)


@pytest.fixture(scope="module")
def ade_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    write_ade(root)
    return root


@pytest.fixture(scope="module")
def nyu_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyu")
    return root, write_nyu(root)


def _ade(path, **kw):
    return ADE20KSource(path, CROP, seed=0, img_scale=(160, 40), **kw)


# ------------------------------------------------------------------------------------------
# ADE20K
# ------------------------------------------------------------------------------------------

def test_ade_interface_and_train_batches(ade_dir):
    src = _ade(ade_dir)
    assert src.task == "seg" and src.batch_keys == ("image", "label")
    assert src.num_train == 6 and src.num_val == 3
    assert src.num_classes == 150 and len(src.class_names) == 150
    assert src.class_names[:5] == ("wall", "building", "sky", "floor", "tree")
    assert src.class_names[7] == "bed" and src.class_names[-1] == "flag"
    assert ADE20K_CLASSES[149] == "flag"
    b = train_batch(src, 3, 4, slice(None))
    assert set(b) == {"image", "label"}
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.uint8
    assert b["label"].shape == (4, 32, 32) and b["label"].dtype == np.uint8
    # reduce_zero_label: stored 0..5 -> 255, 0..4; padding 255
    assert set(np.unique(b["label"])) <= {0, 1, 2, 3, 4, 255}
    # deterministic by (seed, step); a fresh source (a resumed run) gives the same batch
    again = train_batch(_ade(ade_dir), 3, 4, slice(None))
    for k in b:
        np.testing.assert_array_equal(b[k], again[k])
    other = train_batch(src, 4, 4, slice(None))
    assert not np.array_equal(b["image"], other["image"])
    reseeded = train_batch(ADE20KSource(ade_dir, CROP, seed=1, img_scale=(160, 40)), 3, 4, slice(None))
    assert not np.array_equal(b["image"], reseeded["image"])
    # a process's rows equal the same rows of the global batch
    part = train_batch(src, 3, 4, slice(2, 4))
    for k in b:
        np.testing.assert_array_equal(part[k], b[k][2:4])
    # serial decoding gives the same as the thread pool
    serial = train_batch(_ade(ade_dir, num_workers=0), 3, 4, slice(None))
    for k in b:
        np.testing.assert_array_equal(serial[k], b[k])


def test_ade_epoch_covers_every_example(ade_dir):
    src = _ade(ade_dir)
    idx = np.concatenate([src.train_indices(s, 3) for s in range(4)])   # 12 rows = 2 epochs of 6
    assert sorted(idx[:6]) == list(range(6)) and sorted(idx[6:]) == list(range(6))


def test_ade_val_batches_padding_and_reduce_zero_label(ade_dir):
    src = _ade(ade_dir)
    batches = list(src.val_batches(2, slice(None)))
    assert len(batches) == 2
    for b in batches:
        assert b["image"].shape == (2, 32, 32, 3) and b["label"].shape == (2, 32, 32)
    labels = np.concatenate([b["label"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])
    assert (labels[0] == 255).all()          # stored 0 ("other") -> ignore
    assert (labels[1] == 2).all()            # stored 3 -> class 2
    assert (labels[2] == 4).all()            # stored 5 -> class 4
    assert (labels[3] == 255).all() and (images[3] == 0).all()   # padding row counts for nothing
    # rows of each val batch
    second = list(src.val_batches(2, slice(1, 2)))
    np.testing.assert_array_equal(second[0]["label"], batches[0]["label"][1:2])
    np.testing.assert_array_equal(second[1]["label"], batches[1]["label"][1:2])


def test_ade_accepts_inner_folder_and_split_sizes(ade_dir):
    src = ADE20KSource(ade_dir / "ADEChallengeData2016", CROP, img_scale=(160, 40), split_sizes=(3, None))
    assert src.num_train == 3 and src.num_val == 3
    assert src.state(7) == {"next_step": 7, "seed": 0, "num_train": 3}
    src.restore({"next_step": 7, "seed": 0, "num_train": 3})
    with pytest.raises(ConfigError, match="seed"):
        src.restore({"next_step": 7, "seed": 5})
    with pytest.raises(ConfigError, match="written for 5 training examples, this dataset has 3"):
        src.restore({"next_step": 7, "seed": 0, "num_train": 5})


def test_ade_errors(tmp_path, ade_dir):
    with pytest.raises(DatasetError, match=r"ADEChallengeData2016/images/\{training,validation\}"):
        ADE20KSource(tmp_path / "nowhere")
    empty = tmp_path / "empty" / "ADEChallengeData2016"
    for sub in ("images/training", "images/validation", "annotations/training", "annotations/validation"):
        (empty / sub).mkdir(parents=True)
    with pytest.raises(DatasetError, match="expected ADEChallengeData2016") as e:
        ADE20KSource(tmp_path / "empty")
    assert str(e.value).count(". ") == 0     # one sentence
    broken = tmp_path / "broken"
    shutil.copytree(ade_dir, broken)
    (broken / "ADEChallengeData2016/annotations/training/ADE_train_00000002.png").unlink()
    with pytest.raises(DatasetError, match="ADE_train_00000002.jpg has no annotation"):
        ADE20KSource(broken)


# ------------------------------------------------------------------------------------------
# NYUv2
# ------------------------------------------------------------------------------------------

def test_scene_from_path():
    assert scene_from_path("/kitchen_0028b/rgb_00045.jpg") == "kitchen"
    assert scene_from_path("living_room_0010/rgb_1.jpg") == "living_room"
    assert scene_from_path("bathroom/rgb_00045.jpg") == "bathroom"
    assert scene_from_path("/nyu_office_0/rgb_1.jpg") == "nyu_office"


def test_nyu_interface_and_train_batches(nyu_dir):
    root, _ = nyu_dir
    src = NYUv2Source(root, CROP, seed=0)
    assert src.task == "depth" and src.batch_keys == ("image", "depth", "scene")
    assert src.num_train == 4 and src.num_val == 3          # the 'None' line is skipped
    assert src.num_classes == 0 and src.class_names == ()
    assert src.scene_names == ("bathroom", "bedroom", "kitchen", "living_room", "study_room")
    b = train_batch(src, 2, 4, slice(None))
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.uint8
    assert b["depth"].shape == (4, 32, 32) and b["depth"].dtype == np.float32
    assert b["scene"].shape == (4,) and b["scene"].dtype == np.int32
    assert b["depth"].min() >= 0 and b["depth"].max() < 9.0
    assert b["depth"][b["depth"] > 0].min() >= 0.5          # metres, not millimetres
    # scenes of the batch are those of the files its indices point at
    names = [src.scene_names[s] for s in b["scene"]]
    expected = [["kitchen", "kitchen", "living_room", "study_room"][i] for i in src.train_indices(2, 4)]
    assert names == expected
    again = train_batch(NYUv2Source(root, CROP, seed=0), 2, 4, slice(None))
    for k in b:
        np.testing.assert_array_equal(b[k], again[k])
    other = train_batch(src, 3, 4, slice(None))
    assert not np.array_equal(b["depth"], other["depth"])
    part = train_batch(src, 2, 4, slice(1, 3))
    for k in b:
        np.testing.assert_array_equal(part[k], b[k][1:3])


def test_nyu_val_batches_mm_to_m_eigen_and_padding(nyu_dir):
    root, test_depths = nyu_dir
    src = NYUv2Source(root, CROP)
    batches = list(src.val_batches(2, slice(None)))
    assert len(batches) == 2
    depth = np.concatenate([b["depth"] for b in batches])
    scene = np.concatenate([b["scene"] for b in batches])
    image = np.concatenate([b["image"] for b in batches])
    assert [src.scene_names[s] for s in scene[:3]] == NYU_TEST
    # centre 32x32 of the 60x80 frame (rows 14:46, cols 24:56) is inside the scaled Eigen crop
    for i, folder in enumerate(NYU_TEST):
        mm = test_depths[folder]
        np.testing.assert_array_equal(depth[i], mm[14:46, 24:56].astype(np.float32) / np.float32(1000.0))
    assert (depth[3] == 0).all() and (image[3] == 0).all() and scene[3] == 0   # padding


def test_nyu_eigen_mask_applied(tmp_path):
    test_depths = write_nyu(tmp_path)
    src = NYUv2Source(tmp_path, (60, 80))
    b = next(src.val_batches(1, slice(None)))
    d = b["depth"][0]
    assert (d[:6] == 0).all() and (d[59:] == 0).all() and (d[:, :5] == 0).all() and (d[:, 75:] == 0).all()
    np.testing.assert_array_equal(d[6:59, 5:75], test_depths["bathroom"][6:59, 5:75] / np.float32(1000.0))


def test_nyu_split_file_locations(tmp_path):
    write_nyu(tmp_path / "a", split_dir=".")                 # split files next to sync/
    assert NYUv2Source(tmp_path / "a", CROP).num_train == 4
    write_nyu(tmp_path / "b" / "nyu_depth_v2", split_dir="lists")  # VPD layout + explicit files
    src = NYUv2Source(tmp_path / "b", CROP,
                      train_split_file="nyu_depth_v2/lists/nyudepthv2_train_files_with_gt.txt",
                      test_split_file=tmp_path / "b/nyu_depth_v2/lists/nyudepthv2_test_files_with_gt.txt")
    assert src.num_val == 3


def test_nyu_errors(tmp_path):
    with pytest.raises(DatasetError, match="expected the BTS layout sync/"):
        NYUv2Source(tmp_path / "nowhere")
    write_nyu(tmp_path / "x")
    (tmp_path / "x/splits/nyudepthv2_test_files_with_gt.txt").unlink()
    with pytest.raises(DatasetError, match="nyudepthv2_test_files_with_gt.txt"):
        NYUv2Source(tmp_path / "x")
    write_nyu(tmp_path / "y")
    (tmp_path / "y/sync/kitchen_0003/sync_depth_00046.png").unlink()
    with pytest.raises(DatasetError, match="sync_depth_00046.png, which does not exist"):
        NYUv2Source(tmp_path / "y")
    write_nyu(tmp_path / "z")
    with pytest.raises(ValueError, match="smaller than"):
        train_batch(NYUv2Source(tmp_path / "z", (64, 64)), 0, 1, slice(None))


def _data_cfg(**fields):
    cfg = base_config().data
    cfg.update(fields)
    return cfg


def test_make_dataset_dispatches_on_name_and_format(ade_dir, nyu_dir):
    for fmt in ("folders",):
        assert isinstance(make_dataset(_data_cfg(name="ade20k", data_dir=str(ade_dir), format=fmt), 0), ADE20KSource)
        assert isinstance(make_dataset(_data_cfg(name="nyu", data_dir=str(nyu_dir[0]), format=fmt), 0), NYUv2Source)
    with pytest.raises(ConfigError, match="data.name='voc' is not known"):
        make_dataset(_data_cfg(name="voc", data_dir="x"), 0)
    with pytest.raises(ConfigError, match="data_dir"):
        make_dataset(_data_cfg(name="nyu", data_dir="", format="folders"), 0)
    with pytest.raises(ConfigError, match="data.format='zip' is not known"):
        make_dataset(_data_cfg(name="nyu", data_dir=str(nyu_dir[0]), format="zip"), 0)


def test_full_resolution_examples(ade_dir, nyu_dir):
    """What the protocols score: the whole image and its reduced label / depth with the Eigen mask."""
    ade = _ade(ade_dir)
    ex = ade.val_image(1)
    assert ex["image"].shape == (H, W, 3) and ex["image"].dtype == np.uint8
    assert (ex["label"] == 2).all()                         # stored 3, reduce_zero_label -> 2
    assert ade.val_size(1) == (H, W) and ade.val_name(1) == "ADE_val_00000001"
    nyu = NYUv2Source(nyu_dir[0], CROP)
    ex = nyu.val_image(0)
    np.testing.assert_allclose(ex["depth"], nyu_dir[1][NYU_TEST[0]] / 1000.0, rtol=1e-6)
    assert ex["mask"].dtype == bool and ex["mask"].sum() < ex["mask"].size    # the Eigen crop
    assert nyu.val_name(0) == f"{NYU_TEST[0]}_rgb_00045"
