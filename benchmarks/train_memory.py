"""Compile-only memory breakdown of the IEDP train step, from XLA's memory analysis.

  python -m benchmarks.train_memory --config iedp_jax/configs/ade.py \
      --config.model.pretrained=/tmp/full/sd15 --config.model.clip_vision=/tmp/full/clip_l14 \
      --config.data.data_dir=/tmp/full/ade --config.data.format=folders \
      --variants float32:none:1,bfloat16:blocks:2 [--json out.json] [--top 8]

Each variant is ``dtype:remat:batch[:fsdp]`` (remat: none | blocks | dots). The step is built
exactly as the trainer builds it, from the folders' config files only (no weight is read,
nothing runs), and compiled for the variant's shapes. Reported per device (GiB): parameters,
optimizer state, frozen towers (the step's arguments), gradients (the trained parameters'
size in float32), the remaining temporaries (activations kept for the backward pass plus XLA's
working buffers) and the compiled peak the trainer prints; with ``--top`` the largest buffers
of XLA's buffer assignment, to say what dominates (run with
``XLA_FLAGS=--xla_dump_to=DIR`` so that XLA writes it).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

from iedp_jax.infra import memory, sharding
from iedp_jax.trainer import build_trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. iedp_jax/configs/ade.py.",
                                          lock_config=False)
_VARIANTS = flags.DEFINE_string("variants", "float32:none:1", "Comma-separated dtype:remat:batch[:fsdp].")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")
_TOP = flags.DEFINE_integer("top", 0, "List the N largest buffers of each variant (XLA buffer assignment).")


def top_buffers(dump_dir: Path, n: int) -> list[str]:
    """The ``n`` largest allocations of the train step's buffer assignment, with what they hold."""
    files = sorted(dump_dir.glob("*step_fn*buffer-assignment.txt")) or sorted(dump_dir.glob("*buffer-assignment.txt"))
    if not files:
        return []
    text = max(files, key=lambda f: f.stat().st_size).read_text()
    rows = []
    for m in re.finditer(r"^allocation \d+: size (\d+),([^\n]*)\n((?: value:[^\n]*\n)+)", text, re.M):
        size, kind, values = int(m.group(1)), m.group(2).strip(), m.group(3)
        first = values.splitlines()[0].strip()
        rows.append((size, kind, first[:160], len(values.splitlines())))
    rows.sort(reverse=True)
    return [f"{s / memory.GIB:7.3f} GiB  {kind[:40]:40s} {n_values:4d} values, e.g. {first}"
            for s, kind, first, n_values in rows[:n]]


def measure(cfg, variant: str, top: int) -> dict:
    parts = variant.split(":")
    dtype, remat, batch = parts[0], parts[1], int(parts[2])
    fsdp = int(parts[3]) if len(parts) > 3 else 1
    c = cfg.copy_and_resolve_references()
    c.model.dtype, c.model.remat = dtype, remat
    c.train.batch_size, c.train.grad_accum_steps = batch * fsdp, 1
    c.mesh.shape = (1, fsdp)
    devices = jax.devices()[:fsdp]
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        t = build_trainer(c, Path(workdir), sharding.make_mesh((1, fsdp), devices), weights="none")
        compiled = t.compile_step()
        seconds = time.perf_counter() - t0
    analysis = compiled.memory_analysis()
    plan = memory.plan(t.state, t.frozen)
    trained = memory.per_device_bytes(t.state["params"]) / memory.GIB
    row = dict(variant=variant, dtype=dtype, remat=remat, batch_per_device=batch, fsdp=fsdp,
               params=plan["params"], optimizer=plan["optimizer"], frozen=plan["frozen"],
               gradients=trained, **memory.compiled_sizes(analysis), compile_s=seconds)
    row["activations_and_xla_temps"] = row["temporaries"] - trained
    return row


def main(argv: list[str]) -> None:
    del argv
    rows = []
    for variant in _VARIANTS.value.split(","):
        row = measure(_CONFIG.value, variant, _TOP.value)
        rows.append(row)
        print(f"{variant}: params {row['params']:.2f}, optimizer {row['optimizer']:.2f}, frozen "
              f"{row['frozen']:.2f}, gradients {row['gradients']:.2f}, activations+temps "
              f"{row['activations_and_xla_temps']:.2f}, temporaries {row['temporaries']:.2f}, "
              f"peak {row['peak']:.2f} GiB (compiled in {row['compile_s']:.0f} s)", flush=True)
        if _TOP.value:
            for line in top_buffers(Path(_dump_dir()), _TOP.value):
                print("   ", line)
    if _JSON.value:
        Path(_JSON.value).write_text(json.dumps(rows, indent=2))


def _dump_dir() -> str:
    m = re.search(r"--xla_dump_to=(\S+)", os.environ.get("XLA_FLAGS", ""))
    return m.group(1) if m else ""


if __name__ == "__main__":
    app.run(main)
