"""Tiny fake copies of every dataset in its real on-disk release layout, written once here.

ADE20K (``ADEChallengeData2016``), NYUv2 (BTS ``sync`` layout with split files), and the
DiffSegmenter sets (VOC 2012, Pascal Context, COCO-Object). Tests, benchmarks and the
default-path tests point the readers (folders or tfds) at these.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.reference.protocols import blocky_image

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


def write_nyu(root: Path, seed=0, split_dir="splits", test_scenes=NYU_TEST) -> dict[str, np.ndarray]:
    """BTS sync layout: one frame per folder, depth uint16 mm; returns the test depth maps.
    ``test_scenes`` names the scene folder of each test frame (a permutation of NYU_TEST keeps
    the frames and their order and swaps only their scenes)."""
    rng = np.random.default_rng(seed)
    test_depths = {}
    lines = {"train": [], "test": []}
    for split, folders, base in (("train", NYU_TRAIN, root / "sync"),
                                 ("test", list(test_scenes), root / "official_splits" / "test")):
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


def write_protocol_ade(root: Path) -> Path:
    """write_ade's layout; validation: two blocky landscape images (60x84, 60x100) and a portrait
    one (84x60) in the four colours of the dummy, labels stored +1 (reduce_zero_label)."""
    base = write_ade(root, n_train=2, val_values=())
    rng = np.random.default_rng(7)
    for i, (h, w) in enumerate([(60, 84), (84, 60), (60, 100)]):
        image, label = blocky_image(rng, h, w, block=12)
        label = (label + 1).astype(np.uint8)
        label[:6, :6] = 0                                  # "other" -> ignored
        Image.fromarray(image).save(base / "images/validation" / f"ADE_val_{i:08d}.jpg", quality=100)
        Image.fromarray(label).save(base / "annotations/validation" / f"ADE_val_{i:08d}.png")
    return root


# ----------------------------------------------------------------------------------------------
# DiffSegmenter benchmarks: VOC 2012, Pascal Context 60 (mmseg's conversion), COCO-Object
# (GroupViT's conversion), and a tiny full CLIP model for the category filter.

DIFFSEG_IGNORE = 255


def _seg_examples(image_dir, ids, sizes, num_classes, seed, border):
    """Writes ``<id>.jpg`` into ``image_dir`` and returns [(id, label uint8 [H, W])]: noise
    with two flat rectangles of random foreground classes, the rest background, and a 2-pixel
    ignore border on top of each rectangle when ``border`` (VOC's object outlines)."""
    rng = np.random.default_rng(seed)
    sizes = [tuple(sizes)] * len(ids) if np.ndim(sizes) == 1 else [tuple(s) for s in sizes]
    if len(sizes) != len(ids):
        raise ValueError(f"{len(sizes)} sizes for {len(ids)} images.")
    colours = rng.integers(0, 256, (num_classes, 3))
    out = []
    for i, (h, w) in zip(ids, sizes):
        image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        label = np.zeros((h, w), np.uint8)
        for _ in range(2):
            k = int(rng.integers(1, num_classes))
            y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            y1, x1 = y0 + int(rng.integers(h // 4, h // 2)), x0 + int(rng.integers(w // 4, w // 2))
            label[y0:y1, x0:x1] = k
            image[y0:y1, x0:x1] = colours[k]
            if border:
                label[y0:y0 + 2, x0:x1] = DIFFSEG_IGNORE
        Image.fromarray(image).save(image_dir / f"{i}.jpg", quality=95)
        out.append((i, label))
    return out


def write_voc(root: Path, num_images: int = 3, sizes=(48, 64), seed: int = 0, aug: bool = True) -> Path:
    """``root/VOCdevkit/VOC2012`` with JPEGImages/, ImageSets/Segmentation/val.txt and the labels:
    ``SegmentationClassAug/`` grey PNGs as DeepLab's augmented release (``aug``), or the official
    ``SegmentationClass/`` indexed PNGs with the VOC palette. Returns ``root`` (the data_dir)."""
    from diffseg_jax.segment import voc_palette

    base = Path(root) / "VOCdevkit" / "VOC2012"
    labels = base / ("SegmentationClassAug" if aug else "SegmentationClass")
    for d in (base / "JPEGImages", labels, base / "ImageSets" / "Segmentation"):
        d.mkdir(parents=True, exist_ok=True)
    ids = [f"2007_{i:06d}" for i in range(num_images)]
    for i, label in _seg_examples(base / "JPEGImages", ids, sizes, 21, seed, border=True):
        if aug:
            Image.fromarray(label).save(labels / f"{i}.png")
        else:
            lab = Image.frombytes("P", label.shape[::-1], label.tobytes())
            lab.putpalette(voc_palette().reshape(-1).tolist())
            lab.save(labels / f"{i}.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{i}\n" for i in ids))
    return Path(root)


def write_context(root: Path, num_images: int = 3, sizes=(48, 64), seed: int = 0) -> Path:
    """``root/VOCdevkit/VOC2010`` as mmseg's Pascal Context converter leaves it: JPEGImages/,
    SegmentationClassContext/ grey PNGs (0 = background, 1..59) and
    ImageSets/SegmentationContext/val.txt. Returns ``root``."""
    base = Path(root) / "VOCdevkit" / "VOC2010"
    for d in (base / "JPEGImages", base / "SegmentationClassContext", base / "ImageSets" / "SegmentationContext"):
        d.mkdir(parents=True, exist_ok=True)
    ids = [f"2008_{i:06d}" for i in range(num_images)]
    for i, label in _seg_examples(base / "JPEGImages", ids, sizes, 60, seed, border=False):
        Image.fromarray(label).save(base / "SegmentationClassContext" / f"{i}.png")
    (base / "ImageSets" / "SegmentationContext" / "val.txt").write_text("".join(f"{i}\n" for i in ids))
    return Path(root)


def write_coco(root: Path, num_images: int = 3, sizes=(48, 64), seed: int = 0, layout: str = "groupvit") -> Path:
    """COCO-Object val2017 (0 = background, 1..80 = the things in COCO order, 255 = ignore):
    ``layout='groupvit'``: ``root/coco_stuff164k/{images,annotations}/val2017/`` with
    ``<id>_instanceTrainIds.png`` labels, as GroupViT's ``convert_coco_object.py`` writes them;
    ``'object'``: ``root/coco/images/val2017/`` with ``annotations/object_val2017/<id>.png``.
    Returns ``root``."""
    if layout == "groupvit":
        base, labels, suffix = Path(root) / "coco_stuff164k", "val2017", "_instanceTrainIds.png"
    elif layout == "object":
        base, labels, suffix = Path(root) / "coco", "object_val2017", ".png"
    else:
        raise ValueError(f"unknown COCO-Object layout {layout!r}.")
    for d in (base / "images" / "val2017", base / "annotations" / labels):
        d.mkdir(parents=True, exist_ok=True)
    ids = [f"{i:012d}" for i in range(num_images)]
    for i, label in _seg_examples(base / "images" / "val2017", ids, sizes, 81, seed, border=False):
        Image.fromarray(label).save(base / "annotations" / labels / f"{i}{suffix}")
    return Path(root)


DIFFSEG_WRITERS = {"voc": write_voc, "context": write_context, "coco": write_coco}


def write_tiny_clip(folder: Path, backbone: Path) -> Path:
    """A tiny transformers ``CLIPModel`` (both projections, no zero layer) saved in ``folder`` with
    the tiny backbone's tokenizer files: a full CLIP folder for the category filter."""
    import json
    import shutil

    import torch
    import transformers

    from tests.helpers import perturb_

    vocab = json.loads((Path(backbone) / "tokenizer" / "vocab.json").read_text())
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, eos_token_id=2,
                         bos_token_id=len(vocab) - 2, pad_token_id=1, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act="quick_gelu"),
        projection_dim=16)
    torch.manual_seed(0)
    model = transformers.CLIPModel(cfg)
    perturb_(model, seed=5)
    model.eval()
    model.save_pretrained(folder)
    for f in (Path(backbone) / "tokenizer").iterdir():
        shutil.copy(f, Path(folder) / f.name)
    return Path(folder)


