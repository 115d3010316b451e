"""Text for the UNet's context: explicit-branch prompts and VPD's fixed class embeddings.

Explicit branch: the class names are tokenized once on the host into a table; per batch, the
prompt ``"a photo of wall, floor, bed"`` for the classes present in each crop is assembled with
array operations only (cumulative sums and one scatter), so the train step does no Python work
per example and its shapes never change.

VPD's context (``model.context="vpd"``): one vector per class, the CLIP text tower's pooled
output (the end-of-text token after the final LayerNorm) averaged over the 80 ImageNet prompt
templates (:func:`class_text_embeddings`, as VPD's ``dump_nyu_text_embeddings.py``). NYUv2 uses
VPD's 27 scene classes; each image's scene maps to the first of them contained in its name
(:func:`vpd_scene_classes`, VPD's substring rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from iedp_jax.infra.errors import ConfigError, DatasetError
from iedp_jax.sd.tokenizer import Tokenizer


@flax.struct.dataclass
class ClassPromptTable:
    """Token ids of a prompt template and of every class name (host-built, device-resident)."""

    prefix: jax.Array      # [P] bos + template tokens before the class list
    class_ids: jax.Array   # [C, T] sub-token ids of each class name, zero-padded
    class_len: jax.Array   # [C] number of sub-tokens of each class name
    comma_id: int = flax.struct.field(pytree_node=False)
    eos_id: int = flax.struct.field(pytree_node=False)
    pad_id: int = flax.struct.field(pytree_node=False)
    length: int = flax.struct.field(pytree_node=False)


def _word_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode_words(text))


def class_prompt_table(tokenizer: Tokenizer, class_names: Sequence[str],
                       template: str = "a photo of {}") -> ClassPromptTable:
    """Tokenizes ``template`` (which must end with ``{}``) and every class name once."""
    if not template.endswith("{}"):
        raise ConfigError(f"prompt template {template!r} must end with '{{}}' (the class list goes last).")
    prefix = [tokenizer.bos_id] + _word_ids(tokenizer, template[:-2].strip())
    ids = [_word_ids(tokenizer, name.replace("_", " ")) for name in class_names]
    if any(len(i) == 0 for i in ids):
        raise ValueError("every class name must contain at least one token.")
    t = max(len(i) for i in ids)
    table = np.zeros((len(ids), t), np.int32)
    for c, i in enumerate(ids):
        table[c, : len(i)] = i
    comma = _word_ids(tokenizer, ",")
    return ClassPromptTable(
        prefix=jnp.asarray(prefix, jnp.int32), class_ids=jnp.asarray(table),
        class_len=jnp.asarray([len(i) for i in ids], jnp.int32), comma_id=int(comma[0]),
        eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, length=tokenizer.max_length)


def present_classes(labels: jax.Array, num_classes: int, ignore_index: int = 255) -> jax.Array:
    """[B, H, W] int labels -> [B, C] bool: which classes appear in each label map."""
    b = labels.shape[0]
    flat = labels.reshape(b, -1).astype(jnp.int32)
    flat = jnp.where((flat == ignore_index) | (flat >= num_classes) | (flat < 0), num_classes, flat)
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], flat.shape)
    return jnp.zeros((b, num_classes + 1), bool).at[rows, flat].set(True)[:, :num_classes]


def build_prompts(table: ClassPromptTable, present: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Assembles ``prefix + "c1, c2, ..." + eos`` for the present classes, in class order.

    Args:
      present: [B, C] bool.

    Returns:
      ids [B, L] int32 (padded with ``pad_id``; classes that do not fit are dropped), and
      last [B, C] int32: position of each class's last sub-token, -1 for absent or dropped ones.
    """
    b, c = present.shape
    p, t, length = table.prefix.shape[0], table.class_ids.shape[1], table.length
    later = jnp.flip(jnp.cumsum(jnp.flip(present, 1), 1), 1) - present  # present classes after c
    comma = present & (later > 0)
    span = jnp.where(present, table.class_len[None] + comma, 0)            # [B, C]
    start = p + jnp.cumsum(span, 1) - span                                  # [B, C]
    end = start + table.class_len[None]                                    # one past last sub-token
    fits = present & (end <= length - 1)  # room for eos; `end` grows with c, so a prefix fits

    ids = jnp.full((b, length), table.pad_id, jnp.int32)
    ids = ids.at[:, :p].set(table.prefix[None])
    rows = jnp.broadcast_to(jnp.arange(b)[:, None, None], (b, c, t))
    pos = start[:, :, None] + jnp.arange(t)[None, None]                    # [B, C, T]
    valid = fits[:, :, None] & (jnp.arange(t)[None, None] < table.class_len[None, :, None])
    ids = ids.at[rows, jnp.where(valid, pos, length)].set(
        jnp.broadcast_to(table.class_ids[None], (b, c, t)), mode="drop")
    comma_pos = jnp.where(fits & comma, end, length)
    ids = ids.at[jnp.arange(b)[:, None], comma_pos].set(table.comma_id, mode="drop")
    # eos right after the last class that fits (overwriting its comma if a later one was dropped).
    eos_pos = jnp.max(jnp.where(fits, end, p), axis=1)
    ids = ids.at[jnp.arange(b), eos_pos].set(table.eos_id)
    last = jnp.where(fits, end - 1, -1)
    return ids, last


