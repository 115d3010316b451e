"""UNet parity with diffusers (outputs, every attention map, decoder features) and loader checks."""

from __future__ import annotations

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel as TorchUNet
from safetensors.numpy import load_file, save_file

from iedp_jax.sd import AttentionCapture, WeightsError, attention_maps, decoder_features, load_unet
from tests.helpers import nchw_to_nhwc, perturb_, rel_err

TOL = 1e-5

SD1_LIKE = dict(  # conv projections, one head count, three levels
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 32, 64), norm_num_groups=8, cross_attention_dim=24, attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SD2_LIKE = dict(  # linear projections, per-block head counts, upcast attention, 2 layers per block
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(16, 32), norm_num_groups=4, norm_eps=1e-6, cross_attention_dim=20,
    attention_head_dim=(2, 4), use_linear_projection=True, upcast_attention=True,
    transformer_layers_per_block=(1, 2), flip_sin_to_cos=False, freq_shift=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)


class RecordingProcessor:
    """A diffusers attention processor that stores head-averaged softmax probabilities."""

    def __init__(self, store: dict, name: str):
        self.store, self.name = store, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        b, n, _ = hidden_states.shape
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(ctx))
        v = attn.head_to_batch_dim(attn.to_v(ctx))
        probs = attn.get_attention_scores(q, k, None)  # [B*heads, Q, K]
        self.store[self.name] = probs.reshape(b, attn.heads, n, -1).mean(1).detach().numpy()
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


def _torch_run(model: TorchUNet, x, t, ctx):
    """Runs the torch UNet recording every attention map and every decoder feature."""
    maps: dict = {}
    model.set_attn_processor({k: RecordingProcessor(maps, k.removesuffix(".processor"))
                              for k in model.attn_processors})
    feats: dict = {}
    hooks = []
    for i, block in enumerate(model.up_blocks):
        hooks.append(block.register_forward_hook(
            lambda m, a, o, i=i: feats.__setitem__(f"up_blocks.{i}.out", o)))
        layers = block.attentions if hasattr(block, "attentions") else block.resnets
        for j, layer in enumerate(layers):
            hooks.append(layer.register_forward_hook(
                lambda m, a, o, i=i, j=j: feats.__setitem__(f"up_blocks.{i}.layers.{j}",
                                                            o[0] if isinstance(o, tuple) else getattr(o, "sample", o))))
    with torch.no_grad():
        out = model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t), torch.from_numpy(ctx)).sample
    for h in hooks:
        h.remove()
    return nchw_to_nhwc(out), maps, {k: nchw_to_nhwc(v) for k, v in feats.items()}


_SAVED: dict = {}


def _saved(name: str, tmp_path_factory):
    """A perturbed random diffusers UNet saved as a pipeline root (``root/unet``), built once."""
    if name not in _SAVED:
        torch.manual_seed(0)
        model = TorchUNet(**(SD1_LIKE if name == "sd1" else SD2_LIKE)).eval()
        perturb_(model, seed=1)
        root = tmp_path_factory.mktemp(name)
        model.save_pretrained(root / "unet")
        _SAVED[name] = (name, model, root)
    return _SAVED[name]


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def saved_unet(request, tmp_path_factory):
    return _saved(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def sd1_unet(tmp_path_factory):
    return _saved("sd1", tmp_path_factory)


def _inputs(seed: int, h: int, w: int, ctx_dim: int, b: int = 2, length: int = 5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, h, w, 4)).astype(np.float32)
    t = np.array([10, 700][:b], np.int64)
    ctx = rng.standard_normal((b, length, ctx_dim)).astype(np.float32)
    return x, t, ctx


@pytest.mark.parametrize("hw", [(16, 16), (12, 20)])
def test_parity_outputs_maps_and_features(saved_unet, hw):
    name, model, root = saved_unet
    module, params = load_unet(root)
    x, t, ctx = _inputs(0, *hw, module.config.cross_attention_dim)
    ref, ref_maps, ref_feats = _torch_run(model, x, t, ctx)

    @jax.jit
    def run(p, x, t, ctx):
        return module.apply({"params": p}, x, t, ctx, capture=AttentionCapture(None, None),
                            mutable=["intermediates", "features"])

    out, state = run(params, x, t.astype(np.int32), ctx)
    assert rel_err(out, ref) < TOL
    maps = attention_maps(state)
    assert set(maps) == set(ref_maps) and len(maps) > 0
    for key, m in maps.items():
        assert m.dtype == jnp.float32
        assert rel_err(m, ref_maps[key]) < TOL, key
    feats = decoder_features(state)
    assert set(feats) == set(ref_feats)
    for key, f in feats.items():
        assert rel_err(f, ref_feats[key]) < TOL, key


