"""Runs the UNet, train-step, input-pipeline and DiffSegmenter benchmarks (each in its own process,
with its PyTorch reference where the script has one, on the same device in the same run) and writes
one Markdown table: date, device, benchmark, config, JAX img/s, PyTorch img/s, ratio, TFLOP/s, peak
memory.

  python -m benchmarks.run_all --preset cpu                       # the tiny configs of RESULTS.md
  python -m benchmarks.run_all --preset gpu --sd15 /models/stable-diffusion-v1-5 \
      --clip-vision /models/clip-vit-large-patch14 --readme
  python -m benchmarks.run_all --preset gpu --only unet,input_pipeline --dry-run

Presets:

- ``cpu``: the commands recorded in benchmarks/RESULTS.md (tiny UNet at 256 px, the smoke train
  step, DiffSegmenter on the tiny backbone with 20 classes) and the input pipeline at crop 512 /
  batch 16 on 1 and 2 threads.
- ``gpu``: SD 1.5 sizes. UNet ``--config sd15 --batch 8 --size 512 --dtype bfloat16``; the train
  step with iedp_jax/configs/ade.py (SD 1.5 + CLIP ViT-L from ``--sd15`` / ``--clip-vision``, bfloat16,
  ``--train-batch``, crop 512) on a synthetic ADE20K folder written by input_pipeline.py; the input
  pipeline on 1, 2, 4, ... threads up to the core count; DiffSegmenter with the ``--sd15`` weights,
  20 classes, 512 px, bfloat16. train_step and diffseg are skipped without ``--sd15`` (train_step
  also without ``--clip-vision``): neither script can build SD 1.5 from random weights.
  diffseg.py's PyTorch reference runs only in float32 and on the CPU, so the gpu preset passes
  ``--no-torch`` to it. train_step.py's PyTorch reference (tests/reference/torch_iedp.py: the
  same IEDP step with diffusers/transformers, SDPA attention, autocast bf16, fused AdamW) runs on
  the GPU after the JAX step. Children get ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (unless set) so
  that the PyTorch references of unet.py and train_step.py, in the same process as JAX, find free
  GPU memory.

Each script runs as a module from the repository root (``python -m benchmarks.unet ...``). The
scripts print text (input_pipeline.py also a JSON line); the parsers below read the numbers from
it. ``--out`` (default benchmarks/performance.md) receives the table, the commands and notes;
``--readme`` also replaces the part of README.md between ``<!-- performance:start -->`` and
``<!-- performance:end -->`` (added under a "## Performance" heading when missing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = ("unet", "train_step", "input_pipeline", "diffseg")
START, END = "<!-- performance:start -->", "<!-- performance:end -->"
COLUMNS = ("date", "device", "benchmark", "config", "JAX img/s", "PyTorch img/s", "ratio", "TFLOP/s",
           "peak memory")
SD15_PLACEHOLDER = "<SD15_DIR>"
CLIP_PLACEHOLDER = "<CLIP_VISION_DIR>"

Row = dict[str, Any]  # benchmark, config, jax, torch, tflops, memory (None where not measured)


# --------------------------------------------------------------------------------------------
# Parsing the scripts' output
# --------------------------------------------------------------------------------------------

_NUM = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"


def _float(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else None


def _gib(value: str | None) -> str | None:
    """A byte count as text ('123', 'n/a', 'None') -> 'x.xx GiB' or None."""
    try:
        return f"{int(value) / 2**30:.2f} GiB" if value is not None else None
    except ValueError:
        return None


def parse_unet(text: str) -> list[Row]:
    """unet.py: one row per pass ('forward', 'forward+backward')."""
    mem = re.search(r"peak device memory: jax (\S+) bytes(?:, torch (\S+) bytes)?; "
                    rf"peak host RSS \(whole process\) {_NUM} GiB", text)
    memory = None
    if mem:
        jax_dev, torch_dev = _gib(mem.group(1)), _gib(mem.group(2))
        if jax_dev or torch_dev:
            memory = f"device: JAX {jax_dev or 'n/a'}" + (f", PyTorch {torch_dev}" if torch_dev else "")
        else:
            memory = f"host RSS {float(mem.group(3)):.2f} GiB (process)"
    rows = []
    for m in re.finditer(rf"^(forward(?:\+backward)?)\s+jax\s+{_NUM} img/s, {_NUM} CPU-s/img \({_NUM} TFLOP/s"
                         rf"[^)]*\)(?:\s+torch\s+{_NUM} img/s)?", text, re.M):
        rows.append({"benchmark": f"UNet {m.group(1)}", "config": "", "jax": float(m.group(2)),
                     "torch": float(m.group(5)) if m.group(5) else None, "tflops": float(m.group(4)),
                     "memory": memory})
    return rows


def parse_train_step(text: str) -> list[Row]:
    """train_step.py: one row; PyTorch = its reference step (tests/reference/torch_iedp.py) when it ran."""
    ips = _float(rf"^train step: {_NUM} images/s", text)
    if ips is None:
        return []
    dev = _float(rf"^peak device memory: {_NUM} GiB", text)
    torch_dev = _float(rf"^torch train step: .*peak device memory {_NUM} GiB", text)
    host = _float(rf"peak host RSS {_NUM} GiB", text)
    if dev is not None and torch_dev is not None:
        memory = f"device: JAX {dev:.2f} GiB, PyTorch {torch_dev:.2f} GiB"
    else:
        memory = (f"device {dev:.2f} GiB" if dev is not None
                  else f"host RSS {host:.2f} GiB (process)" if host is not None else None)
    return [{"benchmark": "IEDP train step", "config": "", "jax": ips,
             "torch": _float(rf"^torch train step: {_NUM} images/s", text),
             "tflops": _float(rf"^train step: .*?images/s \(.*?\), {_NUM} TFLOP/s", text), "memory": memory}]


def last_json(text: str) -> dict[str, Any] | None:
    """The last line of ``text`` that is a JSON object."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def parse_input_pipeline(text: str) -> list[Row]:
    """input_pipeline.py's JSON line: one row per (format, threads); JAX = grain, PyTorch = the
    DataLoader with as many worker processes (folders only)."""
    res = last_json(text)
    if not res or res.get("benchmark") != "input_pipeline":
        return []
    rates = res.get("examples_per_s", {})
    memory = f"host RSS {res['peak_rss_gib']:.2f} GiB (process)" if res.get("peak_rss_gib") else None
    rows = []
    for fmt in ("folders", "tfds"):
        for threads, ips in rates.get(fmt, {}).items():
            note = f", prepared in {res['prepare_s']:.1f} s" if fmt == "tfds" and res.get("prepare_s") else ""
            rows.append({"benchmark": f"input pipeline ({fmt})", "config": f"{threads} threads{note}",
                         "jax": ips, "torch": rates.get("torch", {}).get(threads) if fmt == "folders" else None,
                         "tflops": None, "memory": memory})
    return rows


