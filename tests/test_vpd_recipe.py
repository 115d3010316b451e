"""VPD's recipe details as config choices: each choice against VPD's code, by hand-computed cases.

The formulas checked here are transcribed from github wl-zhao/VPD (depth/train.py,
segmentation/configs, depth/models_depth/model.py) and mmcv/mmseg 0.x.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from iedp_jax.config import base_config
from iedp_jax.data.transforms import ade20k_train_transform
from iedp_jax.heads import DepthHead, vpd_head_init
from iedp_jax.infra.errors import ConfigError
from iedp_jax.losses import cross_entropy
from iedp_jax.optim import decay_mask, learning_rate_schedule, lr_multipliers


def _vpd_lr(global_step: int, iterations: int, epochs: int, max_lr: float, min_lr: float) -> float:
    """depth/train.py verbatim (global_step is incremented before use, so it starts at 1)."""
    half_epoch = epochs // 2
    if global_step < iterations * half_epoch:
        return (max_lr - min_lr) * (global_step / iterations / half_epoch) ** 0.9 + min_lr
    return max(min_lr, (min_lr - max_lr) * (global_step / iterations / half_epoch - 1) ** 0.9 + max_lr)


def test_one_cycle_vpd_matches_vpd_formula():
    iterations, epochs = 40, 25
    cfg = base_config().optim
    cfg.update(dict(schedule="one_cycle_vpd", lr=5e-4, start_lr=3e-5, end_lr=3e-5, power=0.9,
                    peak_fraction=12 / 25))
    total = iterations * epochs
    schedule = learning_rate_schedule(cfg, total)
    steps = [0, 1, 7, 239, 478, 479, 480, 600, 900, 958, 959, 960, 999]
    got = np.array([float(schedule(s)) for s in steps])
    want = np.array([_vpd_lr(s + 1, iterations, epochs, 5e-4, 3e-5) for s in steps])
    np.testing.assert_allclose(got, want, rtol=2e-6)
    assert got.argmax() == steps.index(479)  # the peak at step 480 of 1000 (48%)
    assert got[steps.index(959)] == pytest.approx(3e-5) and got[steps.index(600)] > 3e-5  # minimum from 96%
    # the mirrored curve of ``one_cycle`` differs: it peaks at 50% and is above the minimum until 100%
    cfg.schedule = "one_cycle"
    assert float(learning_rate_schedule(cfg, total)(959)) > 3.5e-5


def test_ade_pad_colour():
    image = np.full((10, 12, 3), 200, np.uint8)
    label = np.zeros((10, 12), np.uint8)
    kw = dict(img_scale=(48, 10), ratio_range=(1.0, 1.0), photometric=False, flip_prob=0.0)
    for value in (0, 128):
        out, lab = ade20k_train_transform(image, label, np.random.default_rng(0), (16, 16), pad_value=value, **kw)
        # img_scale (48, 10) keeps 10x12, the 16x16 crop keeps it whole, padding fills the rest
        assert (out[:10, :12] == 200).all() and (out[10:] == value).all() and (out[:, 12:] == value).all()
        assert (lab[10:] == 255).all() and (lab[:10, :12] == 0).all()
    with pytest.raises(ConfigError, match="pad_value"):
        ade20k_train_transform(image, label, np.random.default_rng(0), (16, 16), pad_value=256, **kw)


def test_cross_entropy_average_all_vs_valid():
    logits = jnp.log(jnp.array([[[[0.5, 0.5]], [[0.25, 0.75]]]]))  # [1, 2, 1, 2]: softmax = the values
    labels = jnp.array([[[0], [255]]], jnp.int32)  # [1, 2, 1]: one valid pixel of two
    nll = -np.log(0.5)
    assert float(cross_entropy(logits, labels, 255, "valid")) == pytest.approx(nll, rel=1e-6)
    assert float(cross_entropy(logits, labels, 255, "all")) == pytest.approx(nll / 2, rel=1e-6)  # mmseg 0.x


def test_param_groups_mmcv_first_match():
    one, ones = np.ones(4), np.ones((4, 4))
    block = {"attentions_0": {"norm": {"scale": one},
                              "transformer_blocks_0": {"norm1": {"bias": one}, "attn2": {"to_q": {"kernel": ones}}}},
             "resnets_0": {"norm1": {"scale": one}, "conv1": {"bias": one}}}
    params = {
        "unet": {"up_blocks_1": block},
        "head": {"scale_1_norm_0": {"scale": one}, "conv_seg": {"bias": one, "kernel": np.ones((1, 1, 4, 2))}},
        "adapter": {"gamma": one},
        "implicit": {"norm_out": {"scale": one}},
    }
    flat = lambda tree: {"/".join(str(getattr(k, "key", k)) for k in p): v  # noqa: E731
                         for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
    lr = flat(lr_multipliers(params, 0.1, "mmcv"))
    decay = flat(decay_mask(params, "mmcv"))
    u = "unet/up_blocks_1/"
    # 'norm' sorts before 'unet': the UNet's transformer norms get lr x1 and no decay
    assert lr[u + "attentions_0/norm/scale"] == 1.0 and not decay[u + "attentions_0/norm/scale"]
    assert lr[u + "attentions_0/transformer_blocks_0/norm1/bias"] == 1.0
    assert not decay[u + "attentions_0/transformer_blocks_0/norm1/bias"]
    # other UNet parameters, resnet GroupNorms (LDM: in_layers.0) and biases included: x0.1 with decay
    for k in ("attentions_0/transformer_blocks_0/attn2/to_q/kernel", "resnets_0/norm1/scale", "resnets_0/conv1/bias"):
        assert lr[u + k] == 0.1 and decay[u + k]
    # outside the UNet everything decays at lr x1 (VPD's head BN is named 'bn'), but modules named norm*
    assert decay["head/scale_1_norm_0/scale"] and decay["head/conv_seg/bias"] and decay["adapter/gamma"]
    assert not decay["implicit/norm_out/scale"] and lr["head/conv_seg/kernel"] == 1.0
    # ours: every UNet leaf x0.1, no decay on 1-D
    ours_lr, ours_decay = flat(lr_multipliers(params, 0.1)), flat(decay_mask(params))
    assert ours_lr[u + "attentions_0/norm/scale"] == 0.1 and not ours_decay["head/conv_seg/bias"]
    assert ours_decay["head/conv_seg/kernel"]
    with pytest.raises(ConfigError, match="param_groups"):
        decay_mask(params, "torch")


def test_depth_coarse_nearest_and_neck_crop():
    rng = np.random.default_rng(0)
    feats = [jnp.asarray(rng.standard_normal((1, s, s, 8)), jnp.float32) for s in (16, 8, 4, 2)]
    head = DepthHead(neck_channels=16, deconv_channels=16, conv_channels=16, groups=4, coarse_resize="nearest")
    params = jax.jit(lambda f: head.init(jax.random.PRNGKey(0), f, (24, 24)))(feats)["params"]

    @jax.jit
    def run(f):  # the prediction and the first deconv's output, uncropped and cropped
        full, s_full = head.apply({"params": params}, f, (24, 24), capture_intermediates=True,
                                  mutable=["intermediates"])
        _, s_crop = head.apply({"params": params}, f, (24, 24), (3, 3), capture_intermediates=True,
                               mutable=["intermediates"])
        deconv = lambda s: s["intermediates"]["deconv_0"]["__call__"][0]  # noqa: E731
        return full, deconv(s_full), deconv(s_crop)

    a, full, cropped = run(feats)
    # nearest 2x2 -> 4x4 (the target level) is a 2x repeat of every value (bilinear would blend
    # neighbours, so this fails if the choice were ignored)
    same = run(feats[:3] + [jnp.repeat(jnp.repeat(feats[3], 2, 1), 2, 2)])[0]
    np.testing.assert_allclose(a, same, rtol=1e-6, atol=1e-6)
    # VPD's crop of the neck (4x4 -> 3x3): a 2x2 stride-2 deconv maps each neck cell to its own 2x2
    # block, so the first deconv's output is the top-left 6x6 of the uncropped one
    assert full.shape[1:3] == (8, 8) and cropped.shape[1:3] == (6, 6)
    np.testing.assert_allclose(cropped, full[:, :6, :6], rtol=1e-6, atol=1e-6)


def test_vpd_head_init_statistics():
    from iedp_jax.heads import SemanticFPNHead

    feats = [jnp.zeros((1, s, s, c)) for s, c in ((8, 32), (4, 40))]
    seg = jax.eval_shape(lambda: SemanticFPNHead(150, 64, 64, 8).init(jax.random.PRNGKey(0), feats, train=False))
    seg = jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), seg["params"])  # only shapes matter here
    new = vpd_head_init(seg, jax.random.PRNGKey(1), "seg")
    assert jax.tree.map(jnp.shape, new) == jax.tree.map(jnp.shape, seg)
    assert float(jnp.std(new["conv_seg"]["kernel"])) == pytest.approx(0.01, rel=0.05)  # 64 x 150 draws
    assert float(jnp.abs(new["conv_seg"]["bias"]).max()) == 0.0
    k = new["scale_1_conv_0"]["kernel"]  # 3x3x64x64, Kaiming fan-out: std sqrt(2 / (9 * 64))
    assert float(jnp.std(k)) == pytest.approx(np.sqrt(2 / (9 * 64)), rel=0.05)
    k = new["lateral_1"]["kernel"]  # 1x1x40x64, Xavier uniform: bound sqrt(6 / (40 + 64))
    assert float(jnp.abs(k).max()) <= np.sqrt(6 / 104) and float(jnp.abs(k).max()) > 0.9 * np.sqrt(6 / 104)
    np.testing.assert_array_equal(new["scale_1_norm_0"]["scale"], seg["scale_1_norm_0"]["scale"])
    depth_feats = [jnp.zeros((1, s, s, 16)) for s in (8, 4)]
    dp = jax.eval_shape(lambda: DepthHead(neck_channels=32, deconv_channels=16, conv_channels=32, groups=4).init(
        jax.random.PRNGKey(0), depth_feats, (32, 32)))
    dp = jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), dp["params"])
    dn = vpd_head_init(dp, jax.random.PRNGKey(1), "depth")
    assert float(jnp.std(dn["last_conv_0"]["kernel"])) == pytest.approx(0.001, rel=0.05)  # 9 x 32 x 32 draws
    assert float(jnp.std(dn["neck_conv"]["kernel"])) == pytest.approx(0.02, rel=0.15)  # 32 x 32 draws


def test_model_choices_are_validated():
    from iedp_jax.model import IEDPConfig

    with pytest.raises(ConfigError, match="context"):
        IEDPConfig(context="text")
    with pytest.raises(ConfigError, match="num_queries=150"):
        IEDPConfig(context="vpd", num_queries=8)
    with pytest.raises(ConfigError, match="class_text"):
        IEDPConfig(task="depth", num_queries=8, query_init="class_text")
    with pytest.raises(ConfigError, match="depth_pad_multiple"):
        IEDPConfig(task="depth", depth_pad_multiple=60)
    assert isinstance(base_config().optim, ConfigDict)
