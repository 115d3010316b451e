"""DiffSegmenter throughput: one vmapped UNet call for all K classes vs one class at a time vs the
diffusers PyTorch reference doing the same steps per class (as the original does), same device.

  python benchmarks/diffseg.py --classes 20 --batch 2 --image-size 64        # tiny backbone, CPU
  python benchmarks/diffseg.py --pretrained /models/sd15 --image-size 512 --dtype bfloat16
  python benchmarks/diffseg.py --memory --classes 1 2 4                         # SD 1.5 shapes

Without ``--pretrained`` a tiny random backbone is written to a temporary folder. ``--memory``
compiles (without running) the pipeline at SD 1.5 size for 512 px inputs and prints XLA's
memory analysis per number of rows (image x class).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.unet import timeit  # noqa: E402
from diffseg_jax.config import DiffSegConfig  # noqa: E402
from diffseg_jax.pipeline import DiffSegmenter, load_diffsegmenter  # noqa: E402
from diffseg_jax.prompts import pad_class_prompts  # noqa: E402

WORDS = ("cat", "dog", "sofa", "plant", "table", "chair", "person", "car", "bus", "bird", "boat", "bottle",
         "cow", "horse", "sheep", "train", "monitor", "bike", "plane", "motorbike", "road", "tree")


def torch_reference(folder: Path, seg: DiffSegmenter, images: np.ndarray, ids: np.ndarray, weights: np.ndarray,
                    pos: np.ndarray):
    """The same steps in PyTorch (diffusers UNet/VAE, transformers CLIP), one UNet call per class."""
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
    text = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval()
    cfg = seg.config
    acp = torch.from_numpy(np.array(seg.schedule.alphas_cumprod))
    side = seg.latent_side
    # The pipeline's own noise draws (image b: fold_in(PRNGKey(0), b)), NHWC -> NCHW.
    noises = [torch.from_numpy(np.array(jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), b),
                                                          (side, side, 4)))).permute(2, 0, 1)[None]
              for b in range(images.shape[0])]
    t = cfg.timestep
    cross_sides, self_side = seg.cross_resolutions, seg.self_side
    store: dict = {}

    class Rec:
        def __init__(self, name):
            self.name = name

        def __call__(self, attn, hs, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
            b, n, _ = hs.shape
            side = int(round(n ** 0.5))
            ctx = hs if encoder_hidden_states is None else encoder_hidden_states
            q, k, v = (attn.head_to_batch_dim(f(x)) for f, x in ((attn.to_q, hs), (attn.to_k, ctx), (attn.to_v, ctx)))
            probs = attn.get_attention_scores(q, k, None)
            is_self = encoder_hidden_states is None
            if (is_self and side == self_side) or (not is_self and side in cross_sides):
                store.setdefault(("self" if is_self else "cross", side), []).append(
                    probs.reshape(b, attn.heads, n, -1).mean(1))
            return attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, v))))

    unet.set_attn_processor({k: Rec(k) for k in unet.attn_processors})
    empty = text(torch.tensor([list(seg.empty_ids)])).last_hidden_state[0]

    def minmax(x):
        lo = x.flatten(-2).min(-1).values[..., None, None]
        hi = x.flatten(-2).max(-1).values[..., None, None]
        return (x - lo) / (hi - lo).clamp_min(cfg.eps)

    @torch.no_grad()
    def run():
        out = []
        for b in range(images.shape[0]):
            x = torch.from_numpy(images[b:b + 1]).permute(0, 3, 1, 2).float() / 255.0
            x = F.interpolate(x, (cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False) * 2 - 1
            z0 = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
            z = acp[t].sqrt() * z0 + (1 - acp[t]).sqrt() * noises[b]
            maps = []
            for c in range(ids.shape[1]):
                store.clear()
                zt = text(torch.from_numpy(ids[b, c:c + 1].astype(np.int64))).last_hidden_state
                m = torch.from_numpy(pos[b, c])[None, :, None]
                zt = torch.where(m, empty + cfg.token_weight * (zt - empty), zt)
                unet(z, torch.tensor([t]), zt)
                w = torch.from_numpy(weights[b, c:c + 1])
                a = 0
                for side, wt in cross_sides.items():
                    mean = torch.stack(store[("cross", side)]).mean(0)  # [1, Q, L]
                    s = torch.einsum("nql,nl->nq", mean, w).reshape(1, 1, side, side)
                    s = F.interpolate(s, (self_side, self_side), mode="bilinear", align_corners=False)[:, 0]
                    a = a + wt * minmax(s)
                S = torch.stack(store[("self", self_side)]).mean(0)  # [1, Q, Q]
                r = torch.bmm(S, a.reshape(1, -1, 1)).reshape(1, 1, self_side, self_side)
                r = F.interpolate(r, images.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
                maps.append(minmax(r))
            out.append(torch.cat(maps))
        return torch.stack(out).numpy()

    return run


def throughput(args) -> None:
    folder = Path(args.pretrained) if args.pretrained else None
    if folder is None:
        from iedp_jax.sd.tiny import write_tiny_backbone

        folder = write_tiny_backbone(Path(tempfile.mkdtemp()) / "tiny")
    dtype = jnp.dtype(args.dtype)
    seg, params = load_diffsegmenter(folder, DiffSegConfig(image_size=args.image_size), dtype=dtype)
    k = args.classes[0]
    prompts = [seg.encode_prompts(list(WORDS[:k]))] * args.batch
    ids, w, pos, valid = (np.asarray(x) for x in pad_class_prompts(prompts, seg.tokenizer))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.image_size, args.image_size, 3), dtype=np.uint8)
    jargs = (params, jnp.asarray(images), ids, w, pos, valid, 0)
    vm = timeit(lambda: jax.block_until_ready(seg.segment(*jargs)), args.iters)
    pc = timeit(lambda: jax.block_until_ready(seg.segment_per_class(*jargs)), args.iters)
    print(f"device: {jax.devices()[0].device_kind}  images {args.batch} x {k} classes  {args.image_size} px  {args.dtype}")
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
    from iedp_jax.sd import AutoencoderKL, CLIPTextConfig, CLIPTextTransformer, UNet2DConditionModel, UNetConfig, VAEConfig
    from iedp_jax.sd.schedule import from_config
    from iedp_jax.sd.unet import init_unet
    from benchmarks.unet import sd15_config

    here = Path(__file__).resolve()
    cfgs = json.loads((here.parents[2] / "shared" / "sd15_configs.json").read_text())
    dtype = jnp.dtype(args.dtype)
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
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--memory", action="store_true")
    args = ap.parse_args()
    memory(args) if args.memory else throughput(args)


if __name__ == "__main__":
    main()