def parse_diffseg(text: str) -> list[Row]:
    """diffseg.py: the vmapped and per-class JAX paths, both against the per-class PyTorch
    reference (when it ran). The script reports no memory."""
    vm = _float(rf"jax vmapped \(one UNet call\):\s+{_NUM} images/s", text)
    loop = _float(rf"jax per-class loop:\s+{_NUM} images/s", text)
    ref = _float(rf"torch per-class reference:\s+{_NUM} images/s", text)
    rows = []
    for name, ips in (("vmapped (one UNet call)", vm), ("per-class loop", loop)):
        if ips is not None:
            rows.append({"benchmark": f"DiffSegmenter {name}", "config": "", "jax": ips, "torch": ref,
                         "tflops": None, "memory": None})
    return rows


# --------------------------------------------------------------------------------------------
# The benchmarks of each preset
# --------------------------------------------------------------------------------------------

@dataclass
class Spec:
    """A benchmark: its commands (the last one measures; earlier ones prepare), a config label
    prefixed to every row's config, its parser, and a reason to skip it (None to run)."""

    name: str
    commands: list[list[str]]
    config: str
    parse: Callable[[str], list[Row]]
    skip: str | None = None
    notes: list[str] = field(default_factory=list)


def thread_ladder(cores: int) -> list[int]:
    """1, 2, 4, ... up to ``cores`` (``cores`` itself included)."""
    out, t = [], 1
    while t < cores:
        out.append(t)
        t *= 2
    return out + [max(1, cores)]