# ----------------------------------------------------------------------------------------------
# DiffSegmenter: a pipeline whose native resolution is not 512 px, and a tokenizer whose words
# are single tokens as in the real CLIP vocabulary.

# Every word here is one token in openai/clip-vit-large-patch14's vocab.json ("cow</w>", "cows</w>",
# "cat</w>", "cattle</w>", "photograph</w>", "photography</w>", ...): the plural or longer word is
# its own token, not the class token plus a suffix, which is what breaks a prompt that glues a
# caption's word to the class name.
CLIP_WORDS = ("a", "photograph", "photography", "of", "cow", "cows", "dog", "dogs", "cat", "cattle", "cats",
              "grazing", "sitting", "running", "on", "in", "the", "field", "grass", "couch", "sofa", "and",
              "with", "potted", "plant", "traffic", "light", "dining", "table", "plane", "flying", "people", "sky")


def write_word_tokenizer(folder: Path, words=CLIP_WORDS) -> Path:
    """A CLIP tokenizer folder (vocab.json + merges.txt) in which each of ``words`` is one token."""
    from iedp_jax.sd.tiny import write_tokenizer

    write_tokenizer(folder, words)
    return Path(folder)


def write_native_pipeline(folder: Path, backbone: Path, sample_size: int = 16, vae_blocks: int = 2) -> Path:
    """The tiny backbone with UNet ``sample_size`` and a VAE of ``vae_blocks`` blocks (factor
    ``2 ** (vae_blocks - 1)``): native resolution ``sample_size * factor`` (32 px by default).
    Idempotent."""
    import json
    import shutil

    import jax
    import jax.numpy as jnp

    from iedp_jax.sd.export import save_component
    from iedp_jax.sd.tiny import RESIDUAL_SCALE, random_params, tiny_vae_config
    from iedp_jax.sd.vae import AutoencoderKL, VAEConfig

    folder = Path(folder)
    if (folder / "done").is_file():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(backbone, folder)
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    cfg["sample_size"] = sample_size
    (folder / "unet" / "config.json").write_text(json.dumps(cfg))
    vcfg = tiny_vae_config()
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        vcfg[key] = vcfg[key][:vae_blocks]
    vae = AutoencoderKL(VAEConfig.from_dict(vcfg))
    shapes = jax.eval_shape(lambda: vae.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))["params"]
    shutil.rmtree(folder / "vae")
    save_component(folder / "vae", vcfg, random_params(shapes, jax.random.PRNGKey(3), residual_scale=RESIDUAL_SCALE),
                   "diffusion_pytorch_model.safetensors")
    (folder / "done").write_text("")
    return folder