def scene_prompt_ids(tokenizer: Tokenizer, scene_names: Sequence[str],
                     template: str = "a photo of a {}") -> jax.Array:
    """[S, L] token ids of one prompt per scene (depth's explicit branch), host-built once."""
    return jnp.asarray(tokenizer([template.format(s.replace("_", " ")) for s in scene_names]))


# CLIP's 80 ImageNet prompt templates, in the order of VPD's depth/dump_nyu_text_embeddings.py.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    'a bad photo of a {}.', 'a photo of many {}.', 'a sculpture of a {}.', 'a photo of the hard to see {}.',
    'a low resolution photo of the {}.', 'a rendering of a {}.', 'graffiti of a {}.',
    'a bad photo of the {}.', 'a cropped photo of the {}.', 'a tattoo of a {}.', 'the embroidered {}.',
    'a photo of a hard to see {}.', 'a bright photo of a {}.', 'a photo of a clean {}.',
    'a photo of a dirty {}.', 'a dark photo of the {}.', 'a drawing of a {}.', 'a photo of my {}.',
    'the plastic {}.', 'a photo of the cool {}.', 'a close-up photo of a {}.',
    'a black and white photo of the {}.', 'a painting of the {}.', 'a painting of a {}.',
    'a pixelated photo of the {}.', 'a sculpture of the {}.', 'a bright photo of the {}.',
    'a cropped photo of a {}.', 'a plastic {}.', 'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.', 'a blurry photo of the {}.', 'a photo of the {}.',
    'a good photo of the {}.', 'a rendering of the {}.', 'a {} in a video game.', 'a photo of one {}.',
    'a doodle of a {}.', 'a close-up photo of the {}.', 'a photo of a {}.', 'the origami {}.',
    'the {} in a video game.', 'a sketch of a {}.', 'a doodle of the {}.', 'a origami {}.',
    'a low resolution photo of a {}.', 'the toy {}.', 'a rendition of the {}.', 'a photo of the clean {}.',
    'a photo of a large {}.', 'a rendition of a {}.', 'a photo of a nice {}.', 'a photo of a weird {}.',
    'a blurry photo of a {}.', 'a cartoon {}.', 'art of a {}.', 'a sketch of the {}.', 'a embroidered {}.',
    'a pixelated photo of a {}.', 'itap of the {}.', 'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.', 'a plushie {}.', 'a photo of the nice {}.', 'a photo of the small {}.',
    'a photo of the weird {}.', 'the cartoon {}.', 'art of the {}.', 'a drawing of the {}.',
    'a photo of the large {}.', 'a black and white photo of a {}.', 'the plushie {}.',
    'a dark photo of a {}.', 'itap of a {}.', 'graffiti of the {}.', 'a toy {}.', 'itap of my {}.',
    'a photo of a cool {}.', 'a photo of a small {}.', 'a tattoo of the {}.',
)
assert len(IMAGENET_TEMPLATES) == 80

# VPD's NYUv2 scene classes (depth/nyu_class_list.json: the official_splits/train folder names), in its order.
VPD_NYU_SCENES: tuple[str, ...] = (
    "printer_room", "bathroom", "living_room", "study", "conference_room", "study_room", "kitchen",
    "home_office", "bedroom", "dinette", "playroom", "indoor_balcony", "laundry_room", "basement",
    "excercise_room", "foyer", "home_storage", "cafe", "furniture_store", "office_kitchen", "student_lounge",
    "dining_room", "reception_room", "computer_lab", "classroom", "office", "bookstore",
)
assert len(VPD_NYU_SCENES) == 27


def vpd_scene_classes(scene_names: Sequence[str], classes: Sequence[str] = VPD_NYU_SCENES) -> np.ndarray:
    """[S] int32: for each dataset scene, the first of VPD's ``classes`` its name contains.

    VPD's rule (``nyudepthv2.py``): ``study_room`` -> ``study``, ``office_kitchen`` -> ``kitchen``.
    """
    out = []
    for scene in scene_names:
        hits = [i for i, c in enumerate(classes) if c in scene]
        if not hits:
            raise DatasetError(f"the scene {scene!r} contains none of VPD's {len(classes)} NYUv2 scene classes, so "
                               "model.context='vpd' has no class embedding for it.")
        out.append(hits[0])
    return np.asarray(out, np.int32)


def class_text_embeddings(pooled: Callable[[np.ndarray], np.ndarray], tokenizer: Tokenizer,
                          class_names: Sequence[str], templates: Sequence[str] = IMAGENET_TEMPLATES,
                          batch_size: int = 256) -> np.ndarray:
    """[K, D] float32: per class, the mean over ``templates`` of ``pooled(ids)`` (the text tower's
    pooled output of the prompts ``template.format(name)``, ``_`` read as a space).

    ``pooled`` maps ids [batch_size, L] to [batch_size, D]; the last batch is padded with copies
    of its first row so that one compiled shape serves every batch.
    """
    if not class_names or not templates:
        raise ValueError("class_text_embeddings needs at least one class name and one template.")
    texts = [t.format(name.replace("_", " ")) for name in class_names for t in templates]
    ids = np.asarray(tokenizer(texts))  # [K*T, L]
    out = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - n, 0)])
        out.append(np.asarray(pooled(chunk), np.float32)[:n])
    pooled_all = np.concatenate(out)  # [K*T, D]
    return pooled_all.reshape(len(class_names), len(templates), -1).mean(axis=1)
