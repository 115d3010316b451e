"""A tiny random Stable Diffusion pipeline folder, written without torch, in the real layout.

:func:`write_tiny_backbone` writes a complete SD 1.5-style pipeline (``model_index.json``,
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) plus ``image_encoder/``
(a ``CLIPVisionModelWithProjection``) with random weights: diffusers / transformers
``from_pretrained`` and our loaders both read it. The README's first command and the tests run
on it; its byte-level BPE vocabulary covers the words the smoke configs and tests prompt with.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from iedp_jax.sd.clip import CLIPTextConfig, CLIPTextTransformer, CLIPVisionConfig, CLIPVisionTransformer
from iedp_jax.sd.export import save_component
from iedp_jax.sd.names import flatten, unflatten
from iedp_jax.sd.unet import UNet2DConditionModel, UNetConfig, init_unet
from iedp_jax.sd.vae import AutoencoderKL, VAEConfig

# ----------------------------------------------------------------------------------------------
# The tiny backbone folder.

MARKER = "synthetic_backbone.json"  # what was written, and a sign that the folder is complete
_FORMAT = 2  # 2: residual branches of the UNet and VAE scaled by RESIDUAL_SCALE
# The layers that end a residual branch (resnet conv2, attention output, transformer proj_out,
# feed-forward output). Scaling them down at random init (as SkipInit/Fixup do) keeps the
# random VAE's latent a local, information-preserving function of the image, so the smoke runs
# can learn; with full-scale random residuals an MLP probe recovers only ~88% of latent cells'
# classes, with 0.1 about 96%.
RESIDUAL_LAYERS = ("conv2", "to_out_0", "proj_out", "net_2")
RESIDUAL_SCALE = 0.1
_DIFFUSERS_VERSION = "0.30.0"
_TRANSFORMERS_VERSION = "4.30.0"
_UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
_HF_WEIGHTS = "model.safetensors"
_FILES = (
    "model_index.json",
    "unet/config.json", f"unet/{_UNET_WEIGHTS}",
    "vae/config.json", f"vae/{_UNET_WEIGHTS}",
    "text_encoder/config.json", f"text_encoder/{_HF_WEIGHTS}",
    "image_encoder/config.json", f"image_encoder/{_HF_WEIGHTS}",
    "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "scheduler/scheduler_config.json",
    MARKER,
)

BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
# Words merged into single tokens (class and scene names, prompt words). Any other text still
# tokenizes, one byte-level token per character.
TOKENIZER_WORDS = (
    "a", "photo", "of", "the", "and", "background",
    "red", "green", "blue", "yellow", "cyan", "magenta", "orange", "purple", "white", "pink",
    "brown", "gray", "square", "stripes", "checkers", "dots",
    "bedroom", "kitchen", "office", "bathroom",
)


def tiny_unet_config(cross_attention_dim: int = 32) -> dict[str, Any]:
    """The tiny UNet's diffusers ``config.json`` (SD 1.5 layout, 3 levels, latent 8x8 for 64 px)."""
    return {
        "_class_name": "UNet2DConditionModel", "_diffusers_version": _DIFFUSERS_VERSION,
        "act_fn": "silu", "attention_head_dim": 4,
        "block_out_channels": [32, 64, 64], "center_input_sample": False,
        "cross_attention_dim": cross_attention_dim,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": 8,
        "out_channels": 4, "sample_size": 8,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    }


