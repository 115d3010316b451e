"""The ablation ladder's VPD rung trains on the fake NYUv2 release layout.

iedp_jax/configs/vpd_nyu.py: two train steps with the shipped config and only sizes made small, through
the trainer (the scene -> VPD class lookup, the one-token context, VPD's padding, neck crop,
nearest resize, head initialisation and schedule). Each rung's train step compiles for about a
minute on a shared CPU, so only this rung trains here, within the test budget: the top rungs
(iedp_jax/configs/ade.py, iedp_jax/configs/nyu.py, with every VPD recipe choice) train in test_configs.py; the
middle rungs (iedp_jax/configs/*_implicit.py) are the top rungs with ``explicit_weight=0``, i.e. their
step is the top rung's without the explicit loss term; the ADE20K VPD context (adapter over all
150 embeddings) is checked by value in test_vpd_baseline.py. Each rung differs from the next by
one key (test_vpd_baseline.py). The class-embedding cache is seeded so that the time goes to the
train step (the embedding itself: test_vpd_baseline.py).

VPD's test prompts each test image with its own scene: the VPD rung is scored again on the same
test frames listed under swapped scene folders, and the metrics must change. The two placements
of the explicit tie (``explicit.placement``: iedp_jax/configs/ade.py and iedp_jax/configs/nyu.py scatter;
iedp_jax/configs/*_explicit_concat.py concatenate) each train on the fakes too.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from iedp_jax.build import embedding_class_names, embeddings_path
from iedp_jax.data.nyu import NYUv2Source
from iedp_jax.eval.plan import protocol_from_config
from iedp_jax.eval.runner import finalize, make_protocol_steps, protocol_batches, run_protocol
from iedp_jax.infra import sharding
from iedp_jax.prompts import IMAGENET_TEMPLATES
from iedp_jax.sd.tiny import write_tiny_backbone
from iedp_jax.trainer import build_trainer
from tests.fakes import NYU_TEST, write_ade, write_nyu
from tests.helpers import load_config, quick_compile, train_batch

SMALL = {"data.format": "folders", "data.crop_size": (32, 32), "data.num_workers": 0, "train.batch_size": 2,
         "train.total_steps": 2, "optim.warmup_steps": 1, "model.fpn_channels": 32, "model.head_channels": 32,
         "model.head_groups": 8, "model.neck_channels": 64, "model.decoder_heads": 4,
         "loss.silog_group": 1}  # NYUv2: VPD's groups of 3 need a batch of 3k; 2 groups of 1 here
SWAPPED = [NYU_TEST[1], NYU_TEST[0], *NYU_TEST[2:]]  # the first two test frames' scene folders swapped


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ladder")
    write_ade(root / "ade20k", n_train=4)
    write_nyu(root / "nyu")
    write_nyu(root / "nyu_swapped", test_scenes=SWAPPED)
    return {"sd": write_tiny_backbone(root / "sd"), "ade": root / "ade20k", "nyu": root / "nyu",
            "nyu_swapped": root / "nyu_swapped"}


def _protocol_metrics(t, params, source, cfg, steps) -> dict:
    acc = None
    for batch in protocol_batches(t.model, params, t.frozen, source, cfg.eval.num_images, t.mesh, cfg, steps=steps):
        acc = batch.acc
    return finalize(acc, "depth", ())


@pytest.mark.parametrize("name", ["vpd_nyu", "ade_explicit_concat", "nyu_explicit_concat"])
def test_ladder_rung_trains(name, layouts, tmp_path):
    sd = layouts["sd"]
    cfg = load_config(name, **SMALL, **{"model.pretrained": str(sd), "model.clip_vision": str(sd / "image_encoder"),
                                        "data.data_dir": str(layouts["ade" if "ade" in name else "nyu"])})
    if cfg.model.context == "vpd":
        names = embedding_class_names(cfg)
        path = embeddings_path(tmp_path, sd, names, IMAGENET_TEMPLATES)
        path.parent.mkdir(parents=True)
        np.save(path, np.random.default_rng(0).standard_normal((len(names), 32)).astype(np.float32))
    steps = 2  # the first step runs at the warm-up's zero learning rate on ADE20K
    with quick_compile():
        t = build_trainer(cfg, tmp_path, sharding.make_mesh((1, 1), jax.devices()[:1]))
        before = jax.device_get(t.state["params"]["head"])
        state = t.state
        for step in range(steps):
            batch = sharding.global_batch(t.mesh, train_batch(t.dataset, step, 2))
            state, metrics = t.step_fn(state, t.frozen, batch)
            metrics = jax.device_get(metrics)
            assert np.isfinite(metrics["loss"]) and metrics["params_finite"] == 1.0
    explicit = {"loss_explicit"} if cfg.model.explicit_weight > 0 else set()
    assert set(k for k in metrics if k.startswith("loss")) == {"loss", f"loss_{cfg.model.context}"} | explicit
    assert ("implicit" in state["params"]) == (cfg.model.context == "implicit")
    if explicit:
        assert cfg.explicit.placement == "concatenated" and t.model.config.explicit_placement == "concatenated"
    after = jax.device_get(state["params"]["head"])
    assert int(state["step"]) == steps
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True))
    if cfg.model.context == "vpd" and t.model.config.task == "depth":
        # VPD's test conditions on each image's ground-truth scene: the published protocol runs it
        cfg.eval.num_images, cfg.eval.crop, cfg.eval.stride = 2, (32, 32), (16, 16)
        with quick_compile():
            result = run_protocol(t.model, state["params"], t.frozen, t.dataset, t.mesh, cfg)
        assert result["num_images"] == 2 and np.isfinite(result["rmse"]) and result["protocol"]["clip_depth"] is False
        # the same frames under swapped scene folders: each is prompted with its own (new) scene
        swapped = NYUv2Source(layouts["nyu_swapped"], (32, 32), num_workers=0)
        assert swapped.scene_names == t.dataset.scene_names
        assert [swapped.val_image(i)["scene"] for i in range(2)] == [t.dataset.val_image(i)["scene"] for i in (1, 0)]
        steps = make_protocol_steps(t.model, protocol_from_config(cfg, "depth"), t.mesh, float(cfg.data.min_depth))
        with quick_compile():
            same = _protocol_metrics(t, state["params"], t.dataset, cfg, steps)
            other = _protocol_metrics(t, state["params"], swapped, cfg, steps)
        assert same["abs_rel"] == pytest.approx(result["abs_rel"], rel=1e-6)
        assert abs(other["abs_rel"] - same["abs_rel"]) > 1e-6 * same["abs_rel"], (other, same)
