"""VPD inside this code: the class embeddings, VPD's head sizes, the context mode and the ladder.

- ``python -m iedp_jax.class_embeddings`` gives transformers' ``CLIPTextModel`` pooled outputs
  averaged over the 80 templates (on the tiny test encoder), and training reuses its cache.
- iedp_jax/configs/vpd_ade.py at 512 px gives VPD's Semantic FPN on in-channels [320, 790, 1430, 1280]
  with VPD's parameter counts (shapes only: the SD 1.5 UNet is never materialised).
- the ablation ladder configs differ from one rung to the next by one change.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iedp_jax import build
from iedp_jax.config import LADDER, to_model_config
from iedp_jax.infra.errors import ConfigError, DatasetError
from iedp_jax.model import IEDP, class_queries
from iedp_jax.prompts import IMAGENET_TEMPLATES, VPD_NYU_SCENES, vpd_scene_classes
from tests.helpers import load_config

RUNGS = {"ade": ("vpd_ade", "ade_implicit", "ade"), "nyu": ("vpd_nyu", "nyu_implicit", "nyu")}


def _flat(cfg) -> dict:
    return {f"{s}.{k}": v for s, d in cfg.to_dict().items() if isinstance(d, dict) for k, v in d.items()}


@pytest.mark.parametrize("dataset", list(RUNGS))
def test_ladder_rungs_differ_by_one_change(dataset):
    cfgs = [_flat(load_config(name)) for name in RUNGS[dataset]]
    for lower, upper, change in zip(cfgs[:-1], cfgs[1:], ("model.context", "model.explicit_weight"), strict=True):
        assert {k for k in lower if lower[k] != upper[k]} == {change}
    vpd = load_config(RUNGS[dataset][0])
    assert (vpd.model.context, vpd.model.explicit_weight) == (LADDER["vpd"]["context"], 0.0)
    assert not vpd.model.scale_latents and vpd.model.head_init == "vpd"
    if dataset == "ade":
        assert (vpd.data.pad_value, vpd.optim.param_groups, vpd.model.ce_average) == (128, "mmcv", "all")
        assert tuple(vpd.eval.scales) == (1.0, 1.125, 1.25, 1.375, 1.5)
    else:
        assert not vpd.model.attn_maps and vpd.model.depth_pad_multiple == 64
        assert vpd.model.coarse_resize == "nearest" and vpd.optim.schedule == "one_cycle_vpd"
        assert vpd.optim.peak_fraction == pytest.approx(0.48)


def test_class_embedding_command_matches_transformers(tmp_path, monkeypatch):
    import torch
    import transformers

    from iedp_jax import class_embeddings
    from iedp_jax.sd.tiny import write_tiny_backbone

    sd = write_tiny_backbone(tmp_path / "sd")
    cfg = load_config("vpd_nyu", **{"model.pretrained": str(sd), "model.clip_vision": str(sd / "image_encoder")})
    class_embeddings.main(cfg, str(tmp_path / "run"), {})
    (path,) = (tmp_path / "run" / "class_embeddings").glob("*.npy")
    assert path == build.embeddings_path(tmp_path / "run", sd, VPD_NYU_SCENES, IMAGENET_TEMPLATES)
    ours = np.load(path)

    tok = transformers.CLIPTokenizer.from_pretrained(sd / "tokenizer")
    model = transformers.CLIPTextModel.from_pretrained(sd / "text_encoder").eval()
    texts = [t.format(n.replace("_", " ")) for n in VPD_NYU_SCENES for t in IMAGENET_TEMPLATES]
    ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        pooled = model(input_ids=ids).pooler_output.numpy()
    want = pooled.reshape(len(VPD_NYU_SCENES), len(IMAGENET_TEMPLATES), -1).mean(1)  # VPD: mean over templates
    assert ours.shape == (27, model.config.hidden_size)
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-5)

    # a training run in the same workdir reads the cache instead of recomputing
    def no_compute(*args, **kwargs):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(build, "class_text_embeddings", no_compute)
    text, params = build.load_clip_text(sd)
    again = build.cached_class_embeddings(tmp_path / "run", sd, VPD_NYU_SCENES, text, params, build.load_tokenizer(sd))
    np.testing.assert_array_equal(again, ours)


def test_vpd_ade_head_has_vpd_sizes():
    """FPN in-channels [320, 640 + 150, 1280 + 150, 1280] and VPD's counts, from shapes alone."""
    from iedp_jax.sd.tiny import tiny_vae_config
    from iedp_jax.sd.unet import UNet2DConditionModel, UNetConfig, init_unet
    from iedp_jax.sd.vae import AutoencoderKL, VAEConfig

    cfg = load_config("vpd_ade")
    unet = UNet2DConditionModel(UNetConfig())  # SD 1.5's layout (the defaults)
    vae = AutoencoderKL(VAEConfig.from_dict(tiny_vae_config()))  # any 8x VAE: only the latent shape matters
    model = IEDP(to_model_config(cfg, "seg", 150, 0.18215), unet, vae, None, None)
    unet_params = jax.eval_shape(lambda: init_unet(unet, 8, 8)["params"])
    vae_params = jax.eval_shape(lambda: vae.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))["params"])
    frozen = {"vae": vae_params, "class_embeddings": jax.ShapeDtypeStruct((150, 768), jnp.float32)}
    heads = jax.eval_shape(lambda u, f: model.init_head_params(jax.random.PRNGKey(0), (512, 512), u, f),
                           unet_params, frozen)
    assert set(heads) == {"adapter", "head"}  # VPD has no implicit branch
    head = heads["head"]
    assert [head[f"lateral_{k}"]["kernel"].shape[2] for k in range(4)] == [320, 790, 1430, 1280]
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    # mmseg FPN(in_channels, 256, num_outs=4) + FPNHead(channels 256, 150 classes), BN -> GN (same count)
    fpn = sum(c * 256 + 256 for c in (320, 790, 1430, 1280)) + 4 * (9 * 256 * 256 + 256)
    fpn_head = 7 * (9 * 256 * 256 + 2 * 256) + 256 * 150 + 150
    assert count(head) == fpn + fpn_head
    assert count(heads["adapter"]) == 2 * (768 * 768 + 768) + 768  # TextAdapter fc + gamma


