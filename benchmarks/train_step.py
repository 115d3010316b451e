"""Images/s and peak memory of the IEDP train step (both branches, forward + backward + AdamW),
ours (jitted JAX) and its PyTorch reference (tests/reference/torch_iedp.py) on the same device
in the same process.

  python -m benchmarks.train_step --config iedp_jax/configs/smoke_seg.py     # CPU, tiny backbone
  python -m benchmarks.train_step --config iedp_jax/configs/ade.py --config.model.pretrained=... \
      --config.model.clip_vision=... --config.model.dtype=bfloat16 --config.train.batch_size=2

Any segmentation config works (``--config.x=y`` overrides included; the PyTorch reference
implements segmentation only, ``--no-torch`` skips it). Reports TFLOP/s from XLA's cost analysis
of the compiled step and the peak device memory. The PyTorch reference is built from the same
folders, gets the JAX initial implicit/adapter/head parameters, runs the same batches with the
same dtype (bfloat16: autocast over float32 parameters) and is timed the same way (one warm-up
step, then ``--steps`` steps, synchronised at the end).
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

if "--no-torch" not in sys.argv:  # leave GPU memory to PyTorch in the same process
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from benchmarks.rss import PeakRSS
from benchmarks.unet import cpu_seconds
from iedp_jax.build import resolve_backbone
from iedp_jax.infra import sharding
from iedp_jax.infra.memory import compiled_sizes
from iedp_jax.trainer import build_trainer
from tests.helpers import train_batch


def bench_torch(cfg, model, heads: dict, workdir: Path, host_batches: list[dict[str, np.ndarray]],
                steps: int) -> dict:
    """Seconds per step, first-step seconds and peak CUDA memory of the PyTorch reference step,
    built like the JAX ``model`` (UNet from the folder, ``heads``: its implicit/adapter/head)."""
    import torch

    from tests.reference import torch_iedp

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True  # XLA's default float32 matmul precision on GPU
    torch.backends.cudnn.allow_tf32 = True
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.model.dtype]
    sd, clip = resolve_backbone(cfg, workdir)
    ref = torch_iedp.load_reference(sd, clip, model.config, model.prompts, device=dev, dtype=dtype)
    torch_iedp.copy_jax_params(ref, heads)
    opt, schedule = torch_iedp.make_optimizer(ref, cfg.optim, int(cfg.train.total_steps))
    batches = [torch_iedp.to_torch_batch(b, dev) for b in host_batches]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    clip_norm = float(cfg.optim.clip_grad_norm or 0.0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    m = torch_iedp.train_step(ref, opt, schedule, batches[0], 0, clip_norm)
    float(m["loss"])
    sync()
    first = time.perf_counter() - start
    start, cpu0 = time.perf_counter(), cpu_seconds()
    for s in range(steps):
        m = torch_iedp.train_step(ref, opt, schedule, batches[s % 2], s + 1, clip_norm)
    float(m["loss"])
    sync()
    sec = (time.perf_counter() - start) / steps
    cpu = (cpu_seconds() - cpu0) / steps
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
    return dict(sec=sec, cpu=cpu, load=os.getloadavg()[0], first=first, peak=peak, loss=float(m["loss"]),
                device=str(dev))


def main() -> None:
    config = config_flags.DEFINE_config_file("config", "iedp_jax/configs/smoke_seg.py", "config file")
    steps = flags.DEFINE_integer("steps", 10, "timed steps after the first (compiling) one")
    no_torch = flags.DEFINE_bool("no-torch", False, "skip the PyTorch reference")
    flags.FLAGS(sys.argv)
    cfg = config.value
    workdir = Path(tempfile.mkdtemp(prefix="iedp_bench_"))
    t = build_trainer(cfg, workdir)
    rows = sharding.process_rows(cfg.train.batch_size)
    host = [train_batch(t.dataset, s, cfg.train.batch_size, rows) for s in range(2)]
    batches = [sharding.global_batch(t.mesh, b) for b in host]
    run_torch = not no_torch.value and t.model.config.task == "seg" and jax.process_count() == 1
    # The implicit/adapter/head initial parameters for the reference (the JAX step donates the state).
    heads = {k: v for k, v in jax.device_get(t.state["params"]).items() if k != "unet"} if run_torch else None
    jax_rss = PeakRSS().__enter__()
    compiled = t.step_fn.compile(t.state, t.frozen, batches[0])  # the trainer's own compile (cached)
    sizes = compiled_sizes(compiled.memory_analysis()) or {"peak": float("nan")}
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float((cost or {}).get("flops", 0.0))
    state = t.state
    start = time.perf_counter()
    state, m = t.step_fn(state, t.frozen, batches[0])
    jax.block_until_ready(m)
    first = time.perf_counter() - start
    start, cpu0 = time.perf_counter(), cpu_seconds()
    for s in range(steps.value):
        state, m = t.step_fn(state, t.frozen, batches[s % 2])
    jax.block_until_ready(m)
    sec = (time.perf_counter() - start) / steps.value
    cpu = (cpu_seconds() - cpu0) / steps.value
    load = os.getloadavg()[0]
    b = cfg.train.batch_size
    stats = jax.devices()[0].memory_stats() or {}
    model = t.model
    # Free every JAX buffer (state, frozen towers, batches, executables) before the reference runs:
    # at SD 1.5 size both would not fit one 24 GiB host together.
    del state, m, t, batches, compiled
    gc.collect()
    jax.clear_caches()
    jax_rss.__exit__()
    torch_rss = PeakRSS().__enter__()
    ref = bench_torch(cfg, model, heads, workdir, host, steps.value) if run_torch else None
    torch_rss.__exit__()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  config: {cfg.data.name} "
          f"crop {tuple(cfg.data.crop_size)}  batch {b}  dtype {cfg.model.dtype}  remat {cfg.model.remat}")
    print(f"train step: {b / sec:.3g} images/s ({sec * 1e3:.1f} ms/step, {cpu:.3g} CPU-s/step, load {load:.1f}; "
          f"first step {first:.1f} s), "
          f"{flops / sec / 1e12:.3f} TFLOP/s (XLA cost analysis: {flops / 1e9:.1f} GFLOP/step)")
    if ref is not None:
        mem = f", peak device memory {ref['peak'] / 2**30:.2f} GiB" if ref["peak"] else ""
        print(f"torch train step: {b / ref['sec']:.3g} images/s ({ref['sec'] * 1e3:.1f} ms/step, {ref['cpu']:.3g} "
              f"CPU-s/step, load {ref['load']:.1f}; first step {ref['first']:.1f} s; {ref['device']}, eager, "
              f"SDPA){mem}")
        print(f"jax/torch: wall {ref['sec'] / sec:.2f}x, CPU {ref['cpu'] / cpu:.2f}x")
    elif not no_torch.value:
        print("torch train step: skipped (the PyTorch reference is single-process segmentation only)")
    peak = stats.get("peak_bytes_in_use")
    print(f"peak device memory: {peak / 2**30:.2f} GiB" if peak else "peak device memory: n/a (CPU)",
          f"; XLA compiled peak {sizes['peak']:.2f} GiB"
          f"; peak host RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB; added by the"
          f" JAX step (compile and run) {jax_rss.extra:.2f} GiB"
          + (f", by the PyTorch reference {torch_rss.extra:.2f} GiB" if ref is not None else ""))


if __name__ == "__main__":
    main()
