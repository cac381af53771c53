"""SAILS pipeline benchmark: run `saelign sails run --preset P` as a user would and record time and metrics.

Writes bench/results/sails_<preset>.json: total wall time, each stage's seconds (from the run's run.json), the
machine's load average before and after (the 2-core CPU is often shared: times scale with it), and per model
(base and every method) the test safety rate, degenerate share, over-refusal (plain and borderline), perplexity,
factual accuracy, share of parameters trained and steps to 90 % / 95 % val safety.

  .venv/bin/python bench/bench_sails.py --preset quick --cold       # cold cache: model conversion + data fetch included
  .venv/bin/python bench/bench_sails.py --preset compare -- --sft-steps 60   # extra flags go to `saelign sails run`
  .venv/bin/python bench/bench_sails.py --record --out runs/mix --tag quick_mix   # a run made stage by stage
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import write_result

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("safety_rate", "harmful_degenerate", "over_refusal", "borderline_over_refusal", "perplexity", "fact_accuracy", "n")


def summarise(run_dir: Path) -> dict[str, Any]:
    config = json.loads((run_dir / "config.json").read_text())
    stages = json.loads((run_dir / "run.json").read_text())["stages"]
    models: dict[str, Any] = {}
    for name in ["base", *config["methods"]]:
        path = run_dir / "eval" / f"{name}.json"
        if path.is_file():
            metrics = json.loads(path.read_text())
            models[name] = {key: metrics.get(key) for key in METRICS}
            models[name]["splits"] = {  # in and out of distribution, apart (issue 11)
                part: {k: values.get(k) for k in ("safety_rate", "over_refusal", "n")}
                for part, values in metrics.get("splits", {}).items() if isinstance(values, dict) and values}
        result = run_dir / "methods" / name / "result.json"
        if result.is_file():
            data = json.loads(result.read_text())
            models.setdefault(name, {}).update({
                "trainable_share": data["trainable"]["share"], "steps": data["steps"], "steps_to": data["steps_to"],
                "rank": data["rank"],
                "train_seconds": data["train_seconds"], "val_curve": [
                    {k: e[k] for k in ("step", "safety_rate", "over_refusal")} for e in data["history"]["eval"]]})
    selection = json.loads((run_dir / "select" / "selection.json").read_text())
    base_eval = json.loads((run_dir / "eval" / "base.json").read_text())
    return {
        "stage_seconds": {unit: info.get("seconds") for unit, info in stages.items()},
        "data_counts": stages.get("data", {}).get("counts"),
        "sae_final": stages.get("sae", {}).get("final"),
        "subspace": {"rank": selection["rank"], "explained": selection["explained"]},
        "judge_agreement": {k: {m: v[m] for m in ("accuracy", "kappa")} for k, v in
                            base_eval.get("judge_agreement", {}).items() if isinstance(v, dict)},
        "models": models,
        "config": config,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=["quick", "compare", "full"])
    parser.add_argument("--out", help="run directory (default: a fresh temporary folder)")
    parser.add_argument("--cold", action="store_true", help="use an empty SAELIGN_CACHE (model conversion and data "
                                                            "fetching are timed too)")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the run (0 = torch's default); on a "
                                                               "busy shared CPU 1 thread is much faster than 2")
    parser.add_argument("--record", action="store_true", help="run nothing: record the finished run in --out as "
                                                              "it is (one made stage by stage, say)")
    parser.add_argument("--tag", help="result name sails_<tag> (default: the preset)")
    parser.add_argument("extra", nargs="*", help="extra flags for `saelign sails run` (after --)")
    args = parser.parse_args()
    name = f"sails_{args.tag or args.preset}"
    if args.record:
        if not args.out or not (Path(args.out) / "eval" / "base.json").is_file():
            parser.error("--record needs --out, a run directory whose eval stage has finished")
        write_result(name, {"command": None, "recorded": True, "resumed": True, "wall_seconds": None,
                            "load_average_before": os.getloadavg(), "run_dir": args.out,
                            **summarise(Path(args.out))})
        return 0
    run_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix=f"sails_{args.preset}_")) / "run"
    env = {**os.environ, "SAELIGN_QUIET": "1"}
    if args.cold:
        env["SAELIGN_CACHE"] = tempfile.mkdtemp(prefix="saelign_cold_cache_")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    command = [str(ROOT / ".venv" / "bin" / "saelign"), "sails", "run", "--preset", args.preset, "--out", str(run_dir),
               *args.extra]
    resumed = (run_dir / "run.json").is_file()  # a rerun over a partial run: wall time covers only what was left
    load_before = os.getloadavg()
    began = time.perf_counter()
    try:
        completed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    finally:
        if args.cold:  # the converted model alone is ~0.5 GB
            shutil.rmtree(env["SAELIGN_CACHE"], ignore_errors=True)
    seconds = time.perf_counter() - began
    if completed.returncode != 0:
        print(completed.stderr[-4000:], file=sys.stderr)
        return completed.returncode
    print(completed.stdout)
    write_result(name, {
        "command": command, "cold_cache": args.cold, "resumed": resumed, "omp_num_threads": env.get("OMP_NUM_THREADS"),
        "wall_seconds": round(seconds, 1), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "run_dir": str(run_dir), **summarise(run_dir)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