def build_specs(preset: str, args: argparse.Namespace) -> list[Spec]:
    py = sys.executable

    def bench(script: str) -> list[str]:
        return [py, "-m", f"benchmarks.{script}"]

    cores = os.cpu_count() or 1
    if preset == "cpu":
        threads = [str(t) for t in (1, 2)]
        return [
            Spec("unet", [[*bench("unet"), "--config", "tiny", "--batch", "4", "--size", "256",
                           "--iters", "5"]], "tiny UNet, batch 4, 256 px, float32", parse_unet),
            Spec("train_step", [[*bench("train_step"), "--config", "iedp_jax/configs/smoke_seg.py",
                                 "--config.data.crop_size=(64,64)", "--config.train.batch_size=16",
                                 "--steps", "10"]],
                 "iedp_jax/configs/smoke_seg.py: tiny backbone, crop 64, batch 16, float32", parse_train_step,
                 notes=["train_step's PyTorch column is tests/reference/torch_iedp.py in the same process: "
                        "diffusers UNet + transformers CLIP + the ported heads, eager, float32, "
                        "`F.scaled_dot_product_attention` except at the captured cross-attention layers "
                        "(explicit softmax), torch.optim.AdamW with the same parameter groups."]),
            Spec("input_pipeline", [[*bench("input_pipeline"), "--images", "64", "--crop", "512",
                                     "--batch", "16", "--steps", "8", "--threads", *threads]],
                 "ADE20K train transforms, crop 512, batch 16", parse_input_pipeline),
            Spec("diffseg", [[*bench("diffseg"), "--classes", "20", "--batch", "2",
                              "--image-size", "64", "--iters", "3"]],
                 "tiny backbone, 2 images x 20 classes, 64 px, float32", parse_diffseg,
                 notes=["diffseg.py reports no memory figure."]),
        ]
    sd15, clip = args.sd15 or SD15_PLACEHOLDER, args.clip_vision or CLIP_PLACEHOLDER
    ade = args.ade_dir or str(Path(tempfile.gettempdir()) / "iedp_synthetic_ade")
    threads = [str(t) for t in thread_ladder(cores)]
    write_ade = [*bench("input_pipeline"), "--images", "64", "--dir", ade, "--write-only"]
    b = str(args.train_batch)
    return [
        Spec("unet", [[*bench("unet"), "--config", "sd15", "--batch", "8", "--size", "512",
                       "--dtype", "bfloat16", "--iters", "10"]], "SD 1.5 UNet, batch 8, 512 px, bfloat16",
             parse_unet),
        Spec("train_step",
             [write_ade,
              [*bench("train_step"), "--config", "iedp_jax/configs/ade.py",
               f"--config.model.pretrained={sd15}", f"--config.model.clip_vision={clip}",
               "--config.model.dtype=bfloat16", f"--config.train.batch_size={b}",
               "--config.data.format=folders", f"--config.data.data_dir={ade}", "--steps", "10"]],
             f"iedp_jax/configs/ade.py: SD 1.5 + CLIP ViT, crop 512, batch {b}, bfloat16", parse_train_step,
             skip=None if args.sd15 and args.clip_vision else "needs --sd15 and --clip-vision",
             notes=["train_step's PyTorch column is tests/reference/torch_iedp.py on the same GPU in the same "
                    "process: diffusers UNet + transformers CLIP + the ported heads, eager (no torch.compile), "
                    "torch.autocast bfloat16 over float32 trained parameters with the frozen towers stored in "
                    "bfloat16 (the JAX model.dtype=bfloat16 contract), `F.scaled_dot_product_attention` "
                    "(flash / memory-efficient kernels in bf16 on CUDA) except at the captured "
                    "cross-attention layers (explicit float32 softmax), fused CUDA AdamW with the same "
                    "parameter groups."]),
        Spec("input_pipeline", [[*bench("input_pipeline"), "--images", "64", "--dir", ade,
                                 "--crop", "512", "--batch", "16", "--steps", "8", "--threads", *threads]],
             "ADE20K train transforms, crop 512, batch 16", parse_input_pipeline),
        Spec("diffseg", [[*bench("diffseg"), "--pretrained", sd15, "--classes", "20", "--batch", "1",
                          "--image-size", "512", "--dtype", "bfloat16", "--iters", "3", "--no-torch"]],
             "SD 1.5, 1 image x 20 classes, 512 px, bfloat16", parse_diffseg,
             skip=None if args.sd15 else "needs --sd15",
             notes=["diffseg.py reports no memory figure; its PyTorch reference runs in float32 on the CPU "
                    "only, so it is not run here."]),
    ]


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

