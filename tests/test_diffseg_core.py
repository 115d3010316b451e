"""DiffSegmenter core: attention arithmetic against NumPy, a synthetic object, the one-call pipeline."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax import (
    DiffSegConfig,
    aggregate_cross,
    class_maps_from_attention,
    label_map,
    load_diffsegmenter,
    mean_self_attention,
    pad_class_prompts,
    refine,
)
from diffseg_jax.attention import maps_to_canvas, minmax_normalize, resize, resize_regions
from diffseg_jax.pipeline import _SelfAttentionMean
from iedp_jax.infra.errors import ConfigError
from iedp_jax.sd import UNetConfig, attention_maps
from iedp_jax.sd.tiny import write_tiny_backbone
from iedp_jax.sd.unet import attention_sides
from tests.helpers import rel_err
from tests.reference.torch_diffseg import segment_per_class

# ----------------------------------------------------------------------------------------------
# NumPy transcription of the method (DESIGN.md section 4, steps 3-5).


def np_resize(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear, half-pixel centres, no antialiasing (torch F.interpolate align_corners=False)."""
    h, w = x.shape[-2:]

    def coords(o, i):
        src = np.maximum((np.arange(o) + 0.5) * (i / o) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), i - 1)
        i1 = np.minimum(i0 + 1, i - 1)
        return i0, i1, src - i0

    y0, y1, ly = coords(out_h, h)
    x0, x1, lx = coords(out_w, w)
    rows = x[..., y0, :] * (1 - ly)[:, None] + x[..., y1, :] * ly[:, None]
    return rows[..., x0] * (1 - lx) + rows[..., x1] * lx


def np_minmax(x: np.ndarray) -> np.ndarray:
    lo = x.min(axis=(-2, -1), keepdims=True)
    hi = x.max(axis=(-2, -1), keepdims=True)
    return (x - lo) / np.maximum(hi - lo, 1e-12)


def np_class_maps(maps, token_weights, resolutions, self_side, out_hw):
    n = token_weights.shape[0]
    total = 0.0
    for side, weight in resolutions.items():
        layers = [m for p, m in maps.items() if p.endswith("attn2") and m.shape[1] == side * side]
        mean = np.mean(np.stack(layers).astype(np.float64), axis=0)  # [N, Q, L]
        a = np.stack([mean[i] @ token_weights[i] for i in range(n)]).reshape(n, side, side)
        total = total + weight * np_minmax(np_resize(a, self_side, self_side))
    selfs = [m for p, m in maps.items() if p.endswith("attn1") and m.shape[1] == self_side ** 2]
    s = np.mean(np.stack(selfs).astype(np.float64), axis=0)  # [N, Q, Q]
    refined = np.stack([s[i] @ total[i].reshape(-1) for i in range(n)]).reshape(n, self_side, self_side)
    return total, s, refined, np_minmax(np_resize(refined, *out_hw))


def np_labels(class_maps, valid, threshold):
    scores = np.where(valid[:, :, None, None], class_maps, -np.inf)
    bg = np.full_like(scores[:, :1], threshold)
    return np.argmax(np.concatenate([bg, scores], axis=1), axis=1)


def random_maps(rng, n, length, sides, layers_per_side, self_side):
    maps = {}
    for side in sides:
        for j in range(layers_per_side):
            logits = rng.normal(size=(n, side * side, length)) * 2
            p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
            maps[f"block_{side}.attentions.{j}.transformer_blocks.0.attn2"] = p.astype(np.float32)
    for j in range(2):
        q = self_side * self_side
        logits = rng.normal(size=(n, q, q))
        p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        maps[f"block_{self_side}.attentions.{j}.transformer_blocks.0.attn1"] = p.astype(np.float32)
    # A coarser self-attention map that must be ignored by the cross aggregation.
    maps["block_4.attentions.0.transformer_blocks.0.attn1"] = np.full((n, 16, 16), 1 / 16, np.float32)
    return maps


def test_numpy_resize_is_torch_interpolate():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).random((2, 6, 5)).astype(np.float32)
    for hw in [(12, 10), (4, 3), (17, 23)]:
        want = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=hw, mode="bilinear",
                                               align_corners=False)[0].numpy()
        np.testing.assert_allclose(np_resize(x, *hw), want, atol=1e-6)
        # The library's resize of the last two axes (through sd.layers.resize_bilinear): the same.
        np.testing.assert_allclose(np.asarray(resize(jnp.asarray(x)[None], hw))[0], want, atol=1e-6)


