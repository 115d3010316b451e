"""DiffSegmenter the way the original runs it, one UNet call per class: the library's jitted
``segment`` called K times with K = 1 (:func:`segment_per_class`), and the same steps in PyTorch
with diffusers / transformers modules (:func:`torch_reference`). The tests compare
:meth:`diffseg_jax.pipeline.DiffSegmenter.segment` (all classes in one call) against them, and
``python -m benchmarks.diffseg`` times all three."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from diffseg_jax.attention import label_map
from diffseg_jax.pipeline import DiffSegmenter

_label_map = jax.jit(label_map)


def segment_per_class(seg: DiffSegmenter, params, images, prompt_ids, token_weights, class_pos, valid, rng_seed,
                      image_index=None, threshold=None) -> tuple[jax.Array, jax.Array]:
    """``seg.segment`` on one class at a time (K calls with K = 1); same arguments and results."""
    maps = []
    for c in range(prompt_ids.shape[1]):
        sl = slice(c, c + 1)
        _, m = seg.segment(params, images, prompt_ids[:, sl], token_weights[:, sl], class_pos[:, sl], valid[:, sl],
                           rng_seed, image_index, threshold)
        maps.append(m)
    maps = jnp.concatenate(maps, axis=1)
    thr = seg.config.threshold if threshold is None else threshold
    return _label_map(maps, jnp.asarray(valid, bool), thr), maps


def torch_reference(folder: Path, seg: DiffSegmenter, images: np.ndarray, ids: np.ndarray, weights: np.ndarray,
                    pos: np.ndarray, valid: np.ndarray | None = None, cfg_batch: bool = False):
    """The same steps in PyTorch (diffusers UNet/VAE, transformers CLIP), one UNet call per class,
    with the pipeline's own noise draws (seed 0, image b keyed by b). Returns ``run()`` -> class
    maps [B, K, H, W] (numpy; 0 for the classes ``valid`` [B, K] leaves out, which are not run).

    ``cfg_batch``: each call is the original's classifier-free pair, latents ``[z, z]`` with the
    contexts ``["", prompt]`` (batch 2), of which only the conditional row's maps are kept (the
    original computes the unconditional half and discards it)."""
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
        uncond = empty[None]
        for b in range(images.shape[0]):
            x = torch.from_numpy(images[b:b + 1]).permute(0, 3, 1, 2).float() / 255.0
            x = F.interpolate(x, (cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False) * 2 - 1
            z0 = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
            z = acp[t].sqrt() * z0 + (1 - acp[t]).sqrt() * noises[b]
            maps = []
            for c in range(ids.shape[1]):
                if valid is not None and not valid[b, c]:
                    maps.append(torch.zeros((1,) + tuple(images.shape[1:3])))
                    continue
                store.clear()
                zt = text(torch.from_numpy(ids[b, c:c + 1].astype(np.int64))).last_hidden_state
                m = torch.from_numpy(pos[b, c])[None, :, None]
                zt = torch.where(m, empty + cfg.token_weight * (zt - empty), zt)
                if cfg_batch:
                    unet(torch.cat([z, z]), torch.tensor([t, t]), torch.cat([uncond, zt]))
                    for key, v in store.items():  # keep the conditional row (the second)
                        store[key] = [x[1:] for x in v]
                else:
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