def test_parity_where_attention_is_chunked(sd1_unet):
    """At a 64x48 latent the finest self-attention holds 4 x 3072 x 3072 scores per image, more
    than SCORE_BUDGET: it runs in query chunks (of 256 rows), and the output and its maps still
    match diffusers."""
    from iedp_jax.sd.attention import SCORE_BUDGET, query_chunk

    name, model, root = sd1_unet
    module, params = load_unet(root)
    assert query_chunk(64 * 48, 4, 64 * 48) < 64 * 48 and SCORE_BUDGET < 4 * (64 * 48) ** 2
    x, t, ctx = _inputs(3, 64, 48, module.config.cross_attention_dim, b=1)
    ref, ref_maps, _ = _torch_run(model, x, t, ctx)
    out, state = jax.jit(lambda p, x, t, c: module.apply({"params": p}, x, t, c, capture=AttentionCapture(None, ()),
                                                         mutable=["intermediates"]))(params, x, t.astype(np.int32), ctx)
    assert rel_err(out, ref) < TOL
    maps = attention_maps(state)
    assert maps and all(rel_err(m, ref_maps[k]) < TOL for k, m in maps.items())


def test_chunked_attention_equals_fused_with_gradients():
    """chunked_sdpa (rematerialised query chunks, a padded last chunk included) gives the fused
    attention's output and gradients."""
    from iedp_jax.sd.attention import chunked_sdpa, query_chunk, sdpa

    assert query_chunk(4096, 8, 4096) == 128 and query_chunk(1024, 8, 1024) == 512
    assert query_chunk(77, 8, 77) == 77  # small layers are not chunked
    assert query_chunk(4097, 8, 4097) == 127  # 4097 = 17 x 241: no divisor near the target, padded
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 100, 4, 8)), jnp.float32) for _ in range(3))
    for chunk in (16, 100, 33):
        def loss(fn):
            return lambda q, k, v: jnp.sum(fn(q, k, v) ** 2)

        ref = jax.grad(loss(lambda q, k, v: sdpa(q, k, v, scale=0.3)), argnums=(0, 1, 2))(q, k, v)
        got = jax.grad(loss(functools.partial(chunked_sdpa, scale=0.3, chunk=chunk)), argnums=(0, 1, 2))(q, k, v)
        assert rel_err(chunked_sdpa(q, k, v, 0.3, chunk), sdpa(q, k, v, scale=0.3)) < 1e-6
        assert all(rel_err(a, b) < 1e-6 for a, b in zip(got, ref))


def _jitted(module, **kw):
    return jax.jit(lambda p, x, t, c: module.apply({"params": p}, x, t, c, **kw))


def test_capture_selection_and_fused_path_agree(saved_unet):
    _, _, root = saved_unet
    module, params = load_unet(root)
    x, t, ctx = _inputs(1, 16, 16, module.config.cross_attention_dim)
    fused = _jitted(module)(params, x, t, ctx)
    # 16x16 latents: level heights 16, 8 (and 4).
    out, state = _jitted(module, capture=AttentionCapture((8,), (16,)), mutable=["intermediates"])(
        params, x, t, ctx)
    assert rel_err(out, fused) < TOL
    maps = attention_maps(state)
    _, everything = _jitted(module, capture=AttentionCapture(None, None), mutable=["intermediates"])(
        params, x, t, ctx)
    expected = {k for k, v in attention_maps(everything).items()
                if (k.endswith("attn1") and v.shape[1] == 64) or (k.endswith("attn2") and v.shape[1] == 256)}
    assert set(maps) == expected and expected
    for k, v in maps.items():
        q = v.shape[1]
        assert v.shape == (2, q, q if k.endswith("attn1") else 5)
        np.testing.assert_allclose(np.asarray(v.sum(-1)), 1.0, rtol=1e-5)
    # Nothing captured unless asked.
    _, none = _jitted(module, mutable=["intermediates"])(params, x, t, ctx)
    assert attention_maps(none) == {}


