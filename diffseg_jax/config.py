"""Every constant of DiffSegmenter (Wang et al., IEEE TIP 2025, arXiv 2309.02773) in one place, and
the ml_collections schema of ``python -m diffseg_jax.evaluate`` built from them.

Resolutions are given relative to the latent, so one config serves any input size: a
cross-attention entry ``(stride, weight)`` means the UNet feature map ``stride`` times coarser than
the latent. For SD 1.5 at 512 px (latent 64x64) the defaults are the paper's 8/16/32/64 with
weights 0.3/0.5/0.1/0.1 and self-attention at 64; for the tiny 3-level test UNet at 64 px (latent
8x8) the same config asks for sides 1/2/4/8, of which 2/4/8 exist.

Defaults are stated once: :class:`DiffSegConfig` and the filtering constants below; the schema
(:func:`default_config`) copies them and :func:`diffseg_config` maps it back.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from ml_collections import ConfigDict

from diffseg_jax.datasets import benchmark
from iedp_jax.infra.errors import ConfigError
from iedp_jax.sd.unet import downsampled_side

VOC_TEMPLATE = "a photograph of {}"
CONTEXT_TEMPLATE = "a photography of {}"  # sic: the original's Pascal-Context / COCO prompt
TEMPLATES: tuple[tuple[str, str], ...] = (
    ("voc", VOC_TEMPLATE),
    ("context", CONTEXT_TEMPLATE),
    ("coco", CONTEXT_TEMPLATE),
)
# Compute / storage dtypes by config name (float16: the original's precision).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# The VAE latent: the posterior mean, or a seeded posterior sample (the original's).
POSTERIORS = ("mean", "sample")
# Which words of a class name are up-weighted: the last (compel's "name++", the original's) or all.
UPWEIGHTS = ("last_word", "all_words")
# The paper's background-threshold grid: 0.30, 0.31, ..., 0.74 (swept on val, the best reported).
PAPER_SWEEP: tuple[float, ...] = tuple(round(0.30 + 0.01 * i, 2) for i in range(45))

# Category filtering (diffseg_jax.filtering).
CLIP_TEMPLATE = "A photo of a {}"
RATIO = 0.97
NOUN_THRESHOLD = 0.8
# clip: the CLIP filter (+ caption nouns); all: every class; given: a given list per image (the
# evaluator replays filtering.given_file, e.g. the original's predict_syn_txt_0.8_img_0.97.json; without
# a file each image's ground-truth classes: an oracle upper bound).
FILTER_MODES = ("clip", "all", "given")
# The sections of the original's candidate JSON whose union it segments.
GIVEN_KEYS = ("image_similarity", "text_similarity")
DATA_FORMATS = ("tfds", "folders")


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@dataclasses.dataclass(frozen=True)
class DiffSegConfig:
    """DiffSegmenter's constants (defaults: the paper / official code with SD 1.5).

    Attributes:
      image_size: images are resized (bilinear, no antialiasing, as torch's ``F.interpolate``) to
        ``image_size x image_size`` before the VAE; 0 (default) = the pipeline's native size, UNet
        ``sample_size`` x the VAE factor (512 for SD 1.5, 768 for SD 2.x-768), resolved by
        :class:`~diffseg_jax.pipeline.DiffSegmenter`. A multiple of the VAE factor.
      latent_scale: multiplier of the VAE latent; None takes the VAE config's
        ``scaling_factor`` (and ``shift_factor``), 0.18215 for SD 1.5.
      posterior: 'mean' (default) encodes the VAE posterior mean; 'sample' a posterior sample drawn
        with the noise seed (the original's ``latent_dist.sample()``, unseeded there).
      timestep: the diffusion timestep of the single UNet call (100).
      noise_seed: default seed of the one noise draw per image **(ours: the original draws
        unseeded)**; the image's index is folded into the key.
      cross_resolutions: ``(latent stride, weight)`` pairs (power-of-two strides); the
        cross-attention maps of the layers on that feature map are averaged and weighted
        (8:0.3, 16:0.5, 32:0.1, 64:0.1 for a 512 input).
      self_attn_stride: the self-attention maps on that feature map refine the cross map (1:
        64x64 for a 512 input); this is also the side the cross maps are upsampled to.
      strict_resolutions: when False, a configured cross-attention resolution that the UNet does
        not have at this input size is dropped (the tiny 3-level UNet has no 1x1 level); when
        True it is an error. At least one must remain either way.
      token_weight: class-token up-weighting ``z' = z_empty + w (z - z_empty)`` (1.21, compel's
        ``word++`` = 1.1**2 as the original writes it).
      upweight: which words of the class name are up-weighted: 'last_word' (the original's
        ``"{name}++"``: compel weights the word before ``++``) or 'all_words'.
      threshold: the constant background score against which the per-class min-max normalised
        maps compete in the argmax **(ours: 0.5; the original sweeps 0.30-0.74 on the validation
        set, so choose it on held-out data)**.
      templates: prompt template per dataset, ``{}`` is the class name.
      dataset: which template :meth:`template` returns by default.
      ing_rule: average the class token with the next token when the next word ends in "ing".
      self_attn_dtype: dtype of the running mean of the self-attention maps ("float32",
        "bfloat16" or "float16": halves the [N, Q, Q] buffer at a small precision cost).
      eps: floor of the range in min-max normalisation (a constant map becomes 0, not NaN).

    Raises:
      ConfigError: a value out of range (the message says which).
    """

    image_size: int = 0
    latent_scale: float | None = None
    posterior: str = "mean"
    timestep: int = 100
    noise_seed: int = 0
    cross_resolutions: tuple[tuple[int, float], ...] = ((8, 0.3), (4, 0.5), (2, 0.1), (1, 0.1))
    self_attn_stride: int = 1
    strict_resolutions: bool = False
    token_weight: float = 1.21
    upweight: str = "last_word"
    threshold: float = 0.5
    templates: tuple[tuple[str, str], ...] = TEMPLATES
    dataset: str = "voc"
    ing_rule: bool = True
    self_attn_dtype: str = "float32"
    eps: float = 1e-12

    def __post_init__(self) -> None:
        # Lists (e.g. from a JSON/ml_collections config) become tuples: the config stays hashable.
        object.__setattr__(self, "cross_resolutions",
                           tuple((int(s), float(w)) for s, w in self.cross_resolutions))
        object.__setattr__(self, "templates", tuple((str(k), str(v)) for k, v in self.templates))
        if self.image_size < 0:
            raise ConfigError(f"image_size must be positive (or 0 for the pipeline's native size), got "
                              f"{self.image_size}.")
        if not 0.0 <= float(self.threshold) <= 1.0:  # NaN fails too
            raise ConfigError(f"threshold {self.threshold} is outside [0, 1] (the class maps are normalised to "
                              "[0, 1]).")
        if self.posterior not in POSTERIORS:
            raise ConfigError(f"posterior {self.posterior!r} is not one of {', '.join(POSTERIORS)}.")
        if self.upweight not in UPWEIGHTS:
            raise ConfigError(f"upweight {self.upweight!r} is not one of {', '.join(UPWEIGHTS)}.")
        if not self.cross_resolutions:
            raise ConfigError("cross_resolutions must name at least one (stride, weight) pair.")
        strides = [s for s, _ in self.cross_resolutions]
        if len(set(strides)) != len(strides) or not all(map(_power_of_two, strides)):
            raise ConfigError(f"cross_resolutions strides must be distinct powers of two, got {strides}.")
        if not _power_of_two(self.self_attn_stride):
            raise ConfigError(f"self_attn_stride must be a power of two, got {self.self_attn_stride}.")
        if self.self_attn_dtype not in DTYPES:
            raise ConfigError(f"self_attn_dtype {self.self_attn_dtype!r} is not one of {', '.join(DTYPES)}.")
        for name, template in self.templates:
            if template.count("{}") != 1:
                raise ConfigError(f"template {name!r} = {template!r} must contain '{{}}' exactly once.")
        if self.dataset not in dict(self.templates):
            raise ConfigError(f"dataset {self.dataset!r} has no template (known: {sorted(dict(self.templates))}).")

    def template(self, dataset: str | None = None) -> str:
        """The prompt template of ``dataset`` (default: ``self.dataset``)."""
        table = dict(self.templates)
        name = self.dataset if dataset is None else dataset
        if name not in table:
            raise ConfigError(f"no prompt template for dataset {name!r} (known: {sorted(table)}).")
        return table[name]

    def cross_weights(self, latent_side: int) -> dict[int, float]:
        """``{feature side: weight}`` for a latent of this side (all configured entries)."""
        out: dict[int, float] = {}
        for stride, weight in self.cross_resolutions:
            side = downsampled_side(latent_side, stride)
            out[side] = out.get(side, 0.0) + weight
        return out

    def self_side(self, latent_side: int) -> int:
        """Side of the self-attention maps used for refinement (64 for a 512 input)."""
        return downsampled_side(latent_side, self.self_attn_stride)

    @property
    def self_attn_jnp_dtype(self):
        return DTYPES[self.self_attn_dtype]


# ----------------------------------------------------------------------------------------------
# The evaluation schema (diffseg_jax/configs/diffseg_*.py).

# The DiffSegConfig fields a config file sets (config.diffseg.<field>); ``dataset`` is data.name.
SCHEMA_FIELDS = ("image_size", "timestep", "noise_seed", "posterior", "token_weight", "upweight", "threshold",
                 "cross_resolutions", "self_attn_stride", "strict_resolutions", "ing_rule", "self_attn_dtype")
# The paper's choices that differ from DiffSegConfig's library defaults (set by default_config).
PAPER_DIFFSEG = {"posterior": "sample"}


def default_config(dataset: str = "voc") -> ConfigDict:
    """Every key ``python -m diffseg_jax.evaluate`` reads, with the paper's settings for ``dataset``.

    The paper's choices: the original's prompt names, the last word of a class up-weighted, a
    posterior sample, the caption-noun filter whenever captions exist, the threshold grid
    0.30..0.74 (reported apart as ``threshold_sweep``). What a user adds to reproduce a published
    number (per-class BLIP captions, the original's candidate file, fp16) is in
    ``diffseg_jax/configs/diffseg_*.py`` and ``docs/diffsegmenter.md``.
    """
    published = benchmark(dataset).published_miou
    defaults = dataclasses.replace(DiffSegConfig(), **PAPER_DIFFSEG)
    c = ConfigDict()
    c.pretrained = ""            # Stable Diffusion 1.5 folder (diffusers layout)
    c.dtype = "float32"          # compute dtype of the UNet / VAE / text encoder: float32 | bfloat16 | float16
    c.data = ConfigDict({
        "name": dataset,         # voc | context | coco
        "data_dir": "",          # the folder holding the dataset (see diffseg_jax.datasets)
        "split": "",             # '' = the validation split (val; val2017 for coco)
        "num_images": 0,         # evaluate the first N images only; 0 = all
        "format": "tfds",        # tfds (prepared array_record copy, built on first use) | folders
        "tfds_dir": "",          # where tfds prepares and reads it; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
        "num_workers": -1,       # image decoding threads per process; -1 = one per core (at most 16)
    })
    c.diffseg = ConfigDict({f: getattr(defaults, f) for f in SCHEMA_FIELDS})  # image_size 0 = native
    c.prompt_names = "official"  # official (the original's: plane, buses, people, ...) | readable (ours)
    c.filtering = ConfigDict({
        "mode": "clip",          # clip | all | given (given_file replayed; without it the ground truth: an oracle)
        "clip_path": "",         # full CLIP folder (openai/clip-vit-large-patch14 saved locally), mode clip
        "ratio": RATIO,
        "noun_threshold": NOUN_THRESHOLD,
        "template": CLIP_TEMPLATE,
        "given_file": "",        # mode given: the original's predict_syn_txt_0.8_img_0.97.json or a candidates.jsonl
        "given_keys": GIVEN_KEYS,  # the sections of the original's JSON that are united
    })
    # JSON lines {"image", "caption"} (one per image) and/or {"image", "class", "caption"} (one per
    # class, python -m diffseg_jax.captions --dataset NAME): prompts + the caption-noun filter.
    c.captions = ""
    c.eval = ConfigDict({
        "batch_size": 0,         # images per step over all devices; 0 = one per device
        "rows_per_call": 8,      # UNet rows (image, class pairs) per call at most; a multiple of the devices
        "bucket_rows": True,     # a batch's last block of rows rounded up to a power of two, not to rows_per_call
        "sweep_thresholds": PAPER_SWEEP,  # reported apart, as threshold_sweep (optimistic on the split itself)
        "threshold_from": "",    # a held-out run's results.json: its best swept threshold becomes the fixed one
        "save_images": 0,        # overlays and per-class heat maps of the first N images (WORKDIR/images)
        # a class absent from both prediction and ground truth: zero (IoU 0, counted in the mIoU: the official
        # evaluation_*.py, TP / (T + P - TP + 1e-10) over all classes, the paper's tables) | nan (left out, mmseg)
        "absent_class_iou": "zero",
    })
    c.mesh = ConfigDict({"shape": (-1, 1)})
    c.published_miou = published  # %, for the log line and results.json
    return c


def diffseg_config(config: ConfigDict) -> DiffSegConfig:
    """The :class:`DiffSegConfig` of an evaluation config (its ``diffseg`` section and ``data.name``)."""
    return DiffSegConfig(**{f: config.diffseg[f] for f in SCHEMA_FIELDS}, dataset=str(config.data.name))


def jnp_dtype(name: str, key: str = "dtype"):
    """The jnp dtype of a config name (:data:`DTYPES`)."""
    if str(name) not in DTYPES:
        raise ConfigError(f"{key}={name!r} is not one of {', '.join(DTYPES)}.")
    return DTYPES[str(name)]


def filter_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`FILTER_MODES`."""
    if mode not in FILTER_MODES:
        raise ConfigError(f"filtering.mode {mode!r} is not one of {', '.join(FILTER_MODES)}.")
    return mode


__all__ = ["CLIP_TEMPLATE", "CONTEXT_TEMPLATE", "DATA_FORMATS", "DTYPES", "FILTER_MODES", "GIVEN_KEYS",
           "NOUN_THRESHOLD", "PAPER_DIFFSEG", "PAPER_SWEEP", "POSTERIORS", "RATIO", "SCHEMA_FIELDS", "TEMPLATES",
           "UPWEIGHTS", "VOC_TEMPLATE", "DiffSegConfig", "default_config", "diffseg_config", "filter_mode",
           "jnp_dtype"]