def tiny_vae_config() -> dict[str, Any]:
    """The tiny VAE's diffusers ``config.json``: 4 blocks, so the latent is 1/8 of the image."""
    return {
        "_class_name": "AutoencoderKL", "_diffusers_version": _DIFFUSERS_VERSION,
        "act_fn": "silu", "block_out_channels": [16, 32, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
        "layers_per_block": 1, "norm_num_groups": 8, "out_channels": 3, "sample_size": 64,
        "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 4,
    }


def tiny_text_config(vocab_size: int, hidden_size: int = 32) -> dict[str, Any]:
    """A ``CLIPTextModel`` ``config.json`` as SD 1.5's (``eos_token_id`` 2: pool at argmax id)."""
    return {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
        "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
        "hidden_act": "quick_gelu", "hidden_size": hidden_size, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": 2 * hidden_size, "layer_norm_eps": 1e-5,
        "max_position_embeddings": 77, "num_attention_heads": 4, "num_hidden_layers": 2,
        "pad_token_id": 1, "projection_dim": 32, "torch_dtype": "float32",
        "transformers_version": _TRANSFORMERS_VERSION, "vocab_size": vocab_size,
    }


def tiny_vision_config() -> dict[str, Any]:
    """A ``CLIPVisionModelWithProjection`` ``config.json`` (32 px images, 8 px patches)."""
    return {
        "architectures": ["CLIPVisionModelWithProjection"], "model_type": "clip_vision_model",
        "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 32,
        "image_size": 32, "initializer_factor": 1.0, "initializer_range": 0.02,
        "intermediate_size": 64, "layer_norm_eps": 1e-5, "num_attention_heads": 4,
        "num_channels": 3, "num_hidden_layers": 2, "patch_size": 8, "projection_dim": 32,
        "torch_dtype": "float32", "transformers_version": _TRANSFORMERS_VERSION,
    }


def scheduler_config() -> dict[str, Any]:
    """SD 1.5's ``scheduler/scheduler_config.json`` (scaled_linear 0.00085 -> 0.012, 1000 steps)."""
    return {
        "_class_name": "PNDMScheduler", "_diffusers_version": _DIFFUSERS_VERSION,
        "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "epsilon",
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
        "trained_betas": None,
    }


def _model_index() -> dict[str, Any]:
    return {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": _DIFFUSERS_VERSION,
        "feature_extractor": [None, None], "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode character table (printable bytes first)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _bpe(word: str, ranks: Mapping[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one lower-case word: repeatedly merge the lowest-ranked adjacent pair."""
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:]) if (a, b) in ranks}
        if not pairs:
            break
        first, second = min(pairs, key=ranks.__getitem__)
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def tiny_clip_vocab(words: Sequence[str] = TOKENIZER_WORDS) -> tuple[dict[str, int], list[str]]:
    """A byte-level CLIP BPE vocabulary laid out as CLIP's: 256 byte characters, the same with
    ``</w>``, one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` (the largest id,
    which SD 1.5's pooling rule relies on).

    Merges are added word by word, each at the lowest priority, joining the first two tokens the
    current merges leave, until the word is one token: so every word in ``words`` (lower-case
    ASCII) is a single token, and adding a word never changes an earlier word's tokens.

    Returns:
      ``(vocab, merges)``: token -> id, and the merge lines (``"a b"``).
    """
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        while len(tokens := _bpe(word, ranks)) > 1:
            ranks[(tokens[0], tokens[1])] = len(ranks)
    merges = [f"{a} {b}" for a, b in ranks]
    base = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for t in base + [t + "</w>" for t in base] + [a + b for a, b in ranks] + [BOS_TOKEN, EOS_TOKEN]:
        vocab.setdefault(t, len(vocab))  # two merges may build the same string
    return vocab, merges


def _write_tokenizer(folder: Path) -> int:
    """Writes the tiny backbone's tokenizer folder; returns the vocab size."""
    return write_tokenizer(folder)