@pytest.mark.parametrize("remat", [True, "dots"])
def test_remat_same_gradients(sd1_unet, remat):
    _, _, root = sd1_unet
    module, params = load_unet(root)
    remat_module, _ = load_unet(root, remat=remat)
    assert remat_module.remat == ("blocks" if remat is True else remat)
    x, t, ctx = _inputs(2, 8, 8, module.config.cross_attention_dim, b=1)

    def loss(m):
        return lambda p: jnp.mean(m.apply({"params": p}, x, t, ctx) ** 2)

    g1 = jax.jit(jax.grad(loss(module)))(params)
    g2 = jax.jit(jax.grad(loss(remat_module)))(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        assert rel_err(b, a) < 1e-4


def test_bfloat16_compute_runs_close(saved_unet):
    _, _, root = saved_unet
    module, params = load_unet(root)
    bf_module, bf_params = load_unet(root, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    assert jax.tree.leaves(bf_params)[0].dtype == jnp.float32
    x, t, ctx = _inputs(3, 8, 8, module.config.cross_attention_dim, b=1)
    ref = _jitted(module)(params, x, t, ctx)
    out = _jitted(bf_module)(bf_params, x, t, ctx)
    assert out.dtype == jnp.bfloat16
    assert rel_err(out.astype(jnp.float32), ref) < 0.05


# ---------------------------------------------------------------- loader errors


def test_missing_folder_names_layout(tmp_path):
    with pytest.raises(WeightsError, match="does not exist.*diffusers Stable Diffusion folder"):
        load_unet(tmp_path / "nope")
    with pytest.raises(WeightsError, match="No UNet config.json.*unet/config.json"):
        load_unet(tmp_path)


def _copy(root, tmp_path, edit_tensors=None, edit_config=None):
    dst = tmp_path / "unet"
    dst.mkdir(parents=True)
    cfg = json.loads((root / "unet" / "config.json").read_text())
    tensors = load_file(root / "unet" / "diffusion_pytorch_model.safetensors")
    if edit_tensors:
        edit_tensors(tensors)
    if edit_config:
        edit_config(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, dst / "diffusion_pytorch_model.safetensors")
    return tmp_path


def test_missing_unexpected_and_misshaped_tensors_are_named(sd1_unet, tmp_path):
    _, _, root = sd1_unet
    key = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"

    def drop(t):
        del t[key]
    with pytest.raises(WeightsError, match=r"missing tensors for up_blocks\.1\.attentions\.0\."
                                           r"transformer_blocks\.0\.attn2\.to_k\.kernel"):
        load_unet(_copy(root, tmp_path / "a", drop))

    def extra(t):
        t["down_blocks.0.bogus.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError, match=r"unexpected tensors down_blocks\.0\.bogus\.weight"):
        load_unet(_copy(root, tmp_path / "b", extra))

    def reshape(t):
        t["conv_in.weight"] = np.zeros((32, 4, 5, 5), np.float32)
    wrong = r"wrong shapes: conv_in\.weight \(32, 4, 5, 5\) \(our kernel expects \(3, 3, 4, 32\)\)\)"
    with pytest.raises(WeightsError, match=wrong):
        load_unet(_copy(root, tmp_path / "c", reshape))

    def bad_config(c):
        c["class_embed_type"] = "timestep"
    with pytest.raises(ValueError, match="class_embed_type"):
        load_unet(_copy(root, tmp_path / "d", edit_config=bad_config))

    def bad_block(c):
        c["down_block_types"][0] = "AttnDownBlock2D"
    with pytest.raises(ValueError, match="AttnDownBlock2D"):
        load_unet(_copy(root, tmp_path / "e", edit_config=bad_block))


def test_bin_checkpoint_and_fp16_weights_load(sd1_unet, tmp_path):
    _, model, root = sd1_unet
    module, params = load_unet(root)
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text((root / "unet" / "config.json").read_text())
    torch.save(model.state_dict(), tmp_path / "unet" / "diffusion_pytorch_model.bin")
    _, bin_params = load_unet(tmp_path)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(bin_params)):
        np.testing.assert_array_equal(a, b)
    half = tmp_path / "half"
    model.half().save_pretrained(half, variant="fp16")
    model.float()
    _, p16 = load_unet(half, dtype=jnp.float16)
    assert jax.tree.leaves(p16)[0].dtype == jnp.float16


def _conv_stack_temporaries(make_conv) -> float:
    """XLA's temporaries (MiB) of 8 bfloat16 3x3 convolutions of 256 channels on an 8x8 input,
    compiled as the library compiles (``compiler_options``)."""
    from iedp_jax.infra.compile import compiler_options

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i in range(8):
                x = nn.silu(make_conv(f"c{i}")(x))
            return x

    net = Stack()
    x = jax.ShapeDtypeStruct((1, 8, 8, 256), jnp.bfloat16)
    params = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
    compiled = jax.jit(net.apply).lower(params, x).compile(compiler_options() or None)
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def test_low_precision_weight_casts_wait_for_their_layer():
    """In bfloat16 each conv's weight cast runs next to its layer: never a copy of every kernel
    at once (what made DiffSegmenter in bfloat16 larger than in float32 at 512 px). One float32
    kernel here is 2.25 MiB; the untied stack holds the casts of all 8."""
    from iedp_jax.sd.layers import conv

    tied = _conv_stack_temporaries(lambda name: conv(256, 3, jnp.bfloat16, jnp.bfloat16, name))
    untied = _conv_stack_temporaries(lambda name: nn.Conv(256, (3, 3), padding=((1, 1), (1, 1)), dtype=jnp.bfloat16,
                                                          param_dtype=jnp.bfloat16, name=name))
    assert tied < 3 * 2.25, (tied, untied)
    assert untied > 6 * 2.25 or jax.default_backend() != "cpu", (tied, untied)
