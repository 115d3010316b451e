"""A user's own folders, Cityscapes and KITTI on fakes in their release layouts: each published
protocol against an independent transcription (cityscapesScripts' label table, BTS's crops and
depth scale, classes.json / depth.json), refusals by file name, the tfds builders read back
identical to the folders, and the shipped configs training 2 steps + evaluating with the tiny
backbone (``slow``: each compiles a train step)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iedp_jax.config import base_config
from iedp_jax.data.catalog import make_dataset, task_of
from iedp_jax.data.cityscapes import CITYSCAPES_CLASSES, CityscapesSource, IedpCityscapes
from iedp_jax.data.folder import FolderDepthSource, FolderSegSource, IedpFolderDepth, IedpFolderSeg
from iedp_jax.data.kitti import IedpKittiEigen, KittiSource, eval_crop_mask, kb_crop_box
from iedp_jax.infra.errors import ConfigError, DatasetError, DataValueError, UserError
from iedp_jax.infra.metrics import depth_metric_sums, depth_metrics
from tests.fakes import (
    FOLDER_CLASSES,
    write_cityscapes,
    write_folder_depth,
    write_folder_seg,
    write_kitti,
)
from tests.helpers import load_config, quick_compile, train_batch

# cityscapesScripts helpers/labels.py, copied independently of the library: label id -> train id
# for the 19 evaluated classes (every other id 0..33 is 255).
OFFICIAL = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
            26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
MMSEG_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
               "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
               "bicycle")
KB = (32, 128)  # the fakes' KB crop (KITTI: 352x1216)


def _official(ids: np.ndarray) -> np.ndarray:
    out = np.full(ids.shape, 255, np.uint8)
    for k, v in OFFICIAL.items():
        out[ids == k] = v
    return out


def _bts_mask(h: int, w: int, crop: str) -> np.ndarray:
    """bts_eval.py's eval_mask, transcribed."""
    m = np.zeros((h, w))
    if crop == "garg":
        m[int(0.40810811 * h):int(0.99189189 * h), int(0.03594771 * w):int(0.96405229 * w)] = 1
    else:
        m[int(0.3324324 * h):int(0.91351351 * h), int(0.0359477 * w):int(0.96405229 * w)] = 1
    return m.astype(bool)


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return {"folder": write_folder_seg(root / "mine"), "folder_depth": (root / "mine_depth",
                                                                          write_folder_depth(root / "mine_depth")),
            "cityscapes": (root / "cityscapes", write_cityscapes(root / "cityscapes")),
            "kitti": (root / "kitti", write_kitti(root / "kitti"))}


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------ Cityscapes

def test_cityscapes_label_table_is_cityscapesscripts(fakes):
    root, val_ids = fakes["cityscapes"]
    assert CITYSCAPES_CLASSES == MMSEG_NAMES
    src = CityscapesSource(root, (32, 64), img_scale=(128, 64))
    assert (src.num_train, src.num_val, src.num_classes) == (4, 2, 19)
    for i in range(src.num_val):
        ex = src.val_image(i)
        ids = val_ids[src.val_files.name(i)]
        np.testing.assert_array_equal(ex["label"], _official(ids))      # all 34 ids occur in the fake
        assert ex["image"].shape == (64, 128, 3)
    assert set(np.unique(np.concatenate([_official(v).ravel() for v in val_ids.values()]))) > {0, 18, 255}
    b = train_batch(src, 1, 3)
    assert b["label"].shape == (3, 32, 64) and set(np.unique(b["label"])) <= set(range(19)) | {255}
    assert src.val_name(0) == "frankfurt_frankfurt_000000_000000_leftImg8bit"