def test_vpd_scene_classes_follow_vpd_substring_rule():
    got = vpd_scene_classes(["study_room", "office_kitchen", "home_office", "kitchen", "office", "bathroom"])
    names = [VPD_NYU_SCENES[i] for i in got]
    assert names == ["study", "kitchen", "home_office", "kitchen", "office", "bathroom"]
    with pytest.raises(DatasetError, match="garage"):
        vpd_scene_classes(["garage"])


def test_class_queries_tie_query_c_to_class_c():
    rng = np.random.default_rng(0)
    emb = jnp.asarray(rng.standard_normal((5, 16)) * 3.0, jnp.float32)
    init = jnp.asarray(rng.standard_normal((5, 16)) * 0.02, jnp.float32)
    q = class_queries(emb, init)
    cos = np.sum(np.asarray(q) * np.asarray(emb), 1) / np.linalg.norm(q, axis=1) / np.linalg.norm(emb, axis=1)
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)  # query c points along class c's embedding
    np.testing.assert_allclose(np.sqrt(np.mean(np.square(q), 1)), np.sqrt(np.mean(np.square(init))), rtol=1e-4)
    with pytest.raises(ConfigError, match="one 16-d class embedding per query"):
        class_queries(emb[:4], init)


def test_vpd_context_is_the_adapted_class_embeddings():
    from iedp_jax.infra.errors import InputError
    from iedp_jax.model import IEDPConfig
    from iedp_jax.sd.tiny import tiny_unet_config
    from iedp_jax.sd.unet import UNet2DConditionModel, UNetConfig

    unet = UNet2DConditionModel(UNetConfig.from_dict(tiny_unet_config()))  # only its context width (32) is read
    rng = np.random.default_rng(0)
    seg = IEDP(IEDPConfig(num_classes=3, num_queries=3, context="vpd"), unet, None, None, None)
    table = jnp.asarray(rng.standard_normal((3, 32)), jnp.float32)
    adapter = seg.adapter_module()
    params = {"adapter": adapter.init(jax.random.PRNGKey(0), table)["params"]}
    params["adapter"]["gamma"] = jnp.full((32,), 0.5)  # make the MLP's share visible
    want = adapter.apply({"params": params["adapter"]}, table)  # [3, 32]
    got = seg.vpd_context(params, {"class_embeddings": table}, 2, None)
    assert got.shape == (2, 3, 32)  # every image sees all classes, in class order (VPD's repeat)
    np.testing.assert_allclose(got, np.broadcast_to(want, (2, 3, 32)), rtol=1e-6)
    assert not np.allclose(want, table)

    scenes = vpd_scene_classes(["study_room", "kitchen"])  # dataset scenes -> VPD classes 3 and 6
    depth = IEDP(IEDPConfig(task="depth", num_queries=1, context="vpd"), unet, None, None, None,
                 scene_classes=jnp.asarray(scenes))
    table27 = jnp.asarray(rng.standard_normal((27, 32)), jnp.float32)
    got = depth.vpd_context(params, {"class_embeddings": table27}, 2, jnp.array([1, 0]))
    want = adapter.apply({"params": params["adapter"]}, table27[jnp.array([6, 3])])
    assert got.shape == (2, 1, 32)  # one token per image: its scene class's embedding
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-6)
    with pytest.raises(InputError, match="scene"):
        depth.vpd_context(params, {"class_embeddings": table27}, 2, None)


def test_vpd_context_needs_no_image_tower(tmp_path):
    """VPD's rung reads no CLIP image tower: an empty ``model.clip_vision`` is accepted there and
    refused by the implicit rung, which needs it."""
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    vpd = load_config("vpd_ade")
    vpd.model.pretrained, vpd.model.clip_vision = str(tmp_path / "sd"), ""
    assert build.resolve_backbone(vpd, tmp_path) == (tmp_path / "sd", None)
    implicit = load_config("ade_implicit")
    implicit.model.pretrained, implicit.model.clip_vision = str(tmp_path / "sd"), ""
    with pytest.raises(ConfigError, match="clip_vision"):
        build.resolve_backbone(implicit, tmp_path)