def write_tokenizer(folder: str | os.PathLike, words: Sequence[str] = TOKENIZER_WORDS) -> int:
    """Writes a transformers-4-style CLIP tokenizer folder (as SD 1.5's) in which every word of
    ``words`` is one token (:func:`tiny_clip_vocab`); returns the vocab size."""
    vocab, merges = tiny_clip_vocab(words)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(folder / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")

    def added(s: str) -> dict[str, Any]:
        return {"__type": "AddedToken", "content": s, "lstrip": False, "normalized": True,
                "rstrip": False, "single_word": False}

    _dump(folder / "tokenizer_config.json", {
        "add_prefix_space": False, "bos_token": added(BOS_TOKEN), "do_lower_case": True,
        "eos_token": added(EOS_TOKEN), "errors": "replace", "model_max_length": 77,
        "pad_token": EOS_TOKEN, "tokenizer_class": "CLIPTokenizer", "unk_token": added(EOS_TOKEN)})
    plain = {k: {kk: vv for kk, vv in added(v).items() if kk != "__type"}
             for k, v in (("bos_token", BOS_TOKEN), ("eos_token", EOS_TOKEN), ("unk_token", EOS_TOKEN))}
    _dump(folder / "special_tokens_map.json", {**plain, "pad_token": EOS_TOKEN})
    return len(vocab)


def _dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def random_params(shapes: Any, key: jax.Array, noise: float = 0.05, residual_scale: float = 1.0) -> dict:
    """Random float32 params shaped like ``shapes`` (``jax.eval_shape`` of a module's init).

    Flax's default initialiser scales (LeCun normal kernels, ``1/sqrt(num_embeddings)``
    embeddings, unit norm scales, zero biases), with every leaf perturbed by ``noise``-scaled
    Gaussian noise so that no layer is zero or exactly one. All values come from one
    ``jax.random.normal`` draw (running the modules' own ``init`` would compile their forward
    pass: about 20 s for the tiny UNet on a 2-core CPU). Kernels of the layers in
    ``RESIDUAL_LAYERS`` are multiplied by ``residual_scale``.
    """
    flat = flatten(shapes)
    sizes = [math.prod(s.shape) for s in flat.values()]
    z = np.asarray(jax.random.normal(key, (2 * sum(sizes),), jnp.float32))
    out: dict[tuple[str, ...], np.ndarray] = {}
    offset = 0
    for (path, s), n in zip(flat.items(), sizes):
        shape = tuple(s.shape)
        a = z[offset:offset + n].reshape(shape)
        b = z[offset + n:offset + 2 * n].reshape(shape)
        offset += 2 * n
        name = path[-1]
        if name == "kernel":
            base = a / math.sqrt(max(math.prod(shape[:-1]), 1))
        elif name == "embedding":
            base = a / math.sqrt(shape[0])
        elif name == "scale":
            base = np.ones(shape, np.float32)
        else:  # bias, class_embedding
            base = np.zeros(shape, np.float32)
        value = base + noise * b
        if name == "kernel" and any(p in RESIDUAL_LAYERS for p in path):
            value = value * residual_scale
        out[path] = value.astype(np.float32)
    return unflatten(out)


def _write_backbone(root: Path, seed: int, cross_attention_dim: int) -> None:
    """Writes every file of the tiny pipeline into ``root`` (not atomic; see write_tiny_backbone)."""
    key = jax.random.PRNGKey(seed)
    vocab_size = _write_tokenizer(root / "tokenizer")
    _dump(root / "scheduler" / "scheduler_config.json", scheduler_config())

    cfg = tiny_unet_config(cross_attention_dim)
    unet = UNet2DConditionModel(UNetConfig.from_dict(cfg))
    shapes = jax.eval_shape(lambda: init_unet(unet))["params"]
    save_component(root / "unet", cfg, random_params(shapes, jax.random.fold_in(key, 0), residual_scale=RESIDUAL_SCALE),
                   _UNET_WEIGHTS)

    cfg = tiny_vae_config()
    vae = AutoencoderKL(VAEConfig.from_dict(cfg))
    x = jnp.zeros((1, 16, 16, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: vae.init(jax.random.PRNGKey(0), x))["params"]
    save_component(root / "vae", cfg, random_params(shapes, jax.random.fold_in(key, 1), residual_scale=RESIDUAL_SCALE),
                   _UNET_WEIGHTS)

    # CLIP towers in the transformers 4 layout of real Stable Diffusion folders (tower prefix).
    cfg = tiny_text_config(vocab_size, cross_attention_dim)
    text = CLIPTextTransformer(CLIPTextConfig.from_dict(cfg))
    ids = jnp.zeros((1, cfg["max_position_embeddings"]), jnp.int32)
    shapes = jax.eval_shape(lambda: text.init(jax.random.PRNGKey(0), ids))["params"]
    save_component(root / "text_encoder", cfg, random_params(shapes, jax.random.fold_in(key, 2)),
                   _HF_WEIGHTS, prefix="text_model.")

    cfg = tiny_vision_config()
    vision = CLIPVisionTransformer(CLIPVisionConfig.from_dict(cfg))
    px = jnp.zeros((1, cfg["image_size"], cfg["image_size"], 3), jnp.float32)
    shapes = jax.eval_shape(lambda: vision.init(jax.random.PRNGKey(0), px))["params"]
    save_component(root / "image_encoder", cfg, random_params(shapes, jax.random.fold_in(key, 3)),
                   _HF_WEIGHTS, prefix="vision_model.")

    _dump(root / "model_index.json", _model_index())
    _dump(root / MARKER, _marker(seed, cross_attention_dim))  # last: the folder is complete


def _marker(seed: int, cross_attention_dim: int) -> dict[str, int]:
    return {"format": _FORMAT, "seed": int(seed), "cross_attention_dim": int(cross_attention_dim)}


def _is_complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in _FILES)


def _check_marker(folder: Path, seed: int, cross_attention_dim: int) -> None:
    with open(folder / MARKER, encoding="utf-8") as f:
        have = json.load(f)
    want = _marker(seed, cross_attention_dim)
    if have != want:
        raise ValueError(
            f"{str(folder)!r} already holds a tiny backbone written with {have}, not {want}: "
            "use another folder or delete this one."
        )


def write_tiny_backbone(folder: str | os.PathLike, seed: int = 0, cross_attention_dim: int = 32) -> Path:
    """Writes a tiny random Stable Diffusion pipeline folder (diffusers layout) and returns it.

    The folder holds ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/`` (CLIPTextModel,
    transformers-4 ``text_model.`` keys as in SD 1.5), ``tokenizer/`` (byte-level CLIP BPE with
    merges for :data:`TOKENIZER_WORDS`), ``scheduler/scheduler_config.json`` (SD 1.5's PNDM
    config), ``image_encoder/`` (CLIPVisionModelWithProjection, 32 px) and ``synthetic_backbone.json``
    (the arguments). Weights are float32, random (:func:`random_params`, seeded); about 7.5 MB.
    The text encoder's width is ``cross_attention_dim`` (as in Stable Diffusion).

    Atomic and idempotent: the files are written into a fresh temporary folder beside ``folder``
    and renamed into place; if ``folder`` is already complete nothing is written. Concurrent
    callers are safe (one rename wins, the others discard their copy).

    Raises:
      ValueError: ``folder`` is complete but was written with another seed / width.
      FileExistsError: ``folder`` exists, is not empty and is not a complete tiny backbone.
    """
    folder = Path(folder).expanduser()
    if cross_attention_dim % 4:
        raise ValueError(f"cross_attention_dim {cross_attention_dim} must be a multiple of 4 "
                         "(the tiny text encoder's head count).")
    if _is_complete(folder):
        _check_marker(folder, seed, cross_attention_dim)
        return folder
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(
            f"{str(folder)!r} exists but is not a complete tiny backbone (missing "
            f"{', '.join(f for f in _FILES if not (folder / f).is_file())}): delete it or pick "
            "another folder."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        _write_backbone(tmp, seed, cross_attention_dim)
        os.chmod(tmp, 0o755)  # mkdtemp creates 0o700
        try:
            os.rename(tmp, folder)  # atomic; replaces an empty folder
        except OSError:
            if not _is_complete(folder):  # another writer won the race if complete
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            _check_marker(folder, seed, cross_attention_dim)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