def test_aggregation_and_refinement_match_numpy():
    rng = np.random.default_rng(0)
    n, length, self_side = 3, 10, 8
    resolutions = {2: 0.3, 4: 0.5, 8: 0.2}
    maps = random_maps(rng, n, length, resolutions, 2, self_side)
    tw = np.zeros((n, length), np.float32)
    tw[0, 3] = 1.0
    tw[1, [4, 5]] = 0.5  # the -ing rule
    tw[2] = rng.random(length)
    out_hw = (20, 13)
    a_ref, s_ref, m_ref, maps_ref = np_class_maps(maps, tw, resolutions, self_side, out_hw)

    jmaps = {k: jnp.asarray(v) for k, v in maps.items()}
    a = aggregate_cross(jmaps, jnp.asarray(tw), resolutions, self_side)
    assert rel_err(a, a_ref) < 1e-5
    s = mean_self_attention(jmaps, self_side)
    assert s.shape == (n, 64, 64) and rel_err(s, s_ref) < 1e-5
    m = refine(s, a)
    assert m.shape == (n, self_side, self_side) and rel_err(m, m_ref) < 1e-5
    full = jax.jit(lambda mp, t, ss: class_maps_from_attention(mp, ss, t, resolutions, out_hw))(jmaps, tw, s)
    assert full.shape == (n,) + out_hw and rel_err(full, maps_ref) < 1e-5
    # bfloat16 storage of the mean: same result to bf16 precision.
    m16 = refine(s.astype(jnp.bfloat16), a)
    assert m16.dtype == jnp.float32 and rel_err(m16, m_ref) < 2e-2

    # Label map: background = threshold, invalid classes never win.
    cm = np.asarray(full).reshape(1, n, *out_hw)
    valid = np.array([[True, False, True]])
    labels = np.asarray(jax.jit(label_map)(cm, valid, 0.4))
    np.testing.assert_array_equal(labels, np_labels(cm, valid, 0.4))
    assert labels.dtype == np.int32 and not (labels == 2).any()
    assert (labels == 0).any() and (labels == 1).any() and (labels == 3).any()

    with pytest.raises(ValueError, match="no cross-attention map at 16x16"):
        aggregate_cross(jmaps, jnp.asarray(tw), {16: 1.0}, self_side)


def test_canvas_resizes_equal_plain_resizes():
    """Per-image resizes inside a fixed, edge-padded canvas = plain resizes of each image."""
    rng = np.random.default_rng(0)
    canvas = (48, 64)
    sizes = [(48, 64), (40, 56), (30, 20), (48, 10)]
    imgs = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in sizes]
    padded = np.stack([np.pad(im, ((0, canvas[0] - im.shape[0]), (0, canvas[1] - im.shape[1]), (0, 0)),
                              mode="edge") for im in imgs])
    hw = jnp.asarray(sizes, jnp.int32)
    for size in (64, 32):  # up- and down-sampling
        got = np.asarray(jax.jit(resize_regions, static_argnums=2)(padded, hw, (size, size)))
        for b, im in enumerate(imgs):  # what DiffSegmenter.preprocess does without a canvas
            want = np.asarray(resize(jnp.asarray(im, jnp.float32).transpose(2, 0, 1), (size, size))).transpose(1, 2, 0)
            np.testing.assert_allclose(got[b], want, atol=2e-3)

    maps = jnp.asarray(rng.random((4, 8, 8)), jnp.float32)
    out = np.asarray(jax.jit(maps_to_canvas, static_argnums=2)(maps, hw, canvas))
    for b, (h, w) in enumerate(sizes):
        want = np.asarray(minmax_normalize(resize(maps[b], (h, w))))  # the pipeline's last step
        np.testing.assert_allclose(out[b, :h, :w], want, atol=1e-5)
        assert (out[b, h:] == 0).all() and (out[b, :, w:] == 0).all()