# ----------------------------------------------------------------------------------------------
# A mid-size backbone for compile-only memory tests: SD 1.5's and CLIP ViT-L/14's topology (4 UNet
# levels with 2 layers each, 8 heads everywhere, a 4-level VAE, 224 px / 14 px patches) at 1/8 of
# the width, so that at 512 px the attention maps have their full-size shapes.

MID_WIDTH = 8  # the divisor of SD 1.5's channel counts


def write_mid_backbone(folder: Path, seed: int = 0) -> Path:
    """A random SD 1.5-topology pipeline folder (diffusers layout, image_encoder/ included) at
    1/8 of the width, from benchmarks/sd15_configs.json; idempotent."""
    import json
    import shutil

    import jax
    import jax.numpy as jnp

    from benchmarks.full_size import configs
    from iedp_jax.sd.clip import CLIPTextConfig, CLIPTextTransformer, CLIPVisionConfig, CLIPVisionTransformer
    from iedp_jax.sd.export import save_component
    from iedp_jax.sd.tiny import RESIDUAL_SCALE, random_params, write_tiny_backbone
    from iedp_jax.sd.unet import UNet2DConditionModel, UNetConfig, init_unet
    from iedp_jax.sd.vae import AutoencoderKL, VAEConfig

    folder = Path(folder)
    if (folder / "done").is_file():
        return folder
    tiny = write_tiny_backbone(folder.with_name(folder.name + "_tiny"), seed=seed)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(tiny, folder)
    (folder / "synthetic_backbone.json").unlink()  # the tiny backbone's marker: this folder is another model
    full, k = configs(), MID_WIDTH
    key = jax.random.PRNGKey(seed)
    unet = dict(full["unet"], _class_name="UNet2DConditionModel", cross_attention_dim=768 // k, norm_num_groups=8,
                block_out_channels=[c // k for c in full["unet"]["block_out_channels"]])
    m = UNet2DConditionModel(UNetConfig.from_dict(unet))
    save_component(folder / "unet", unet, random_params(jax.eval_shape(lambda: init_unet(m))["params"],
                                                        jax.random.fold_in(key, 0), residual_scale=RESIDUAL_SCALE),
                   "diffusion_pytorch_model.safetensors")
    vae = dict(full["vae"], _class_name="AutoencoderKL", norm_num_groups=8,
               block_out_channels=[c // k for c in full["vae"]["block_out_channels"]])
    v = AutoencoderKL(VAEConfig.from_dict(vae))
    shapes = jax.eval_shape(lambda: v.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))["params"]
    save_component(folder / "vae", vae, random_params(shapes, jax.random.fold_in(key, 1)),
                   "diffusion_pytorch_model.safetensors")
    text = json.loads((folder / "text_encoder" / "config.json").read_text())
    text.update(hidden_size=768 // k, intermediate_size=4 * 768 // k, num_attention_heads=4, num_hidden_layers=2,
                projection_dim=768 // k)
    t = CLIPTextTransformer(CLIPTextConfig.from_dict(text))
    shapes = jax.eval_shape(lambda: t.init(jax.random.PRNGKey(0), jnp.zeros((1, 77), jnp.int32)))["params"]
    save_component(folder / "text_encoder", text, random_params(shapes, jax.random.fold_in(key, 2)),
                   "model.safetensors", prefix="text_model.")
    vision = json.loads((folder / "image_encoder" / "config.json").read_text())
    vision.update({kk: full["clip_vit_l14_vision"][kk] for kk in ("image_size", "patch_size")},
                  hidden_size=1024 // k, intermediate_size=4096 // k, num_attention_heads=4, num_hidden_layers=2,
                  projection_dim=768 // k)
    vt = CLIPVisionTransformer(CLIPVisionConfig.from_dict(vision))
    shapes = jax.eval_shape(lambda: vt.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))["params"]
    save_component(folder / "image_encoder", vision, random_params(shapes, jax.random.fold_in(key, 3)),
                   "model.safetensors", prefix="vision_model.")
    (folder / "done").write_text("mid-size backbone\n")
    return folder


# ----------------------------------------------------------------------------------------------
# A user's own folders, Cityscapes and KITTI (docs/datasets.md), in their release layouts.

FOLDER_CLASSES = ("sky", "road", "car")


def write_folder_seg(root: Path, classes=FOLDER_CLASSES, ignore_index: int = 200, n_train: int = 3,
                     n_val: int = 2, size=(48, 64), seed: int = 0) -> Path:
    """``classes.json`` + ``images/{train,val}/`` (JPEG and PNG) + ``labels/{train,val}/<stem>.png``:
    blocky labels 0..K-1 with a corner of ``ignore_index``, colours by class. Returns ``root``."""
    import json

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (len(classes), 3))
    (root).mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps({"classes": list(classes), "ignore_index": ignore_index,
                                                   "palette": colours.tolist()}))
    h, w = size
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            tiles = rng.integers(0, len(classes), (-(-h // 8), -(-w // 8)))
            label = np.kron(tiles, np.ones((8, 8), np.int64))[:h, :w].astype(np.uint8)
            label[:4, :4] = ignore_index
            image = colours[np.minimum(label, len(classes) - 1)].astype(np.uint8)
            suffix = ".png" if i % 2 else ".jpg"
            Image.fromarray(image).save(root / "images" / split / f"{split}_{i:03d}{suffix}")
            Image.fromarray(label).save(root / "labels" / split / f"{split}_{i:03d}.png")
    return root


def write_folder_depth(root: Path, scale: float = 1000.0, max_depth: float = 10.0, n_train: int = 3,
                       n_val: int = 2, size=(48, 64), seed: int = 0) -> dict[str, np.ndarray]:
    """``depth.json`` + ``images/{train,val}/*.png`` + ``depth/{train,val}/<stem>.png`` (uint16,
    metres x ``scale``, a few zeros and a few values above ``max_depth``); returns the stored
    validation depth maps by stem."""
    import json

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "depth.json").write_text(json.dumps({"scale": scale, "max_depth": max_depth, "scene": "garden"}))
    stored = {}
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "depth" / split).mkdir(parents=True)
        for i in range(n):
            raw = rng.integers(int(0.5 * scale), int(9.5 * scale), size).astype(np.uint16)
            raw[:2] = 0
            raw[-1, :5] = int(12 * scale)                     # beyond max_depth: no value
            Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(
                root / "images" / split / f"{split}_{i:03d}.png")
            Image.fromarray(raw).save(root / "depth" / split / f"{split}_{i:03d}.png")
            if split == "val":
                stored[f"{split}_{i:03d}"] = raw
    return stored


CITYSCAPES_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}


def write_cityscapes(root: Path, size=(64, 128), seed: int = 0) -> dict[str, np.ndarray]:
    """``leftImg8bit/{train,val}/<city>/<city>_000000_0000NN_leftImg8bit.png`` and the gtFine
    files beside each label (``_labelIds.png`` blocky over all 34 ids, plus ``_color.png``,
    ``_instanceIds.png`` and ``_polygons.json`` that are not read). Returns the val labelIds by name."""
    import json

    rng = np.random.default_rng(seed)
    h, w = size
    out = {}
    for split, cities in CITYSCAPES_CITIES.items():
        for k, city in enumerate(cities):
            (root / "leftImg8bit" / split / city).mkdir(parents=True)
            (root / "gtFine" / split / city).mkdir(parents=True)
            for frame in range(2):
                stem = f"{city}_{k:06d}_{frame * 19:06d}"
                tiles = rng.integers(0, 34, (-(-h // 16), -(-w // 16)))
                ids = np.kron(tiles, np.ones((16, 16), np.int64))[:h, :w].astype(np.uint8)
                image = (ids[..., None] * np.array([7, 3, 5]) % 256).astype(np.uint8)
                Image.fromarray(image).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                gt = root / "gtFine" / split / city
                Image.fromarray(ids).save(gt / f"{stem}_gtFine_labelIds.png")
                Image.fromarray(np.zeros((h, w, 4), np.uint8)).save(gt / f"{stem}_gtFine_color.png")
                Image.fromarray(ids.astype(np.uint16) * 1000).save(gt / f"{stem}_gtFine_instanceIds.png")
                polygons = {"imgHeight": h, "imgWidth": w, "objects": []}
                (gt / f"{stem}_gtFine_polygons.json").write_text(json.dumps(polygons))
                if split == "val":
                    out[f"{city}/{stem}_leftImg8bit.png"] = ids
    return out


KITTI_DRIVES = {"train": ("2011_09_26_drive_0001_sync", "2011_09_26_drive_0009_sync"),
                "test": ("2011_09_26_drive_0002_sync",)}


def write_kitti(root: Path, size=(40, 136), frames: int = 2, seed: int = 0, split_names=("kitti_eigen",)
                ) -> dict[str, np.ndarray]:
    """The BTS KITTI layout: ``2011_09_26/<drive>/image_02/data/NNNNNNNNNN.png``,
    ``data_depth_annotated/<drive>/proj_depth/groundtruth/image_02/NNNNNNNNNN.png`` (uint16 metres
    x 256, sparse: about 2/3 zeros) and the split files, each with one extra ``None`` line.
    Returns the test ground truth (uint16) by RGB path."""
    rng = np.random.default_rng(seed)
    lines = {"train": [], "test": []}
    out = {}
    for split, drives in KITTI_DRIVES.items():
        for drive in drives:
            rgb_dir = root / "2011_09_26" / drive / "image_02" / "data"
            gt_dir = root / "data_depth_annotated" / drive / "proj_depth" / "groundtruth" / "image_02"
            rgb_dir.mkdir(parents=True)
            gt_dir.mkdir(parents=True)
            for f in range(frames):
                name = f"{5 * f + 5:010d}.png"
                raw = (rng.uniform(2.0, 85.0, size) * 256).astype(np.uint16)
                raw[rng.random(size) < 0.66] = 0
                Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(rgb_dir / name)
                Image.fromarray(raw).save(gt_dir / name)
                rgb = f"2011_09_26/{drive}/image_02/data/{name}"
                lines[split].append(f"{rgb} {drive}/proj_depth/groundtruth/image_02/{name} 721.5377")
                if split == "test":
                    out[rgb] = raw
        missing = f"2011_09_26/{drives[0]}/image_02/data/{5 * frames + 5:010d}.png"
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(root / missing)
        lines[split].insert(1, f"{missing} None 721.5377")            # no ground truth: skipped
    for prefix in split_names:
        for split in ("train", "test"):
            (root / f"{prefix}_{split}_files_with_gt.txt").write_text("\n".join(lines[split]) + "\n")
    return out
