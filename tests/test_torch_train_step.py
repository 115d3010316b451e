"""The PyTorch reference of the IEDP train step (tests/reference/torch_iedp.py) against ours.

On the tiny smoke backbone, with the JAX train state copied into the torch modules and the same
batch: the losses, the explicit prompts and the parameters after one AdamW step agree. One JAX
trainer (one compilation, ~45 s on 2 cores) is shared by the module's tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from iedp_jax.build import resolve_backbone
from iedp_jax.infra import sharding
from iedp_jax.prompts import build_prompts, present_classes
from iedp_jax.trainer import build_trainer
from tests.helpers import small, train_batch
from tests.reference import torch_iedp

BATCH = 4
# One xdist worker for the whole module, so the module fixture (one JAX compilation) is built once.
pytestmark = pytest.mark.xdist_group("test_torch_train_step")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Any]:
    """One JAX train step and one torch train step from the same state on the same batch."""
    # A large Adam eps makes the first update proportional to the gradient (with the default eps
    # it is lr * sign(g)); lr 1 without warmup makes it large against float32 rounding of params.
    cfg = small(**{"train.batch_size": BATCH, "optim.eps": 1.0, "optim.lr": 1.0, "optim.warmup_steps": 0,
                   "model.dropout": 0.0})
    workdir = Path(tmp_path_factory.mktemp("torch_ref"))
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    # XLA's optimisations change no result here but take half of the ~80 s of compilation.
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        t = build_trainer(cfg, workdir, mesh)
        batch = train_batch(t.dataset, 0, BATCH, slice(None))
        batch["label"] = batch["label"].copy()
        batch["label"][0, :8, :] = cfg.data.ignore_index  # exercise the ignore index
        before = jax.device_get(t.state["params"])  # the step donates the state
        state, metrics = t.step_fn(t.state, t.frozen, sharding.global_batch(mesh, batch))
        after, metrics = jax.device_get((state["params"], metrics))
    finally:
        jax.config.update("jax_disable_most_optimizations", False)

    torch.manual_seed(0)
    sd, clip = resolve_backbone(cfg, workdir)
    ref = torch_iedp.load_reference(sd, clip, t.model.config, t.model.prompts)
    torch_iedp.copy_jax_params(ref, before)
    opt, schedule = torch_iedp.make_optimizer(ref, cfg.optim, int(cfg.train.total_steps))
    tb = torch_iedp.to_torch_batch(batch, "cpu")
    ids, last = ref.explicit_prompts(tb["label"])
    tm = torch_iedp.train_step(ref, opt, schedule, tb, 0, cfg.optim.clip_grad_norm)
    return dict(cfg=cfg, workdir=workdir, model=t.model, batch=batch, before=before, after=after, metrics=metrics,
                ref=ref, torch_metrics={k: float(v) for k, v in tm.items()}, ids=ids, last=last)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def test_losses_match(pair):
    jm, tm = pair["metrics"], pair["torch_metrics"]
    for k in ("loss", "loss_implicit", "loss_explicit"):
        assert _rel(tm[k], float(jm[k])) < 1e-4, (k, tm[k], float(jm[k]))
    assert _rel(tm["grad_norm"], float(jm["grad_norm"])) < 1e-4, (tm["grad_norm"], float(jm["grad_norm"]))
    assert _rel(tm["lr"], float(jm["lr"])) < 1e-6


def test_explicit_prompts_match_exactly(pair):
    model, labels = pair["model"], jnp.asarray(pair["batch"]["label"])
    cfg = model.config
    ids, last = build_prompts(model.prompts, present_classes(labels, cfg.num_classes, cfg.ignore_index))
    np.testing.assert_array_equal(pair["ids"].numpy(), np.asarray(ids))
    np.testing.assert_array_equal(pair["last"].numpy(), np.asarray(last))
    # Random class sets with a short prompt length, so that late classes are dropped.
    rng = np.random.default_rng(0)
    for length in (6, 9, 77):
        table = model.prompts.replace(length=length)
        present = rng.random((16, cfg.num_classes)) < 0.5
        ids, last = build_prompts(table, jnp.asarray(present))
        tids, tlast = torch_iedp.build_prompts(torch_iedp.PromptTable.from_arrays(table),
                                               torch.from_numpy(present))
        np.testing.assert_array_equal(tids.numpy(), np.asarray(ids))
        np.testing.assert_array_equal(tlast.numpy(), np.asarray(last))


def test_one_adamw_step_matches(pair):
    """The parameter updates (new - old) agree leaf by leaf to 1e-3 of each leaf's largest update
    (plus two float32 ulps of its largest parameter, the rounding of ``p + u``): gradients,
    parameter groups, lr multipliers and the weight-decay mask all enter. Attention key biases
    have a zero gradient (softmax ignores a per-query shift), so both only stay put."""
    ref = pair["ref"]
    worst = []
    for name, module in ref.trained_modules().items():
        old = torch_iedp.jax_to_state_dict(pair["before"][name], module, diffusers_names=name == "unet")
        new = torch_iedp.jax_to_state_dict(pair["after"][name], module, diffusers_names=name == "unet")
        got = module.state_dict()
        for k in old:
            want, have = (new[k] - old[k]).double(), (got[k] - old[k]).double()
            scale = want.abs().max().item()
            if scale == 0:  # no gradient and no weight decay (conv_norm_out is unused)
                assert have.abs().max().item() == 0, f"{name}.{k} moved in torch only"
                continue
            if k.endswith("key.bias"):
                assert max(scale, have.abs().max().item()) < 1e-6, k
                continue
            floor = 2 * 2.0**-23 * old[k].abs().max().item()
            worst.append(((have - want).abs().max().item() / (1e-3 * scale + floor), f"{name}.{k}"))
    worst.sort(reverse=True)
    assert worst[0][0] < 1.0, worst[:5]


def test_bfloat16_autocast_step_runs(pair):
    """The bf16 path (autocast over float32 params, frozen towers in bf16) gives a finite loss
    near the float32 one."""
    cfg, model = pair["cfg"], pair["model"]
    sd, clip = resolve_backbone(cfg, pair["workdir"])
    ref = torch_iedp.load_reference(sd, clip, model.config, model.prompts, dtype=torch.bfloat16)
    torch_iedp.copy_jax_params(ref, pair["before"])
    opt, schedule = torch_iedp.make_optimizer(ref, cfg.optim, int(cfg.train.total_steps))
    m = torch_iedp.train_step(ref, opt, schedule, torch_iedp.to_torch_batch(pair["batch"], "cpu"), 0, 1.0)
    assert ref.vae.encoder.conv_in.weight.dtype == torch.bfloat16
    assert ref.unet.conv_in.weight.dtype == torch.float32
    assert _rel(float(m["loss"]), pair["torch_metrics"]["loss"]) < 5e-2
    assert all(torch.isfinite(p).all() for p in ref.parameters())
