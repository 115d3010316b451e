"""VPD's rungs as VPD ran them: its class-embedding file read without torch (and a code-running
.pth refused), SILog per group of images, VPD's CutDepth, the reported checkpoint's kind, the
NYUv2 test scene at full resolution, DiffSegmenter's official absent-class IoU, and the rung
configs (torch is used here only to write the .pth fixtures)."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from iedp_jax.build import class_embeddings_from_file
from iedp_jax.data.nyu import NYUv2Source
from iedp_jax.data.transforms import render_depth
from iedp_jax.eval.runner import _chosen_checkpoint
from iedp_jax.infra.errors import ConfigError, InputError
from iedp_jax.infra.metrics import segmentation_metrics
from iedp_jax.infra.paths import as_path
from iedp_jax.infra.torch_file import load_array
from iedp_jax.losses import silog
from tests.fakes import NYU_TEST, H, W, write_nyu
from tests.helpers import load_config


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_vpd_pth_loads_without_torch_and_code_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    table = np.random.default_rng(0).standard_normal((150, 12)).astype(np.float32)
    torch.save(torch.from_numpy(table), tmp_path / "class_embeddings.pth")  # VPD's format: one float tensor
    np.testing.assert_array_equal(load_array(tmp_path / "class_embeddings.pth"), table)
    got = class_embeddings_from_file(tmp_path / "class_embeddings.pth", [f"c{i}" for i in range(150)], 12)
    np.testing.assert_array_equal(got, table)
    # a strided view, half precision and a Parameter are still one tensor's storage
    torch.save(torch.from_numpy(table).t(), tmp_path / "t.pth")
    np.testing.assert_array_equal(load_array(tmp_path / "t.pth"), table.T)
    torch.save(torch.from_numpy(table).half(), tmp_path / "h.pth")
    np.testing.assert_array_equal(load_array(tmp_path / "h.pth"), table.astype(np.float16))
    torch.save(torch.nn.Parameter(torch.from_numpy(table)), tmp_path / "p.pth")
    np.testing.assert_array_equal(load_array(tmp_path / "p.pth"), table)
    np.save(tmp_path / "e.npy", table)
    np.testing.assert_array_equal(load_array(tmp_path / "e.npy"), table)

    marker = tmp_path / "ran"
    torch.save({"x": _RunsCode(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(InputError, match=r"names posix\.system, which is refused and not run") as e:
        load_array(tmp_path / "evil.pth")
    assert not marker.exists() and str(e.value).count(". ") == 0  # nothing ran; one sentence
    torch.save([torch.from_numpy(table)], tmp_path / "list.pth")
    with pytest.raises(InputError, match="holds a list, not one tensor"):
        load_array(tmp_path / "list.pth")
    with pytest.raises(ConfigError, match=r"shape \(150, 12\), but this run needs float \(27, 12\)"):
        class_embeddings_from_file(tmp_path / "e.npy", [f"s{i}" for i in range(27)], 12)
    with pytest.raises(InputError, match="does not exist"):
        load_array(tmp_path / "missing.pth")


def test_silog_group_is_the_mean_of_per_group_losses():
    rng = np.random.default_rng(0)
    pred = rng.uniform(0.5, 9.0, (6, 4, 5)).astype(np.float32)
    gt = rng.uniform(0.5, 9.0, (6, 4, 5)).astype(np.float32)
    gt[1, :2] = 0.0  # invalid pixels: each group pools only its own valid ones

    def by_hand(p, g):
        d = np.log(g[g > 0].astype(np.float64)) - np.log(p[g > 0].astype(np.float64))
        return np.sqrt(np.mean(d ** 2) - 0.5 * np.mean(d) ** 2)

    want = np.mean([by_hand(pred[i:i + 3], gt[i:i + 3]) for i in (0, 3)])  # VPD: 3 images per GPU
    got = float(silog(jnp.asarray(pred), jnp.asarray(gt), group=3))
    assert got == pytest.approx(want, rel=1e-5)
    pooled = float(silog(jnp.asarray(pred), jnp.asarray(gt)))
    assert pooled == pytest.approx(by_hand(pred, gt), rel=1e-5) and abs(pooled - got) > 1e-4
    assert float(silog(jnp.asarray(pred), jnp.asarray(gt), group=6)) == pytest.approx(pooled, rel=1e-6)
    with pytest.raises(ConfigError, match="loss.silog_group=4 must divide the batch of 6"):
        silog(jnp.asarray(pred), jnp.asarray(gt), group=4)


@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyu")
    write_nyu(root)
    return root


def test_vpd_cutdepth_every_4th_sample_with_raw_millimetres(nyu):
    full = (H, W)  # the whole frame: no crop offset, so the two sources differ only in the strip
    vpd = NYUv2Source(nyu, full, seed=0, num_workers=0, cutdepth="vpd", color_jitter=None, flip_prob=0.0)
    off = NYUv2Source(nyu, full, seed=0, num_workers=0, cutdepth="none", color_jitter=None, flip_prob=0.0)
    batch = 3
    changed = []
    for step in range(3):
        for row in range(batch):
            a, b = vpd.train_example(step, row, batch), off.train_example(step, row, batch)
            np.testing.assert_array_equal(a["depth"], b["depth"])
            changed.append(not np.array_equal(a["image"], b["image"]))
            if changed[-1]:  # the pasted strip holds the raw millimetres modulo 256 on all channels
                cols = np.flatnonzero(np.any(a["image"] != b["image"], axis=(0, 2)))
                strip = a["image"][:, cols]
                np.testing.assert_array_equal(strip[..., 0], render_depth(a["depth"][:, cols], render="vpd"))
                assert (strip == strip[..., :1]).all()
    assert changed == [(s * batch + r) % 4 == 0 for s in range(3) for r in range(batch)]
    cfg = load_config("vpd_nyu", **{"data.data_dir": str(nyu), "data.format": "folders", "data.crop_size": (32, 32)})
    assert NYUv2Source.from_config(cfg.data, 0).cutdepth == "vpd" and load_config("smoke_depth").data.cutdepth == "ours"
    cfg.data.cutdepth = "often"
    with pytest.raises(ConfigError, match="data.cutdepth must be one of ours, vpd, none"):
        NYUv2Source.from_config(cfg.data, 0)


def test_full_resolution_test_images_carry_their_own_scene(nyu):
    src = NYUv2Source(nyu, (32, 32), num_workers=0)
    want = [src.scene_names.index(s) for s in NYU_TEST]
    assert [int(src.val_image(i)["scene"]) for i in range(3)] == want  # what the published protocol reads
    assert list(next(src.val_batches(3, slice(None)))["scene"]) == want  # the centre-crop validation


def _step_folder(folder, step):
    (folder / str(step) / "state").mkdir(parents=True)
    (folder / str(step) / "state" / "_METADATA").write_text("{}")


def test_results_say_which_checkpoint(tmp_path):
    cfg = load_config("vpd_nyu")
    assert cfg.eval.checkpoint == "final" and load_config("vpd_ade").eval.checkpoint == "final"
    cfg.train.total_steps = 4
    work = as_path(tmp_path)
    _step_folder(tmp_path / "checkpoints", 2)
    assert _chosen_checkpoint(cfg, work, None)[1:] == (2, "intermediate")
    _step_folder(tmp_path / "checkpoints", 4)
    assert _chosen_checkpoint(cfg, work, None)[1:] == (4, "final")
    cfg.eval.checkpoint = "best"
    with pytest.raises(InputError, match="train.eval_every > 0"):
        _chosen_checkpoint(cfg, work, None)
    _step_folder(tmp_path / "best", 3)
    assert _chosen_checkpoint(cfg, work, None)[1:] == (3, "best")
    assert _chosen_checkpoint(cfg, work, str(tmp_path / "checkpoints" / "2"))[1:] == (2, "intermediate")
    cfg.eval.checkpoint = "newest"
    with pytest.raises(ConfigError, match="eval.checkpoint must be 'final'"):
        _chosen_checkpoint(cfg, work, None)


def test_absent_class_iou_official_zero_or_nan():
    conf = np.array([[3, 1, 0], [1, 5, 0], [0, 0, 0]])  # class 2 absent from labels and predictions
    nan = segmentation_metrics(conf)
    zero = segmentation_metrics(conf, absent_iou="zero")
    ious = [3 / 5, 5 / 7]
    assert nan["mIoU"] == pytest.approx(np.mean(ious)) and nan["IoU"][2] is None
    assert zero["mIoU"] == pytest.approx(sum(ious) / 3) and zero["IoU"][2] == 0.0  # TP / (T + P - TP + 1e-10)
    from diffseg_jax.config import default_config
    from diffseg_jax.evaluate import absent_class_iou

    c = default_config("voc")
    assert absent_class_iou(c) == "zero"  # the paper-protocol config: the official accounting
    c.eval.absent_class_iou = "skip"
    with pytest.raises(ConfigError, match="eval.absent_class_iou must be 'zero'"):
        absent_class_iou(c)


def test_explicit_placement_rungs_differ_by_one_key():
    for base in ("ade", "nyu"):
        low, high = load_config(base).to_dict(), load_config(f"{base}_explicit_concat").to_dict()
        diff = {(s, k) for s, d in low.items() if isinstance(d, dict) for k in d if d[k] != high[s][k]}
        assert diff == {("explicit", "placement")}
        assert (low["explicit"]["placement"], high["explicit"]["placement"]) == ("scattered", "concatenated")
    nyu = load_config("vpd_nyu")
    assert nyu.loss.silog_group == 3 and nyu.data.cutdepth == "vpd"
