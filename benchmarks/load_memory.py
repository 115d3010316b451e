"""Peak host memory of ``load_unet`` on a full-size SD 1.5 UNet (random float32 weights).

Writes ``unet/config.json`` + a 3.4 GB ``diffusion_pytorch_model.safetensors`` into ``--dir``
(once), then loads it in a fresh process and reports the peak resident memory against the file
size. The loader reads tensors one at a time from a memory map, so the peak should stay near two
copies (the mapped file plus the converted parameters).

  python -m benchmarks.load_memory --dir /tmp/sd15_random

Everything heavy (jax, numpy, the library) is imported inside the child processes only: a child
inherits its parent's peak RSS (``ru_maxrss`` survives fork + exec), so the parent stays small.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

MODULE = "benchmarks.load_memory"


def write(folder: Path) -> Path:
    # Imports in the child only (see the module docstring), for this and load().
    import jax
    import numpy as np
    from safetensors.numpy import save_file

    from benchmarks.unet import sd15_config
    from iedp_jax.sd.export import torch_state_dict
    from iedp_jax.sd.unet import UNet2DConditionModel, UNetConfig, init_unet

    target = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if target.is_file():
        return target
    cfg = sd15_config()
    module = UNet2DConditionModel(UNetConfig.from_dict(cfg))
    shapes = jax.eval_shape(lambda: init_unet(module))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape, dtype=np.float32) * 0.02, shapes)
    target.parent.mkdir(parents=True, exist_ok=True)
    (target.parent / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **cfg}))
    save_file(torch_state_dict(params), str(target))
    return target


def load(folder: str) -> None:
    import jax

    from iedp_jax.sd import load_unet

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _, params = load_unet(folder)

    n = sum(x.size for x in jax.tree.leaves(params))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"params": int(n), "rss_before_kib": before, "peak_rss_kib": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/sd15_random")
    ap.add_argument("--_load", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_write", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._load:  # noqa: SLF001 - the child process's own flag
        load(args.dir)
        return
    if args._write:  # noqa: SLF001 - the child process's own flag
        write(Path(args.dir))
        return
    # Write and load in separate child processes: a child inherits its parent's peak RSS
    # (ru_maxrss survives fork + exec), so this parent must stay small.
    subprocess.run([sys.executable, "-m", MODULE, "--dir", args.dir, "--_write"], check=True)
    path = Path(args.dir) / "unet" / "diffusion_pytorch_model.safetensors"
    size = path.stat().st_size
    out = subprocess.run([sys.executable, "-m", MODULE, "--dir", args.dir, "--_load"], capture_output=True,
                         text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    grown = (res["peak_rss_kib"] - res["rss_before_kib"]) * 1024
    print(f"UNet parameters: {res['params']:,}; file {size / 2**30:.2f} GiB")
    print(f"peak RSS {res['peak_rss_kib'] / 2**20:.2f} GiB (+{grown / 2**30:.2f} GiB while loading) "
          f"= {grown / size:.2f} x the file")


if __name__ == "__main__":
    main()
