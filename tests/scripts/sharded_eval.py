"""The segmentation protocol over 8 simulated devices on a (8, 1) and a (2, 4) mesh, with the
dummy predictor; prints the metrics and written images of each as one JSON line.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.scripts.sharded_eval DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from iedp_jax.data.ade20k import ADE20KSource
from iedp_jax.eval.runner import run_protocol
from iedp_jax.infra import sharding
from iedp_jax.model import SEG, IEDPConfig
from tests.fakes import write_protocol_ade
from tests.helpers import eval_cfg
from tests.reference.protocols import DummyModel, seg150


def main(folder: Path) -> None:
    assert len(jax.devices()) == 8
    src = ADE20KSource(write_protocol_ade(folder), (32, 32))
    cfg = eval_cfg((32, 32), (21, 21), img_scale=(128, 32), mode="single", batch_size=8, num_visualizations=3)
    model = DummyModel(IEDPConfig(task=SEG, num_classes=150, num_queries=150), seg150)
    out = {}
    for name, shape in (("data", (8, 1)), ("fsdp", (2, 4))):
        r = run_protocol(model, {"scale": jnp.float32(1.0)}, {}, src, sharding.make_mesh(shape), cfg,
                         out_dir=folder / name)
        images = sorted(p.name for p in (folder / name / "images").iterdir())
        out[name] = {"aAcc": r["aAcc"], "mIoU": r["mIoU"], "images": images}
    print(json.dumps(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