def test_synthetic_object_is_recovered():
    """Cross maps high inside a square, self-attention = block-diagonal affinity of the regions."""
    rng = np.random.default_rng(1)
    out = 64
    yy, xx = np.mgrid[0:out, 0:out]
    squares = [(8, 8, 32, 32), (40, 36, 60, 60)]  # (y0, x0, y1, x1) at 64 px, on the 4-px grid
    gt = np.zeros((out, out), int)
    for k, (y0, x0, y1, x1) in enumerate(squares):
        gt[(yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)] = k + 1
    region = gt[::4, ::4].reshape(-1)  # [256] region id of each 16x16 cell
    aff = (region[:, None] == region[None, :]).astype(np.float32)
    self_attn = aff / aff.sum(1, keepdims=True)  # rows: uniform attention within the own region
    length = 6
    maps = {}
    for s in (4, 8, 16):
        cells = gt[:: out // s, :: out // s].reshape(-1)
        for j in range(2):
            p = np.full((2, s * s, length), 0.05, np.float32)
            for k in range(2):
                p[k, :, 2] = 0.2 * rng.random(s * s)  # class token: noise outside ...
                p[k, cells == k + 1, 2] = 0.8 + 0.2 * rng.random((cells == k + 1).sum())  # ... high inside
            maps[f"up_{s}.attentions.{j}.transformer_blocks.0.attn2"] = jnp.asarray(p)
    tw = np.zeros((2, length), np.float32)
    tw[:, 2] = 1.0
    cm = class_maps_from_attention(maps, jnp.asarray(np.stack([self_attn] * 2)), jnp.asarray(tw),
                                   {4: 0.3, 8: 0.5, 16: 0.2}, (out, out))
    labels = np.asarray(label_map(cm[None], jnp.ones((1, 2), bool), 0.5))[0]
    for k in (1, 2):
        inter = ((labels == k) & (gt == k)).sum()
        union = ((labels == k) | (gt == k)).sum()
        assert inter / union > 0.9, (k, inter / union)
    assert ((labels == 0) & (gt == 0)).sum() / (gt == 0).sum() > 0.9


def test_config_resolutions():
    cfg = DiffSegConfig()
    assert cfg.cross_weights(64) == {8: 0.3, 16: 0.5, 32: 0.1, 64: 0.1} and cfg.self_side(64) == 64
    assert attention_sides(UNetConfig(), 64) == (8, 16, 32, 64)  # SD 1.5 at 512 px
    assert cfg.cross_weights(8) == {1: 0.3, 2: 0.5, 4: 0.1, 8: 0.1}
    assert DiffSegConfig(cross_resolutions=[[8, 0.3], [4, 0.7]]).cross_resolutions == ((8, 0.3), (4, 0.7))
    assert cfg.cross_weights(60) == {8: 0.3, 15: 0.5, 30: 0.1, 60: 0.1}  # strided convolutions round up
    with pytest.raises(ConfigError, match="self_attn_dtype 'float64' is not one of float32, bfloat16, float16"):
        DiffSegConfig(self_attn_dtype="float64")
    with pytest.raises(ConfigError, match="posterior 'mode' is not one of mean, sample"):
        DiffSegConfig(posterior="mode")
    with pytest.raises(ConfigError, match=r"image_size must be positive \(or 0 for the pipeline's native size\)"):
        DiffSegConfig(image_size=-8)
    with pytest.raises(ConfigError, match="no template"):
        DiffSegConfig(dataset="ade")
    with pytest.raises(ConfigError, match="distinct powers of two"):
        DiffSegConfig(cross_resolutions=((3, 1.0),))


# ----------------------------------------------------------------------------------------------
# The pipeline on the tiny backbone (64 px: latent 8x8, attention at 8, 4, 2).

NAMES = [["red square", "cat", "blue"], ["green", "dots", "cat", "magenta"]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = write_tiny_backbone(tmp_path_factory.getbasetemp() / "diffseg_tiny_sd")
    seg, params = load_diffsegmenter(folder, DiffSegConfig(image_size=64))
    prompts = [seg.encode_prompts(n, caption=f"a photograph of {n[0]} sitting" if i == 0 else None)
               for i, n in enumerate(NAMES)]
    batch = pad_class_prompts(prompts, seg.tokenizer)  # K = 4; image 0's 4th class is padding
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
    images[:, 10:30, 8:24] = (250, 20, 20)  # a flat patch, so the maps are not pure noise
    return seg, params, images, batch


def test_resolutions_of_tiny_unet(tiny):
    seg = tiny[0]
    assert seg.latent_side == 8 and seg.self_side == 8
    assert seg.cross_resolutions == {2: 0.5, 4: 0.1, 8: 0.1}  # side 1 (stride 8) does not exist
    strict = type(seg)(seg.unet, seg.vae, seg.text, seg.schedule, seg.empty_ids,
                       DiffSegConfig(image_size=64, strict_resolutions=True))
    with pytest.raises(ConfigError, match="strict_resolutions"):
        strict.cross_resolutions  # noqa: B018 - the property validates


def test_batched_classes_equal_per_class_and_padding_is_inert(tiny):
    seg, params, images, (ids, w, pos, valid) = tiny
    assert not valid[0, 3] and valid[1].all()
    labels, maps = seg.segment(params, images, ids, w, pos, valid, 7)
    labels, maps = np.asarray(labels), np.asarray(maps)
    assert labels.shape == (2, 48, 40) and labels.dtype == np.int32
    assert maps.shape == (2, 4, 48, 40) and maps.dtype == np.float32
    assert not (labels[0] == 4).any() and (maps[0, 3] == 0).all()
    for b in range(2):
        for k in range(4):
            if valid[b, k]:
                assert maps[b, k].min() == 0 and abs(maps[b, k].max() - 1) < 1e-6

    # Another padding prompt (and weights) in the same shapes: nothing valid changes, no recompile.
    ids2, w2, pos2 = ids.copy(), w.copy(), pos.copy()
    ids2[0, 3], w2[0, 3], pos2[0, 3] = ids[1, 1], w[1, 1], pos[1, 1]
    labels_2, maps_2 = seg.segment(params, images, ids2, w2, pos2, valid, 7)
    assert seg.segment._cache_size() == 1
    assert rel_err(np.asarray(maps_2)[valid], maps[valid]) < 1e-6
    np.testing.assert_array_equal(np.asarray(labels_2), labels)

    # The noise is seeded: another seed changes the maps, the same seed reproduces them.
    _, maps_3 = seg.segment(params, images, ids, w, pos, valid, 8)
    assert seg.segment._cache_size() == 1
    assert np.abs(np.asarray(maps_3) - maps).max() > 1e-3

    # The reference: one class at a time (K UNet calls with K = 1), as the original does.
    labels_1, maps_1 = segment_per_class(seg, params, images, ids, w, pos, valid, 7)
    assert rel_err(maps, maps_1) < 1e-5
    assert (labels == np.asarray(labels_1)).mean() > 0.999


def test_canvas_path_equals_plain_path(tiny):
    """The evaluator's path (images edge-padded onto a larger canvas, per-image resizes inside
    jit, ``class_maps`` with ``image_hw``) gives ``segment``'s maps inside each image, 0 outside."""
    seg, params, images, (ids, w, pos, valid) = tiny
    _, maps = seg.segment(params, images, ids, w, pos, valid, 7)
    canvas = (56, 44)
    padded = np.pad(images, ((0, 0), (0, 8), (0, 4), (0, 0)), mode="edge")
    hw = jnp.asarray([images.shape[1:3]] * 2, jnp.int32)

    @jax.jit
    def run(params, padded, hw):
        lat = seg.noised_latents(params, padded, 7, None, hw)
        return seg.class_maps(params, lat, ids, w, pos, canvas, hw)

    out = np.asarray(run(params, padded, hw))
    assert out.shape == (2, 4) + canvas
    np.testing.assert_allclose(out[:, :, :48, :40][valid], np.asarray(maps)[valid], atol=1e-3)
    assert (out[:, :, 48:] == 0).all() and (out[:, :, :, 40:] == 0).all()


def test_self_attention_running_mean_equals_captured_mean(tiny):
    seg, params, images, (ids, w, pos, valid) = tiny

    @jax.jit
    def run(params):
        lat = jnp.repeat(seg.noised_latents(params, images, 0), 2, axis=0)  # [4, 8, 8, 4]
        ctx = seg.text_context(params, ids[:, :2].reshape(4, -1), pos[:, :2].reshape(4, -1))
        f32 = _SelfAttentionMean(seg.self_side, jnp.float32)
        bf16 = _SelfAttentionMean(seg.self_side, jnp.bfloat16)
        with nn.intercept_methods(f32), nn.intercept_methods(bf16):
            _, state = seg.unet.apply({"params": params["unet"]}, lat, jnp.full((4,), 100), ctx,
                                      capture=seg.capture, mutable=["intermediates"])
        assert f32.count == bf16.count == 3  # down_blocks.0 (1) + up_blocks.2 (2) at 8x8
        return f32.total / f32.count, bf16.total.astype(jnp.float32) / bf16.count, \
            mean_self_attention(attention_maps(state), seg.self_side)

    running, running16, captured = run(params)
    assert rel_err(running, captured) < 1e-6
    assert rel_err(running16, captured) < 1e-2
