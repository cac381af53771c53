"""Which adapter to put behind the refusal gate, chosen on the out-of-distribution VALIDATION set (issue 11).

Behind the gate the adapter answers only flagged requests, so its over-refusal costs little and its refusal
rate on what the gate flags is what is left to gain. This bench reads candidate adapters (one run folder each,
e.g. the consistency term's weights from `bench_sails_term.py`) behind one gate (a run's gate/ folder) on the
OOD validation set of `bench_sails_gate.py` (left-out behaviours in the untrained registers; no test
behaviour): the base model's and each adapter's greedy answers (validation decoding), judged, then composed by
the gate's decisions (`saelign.sails.gate.compose_evaluation`'s rule: the adapter's answer where the gate
opens, the base model's elsewhere).

The rule, fixed before the run: the highest gated safety minus gated over-refusal; ties go to the earlier
candidate. Writes bench/results/sails_gate_adapter_<preset>_validation.json.

  .venv/bin/python bench/bench_sails_gate_adapter.py --gate runs/gate/seed0/gate \\
      --runs runs/cterm/w0/seed0 runs/cterm/w3/seed0 runs/cterm/w10/seed0 runs/cterm/w30/seed0
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench_sails_gate import ood_validation_set
from bench_sails_term import register_rates as rates
from common import run_facts, write_result
from saelign.progress import setup_logging
from saelign.sails.adapters import merged_for_inference
from saelign.sails.data import Example
from saelign.sails.evaluate import make_judge
from saelign.sails.gate import base_flags, load_gate, open_rates
from saelign.sails.generate import generate_answers
from saelign.sails.judge import Verdict
from saelign.sails.pipeline import stored_config
from saelign.sails.presets import SailsConfig, resolve_config
from saelign.sails.rundir import RunDir
from saelign.sails.stages import STAGES


def verdicts_of(model: Any, run: RunDir, cfg: SailsConfig, examples: list[Example]) -> list[Verdict]:
    prompts = [e.prompt for e in examples]
    answers = generate_answers(model, run.tokenizer, prompts, cfg.validation.max_new_tokens,
                               cfg.validation.batch_size)
    return make_judge(cfg.eval).judge(prompts, answers)


def margin(r: dict[str, Any]) -> float:
    return (r["safety_rate"] or 0.0) - (r["over_refusal"] or 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gate", required=True, help="a gate folder (a run's gate/)")
    parser.add_argument("--runs", nargs="+", required=True,
                        help="run folders, each with a trained sails adapter")
    parser.add_argument("--ood-val-per-kind", type=int, default=120)
    parser.add_argument("--ood-val-from", choices=("left_out", "val"), default="left_out")
    args = parser.parse_args()
    setup_logging()
    began, load_before = time.perf_counter(), os.getloadavg()
    runs = [Path(r) for r in args.runs]
    stored = stored_config(runs[0])
    if stored is None:
        print(f"{runs[0]}: no config.json; give run folders the pipeline wrote", file=sys.stderr)
        return 2
    cfg = resolve_config([stored])
    first = RunDir(runs[0], cfg, STAGES)
    examples = ood_validation_set(runs[0], first, args.ood_val_from, args.ood_val_per_kind)
    gate = load_gate(args.gate)
    flags = base_flags(first.model, first.tokenizer, [e.prompt for e in examples], gate)
    base = verdicts_of(first.model, first, cfg, examples)
    result: dict[str, Any] = {"base": rates(examples, base), "candidates": {}}
    for run_dir in runs:
        run = RunDir(run_dir, resolve_config([stored_config(run_dir) or {}]), STAGES)
        adapted = verdicts_of(merged_for_inference(run.trained_model("sails")), run, run.cfg, examples)
        gated = [a if f else b for a, b, f in zip(adapted, base, flags, strict=True)]
        sft = {k: v for k, v in run.cfg.sft.__dict__.items() if k.startswith("consistency")}
        result["candidates"][str(run_dir)] = {"adapter": rates(examples, adapted),
                                              "gated": rates(examples, gated), "sft": sft}
    chosen = max(result["candidates"], key=lambda k: margin(result["candidates"][k]["gated"]))
    write_result(f"sails_gate_adapter_{cfg.preset}_validation", {
        "gate": str(Path(args.gate).resolve()), "gate_hookpoint": gate.hookpoint,
        "gate_level": gate.val_safety,
        "ood_val_from": args.ood_val_from, "n": {k: sum(e.kind == k for e in examples)
                                                 for k in ("harmful", "harmless", "borderline")},
        "flagged": open_rates(examples, [bool(f) for f in flags]),
        "selection_rule": "The highest gated safety minus gated over-refusal on the out-of-distribution "
                          "validation set; ties: the earlier candidate.",
        "chosen": chosen, **result, **run_facts(began, load_before)})
    for name, c in result["candidates"].items():
        a, g = c["adapter"], c["gated"]
        print(f"{name}: adapter {a['safety_rate']:.3f}/{a['over_refusal']:.3f}  gated "
              f"{g['safety_rate']:.3f}/{g['over_refusal']:.3f}  margin {margin(g):+.3f}")
    print(f"chosen: {chosen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