def test_cityscapes_refusals_name_the_file(fakes, tmp_path):
    root = _copy(fakes["cityscapes"][0], tmp_path / "cs")
    bad = root / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png"
    ids = np.asarray(Image.open(bad)).copy()
    ids[0, 0] = 34
    Image.fromarray(ids).save(bad)
    src = CityscapesSource(root, (32, 64), img_scale=(128, 64))
    with pytest.raises(DataValueError, match="frankfurt_000000_000019_gtFine_labelIds.png holds the value 34"):
        src.val_image(1)
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(bad)              # another size than its image
    with pytest.raises(DataValueError, match="frankfurt_000000_000019_leftImg8bit.png is 64x128 but its label"):
        src.val_image(1)
    bad.unlink()
    with pytest.raises(DatasetError, match="frankfurt_000000_000019_leftImg8bit.png has no .*_gtFine_labelIds.png"):
        CityscapesSource(root)
    with pytest.raises(DatasetError, match="no Cityscapes dataset at .*leftImg8bit"):
        CityscapesSource(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------ KITTI

def test_kitti_protocol_is_bts(fakes):
    # KB crop (bts_dataloader.py / bts_eval.py) at the real frame sizes, whose Garg and Eigen crops
    # lie inside it (so scoring the KB crop equals BTS's zero-filled full frame)
    for h, w in [(375, 1242), (370, 1224), (374, 1238), (376, 1241)]:
        top, left = kb_crop_box(h, w)
        assert (top, left) == (int(h - 352), int((w - 1216) / 2))
        for crop in ("garg", "eigen"):
            m = eval_crop_mask(h, w, crop)
            np.testing.assert_array_equal(m, _bts_mask(h, w, crop))
            assert m[top:top + 352, left:left + 1216].sum() == m.sum()
    assert kb_crop_box(375, 1242) == (23, 13)
    with pytest.raises(ConfigError, match="smaller than the 352x1216 KB crop"):
        kb_crop_box(300, 1242)

    root, gt = fakes["kitti"]
    src = KittiSource(root, (32, 64), kb_crop=KB)
    assert (src.num_train, src.num_val) == (4, 2)                       # the 'None' lines are skipped
    assert all("0000000015" not in src.val_files.name(i) for i in range(src.num_val))
    rng = np.random.default_rng(0)
    ours, bts = [], []
    for i in range(src.num_val):
        raw = gt[src.val_files.name(i)]
        ex = src.val_image(i)
        h, w = raw.shape
        top, left = h - KB[0], (w - KB[1]) // 2
        np.testing.assert_array_equal(ex["depth"], raw[top:top + KB[0], left:left + KB[1]] / np.float32(256.0))
        np.testing.assert_array_equal(ex["mask"], _bts_mask(h, w, "garg")[top:top + KB[0], left:left + KB[1]])
        assert src.val_size(i) == KB == ex["image"].shape[:2]
        pred = rng.uniform(0.0, 90.0, KB).astype(np.float32)
        s = depth_metric_sums(pred[None], ex["depth"][None], 1e-3, 80.0, ex["mask"][None], clip=True)
        ours.append(float(depth_metrics(s)["rmse"]))
        # bts_eval.py: the prediction pasted into a zero frame, clipped, Garg crop, 1e-3 < gt < 80
        full = np.zeros((h, w), np.float32)
        full[top:top + KB[0], left:left + KB[1]] = pred
        full = np.clip(full, 1e-3, 80.0)
        gt_m = raw / 256.0
        valid = (gt_m > 1e-3) & (gt_m < 80.0) & _bts_mask(h, w, "garg")
        bts.append(float(np.sqrt(((gt_m[valid] - full[valid]) ** 2).mean())))
    np.testing.assert_allclose(ours, bts, rtol=1e-5)
    eigen = KittiSource(root, (32, 64), kb_crop=KB, eval_crop="eigen").val_image(0)["mask"]
    np.testing.assert_array_equal(eigen, _bts_mask(40, 136, "eigen")[8:40, 4:132])
    assert not np.array_equal(eigen, src.val_image(0)["mask"])
    b = train_batch(src, 0, 2)
    assert b["depth"].shape == (2, 32, 64) and b["depth"].max() <= 85.0 and (b["depth"] == 0).mean() > 0.4


def test_kitti_refusals_name_the_file(fakes, tmp_path):
    root = _copy(fakes["kitti"][0], tmp_path / "k")
    gt = root / "data_depth_annotated/2011_09_26_drive_0009_sync/proj_depth/groundtruth/image_02/0000000010.png"
    gt.unlink()
    with pytest.raises(DatasetError, match="lists 2011_09_26/2011_09_26_drive_0009_sync/image_02/data/0000000010.png"):
        KittiSource(root, (32, 64), kb_crop=KB)
    Image.fromarray(np.zeros((20, 30), np.uint16)).save(gt)
    src = KittiSource(root, (32, 64), kb_crop=KB)
    i = src.train_files.names.index("2011_09_26/2011_09_26_drive_0009_sync/image_02/data/0000000010.png")
    with pytest.raises(UserError, match="0000000010.png is .* but its ground truth is"):
        src._decode(src.train_files, i)
    (root / "kitti_eigen_test_files_with_gt.txt").unlink()
    with pytest.raises(DatasetError, match="no KITTI split file kitti_eigen_test_files_with_gt.txt"):
        KittiSource(root)
    with pytest.raises(ConfigError, match="data.eval_crop must be one of garg, eigen, none"):
        KittiSource(fakes["kitti"][0], kb_crop=KB, eval_crop="crop")
    bts = tmp_path / "bts"
    write_kitti(bts, split_names=("eigen",))                            # BTS's own split file names
    assert KittiSource(bts, (32, 64), kb_crop=KB).num_val == 2


# ------------------------------------------------------------------------------------------ own folders

def test_folder_seg_reads_classes_json(fakes):
    src = FolderSegSource(fakes["folder"], (32, 32))
    assert src.class_names == FOLDER_CLASSES and src.num_classes == 3 and src.ignore_value == 200
    assert src.palette.shape == (3, 3) and src.palette.dtype == np.uint8
    assert (src.num_train, src.num_val) == (3, 2)
    assert [src.val_files.name(i) for i in range(2)] == ["val_000.jpg", "val_001.png"]
    _, label_file = src.val_files.open(1)
    stored = np.asarray(Image.open(label_file))
    ex = src.val_image(1)
    want = stored.copy()
    want[stored == 200] = 255                                           # the declared ignore value -> 255
    np.testing.assert_array_equal(ex["label"], want)
    assert (ex["label"][:4, :4] == 255).all() and set(np.unique(ex["label"])) <= {0, 1, 2, 255}
    b = train_batch(src, 0, 2)
    assert b["label"].shape == (2, 32, 32) and set(np.unique(b["label"])) <= {0, 1, 2, 255}


def test_folder_seg_refusals_name_the_file(fakes, tmp_path):
    root = _copy(fakes["folder"], tmp_path / "a")
    lab = root / "labels/val/val_001.png"
    arr = np.asarray(Image.open(lab)).copy()
    arr[10, 10] = 3                                                     # 3 classes: 0..2 (+ ignore 200)
    Image.fromarray(arr).save(lab)
    with pytest.raises(DataValueError, match="val_001.png holds the value 3, but classes.json lists 3 classes"):
        FolderSegSource(root, (32, 32)).val_image(1)
    Image.fromarray(arr[:, :32]).save(lab)
    with pytest.raises(DatasetError, match=r"val_001.png is 48x64 but .*val_001.png is 48x32"):
        FolderSegSource(root, (32, 32))
    lab.unlink()
    with pytest.raises(DatasetError, match="the image .*val_001.png has no .*labels/val/val_001.png"):
        FolderSegSource(root, (32, 32))
    root = _copy(fakes["folder"], tmp_path / "b")
    (root / "images/train/train_002.jpg").unlink()
    with pytest.raises(DatasetError, match="labels/train/train_002.png has no image"):
        FolderSegSource(root, (32, 32))
    root = _copy(fakes["folder"], tmp_path / "c")
    (root / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c"], "ignore_index": 1}))
    with pytest.raises(DatasetError, match="classes.json: 'ignore_index' must be an integer from 3"):
        FolderSegSource(root, (32, 32))
    (root / "classes.json").unlink()
    with pytest.raises(DatasetError, match="no classes.json in"):
        FolderSegSource(root, (32, 32))


def test_folder_depth_reads_depth_json(fakes, tmp_path):
    root, stored = fakes["folder_depth"]
    src = FolderDepthSource(root, (32, 32))
    assert src.scene_names == ("garden",) and (src.scale, src.max_depth) == (1000.0, 10.0)
    for i in range(src.num_val):
        raw = stored[Path(src.val_files.name(i)).stem]
        ex = src.val_image(i)
        want = raw / np.float32(1000.0)
        want[want > 10.0] = 0.0                                          # beyond max_depth: no value
        np.testing.assert_array_equal(ex["depth"], want.astype(np.float32))
        assert ex["mask"].all() and ex["depth"][-1, :5].max() == 0.0
    b = train_batch(src, 0, 2)
    assert b["depth"].shape == (2, 32, 32) and b["depth"].max() <= 10.0 and b["scene"].tolist() == [0, 0]
    bad = _copy(root, tmp_path / "d")
    (bad / "depth.json").write_text(json.dumps({"scale": 0, "max_depth": 10}))
    with pytest.raises(DatasetError, match="depth.json: 'scale' must be a positive number"):
        FolderDepthSource(bad)
    (bad / "depth/train/train_001.png").unlink()
    (bad / "depth.json").write_text(json.dumps({"scale": 1000, "max_depth": 10}))
    with pytest.raises(DatasetError, match="train_001.png has no .*depth/train/train_001.png"):
        FolderDepthSource(bad)


def test_catalog_knows_the_new_datasets(fakes):
    assert [task_of(n) for n in ("folder", "folder_depth", "cityscapes", "kitti")] == ["seg", "depth", "seg", "depth"]
    cfg = base_config().data
    cfg.update(dict(name="kitti", data_dir=str(fakes["kitti"][0]), format="folders", crop_size=(32, 64),
                    kb_crop=KB, eval_crop="eigen"))
    src = make_dataset(cfg, 0)
    assert isinstance(src, KittiSource) and src.kb_crop == KB and src.eval_crop == "eigen"
    cfg.update(dict(name="cityscapes", data_dir=str(fakes["cityscapes"][0]), crop_size=(32, 64), img_scale=()))
    assert make_dataset(cfg, 0).img_scale == (2048, 1024)
    cfg.update(dict(name="folder", data_dir="", format="folders"))
    with pytest.raises(ConfigError, match="your folder .*classes.json"):
        make_dataset(cfg, 0)


def test_tfds_builders_read_back_identical(fakes, tmp_path):
    from iedp_jax.infra import tfds

    cases = [(IedpFolderSeg, FolderSegSource, fakes["folder"], {}),
             (IedpFolderDepth, FolderDepthSource, fakes["folder_depth"][0], {}),
             (IedpCityscapes, CityscapesSource, fakes["cityscapes"][0], {"img_scale": (128, 64)}),
             (IedpKittiEigen, KittiSource, fakes["kitti"][0], {"kb_crop": KB})]
    for builder_cls, source_cls, data, kw in cases:
        crop = (32, 64) if source_cls in (CityscapesSource, KittiSource) else (32, 32)
        builder = tfds.prepare(builder_cls, data, tmp_path / "prepared")
        folder = source_cls(data, crop, num_workers=0, **kw)
        prepared = source_cls.from_prepared(builder, crop, num_workers=0, **kw)
        assert prepared.class_names == folder.class_names and prepared.scene_names == folder.scene_names
        for k, v in train_batch(folder, 1, 2).items():
            np.testing.assert_array_equal(train_batch(prepared, 1, 2)[k], v)
        for i in range(folder.num_val):
            a, b = folder.val_image(i), prepared.val_image(i)
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
            assert folder.val_name(i) == prepared.val_name(i) and folder.val_size(i) == prepared.val_size(i)


# ------------------------------------------------------------------------------------------ configs, end to end

TINY = {"model.tiny_backbone": True, "model.fpn_channels": 32, "model.head_channels": 32, "model.head_groups": 8,
        "model.neck_channels": 64, "model.decoder_heads": 4, "model.deconv_channels": 16, "model.conv_channels": 32,
        "train.total_steps": 2, "train.batch_size": 2, "train.eval_batch_size": 2, "train.ckpt_every": 2,
        "train.log_every": 1, "train.num_panels": 0, "optim.warmup_steps": 1, "eval.num_visualizations": 1,
        "data.format": "folders", "data.num_workers": 0}
SIZES = {"folder_seg": {"data.crop_size": (32, 32), "eval.crop": (32, 32), "eval.stride": (21, 21),
                        "eval.img_scale": (128, 32)},
         "folder_depth": {"data.crop_size": (32, 32), "eval.crop": (32, 32), "eval.stride": (16, 32)},
         "cityscapes": {"data.crop_size": (32, 64), "data.img_scale": (128, 64), "eval.crop": (32, 64),
                        "eval.stride": (21, 42), "eval.img_scale": (128, 64)},
         "kitti": {"data.crop_size": (32, 64), "data.kb_crop": KB, "eval.crop": KB, "eval.stride": KB}}
DATA = {"folder_seg": "folder", "folder_depth": "folder_depth", "cityscapes": "cityscapes", "kitti": "kitti"}


def _train_and_evaluate(config: str, data_dir: Path, workdir: Path) -> tuple[dict, dict, object]:
    from iedp_jax.eval.runner import evaluate_checkpoint
    from iedp_jax.trainer import train

    cfg = load_config(config, **TINY, **SIZES[config], **{"data.data_dir": str(data_dir)})
    assert cfg.data.name == DATA[config]
    with quick_compile():
        trained = train(cfg, workdir)
        results = evaluate_checkpoint(cfg, workdir)
    saved = json.loads((workdir / "eval" / "results.json").read_text())
    assert saved == json.loads(json.dumps(results)) and trained["step"] == 2 and saved["step"] == 2
    return saved, cfg, trained


def _names_reach_prompts_and_legend(cfg, workdir: Path, names: tuple[str, ...]) -> None:
    """run.json (what load_trained and predict's legend read) and the explicit branch's prompt table."""
    from iedp_jax.build import build_model
    from iedp_jax.predict import overlay_with_legend
    from iedp_jax.run_files import read_dataset_info
    from iedp_jax.sd import load_tokenizer

    info = read_dataset_info(workdir)
    assert info.class_names == names
    model, _, _ = build_model(cfg, make_dataset(cfg.data, cfg.seed), workdir)
    tok = load_tokenizer(workdir / "tiny_backbone")
    table = np.asarray(model.prompts.class_ids)
    for c, name in enumerate(names):
        ids = list(tok.encode_words(name))
        assert table[c, :len(ids)].tolist() == ids and int(model.prompts.class_len[c]) == len(ids)
    image = np.zeros((16, 24, 3), np.uint8)
    with_legend = overlay_with_legend(image, np.zeros((16, 24), np.uint8), info.class_names)
    assert with_legend.shape[0] > 16                                      # the legend strip under the overlay


@pytest.mark.slow
@pytest.mark.xdist_group("datasets_folder_seg")
def test_folder_seg_config_trains_and_evaluates(fakes, tmp_path):
    saved, cfg, _ = _train_and_evaluate("folder_seg", fakes["folder"], tmp_path)
    assert set(saved["IoU"]) == set(FOLDER_CLASSES) and saved["num_images"] == 2 and saved["mode"] == "single"
    assert saved["protocol"]["crop"] == [32, 32] and 0.0 <= saved["mIoU"] <= 1.0
    _names_reach_prompts_and_legend(cfg, tmp_path, FOLDER_CLASSES)


@pytest.mark.slow
@pytest.mark.xdist_group("datasets_cityscapes")
def test_cityscapes_config_trains_and_evaluates(fakes, tmp_path):
    saved, cfg, _ = _train_and_evaluate("cityscapes", fakes["cityscapes"][0], tmp_path)
    assert list(saved["IoU"]) == list(MMSEG_NAMES) and saved["num_images"] == 2
    assert saved["protocol"] == {"crop": [32, 64], "stride": [21, 42], "flip": False, "img_scale": [128, 64],
                                 "scales": [1.0]}
    _names_reach_prompts_and_legend(cfg, tmp_path, MMSEG_NAMES)


@pytest.mark.slow
@pytest.mark.xdist_group("datasets_kitti")
def test_kitti_config_trains_and_evaluates(fakes, tmp_path):
    saved, cfg, _ = _train_and_evaluate("kitti", fakes["kitti"][0], tmp_path)
    assert cfg.model.max_depth == 80.0 and cfg.data.eval_crop == "garg"
    assert saved["num_images"] == 2 and saved["protocol"] == {"crop": list(KB), "stride": list(KB), "flip": True,
                                                              "clip_depth": True}
    assert {"rmse", "abs_rel", "sq_rel", "rmse_log", "log10", "delta1", "delta2", "delta3"} <= set(saved)
    assert saved["rmse"] > 0.0
    images = sorted(p.name for p in (tmp_path / "eval" / "images").iterdir())
    assert images == ["00000_2011_09_26_2011_09_26_drive_0002_sync_image_02_data_0000000005.png"]


@pytest.mark.slow
@pytest.mark.xdist_group("datasets_folder_depth")
def test_folder_depth_config_trains_and_evaluates(fakes, tmp_path):
    saved, cfg, _ = _train_and_evaluate("folder_depth", fakes["folder_depth"][0], tmp_path)
    assert saved["num_images"] == 2 and saved["rmse"] > 0.0 and 0.0 <= saved["delta1"] <= 1.0
    assert json.loads((tmp_path / "run.json").read_text())["scene_names"] == ["garden"]
