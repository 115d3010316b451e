"""Host memory of a checkpoint save at full size: the train state of SD 1.5 (params + AdamW
moments, float32, about 10.3 GB) saved by the trainer's Checkpointer, with the peak resident
memory of the process sampled during the save.

  python -m benchmarks.checkpoint_memory --out /tmp/ckpt_bench --host-gb 0     # unbounded
  python -m benchmarks.checkpoint_memory --out /tmp/ckpt_bench --host-gb 1     # bounded

Each run is one process (the peak is per process). ``--host-gb`` is the trainer's
``train.ckpt_host_gb``: 0 lets orbax hold as much of the state on the host as it likes while it
writes; a positive value bounds the bytes in flight. ``--params`` scales the state (default: SD
1.5's 859.5M UNet parameters).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks.rss import PeakRSS, rss_gib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/ckpt_bench")
    ap.add_argument("--host-gb", type=float, default=0.0)
    ap.add_argument("--params", type=float, default=859.52e6, help="parameters (the state holds 3x: params, mu, nu)")
    args = ap.parse_args()

    from iedp_jax.infra.checkpoint import Checkpointer

    n = int(args.params)
    chunk = 2**26  # 256 MB leaves, like the UNet's largest tensors
    leaves = [min(chunk, n - i) for i in range(0, n, chunk)]
    key = jax.random.PRNGKey(0)
    state = {name: [jax.random.normal(jax.random.fold_in(key, 3 * j + k), (m,), jnp.float32)
                    for j, m in enumerate(leaves)]
             for k, name in enumerate(("params", "mu", "nu"))}
    state["step"] = jnp.zeros((), jnp.int32)
    jax.block_until_ready(state)
    before = rss_gib()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    import grain

    ckpt = Checkpointer(out, every=1, keep=1, host_gb=args.host_gb)
    it = iter(grain.MapDataset.range(4).to_iter_dataset())
    with PeakRSS() as sampler:
        t0 = time.perf_counter()
        ckpt.save(1, state, it, {"step": 1}, force=True)
        returned = time.perf_counter() - t0
        ckpt.close()
        total = time.perf_counter() - t0
    peak = sampler.peak
    state_gib = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**30
    print(json.dumps(dict(state_gib=round(state_gib, 2), host_gb=args.host_gb, rss_before_gib=round(before, 2),
                          peak_rss_gib=round(peak, 2), extra_gib=round(peak - before, 2),
                          save_returned_s=round(returned, 1), save_done_s=round(total, 1))))
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
