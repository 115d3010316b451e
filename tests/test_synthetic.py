"""The tiny backbone folder (a real diffusers / transformers layout, parity with PyTorch, atomic
and idempotent writing) and the synthetic datasets (determinism, alignment, learnability)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from diffusers import AutoencoderKL as TorchVAE
from diffusers import PNDMScheduler
from diffusers import UNet2DConditionModel as TorchUNet
from safetensors.numpy import load_file

from iedp_jax.data import synthetic
from iedp_jax.data.synthetic import GRID, SyntheticDepth, SyntheticSegmentation
from iedp_jax.sd import tiny
from iedp_jax.sd.clip import load_clip_text, load_clip_vision
from iedp_jax.sd.schedule import load_noise_schedule
from iedp_jax.sd.tiny import TOKENIZER_WORDS, random_params, write_tiny_backbone
from iedp_jax.sd.tokenizer import load_tokenizer
from iedp_jax.sd.unet import load_unet
from iedp_jax.sd.vae import load_vae
from tests.helpers import nchw_to_nhwc, rel_err

TOL = 1e-5


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_tiny_backbone(tmp_path_factory.mktemp("backbone") / "tiny", seed=0)


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (inode, mtime_ns) of every file."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# The tiny backbone: layout and parity with diffusers / transformers.


def test_layout_and_size(root):
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "image_encoder"):
        assert (root / name).is_dir() and name in index
    assert (root / "scheduler" / "scheduler_config.json").is_file()
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 8e6, size
    text_cfg = json.loads((root / "text_encoder" / "config.json").read_text())
    assert text_cfg["architectures"] == ["CLIPTextModel"] and text_cfg["eos_token_id"] == 2
    assert not any(p.name.startswith(".tiny.tmp-") for p in root.parent.iterdir())


def test_every_layer_random_and_nonzero(root):
    for weights in root.glob("*/*.safetensors"):
        for key, a in load_file(str(weights)).items():
            assert a.dtype == np.float32 and (a != 0).all() and a.std() > 1e-3, (weights, key)
    shapes = {"a": {"kernel": jax.ShapeDtypeStruct((3, 4), jnp.float32),
                    "bias": jax.ShapeDtypeStruct((4,), jnp.float32)}}
    a = random_params(shapes, jax.random.PRNGKey(0))
    b = random_params(shapes, jax.random.PRNGKey(1))
    assert not np.array_equal(a["a"]["kernel"], b["a"]["kernel"])
    np.testing.assert_array_equal(a["a"]["bias"], random_params(shapes, jax.random.PRNGKey(0))["a"]["bias"])


def test_unet_parity_with_diffusers(root):
    ref, info = TorchUNet.from_pretrained(root, subfolder="unet", output_loading_info=True)
    assert not any(info.values()), info
    module, params = load_unet(root)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    t = np.array([1, 500], np.int64)
    ctx = rng.standard_normal((2, 7, 32)).astype(np.float32)
    ours = jax.jit(module.apply)({"params": params}, x, t.astype(np.int32), ctx)
    with torch.no_grad():
        theirs = ref.eval()(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t),
                            torch.from_numpy(ctx)).sample
    assert rel_err(ours, nchw_to_nhwc(theirs)) < TOL


def test_vae_parity_with_diffusers(root):
    ref, info = TorchVAE.from_pretrained(root, subfolder="vae", output_loading_info=True)
    assert not any(info.values()), info
    ref.eval()
    module, params = load_vae(root)
    assert module.config.downsample_factor == 8 and module.config.scaling_factor == 0.18215
    x = np.random.default_rng(1).uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)

    @jax.jit
    def run(p, x):
        mean, logvar = module.apply({"params": p}, x, method="encode")
        return mean, logvar, module.apply({"params": p}, mean, method="decode")

    mean, logvar, dec = run(params, x)
    assert mean.shape == (1, 8, 8, 4)
    with torch.no_grad():
        post = ref.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latent_dist
        ref_dec = ref.decode(post.mean).sample
    assert rel_err(mean, nchw_to_nhwc(post.mean)) < TOL
    assert rel_err(logvar, nchw_to_nhwc(post.logvar)) < TOL
    assert rel_err(dec, nchw_to_nhwc(ref_dec)) < TOL


def _prompts() -> list[str]:
    seg = SyntheticSegmentation(num_classes=SyntheticSegmentation.max_classes)
    names = list(seg.class_names) + list(SyntheticDepth.scene_names)
    return [f"a photo of {n}" for n in names] + [", ".join(names[:4]), "Zebra 42, café!"]


def test_tokenizer_matches_transformers(root):
    ours = load_tokenizer(root)
    ref = transformers.CLIPTokenizer.from_pretrained(str(root), subfolder="tokenizer")
    prompts = _prompts()
    ids = ours(prompts)
    assert ids.shape == (len(prompts), 77)
    theirs = ref(prompts, padding="max_length", max_length=77, truncation=True)["input_ids"]
    np.testing.assert_array_equal(ids, np.asarray(theirs))
    # SD 1.5's conventions: bos, eos = the largest id, padding with eos; class words one token each
    assert ours.eos_id == ours.vocab_size - 1 and ours.bos_id == ours.vocab_size - 2
    assert ours.pad_id == ours.eos_id and int(ids.max()) == ours.eos_id
    for word in TOKENIZER_WORDS:
        assert ours.tokens(word) == ["<|startoftext|>", word + "</w>", "<|endoftext|>"], word
    assert ours.tokens("a photo of red square")[1:3] == ["a</w>", "photo</w>"]
    assert ours.encode_words("a") == [320]  # CLIP's own id for "a</w>" (same byte layout)


def test_clip_text_parity_with_transformers(root):
    ref, info = transformers.CLIPTextModel.from_pretrained(str(root), subfolder="text_encoder",
                                                           output_loading_info=True)
    assert not any(info.values()), info
    ids = load_tokenizer(root)(_prompts()[:4])
    module, params = load_clip_text(root)
    ours = jax.jit(module.apply)({"params": params}, ids)
    with torch.no_grad():
        theirs = ref.eval()(input_ids=torch.from_numpy(ids.astype(np.int64)))
    assert rel_err(ours.last_hidden_state, theirs.last_hidden_state) < TOL
    assert rel_err(ours.pooler_output, theirs.pooler_output) < TOL


def test_clip_vision_parity_with_transformers(root):
    ref, info = transformers.CLIPVisionModelWithProjection.from_pretrained(
        str(root), subfolder="image_encoder", output_loading_info=True)
    assert not any(info.values()), info
    module, params = load_clip_vision(root)
    assert module.config.with_projection
    px = np.random.default_rng(2).standard_normal((2, 32, 32, 3)).astype(np.float32)
    ours = jax.jit(module.apply)({"params": params}, px)
    with torch.no_grad():
        theirs = ref.eval()(pixel_values=torch.from_numpy(px.transpose(0, 3, 1, 2).copy()))
    assert rel_err(ours.last_hidden_state, theirs.last_hidden_state) < TOL
    assert rel_err(ours.image_embeds, theirs.image_embeds) < TOL


def test_scheduler_matches_diffusers(root):
    ref = PNDMScheduler.from_pretrained(str(root), subfolder="scheduler")
    ours = load_noise_schedule(root)
    assert ours.beta_schedule == "scaled_linear" and ours.num_train_timesteps == 1000
    np.testing.assert_allclose(np.asarray(ours.alphas_cumprod), ref.alphas_cumprod.numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Atomic, idempotent writing.


def test_second_call_does_not_rewrite(root):
    before = _files(root)
    assert write_tiny_backbone(root, seed=0) == root
    assert _files(root) == before
    with pytest.raises(ValueError, match="seed"):
        write_tiny_backbone(root, seed=1)  # complete, but written with other arguments
    assert _files(root) == before


def test_leftover_temp_empty_folder_and_same_bytes(root, tmp_path, monkeypatch):
    calls = []
    real = tiny._write_backbone
    monkeypatch.setattr(tiny, "_write_backbone", lambda *a: calls.append(a) or real(*a))
    # a crashed earlier writer left a partial temp folder beside the target
    stale = tmp_path / ".tiny.tmp-crashed"
    (stale / "unet").mkdir(parents=True)
    (stale / "unet" / "config.json").write_text("{")
    (tmp_path / "tiny").mkdir()  # an empty target folder is fine
    folder = write_tiny_backbone(tmp_path / "tiny", seed=0)
    assert len(calls) == 1 and tiny._is_complete(folder)
    for rel in _files(root):  # deterministic: the same bytes as the fixture's folder
        assert (root / rel).read_bytes() == (folder / rel).read_bytes(), rel
    write_tiny_backbone(tmp_path / "tiny", seed=0)
    assert len(calls) == 1  # idempotent
    leftovers = {p.name for p in tmp_path.iterdir()}
    assert leftovers == {"tiny", ".tiny.tmp-crashed"}  # ours cleaned up, the stale one untouched


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(tmp, *_):
        (tmp / "unet").mkdir()
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny, "_write_backbone", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_tiny_backbone(tmp_path / "tiny")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_foreign_folder_is_not_touched(tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a complete tiny backbone"):
        write_tiny_backbone(tmp_path / "tiny")
    assert os.listdir(tmp_path / "tiny") == ["notes.txt"]


# ----------------------------------------------------------------------------------------------
# Synthetic segmentation.

N = 300


@pytest.fixture(scope="module")
def seg_batch():
    ds = SyntheticSegmentation(num_classes=5, image_size=64, seed=0)
    return ds, ds.batch("train", range(N))


def test_segmentation_determinism(seg_batch):
    ds, batch = seg_batch
    assert batch["image"].shape == (N, 64, 64, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (N, 64, 64) and batch["label"].dtype == np.uint8
    ex = SyntheticSegmentation(num_classes=5, image_size=64, seed=0).example("train", 7)
    np.testing.assert_array_equal(ex["image"], batch["image"][7])  # batch == stacked examples
    np.testing.assert_array_equal(ex["label"], batch["label"][7])
    np.testing.assert_array_equal(ds.batch("train", [7, 3])["image"], batch["image"][[7, 3]])
    assert not np.array_equal(ds.example("train", 8)["image"], ex["image"])
    assert not np.array_equal(ds.example("validation", 7)["image"], ex["image"])
    assert not np.array_equal(SyntheticSegmentation(seed=1).example("train", 7)["image"], ex["image"])
    assert ds.class_names[0] == "background" and len(set(ds.class_names)) == 5
    assert all(n == n.lower() and n.replace(" ", "").isalpha() for n in ds.class_names)


def test_segmentation_grid_and_class_coverage(seg_batch):
    ds, batch = seg_batch
    label = batch["label"]
    cells = label.reshape(N, 8, GRID, 8, GRID)
    assert (cells == cells[:, :, :1, :, :1]).all()  # constant on every 8x8 cell: edges on the grid
    counts = np.bincount(label.ravel(), minlength=ds.num_classes)
    assert len(counts) == ds.num_classes and (counts > 0).all()
    per_image = [(np.unique(l) > 0).sum() for l in label]
    assert min(per_image) >= 1 and max(per_image) <= 3
    assert (label == 0).any(axis=(1, 2)).mean() > 0.5  # background usually visible


def test_segmentation_image_follows_label(seg_batch):
    ds, batch = seg_batch
    image = batch["image"].astype(np.float32)
    label = batch["label"].astype(np.int64)
    masks = synthetic._pattern_masks(64)
    on = masks[ds.class_patterns[label], np.arange(64)[:, None], np.arange(64)[None, :]]
    expected = ds.class_colours[label] * np.where(on, 1.0, synthetic.DARK)[..., None]
    assert np.abs(image - expected).max() < 6 * synthetic.NOISE_STD + 1  # noise only
    # each labelled region's colour signature names its class (nearest class colour)
    for i in range(50):
        for c in np.unique(label[i]):
            region = (label[i] == c) & on[i]
            mean = image[i][region].mean(0)
            assert np.argmin(np.linalg.norm(ds.class_colours - mean, axis=1)) == c
    # textures differ: a striped class has dark rows inside its region
    striped = list(ds.class_names).index("green stripes")
    region = label == striped
    assert (~on[region]).mean() > 0.3


def test_segmentation_speed():
    import time

    ds = SyntheticSegmentation()
    start = time.perf_counter()
    ds.batch("train", range(256))
    assert time.perf_counter() - start < 5.0


# ----------------------------------------------------------------------------------------------
# Synthetic depth.


def test_depth_range_smoothness_and_learnability():
    ds = SyntheticDepth(image_size=64, seed=0)
    batch = ds.batch("train", range(120))
    d, image, scene = batch["depth"], batch["image"], batch["scene"]
    assert d.dtype == np.float32 and d.shape == (120, 64, 64)
    assert image.dtype == np.uint8 and image.shape == (120, 64, 64, 3)
    assert d.min() > 0.5 and d.max() < 9.5
    assert set(scene.tolist()) == set(range(len(ds.scene_names)))
    # smooth: neighbouring pixels differ by little, and each map spans a real depth range
    assert np.abs(np.diff(d, axis=1)).max() < 0.5 and np.abs(np.diff(d, axis=2)).max() < 0.5
    assert (d.max(axis=(1, 2)) - d.min(axis=(1, 2))).min() > 1.5
    # the brightest channel encodes depth (what a tiny model has to learn)
    level = image.max(-1).astype(np.float32) / 255.0
    recovered = ds.max_depth - (level - 0.1) / 0.9 * (ds.max_depth - ds.min_depth)
    err = np.abs(recovered - d)
    assert err.mean() < 0.1 and err.max() < 0.6
    # determinism
    ex = SyntheticDepth(image_size=64, seed=0).example("train", 5)
    np.testing.assert_array_equal(ex["depth"], d[5])
    np.testing.assert_array_equal(ex["image"], image[5])
    assert ex["scene"] == scene[5]
    assert not np.array_equal(ds.example("train", 6)["depth"], ex["depth"])
    assert not np.array_equal(ds.example("test", 5)["depth"], ex["depth"])
