"""Images/s and peak memory of the IEDP train step (both branches, forward + backward + AdamW).

  python benchmarks/train_step.py --config configs/smoke_seg.py     # CPU, tiny backbone
  python benchmarks/train_step.py --config configs/ade.py --config.model.pretrained=... \
      --config.model.clip_vision=... --config.model.dtype=bfloat16 --config.train.batch_size=2

Any config works (``--config.x=y`` overrides included). Reports TFLOP/s from XLA's cost
analysis of the compiled step and the peak device memory.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iedp_jax import parallel  # noqa: E402
from iedp_jax.train import build_trainer  # noqa: E402


def main() -> None:
    from absl import flags  # noqa: PLC0415
    from ml_collections import config_flags  # noqa: PLC0415

    config = config_flags.DEFINE_config_file("config", "configs/smoke_seg.py", "config file")
    steps = flags.DEFINE_integer("steps", 10, "timed steps after the first (compiling) one")
    flags.FLAGS(sys.argv)
    cfg = config.value
    workdir = Path(tempfile.mkdtemp(prefix="iedp_bench_"))
    t = build_trainer(cfg, workdir)
    rows = parallel.process_rows(cfg.train.batch_size)
    batches = [parallel.global_batch(t.mesh, t.dataset.train_batch(s, cfg.train.batch_size, rows))
               for s in range(2)]
    compiled = t.step_fn.jitted.lower(t.state, t.frozen, batches[0]).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float((cost or {}).get("flops", 0.0))
    state = t.state
    start = time.perf_counter()
    state, m = t.step_fn(state, t.frozen, batches[0])
    jax.block_until_ready(m)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for s in range(steps.value):
        state, m = t.step_fn(state, t.frozen, batches[s % 2])
    jax.block_until_ready(m)
    sec = (time.perf_counter() - start) / steps.value
    b = cfg.train.batch_size
    stats = jax.devices()[0].memory_stats() or {}
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  config: {cfg.data.name} "
          f"crop {tuple(cfg.data.crop_size)}  batch {b}  dtype {cfg.model.dtype}  remat {cfg.model.remat}")
    print(f"train step: {b / sec:.2f} images/s ({sec * 1e3:.1f} ms/step; first step {first:.1f} s), "
          f"{flops / sec / 1e12:.3f} TFLOP/s (XLA cost analysis: {flops / 1e9:.1f} GFLOP/step)")
    peak = stats.get("peak_bytes_in_use")
    print(f"peak device memory: {peak / 2**30:.2f} GiB" if peak else "peak device memory: n/a (CPU)",
          f"; peak host RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
