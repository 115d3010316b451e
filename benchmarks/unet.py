"""UNet forward and forward+backward throughput: our jitted Flax UNet against diffusers PyTorch.

Both run the same random weights on the same inputs and device. Prints images/s for each, the
ratio, peak memory and (for JAX) the FLOP/s from XLA's cost analysis.

  python -m benchmarks.unet --config tiny --batch 4 --size 256          # CPU, small UNet
  python -m benchmarks.unet --config sd15 --batch 8 --size 512 --dtype bfloat16   # GPU

``--config sd15`` builds the full SD 1.5 UNet from benchmarks/sd15_configs.json (the released
config) with random weights. ``--no-torch`` skips the reference.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.full_size import configs
from benchmarks.rss import PeakRSS
from iedp_jax.infra.compile import compiler_options
from iedp_jax.infra.memory import compiled_sizes
from iedp_jax.sd.unet import UNet2DConditionModel, UNetConfig, init_unet

TINY = dict(
    sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(64, 128, 128), norm_num_groups=16, cross_attention_dim=64, attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)


def sd15_config() -> dict:
    """The released SD 1.5 UNet config (benchmarks/sd15_configs.json)."""
    return configs()["unet"]


def timeit(fn, iters: int) -> float:
    """Seconds per call, after one warm-up call (which includes compilation)."""
    return timed(fn, iters)["wall"]


def cpu_seconds() -> float:
    """User + system CPU seconds of the whole process so far (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn, iters: int) -> dict:
    """Per call, after one warm-up call (which includes compilation): wall seconds, CPU seconds
    of the whole process (all threads; on a shared machine the figure that other work does not
    inflate) and the 1-minute load average at the end."""
    fn()
    wall, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(iters):
        fn()
    return dict(wall=(time.perf_counter() - wall) / iters, cpu=(cpu_seconds() - cpu) / iters,
                load=os.getloadavg()[0])


def bench_jax(cfg: dict, batch: int, size: int, dtype, iters: int) -> dict:
    module = UNet2DConditionModel(UNetConfig.from_dict(cfg), dtype=dtype, param_dtype=dtype)
    params = jax.jit(lambda: init_unet(module)["params"])()
    h = size // 8
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, h, h, 4)), dtype)
    t = jnp.full((batch,), 1, jnp.int32)
    ctx = jnp.asarray(np.random.default_rng(1).standard_normal((batch, 77, cfg["cross_attention_dim"])), dtype)

    fwd = jax.jit(lambda p, x, t, c: module.apply({"params": p}, x, t, c))

    def loss(p, x, t, c):
        return jnp.mean(module.apply({"params": p}, x, t, c).astype(jnp.float32) ** 2)

    bwd = jax.jit(jax.value_and_grad(loss))
    out = {}
    for name, fn in (("forward", fwd), ("forward+backward", bwd)):
        compiled = fn.lower(params, x, t, ctx).compile(compiler_options() or None)
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost.get("flops", 0.0)) if cost else 0.0
        tm = timed(lambda: jax.block_until_ready(compiled(params, x, t, ctx)), iters)  # noqa: B023 - called here
        sec = tm["wall"]
        sizes = compiled_sizes(compiled.memory_analysis()) or {"peak": float("nan")}
        out[name] = dict(images_per_s=batch / sec, tflops=flops / sec / 1e12, compiled_gib=sizes["peak"],
                         cpu_s_per_image=tm["cpu"] / batch, load=tm["load"])
    stats = jax.devices()[0].memory_stats() or {}
    out["peak_bytes"] = stats.get("peak_bytes_in_use")
    return out


def bench_torch(cfg: dict, batch: int, size: int, dtype: str, iters: int) -> dict:
    import torch
    from diffusers import UNet2DConditionModel as TorchUNet

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = TorchUNet(**{k: v for k, v in cfg.items() if not k.startswith("_")}).to(dev, tdtype)
    h = size // 8
    x = torch.randn(batch, 4, h, h, device=dev, dtype=tdtype)
    t = torch.full((batch,), 1, device=dev)
    ctx = torch.randn(batch, 77, cfg["cross_attention_dim"], device=dev, dtype=tdtype)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def fwd():
        with torch.no_grad():
            model(x, t, ctx)
        sync()

    def bwd():
        model.zero_grad(set_to_none=True)
        model(x, t, ctx).sample.float().pow(2).mean().backward()
        sync()

    out = {}
    for name, fn in (("forward", fwd), ("forward+backward", bwd)):
        tm = timed(fn, iters)
        out[name] = dict(images_per_s=batch / tm["wall"], cpu_s_per_image=tm["cpu"] / batch, load=tm["load"])
    out["peak_bytes"] = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=256, help="image side; latents are size/8")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    cfg = TINY if args.config == "tiny" else sd15_config()
    dtype = jnp.dtype(args.dtype)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  config: {args.config}  "
          f"batch {args.batch}  {args.size}x{args.size}  {args.dtype}")
    with PeakRSS() as jax_rss:
        ours = bench_jax(cfg, args.batch, args.size, dtype, args.iters)
    ref, torch_rss = None, None
    if not args.no_torch:
        with PeakRSS() as torch_rss:
            ref = bench_torch(cfg, args.batch, args.size, args.dtype, args.iters)
    for name in ("forward", "forward+backward"):
        o = ours[name]
        line = (f"{name:17s} jax {o['images_per_s']:.3g} img/s, {o['cpu_s_per_image']:.3g} CPU-s/img "
                f"({o['tflops']:.3f} TFLOP/s, load {o['load']:.1f})")
        if ref:
            r = ref[name]
            line += (f"   torch {r['images_per_s']:.3g} img/s, {r['cpu_s_per_image']:.3g} CPU-s/img "
                     f"(load {r['load']:.1f})"
                     f"   jax/torch: wall {o['images_per_s'] / r['images_per_s']:.2f}x, "
                     f"CPU {r['cpu_s_per_image'] / o['cpu_s_per_image']:.2f}x")
        print(line)
    peak_host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak device memory: jax {ours['peak_bytes'] or 'n/a'} bytes"
          + (f", torch {ref['peak_bytes'] or 'n/a'} bytes" if ref else "")
          + f"; peak host RSS (whole process) {peak_host:.2f} GiB; added by each phase: jax {jax_rss.extra:.2f} GiB"
          + (f", torch {torch_rss.extra:.2f} GiB" if torch_rss else "")
          + f"; XLA compiled peak: forward {ours['forward']['compiled_gib']:.2f} GiB, forward+backward "
          + f"{ours['forward+backward']['compiled_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
