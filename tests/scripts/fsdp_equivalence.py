"""One train step of the smoke config on one device and on a (2, 4) fsdp mesh of 8 simulated
devices; prints the losses, gradient norms and the largest relative parameter difference as
one JSON line.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.scripts.fsdp_equivalence DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np

from iedp_jax.infra import sharding
from iedp_jax.trainer import build_trainer
from tests.helpers import small, train_batch


def main(workdir: Path) -> None:
    assert len(jax.devices()) == 8
    out = {}
    for name, shape, devices in (("one", (1, 1), jax.devices()[:1]), ("mesh", (2, 4), jax.devices())):
        # A large Adam eps makes the first update proportional to the gradient (with the default
        # eps it is lr * sign(g), which turns rounding-level gradient differences into O(lr) ones).
        cfg = small(**{"train.batch_size": 8, "optim.eps": 1.0})
        mesh = sharding.make_mesh(shape, devices)
        t = build_trainer(cfg, workdir, mesh)
        specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(t.state["params"])}
        state, metrics = t.step_fn(t.state, t.frozen, sharding.global_batch(mesh, train_batch(t.dataset, 0, 8)))
        params = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state["params"]))]
        out[name] = (float(metrics["loss"]), float(metrics["grad_norm"]), params, specs)
    (l1, g1, p1, _), (l2, g2, p2, specs) = out["one"], out["mesh"]
    assert any("fsdp" in s for s in specs), specs
    err = max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(p1, p2, strict=True))
    print(json.dumps({"loss_one": l1, "loss_mesh": l2, "grad_one": g1, "grad_mesh": g2, "param_rel_err": err}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
