"""The ablation ladder's VPD rung trains on the fake NYUv2 release layout.

configs/vpd_nyu.py: two train steps with the shipped config and only sizes made small, through
the trainer (the scene -> VPD class lookup, the one-token context, VPD's padding, neck crop,
nearest resize, head initialisation and schedule). Each rung's train step compiles for about a
minute on a shared CPU, so only this rung trains here, within the test budget: the top rungs
(configs/ade.py, configs/nyu.py, with every VPD recipe choice) train in test_configs.py; the
middle rungs (configs/*_implicit.py) are the top rungs with ``explicit_weight=0``, i.e. their
step is the top rung's without the explicit loss term; the ADE20K VPD context (adapter over all
150 embeddings) is checked by value in test_vpd_baseline.py. Each rung differs from the next by
one key (test_vpd_baseline.py). The class-embedding cache is seeded so that the time goes to the
train step (the embedding itself: test_vpd_baseline.py).
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from iedp_jax.build import embedding_class_names, embeddings_path
from iedp_jax.eval.runner import run_protocol
from iedp_jax.infra import sharding
from iedp_jax.prompts import IMAGENET_TEMPLATES
from iedp_jax.sd.tiny import write_tiny_backbone
from iedp_jax.trainer import build_trainer
from tests.fakes import write_ade, write_nyu
from tests.helpers import load_config, quick_compile, train_batch

SMALL = {"data.format": "folders", "data.crop_size": (32, 32), "data.num_workers": 0, "train.batch_size": 2,
         "train.total_steps": 2, "optim.warmup_steps": 1, "model.fpn_channels": 32, "model.head_channels": 32,
         "model.head_groups": 8, "model.neck_channels": 64, "model.decoder_heads": 4}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ladder")
    write_ade(root / "ade20k", n_train=4)
    write_nyu(root / "nyu")
    return {"sd": write_tiny_backbone(root / "sd"), "ade": root / "ade20k", "nyu": root / "nyu"}


@pytest.mark.parametrize("name", ["vpd_nyu"])
def test_ladder_rung_trains(name, layouts, tmp_path):
    sd = layouts["sd"]
    cfg = load_config(name, **SMALL, **{"model.pretrained": str(sd), "model.clip_vision": str(sd / "image_encoder"),
                                        "data.data_dir": str(layouts["ade" if "ade" in name else "nyu"])})
    if cfg.model.context == "vpd":
        names = embedding_class_names(cfg)
        path = embeddings_path(tmp_path, sd, names, IMAGENET_TEMPLATES)
        path.parent.mkdir(parents=True)
        np.save(path, np.random.default_rng(0).standard_normal((len(names), 32)).astype(np.float32))
    with quick_compile():
        t = build_trainer(cfg, tmp_path, sharding.make_mesh((1, 1), jax.devices()[:1]))
        before = jax.device_get(t.state["params"]["head"])
        state = t.state
        for step in range(2):
            batch = sharding.global_batch(t.mesh, train_batch(t.dataset, step, 2))
            state, metrics = t.step_fn(state, t.frozen, batch)
            metrics = jax.device_get(metrics)
            assert np.isfinite(metrics["loss"]) and metrics["params_finite"] == 1.0
    assert set(k for k in metrics if k.startswith("loss")) == {"loss", f"loss_{cfg.model.context}"}
    assert ("implicit" in state["params"]) == (cfg.model.context == "implicit")
    after = jax.device_get(state["params"]["head"])
    assert int(state["step"]) == 2
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True))
    if cfg.model.context == "vpd" and t.model.config.task == "depth":
        # VPD's test conditions on each image's ground-truth scene: the published protocol runs it
        cfg.eval.num_images, cfg.eval.crop, cfg.eval.stride = 2, (32, 32), (16, 16)
        with quick_compile():
            result = run_protocol(t.model, state["params"], t.frozen, t.dataset, t.mesh, cfg)
        assert result["num_images"] == 2 and np.isfinite(result["rmse"]) and result["protocol"]["clip_depth"] is False
