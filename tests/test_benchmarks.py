"""The benchmark drivers: benchmarks.input_pipeline on a tiny synthetic ADE20K, benchmarks.run_all's
commands, parsers, table and README section (nothing heavy is run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import run_all

REPO = Path(__file__).resolve().parents[1]


def test_input_pipeline_tiny(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.input_pipeline", "--images", "6", "--long-side", "96", "192",
           "--crop", "32", "--batch", "2", "--steps", "2", "--threads", "1", "--breakdown", "2", "--no-torch",
           "--dir", str(tmp_path / "ade")]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["benchmark"] == "input_pipeline" and res["device"]["cpu_count"] >= 1
    for fmt in ("folders", "tfds"):
        assert res["examples_per_s"][fmt]["1"] > 0, fmt
    assert "torch" not in res["examples_per_s"]
    assert res["prepare_s"] > 0 and res["per_core_examples_per_s"] > 0
    bd = res["breakdown_ms"]
    assert bd["total"] > 0 and abs(bd["decode"] + bd["transforms"] - bd["total"]) < 0.01
    images = sorted((tmp_path / "ade" / "ADEChallengeData2016" / "images" / "training").glob("*.jpg"))
    assert len(images) == 6
    # its rows for run_all's table
    rows = run_all.parse_input_pipeline(out.stdout)
    assert [r["benchmark"] for r in rows] == ["input pipeline (folders)", "input pipeline (tfds)"]
    assert all(r["jax"] > 0 and r["torch"] is None for r in rows)


def _dry_run(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--dry-run", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_run_all_dry_run_lists_the_four_benchmarks():
    cpu = _dry_run("--preset", "cpu")
    for name in run_all.BENCHMARKS:
        assert f"# {name}" in cpu
    for script in ("-m benchmarks.unet --config tiny --batch 4 --size 256",
                   "-m benchmarks.train_step --config iedp_jax/configs/smoke_seg.py", "-m benchmarks.input_pipeline",
                   "-m benchmarks.diffseg --classes 20 --batch 2 --image-size 64"):
        assert script in cpu, script
    gpu = _dry_run("--preset", "gpu", "--sd15", "/m/sd15", "--clip-vision", "/m/clip")
    assert "-m benchmarks.unet --config sd15 --batch 8 --size 512 --dtype bfloat16" in gpu
    assert "--config.model.pretrained=/m/sd15" in gpu and "--config.model.clip_vision=/m/clip" in gpu
    assert "-m benchmarks.diffseg --pretrained /m/sd15 --classes 20" in gpu and "skipped" not in gpu
    assert "-m benchmarks.train_step --config iedp_jax/configs/ade.py" in gpu
    assert "--no-torch" not in gpu.split("# input_pipeline")[0]
    only = _dry_run("--preset", "gpu", "--only", "unet,diffseg")
    assert "# unet" in only and "# diffseg  (skipped: needs --sd15)" in only and "# train_step" not in only


CANNED = [
    {"benchmark": "UNet forward", "config": "tiny UNet, batch 4", "jax": 10.91, "torch": 26.5, "tflops": 0.044,
     "memory": "host RSS 2.14 GiB (process)"},
    {"benchmark": "IEDP train step", "config": "smoke", "jax": 71.49, "torch": None, "tflops": 0.029,
     "memory": "device 20.50 GiB"},
    {"benchmark": "DiffSegmenter vmapped (one UNet call)", "config": "tiny", "jax": 25.62, "torch": 3.54,
     "tflops": None, "memory": None},
]


def test_table_columns_and_cells():
    table = run_all.format_table(CANNED, "2026-11-23", "CPU, 2 cores").splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["date", "device", "benchmark", "config", "JAX img/s", "PyTorch img/s", "ratio",
                      "TFLOP/s", "peak memory"]
    assert len(table) == 2 + len(CANNED)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert cells[0] == ["2026-11-23", "CPU, 2 cores", "UNet forward", "tiny UNet, batch 4", "10.91", "26.50",
                        "0.41x", "0.044", "host RSS 2.14 GiB (process)"]
    assert cells[1][5:8] == ["", "", "0.029"] and cells[1][8] == "device 20.50 GiB"
    assert cells[2][6] == "7.24x" and cells[2][7:] == ["", ""]


def test_parsers_read_the_scripts_text():
    unet = ("forward           jax 10.91 img/s, 0.183 CPU-s/img (0.044 TFLOP/s, load 1.0)   torch 26.5 img/s, "
            "0.0755 CPU-s/img (load 1.0)   jax/torch: wall 0.41x, CPU 0.41x\n"
            "forward+backward  jax 2.76 img/s, 0.725 CPU-s/img (0.033 TFLOP/s, load 1.0)   torch 8.08 img/s, "
            "0.248 CPU-s/img (load 1.0)   jax/torch: wall 0.34x, CPU 0.34x\n"
            "peak device memory: jax 2147483648 bytes, torch n/a bytes; peak host RSS (whole process) 2.14 GiB\n")
    rows = run_all.parse_unet(unet)
    assert [(r["jax"], r["torch"], r["tflops"]) for r in rows] == [(10.91, 26.5, 0.044), (2.76, 8.08, 0.033)]
    assert rows[0]["memory"] == "device: JAX 2.00 GiB"
    step = ("train step: 71.49 images/s (223.8 ms/step; first step 12.3 s), 0.029 TFLOP/s (XLA cost "
            "analysis: 6.6 GFLOP/step)\npeak device memory: n/a (CPU) ; peak host RSS 2.30 GiB\n")
    assert run_all.parse_train_step(step)[0] | {"benchmark": None} == {
        "benchmark": None, "config": "", "jax": 71.49, "torch": None, "tflops": 0.029,
        "memory": "host RSS 2.30 GiB (process)"}
    # with train_step.py's PyTorch reference (CPU: no device memory; GPU: both)
    cpu = ("train step: 71.49 images/s (223.8 ms/step; first step 12.3 s), 0.029 TFLOP/s (XLA cost "
           "analysis: 6.6 GFLOP/step)\n"
           "torch train step: 40.10 images/s (399.0 ms/step; first step 1.1 s; cpu, eager, SDPA)\n"
           "jax/torch: 1.78x\npeak device memory: n/a (CPU) ; peak host RSS 2.30 GiB\n")
    row = run_all.parse_train_step(cpu)[0]
    assert (row["jax"], row["torch"], row["tflops"], row["memory"]) == (
        71.49, 40.1, 0.029, "host RSS 2.30 GiB (process)")
    gpu = ("train step: 9.50 images/s (842.1 ms/step; first step 95.0 s), 120.500 TFLOP/s (XLA cost "
           "analysis: 101474.1 GFLOP/step)\n"
           "torch train step: 7.25 images/s (1103.4 ms/step; first step 3.0 s; cuda, eager, SDPA), "
           "peak device memory 31.20 GiB\njax/torch: 1.31x\n"
           "peak device memory: 28.75 GiB ; peak host RSS 9.10 GiB\n")
    row = run_all.parse_train_step(gpu)[0]
    assert (row["jax"], row["torch"], row["tflops"], row["memory"]) == (
        9.5, 7.25, 120.5, "device: JAX 28.75 GiB, PyTorch 31.20 GiB")
    assert run_all.format_table([row], "2026-11-24", "H100").splitlines()[2].split(" | ")[6] == "1.31x"
    seg = ("jax vmapped (one UNet call):    25.620 images/s\n"
           "jax per-class loop:              8.120 images/s   vmapped/loop 3.15x\n"
           "torch per-class reference:       3.540 images/s   vmapped/torch 7.24x   (max |x| 1.1e-05)\n")
    assert [(r["jax"], r["torch"]) for r in run_all.parse_diffseg(seg)] == [(25.62, 3.54), (8.12, 3.54)]
    assert run_all.parse_unet("Traceback ...") == [] and run_all.parse_input_pipeline("no json") == []


def test_readme_section_is_inserted_then_replaced():
    text = "# iedp-jax\n\nIntro.\n\n## Layout\n\nfiles\n"
    once = run_all.replace_section(text, "TABLE 1")
    assert once.startswith(text.rstrip("\n"))
    assert once.endswith(f"## Performance\n\n{run_all.START}\nTABLE 1\n{run_all.END}\n")
    twice = run_all.replace_section(once, "TABLE 2")
    assert twice == once.replace("TABLE 1", "TABLE 2")
    heading = "# x\n\n## Performance\n\nold prose\n\n## Layout\n"
    got = run_all.replace_section(heading, "T")
    assert got == f"# x\n\n## Performance\n\n{run_all.START}\nT\n{run_all.END}\n\nold prose\n\n## Layout\n"


def test_run_all_main_writes_the_table(tmp_path, monkeypatch):
    fake = ("print('forward           jax 10.0 img/s, 0.2 CPU-s/img (0.050 TFLOP/s, load 1.0)   torch 5.0 img/s, "
            "0.4 CPU-s/img (load 1.0)   jax/torch: wall 2.00x, CPU 2.00x'); "
            "print('peak device memory: jax n/a bytes, torch n/a bytes; peak host RSS (whole process) 1.00 GiB')")
    specs = [run_all.Spec("unet", [[sys.executable, "-c", fake]], "fake UNet", run_all.parse_unet),
             run_all.Spec("diffseg", [[sys.executable, "-c", "raise SystemExit(3)"]], "fails",
                          run_all.parse_diffseg),
             run_all.Spec("train_step", [], "skipped", run_all.parse_train_step, skip="needs --sd15")]
    monkeypatch.setattr(run_all, "build_specs", lambda preset, args: specs)
    monkeypatch.setattr(run_all, "device_name", lambda env: "CPU, 2 cores")
    out = tmp_path / "perf.md"
    run_all.main(["--out", str(out)])
    text = out.read_text()
    assert "| UNet forward | fake UNet | 10.00 | 5.00 | 2.00x | 0.050 | host RSS 1.00 GiB (process) |" in text
    assert "diffseg failed (exit status 3)" in text and "train_step skipped: needs --sd15" in text