def run_command(cmd: Sequence[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Runs ``cmd`` in the repository root, echoing its output (stdout + stderr) as it comes;
    returns the exit status (-9 after a timeout) and the output."""
    print(f"$ {shlex.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"  {line}", end="", flush=True)
            lines.append(line)
        rc = proc.wait()
    finally:
        timer.cancel()
    return rc, "".join(lines)


def device_name(env: dict[str, str]) -> str:
    """``device_kind xN`` of JAX's default backend, or ``CPU, N cores``."""
    code = ("import jax, json; d = jax.devices(); "
            "print(json.dumps([d[0].platform, d[0].device_kind, len(d)]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    try:
        platform, kind, count = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return f"unknown ({os.cpu_count()} CPU cores)"
    return f"CPU, {os.cpu_count()} cores" if platform == "cpu" else f"{kind} x{count}"


def _fmt(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def format_table(rows: Sequence[Row], date: str, device: str) -> str:
    """The Markdown table of ``COLUMNS``; ratio = JAX / PyTorch where both were measured."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for r in rows:
        ratio = f"{r['jax'] / r['torch']:.2f}x" if r.get("jax") and r.get("torch") else ""
        tflops = _fmt(r.get("tflops"), 3)
        cells = [date, device, r["benchmark"], r.get("config", ""), _fmt(r.get("jax")), _fmt(r.get("torch")),
                 ratio, tflops, r.get("memory") or ""]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def render(rows: Sequence[Row], date: str, device: str, commands: Sequence[str], notes: Sequence[str]) -> str:
    """Table, explanation, commands and notes as one Markdown block."""
    parts = [format_table(rows, date, device), "",
             "JAX img/s of the input pipeline is grain's training examples/s; its PyTorch column is a "
             "`torch.utils.data.DataLoader` with as many worker processes running the same per-example "
             "function. TFLOP/s come from XLA's cost analysis. Generated by `python -m benchmarks.run_all`.",
             "", "Commands:", ""]
    parts += [f"- `{c}`" for c in commands]
    if notes:
        parts += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts)


def replace_section(text: str, block: str) -> str:
    """``text`` with the part between the performance markers replaced by ``block``; the markers
    go under a "## Performance" heading (added at the end when missing) if absent."""
    if START not in text or END not in text:
        m = re.search(r"^## Performance[ \t]*\n", text, re.M)
        if m:
            text = text[:m.end()] + f"\n{START}\n{END}\n" + text[m.end():]
        else:
            text = text.rstrip("\n") + f"\n\n## Performance\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block.strip()}\n{END}{tail}"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    ap.add_argument("--out", default="benchmarks/performance.md")
    ap.add_argument("--readme", action="store_true", help="also update README.md's performance section")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    ap.add_argument("--sd15", default="", help="gpu preset: Stable Diffusion 1.5 folder (train_step, diffseg)")
    ap.add_argument("--clip-vision", default="", help="gpu preset: CLIP vision folder (train_step)")
    ap.add_argument("--ade-dir", default="", help="gpu preset: where the synthetic ADE20K folder goes")
    ap.add_argument("--train-batch", type=int, default=8, help="gpu preset: train-step batch size")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per command")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()] or list(BENCHMARKS)
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        ap.error(f"unknown benchmarks {unknown}: choose from {', '.join(BENCHMARKS)}")
    specs = [s for s in build_specs(args.preset, args) if s.name in only]

    if args.dry_run:
        for s in specs:
            print(f"# {s.name}" + (f"  (skipped: {s.skip})" if s.skip else ""))
            for cmd in s.commands:
                print(shlex.join(cmd))
        return

    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    date = datetime.date.today().isoformat()
    device = device_name(env)
    print(f"{date}  device: {device}  preset: {args.preset}", flush=True)
    rows: list[Row] = []
    commands: list[str] = []
    notes: list[str] = []
    for s in specs:
        notes += s.notes
        if s.skip:
            notes.append(f"{s.name} skipped: {s.skip}.")
            continue
        rc, out = 0, ""
        for cmd in s.commands:
            rc, out = run_command(cmd, env, args.timeout)
            commands.append(shlex.join(["python", *cmd[1:]]))
            if rc:
                break
        parsed = s.parse(out) if rc == 0 else []
        if rc or not parsed:
            tail = out.strip().splitlines()[-1] if out.strip() else ""
            why = f"exit status {rc}" if rc else "no numbers found in its output"
            notes.append(f"{s.name} failed ({why}): `{tail[:200]}`")
            continue
        for r in parsed:
            r["config"] = ", ".join(filter(None, [s.config, r.get("config", "")]))
        rows += parsed

    block = render(rows, date, device, commands, notes)
    out_path = REPO / args.out if not Path(args.out).is_absolute() else Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(f"# Performance ({args.preset} preset)\n\n{block}\n")
    print(f"\n{block}\n\nwrote {out_path}")
    if args.readme:
        readme = REPO / "README.md"
        readme.write_text(replace_section(readme.read_text(), block))
        print(f"updated {readme}")


if __name__ == "__main__":
    main()
