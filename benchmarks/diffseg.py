"""DiffSegmenter throughput.

At the evaluation's candidate counts (``--candidates``): a batch of images whose candidate classes
average 1.3 / 2.1 / 1.6 per image (the original's candidate files for VOC / Context / COCO),
through three paths on the same device, in one run:

- **packed**: the batch's (image, class) pairs packed into blocks of ``--rows-per-call`` UNet rows,
  the last block rounded up to a power of two (what ``diffseg_jax.evaluate`` does);
- **fixed-K**: the layout before packing, ``batch x K`` UNet rows per call (K = 8 classes per
  image, padding included);
- **torch per-class**: diffusers / transformers modules, one UNet call per (image, class) with the
  unconditional half, as the official code runs it (batch 2: ``["", prompt]``).

  python -m benchmarks.diffseg --candidates 1.3 2.1 1.6 --batch 10 --image-size 64   # tiny backbone, CPU
  python -m benchmarks.diffseg --candidates 1.3 2.1 1.6 --pretrained /models/sd15 --dtype bfloat16 --no-torch

With ``--classes`` (no ``--candidates``): one vmapped UNet call for all K classes vs one class at a
time vs the diffusers PyTorch reference doing the same steps per class.

  python -m benchmarks.diffseg --classes 20 --batch 2 --image-size 64        # tiny backbone, CPU
  python -m benchmarks.diffseg --pretrained /models/sd15 --image-size 512 --dtype bfloat16
  python -m benchmarks.diffseg --memory --classes 1 2 4                         # SD 1.5 shapes

Without ``--pretrained`` a tiny random backbone is written to a temporary folder. ``--memory``
compiles (without running) the pipeline at SD 1.5 size for 512 px inputs and prints XLA's
memory analysis per number of rows (image x class). The per-class paths (JAX and PyTorch) are
the references of ``tests/reference/torch_diffseg.py``; run from the repository root.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.full_size import configs
from benchmarks.rss import PeakRSS
from benchmarks.unet import sd15_config, timed, timeit
from diffseg_jax.config import DTYPES, DiffSegConfig
from diffseg_jax.evaluate import fold_rows, pack_rows, update_best
from diffseg_jax.pipeline import DiffSegmenter, load_diffsegmenter
from diffseg_jax.prompts import pad_class_prompts
from iedp_jax.infra.compile import compiler_options
from iedp_jax.infra.memory import compiled_sizes
from iedp_jax.sd import AutoencoderKL, CLIPTextConfig, CLIPTextTransformer, UNet2DConditionModel, UNetConfig, VAEConfig
from iedp_jax.sd.schedule import from_config
from iedp_jax.sd.tiny import write_tiny_backbone
from iedp_jax.sd.unet import init_unet
from tests.reference.torch_diffseg import segment_per_class, torch_reference

WORDS = ("cat", "dog", "sofa", "plant", "table", "chair", "person", "car", "bus", "bird", "boat", "bottle",
         "cow", "horse", "sheep", "train", "monitor", "bike", "plane", "motorbike", "road", "tree")


def throughput(args) -> None:
    """Images/s of the vmapped pipeline, the per-class loop and the PyTorch reference (float32),
    each with the resident memory its phase added (the host's figure: on a CPU neither library
    reports a device peak) and XLA's compiled peak of the vmapped program."""
    folder = Path(args.pretrained) if args.pretrained else write_tiny_backbone(Path(tempfile.mkdtemp()) / "tiny")
    dtype = DTYPES[args.dtype]
    k = args.classes[0]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.image_size, args.image_size, 3), dtype=np.uint8)
    with PeakRSS() as jax_rss:
        seg, params = load_diffsegmenter(folder, DiffSegConfig(image_size=args.image_size), dtype=dtype)
        prompts = [seg.encode_prompts(list(WORDS[:k]))] * args.batch
        ids, w, pos, valid = (np.asarray(x) for x in pad_class_prompts(prompts, seg.tokenizer))
        jargs = (params, jnp.asarray(images), ids, w, pos, valid, 0)
        compiled = seg.segment.lower(*jargs).compile(compiler_options() or None)
        sizes = compiled_sizes(compiled.memory_analysis()) or {"peak": float("nan")}
        vm_t = timed(lambda: jax.block_until_ready(compiled(*jargs)), args.iters)
        vm = vm_t["wall"]
        pc = None if args.no_loop else timeit(lambda: jax.block_until_ready(segment_per_class(seg, *jargs)),
                                              args.iters)
        ours = np.asarray(compiled(*jargs)[1]) if dtype == jnp.float32 else None
        params = jargs = compiled = None  # free the JAX buffers before the PyTorch phase
    print(f"device: {jax.devices()[0].device_kind}  images {args.batch} x {k} classes  {args.image_size} px  "
          f"{args.dtype}")
    print(f"jax vmapped (one UNet call):  {args.batch / vm:8.3f} images/s   {vm_t['cpu'] / args.batch:.3g} CPU-s/image "
          f"(load {vm_t['load']:.1f})   XLA compiled peak {sizes['peak']:.2f} GiB")
    if pc is not None:
        print(f"jax per-class loop:           {args.batch / pc:8.3f} images/s   vmapped/loop {pc / vm:.2f}x")
    if not args.no_torch and dtype == jnp.float32:
        with PeakRSS() as torch_rss:
            run = torch_reference(folder, seg, images, ids, w, pos)
            tr_t = timed(run, max(1, args.iters // 2))
            tr = tr_t["wall"]
            diff = np.abs(ours - run()).max()
        print(f"torch per-class reference:    {args.batch / tr:8.3f} images/s   "
              f"{tr_t['cpu'] / args.batch:.3g} CPU-s/image (load {tr_t['load']:.1f})   "
              f"vmapped/torch: wall {tr / vm:.2f}x, CPU {tr_t['cpu'] / vm_t['cpu']:.2f}x"
              f"   (max |class map difference| {diff:.1e})")
        print(f"resident memory added: jax {jax_rss.extra:.2f} GiB, torch {torch_rss.extra:.2f} GiB")
    else:
        print(f"resident memory added: jax {jax_rss.extra:.2f} GiB")


def candidate_counts(mean: float, batch: int) -> list[int]:
    """Per-image candidate counts of a batch whose total is ``round(mean * batch)``: every image
    has at least one, the extra ones go to the first images (1.3 x 10 -> three 2s, seven 1s)."""
    total = max(batch, round(mean * batch))
    base, extra = divmod(total, batch)
    return [base + (1 if i < extra else 0) for i in range(batch)]


def candidates(args) -> None:
    """Packed vs fixed-K vs the torch per-class loop at realistic candidate counts."""
    folder = Path(args.pretrained) if args.pretrained else write_tiny_backbone(Path(tempfile.mkdtemp()) / "tiny")
    dtype = DTYPES[args.dtype]
    seg, params = load_diffsegmenter(folder, DiffSegConfig(image_size=args.image_size), dtype=dtype)
    size, b, r_max, k_fixed = seg.config.image_size, args.batch, args.rows_per_call, args.fixed_k
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
    out_hw = (size, size)

    latents = jax.jit(lambda p, x: seg.noised_latents(p, x, 0))

    @jax.jit
    def rows_step(p, lat, row_image, ids, tw, pos, valid, cid, best, arg):
        maps = seg.row_maps(p, lat, row_image, ids, tw, pos, out_hw)
        return fold_rows(best, arg, maps, row_image, valid, cid)

    @jax.jit
    def fixed_step(p, lat, ids, tw, pos, valid, cid, best, arg):
        maps = seg.class_maps(p, lat, ids, tw, pos, out_hw)
        return update_best(best, arg, maps, valid, cid)

    def init():
        return jnp.full((b,) + out_hw, -jnp.inf, jnp.float32), jnp.zeros((b,) + out_hw, jnp.int32)

    jimages = jnp.asarray(images)
    print(f"device: {jax.devices()[0].device_kind}  {b} images per batch  {size} px  {args.dtype}  "
          f"rows per call {r_max} (packed), {b} x {k_fixed} (fixed-K)")
    for mean in args.candidates:
        counts = candidate_counts(mean, b)
        names = [[WORDS[(i + j) % len(WORDS)] for j in range(n)] for i, n in enumerate(counts)]
        enc = [seg.encode_prompts(n) for n in names]
        ids, tw, pos, valid = (np.asarray(x) for x in pad_class_prompts(enc, seg.tokenizer, k_fixed))
        cid = np.tile(np.arange(1, k_fixed + 1, dtype=np.int32), (b, 1))
        pairs = [(i, k) for i in range(b) for k in range(counts[i])]
        blocks, start = [], 0
        for n in pack_rows(len(pairs), r_max, bucket=True):
            part = pairs[start:start + n]
            start += n
            order = part + [part[0]] * (n - len(part))
            sel = tuple(np.asarray(x) for x in zip(*order))
            ok = np.arange(n) < len(part)
            blocks.append((np.asarray([i for i, _ in order], np.int32), ids[sel], tw[sel], pos[sel], ok, cid[sel]))

        def packed(blocks=blocks):
            lat = latents(params, jimages)
            best, arg = init()
            for block in blocks:
                best, arg = rows_step(params, lat, *block, best, arg)
            return jax.block_until_ready(arg)

        def fixed(arrays=(ids, tw, pos, valid, cid)):
            lat = latents(params, jimages)
            best, arg = init()
            return jax.block_until_ready(fixed_step(params, lat, *arrays, best, arg)[1])

        np.testing.assert_array_equal(np.asarray(packed()), np.asarray(fixed()))  # same labels, and compiled
        t_packed, t_fixed = timeit(packed, args.iters), timeit(fixed, args.iters)
        rows_packed = sum(len(blk[0]) for blk in blocks)
        print(f"candidates {mean:.1f}/image ({len(pairs)} pairs, {b} images):")
        print(f"  jax packed:       {b / t_packed:8.3f} images/s   rows {rows_packed} computed / {len(pairs)} useful "
              f"(blocks {[len(blk[0]) for blk in blocks]})")
        print(f"  jax fixed-K:      {b / t_fixed:8.3f} images/s   rows {b * k_fixed} computed / {len(pairs)} useful"
              f"   packed/fixed {t_fixed / t_packed:.2f}x")
        if not args.no_torch and dtype == jnp.float32:
            run = torch_reference(folder, seg, images, ids, tw, pos, valid=valid, cfg_batch=True)
            t_torch = timeit(run, max(1, args.iters // 2))
            ref = run()
            lat = latents(params, jimages)
            ours = np.asarray(seg.class_maps(params, lat, ids, tw, pos, out_hw))
            diff = np.abs(np.where(valid[:, :, None, None], ours - ref, 0)).max()
            print(f"  torch per-class:  {b / t_torch:8.3f} images/s   rows {2 * len(pairs)} computed "
                  f"(unconditional half included) / {len(pairs)} useful   packed/torch {t_torch / t_packed:.2f}x   "
                  f"(max |class map difference| {diff:.1e})")


def memory(args) -> None:
    """XLA memory analysis of the compiled pipeline at SD 1.5 size (nothing is run)."""
    cfgs = configs()
    dtype = DTYPES[args.dtype]
    pdtype = dtype
    unet = UNet2DConditionModel(UNetConfig.from_dict(sd15_config()), dtype=dtype, param_dtype=pdtype)
    vae = AutoencoderKL(VAEConfig.from_dict(cfgs["vae"]), dtype=dtype, param_dtype=pdtype)
    text = CLIPTextTransformer(CLIPTextConfig.from_dict(cfgs["text_encoder"]), dtype=dtype, param_dtype=pdtype)
    schedule = from_config(cfgs["scheduler"])
    seg = DiffSegmenter(unet, vae, text, schedule, tuple([49406] + [49407] * 76), DiffSegConfig(image_size=512))
    params = {
        "unet": jax.eval_shape(lambda: init_unet(unet))["params"],
        "vae": jax.eval_shape(lambda: vae.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))["params"],
        "text": jax.eval_shape(lambda: text.init(jax.random.PRNGKey(0), jnp.zeros((1, 77), jnp.int32)))["params"],
    }
    for k in args.classes:
        spec = lambda s, d: jax.ShapeDtypeStruct(s, d)  # noqa: E731
        lowered = jax.jit(seg.apply).lower(params, spec((1, 512, 512, 3), jnp.uint8), spec((1, k, 77), jnp.int32),
                                           spec((1, k, 77), jnp.float32), spec((1, k, 77), jnp.bool_),
                                           spec((1, k), jnp.bool_), 0)
        mem = lowered.compile(compiler_options()).memory_analysis()
        print(f"1 image x {k} classes ({args.dtype}): temporaries {mem.temp_size_in_bytes / 2**30:.2f} GiB, "
              f"arguments {mem.argument_size_in_bytes / 2**30:.2f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", default="")
    ap.add_argument("--classes", type=int, nargs="+", default=[20])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-loop", action="store_true", help="skip the per-class JAX loop")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--candidates", type=float, nargs="+", default=None,
                    help="mean candidate classes per image, e.g. 1.3 2.1 1.6: packed vs fixed-K vs torch per class")
    ap.add_argument("--rows-per-call", type=int, default=8, help="packed path: UNet rows per call at most")
    ap.add_argument("--fixed-k", type=int, default=8, help="fixed-K path: classes per image per call")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch intra-op threads (0: torch's default); 1 keeps a loaded machine from stalling it")
    args = ap.parse_args()
    if args.torch_threads:
        import torch  # only the PyTorch reference needs it

        torch.set_num_threads(args.torch_threads)
    if args.memory:
        memory(args)
    elif args.candidates:
        candidates(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
