"""Tiny fake copies of every dataset in its real on-disk release layout, written once here.

ADE20K (``ADEChallengeData2016``), NYUv2 (BTS ``sync`` layout with split files), and the
DiffSegmenter sets (VOC 2012, Pascal Context, COCO-Object). Tests, benchmarks and the
default-path tests point the readers (folders or tfds) at these.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

H, W = 60, 80


def _blocky(rng, num_labels):
    tiles = rng.integers(0, num_labels, (5, 7))
    return np.kron(tiles, np.ones((12, 12), np.int64))[:H, :W].astype(np.uint8)


def write_ade(root: Path, n_train=5, val_values=(0, 3, 5), seed=0) -> Path:
    """ADEChallengeData2016 with ``n_train`` training pairs (labels 0..5) and one constant-label
    validation pair per value in ``val_values``."""
    rng = np.random.default_rng(seed)
    base = root / "ADEChallengeData2016"
    for split in ("training", "validation"):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
    for i in range(n_train):
        label = _blocky(rng, 6)
        image = (rng.integers(0, 256, (6, 3)) [label]).astype(np.uint8)
        Image.fromarray(image).save(base / "images/training" / f"ADE_train_{i:08d}.jpg", quality=95)
        Image.fromarray(label).save(base / "annotations/training" / f"ADE_train_{i:08d}.png")
    for i, v in enumerate(val_values):
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(image).save(base / "images/validation" / f"ADE_val_{i:08d}.jpg")
        Image.fromarray(np.full((H, W), v, np.uint8)).save(base / "annotations/validation" / f"ADE_val_{i:08d}.png")
    # a grey JPEG (ADE20K has some): must come back as RGB
    Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8)).save(
        base / "images/training" / "ADE_train_99999999.jpg")
    Image.fromarray(_blocky(rng, 6)).save(base / "annotations/training" / "ADE_train_99999999.png")
    return base


NYU_TRAIN = ["kitchen_0028b", "kitchen_0003", "living_room_0010a", "study_room_0004"]
NYU_TEST = ["bathroom", "kitchen", "bedroom"]


def write_nyu(root: Path, seed=0, split_dir="splits") -> dict[str, np.ndarray]:
    """BTS sync layout: one frame per folder, depth uint16 mm; returns the test depth maps."""
    rng = np.random.default_rng(seed)
    test_depths = {}
    lines = {"train": [], "test": []}
    for split, folders, base in (("train", NYU_TRAIN, root / "sync"),
                                 ("test", NYU_TEST, root / "official_splits" / "test")):
        for k, folder in enumerate(folders):
            (base / folder).mkdir(parents=True)
            n = 45 + k
            image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            mm = rng.integers(500, 9000, (H, W)).astype(np.uint16)
            mm[:3] = 0                                              # invalid rows
            Image.fromarray(image).save(base / folder / f"rgb_{n:05d}.jpg")
            Image.fromarray(mm).save(base / folder / f"sync_depth_{n:05d}.png")
            lead = "/" if split == "train" else ""
            lines[split].append(f"{lead}{folder}/rgb_{n:05d}.jpg {lead}{folder}/sync_depth_{n:05d}.png 518.8579")
            if split == "test":
                test_depths[folder] = mm
    lines["train"].append("/kitchen_0028b/rgb_00999.jpg None 518.8579")   # no ground truth: skipped
    (root / split_dir).mkdir(exist_ok=True, parents=True)
    (root / split_dir / "nyudepthv2_train_files_with_gt.txt").write_text("\n".join(lines["train"]) + "\n")
    (root / split_dir / "nyudepthv2_test_files_with_gt.txt").write_text("\n".join(lines["test"]) + "\n")
    return test_depths
