"""DiffSegmenter throughput: one vmapped UNet call for all K classes vs one class at a time vs the
diffusers PyTorch reference doing the same steps per class (as the original does), same device.

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
import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.unet import sd15_config, timeit
from diffseg_jax.config import DTYPES, DiffSegConfig
from diffseg_jax.pipeline import DiffSegmenter, load_diffsegmenter
from diffseg_jax.prompts import pad_class_prompts
from iedp_jax.sd import AutoencoderKL, CLIPTextConfig, CLIPTextTransformer, UNet2DConditionModel, UNetConfig, VAEConfig
from iedp_jax.sd.schedule import from_config
from iedp_jax.sd.tiny import write_tiny_backbone
from iedp_jax.sd.unet import init_unet
from tests.reference.torch_diffseg import segment_per_class, torch_reference

WORDS = ("cat", "dog", "sofa", "plant", "table", "chair", "person", "car", "bus", "bird", "boat", "bottle",
         "cow", "horse", "sheep", "train", "monitor", "bike", "plane", "motorbike", "road", "tree")


def throughput(args) -> None:
    folder = Path(args.pretrained) if args.pretrained else write_tiny_backbone(Path(tempfile.mkdtemp()) / "tiny")
    dtype = DTYPES[args.dtype]
    seg, params = load_diffsegmenter(folder, DiffSegConfig(image_size=args.image_size), dtype=dtype)
    k = args.classes[0]
    prompts = [seg.encode_prompts(list(WORDS[:k]))] * args.batch
    ids, w, pos, valid = (np.asarray(x) for x in pad_class_prompts(prompts, seg.tokenizer))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.image_size, args.image_size, 3), dtype=np.uint8)
    jargs = (params, jnp.asarray(images), ids, w, pos, valid, 0)
    vm = timeit(lambda: jax.block_until_ready(seg.segment(*jargs)), args.iters)
    pc = timeit(lambda: jax.block_until_ready(segment_per_class(seg, *jargs)), args.iters)
    print(f"device: {jax.devices()[0].device_kind}  images {args.batch} x {k} classes  {args.image_size} px  "
          f"{args.dtype}")
    print(f"jax vmapped (one UNet call):  {args.batch / vm:8.3f} images/s")
    print(f"jax per-class loop:           {args.batch / pc:8.3f} images/s   vmapped/loop {pc / vm:.2f}x")
    if not args.no_torch and dtype == jnp.float32:
        run = torch_reference(folder, seg, images, ids, w, pos)
        tr = timeit(run, max(1, args.iters // 2))
        ours = np.asarray(seg.segment(*jargs)[1])
        diff = np.abs(ours - run()).max()
        print(f"torch per-class reference:    {args.batch / tr:8.3f} images/s   vmapped/torch {tr / vm:.2f}x"
              f"   (max |class map difference| {diff:.1e})")


def memory(args) -> None:
    """XLA memory analysis of the compiled pipeline at SD 1.5 size (nothing is run)."""
    here = Path(__file__).resolve()
    cfgs = json.loads((here.parents[2] / "shared" / "sd15_configs.json").read_text())
    dtype = DTYPES[args.dtype]
    unet = UNet2DConditionModel(UNetConfig.from_dict(sd15_config()), dtype=dtype, param_dtype=dtype)
    vae = AutoencoderKL(VAEConfig.from_dict(cfgs["vae"]), dtype=dtype, param_dtype=dtype)
    text = CLIPTextTransformer(CLIPTextConfig.from_dict(cfgs["text_encoder"]), dtype=dtype, param_dtype=dtype)
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
        mem = lowered.compile().memory_analysis()
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
    ap.add_argument("--memory", action="store_true")
    args = ap.parse_args()
    memory(args) if args.memory else throughput(args)


if __name__ == "__main__":
    main()
