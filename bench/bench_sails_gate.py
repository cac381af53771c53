"""Choose the refusal gate's read-out on an out-of-distribution VALIDATION set, before any test number is read
(issue 11; `saelign.sails.gate`).

The gate's defaults were fixed before any gated number: the pipeline's hookpoint, last prompt token, a
threshold that flags 95 % of the val harmful prompts. The val split asks only the training registers, so it
cannot rank read-outs for requests in other forms. This bench reads each candidate on the out-of-distribution
validation set of `bench_sails_term.py --ood-val-per-kind` (behaviours left out of every split, asked in every
register the run does not train on; no test behaviour) with the base model alone: a gate's decision needs no
adapter. Candidates: the residual after each block of `--layers` (the probe ceiling's grid), read at the last
prompt token or averaged over the request's tokens (`--poolings`), each probe fitted once on the train split
with its strength chosen on val (as the pipeline's gate stage does) and its threshold set on val at each level
of `--levels`. (The mean pooling and the levels between 0.95 and 0.99 joined the grid after its first runs,
which read the OOD validation set only, showed most OOD harmful prompts scoring between the 0.95 and 0.99
thresholds.)

The rule, fixed before the run: the highest share of flagged harmful prompts minus flagged harmless prompts on
the OOD validation set; ties go to the pipeline's hookpoint, then to the last-token read-out, then to
the lower level. Writes
bench/results/sails_gate_<preset>_validation.json: every candidate's flag rates on val and on the OOD
validation set (overall and per register), the default's and the chosen candidate. Test numbers then come from
bench_sails_seeds.py --methods sails,sails+gate with the chosen --gate-hookpoint / --gate-val-safety.

  .venv/bin/python bench/bench_sails_gate.py --run runs/seeds-quick/seed0 --ood-val-per-kind 120
  .venv/bin/python bench/bench_sails_gate.py --run runs/seeds-full/seed0 --ood-val-from val

At the full preset every behaviour is in some split, so nothing is left out: `--ood-val-from val` asks the val
split's behaviours in the untrained registers instead (still no test behaviour; the threshold is set on the
same behaviours in the training registers).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench_probe_ceiling import DEFAULT_LAYERS
from bench_sails_overrefusal import uncapped_data_config
from bench_sails_term import ood_validation
from common import run_facts, write_result
from saelign.progress import setup_logging
from saelign.sails.data import REGISTERS, Example, reworded
from saelign.sails.gate import POOLINGS, GateConfig, fit_gate_on, open_rates, request_features
from saelign.sails.pipeline import stored_config
from saelign.sails.presets import resolve_config
from saelign.sails.probe import safety_threshold
from saelign.sails.rundir import RunDir
from saelign.sails.stages import STAGES


def ood_validation_set(run_dir: Path, run: RunDir, source: str, per_kind: int) -> list[Example]:
    """Behaviours no test prompt holds, asked in every register the run does not train on: those left out of
    every split (`bench_sails_term.ood_validation`), or the val split's."""
    if source == "left_out":
        return ood_validation(run_dir, per_kind)
    cfg = uncapped_data_config([run_dir])
    return reworded(run.data.val, cfg, [r for r in REGISTERS if r not in cfg.registers])


def stored_run(run_dir: Path, hint: str) -> RunDir | None:
    """The run folder under the config it was made with; None, after saying so and `hint`, if it has none."""
    stored = stored_config(run_dir)
    if stored is None:
        print(f"{run_dir}: no config.json; {hint}", file=sys.stderr)
        return None
    return RunDir(run_dir, resolve_config([stored]), STAGES)


def flag_rates(flags: np.ndarray, examples: list[Example]) -> dict[str, Any]:
    """The flagged share of each kind, overall and per register."""
    def of(register: str | None) -> dict[str, float | None]:
        picked = [(e, bool(f)) for e, f in zip(examples, flags, strict=True)
                  if register in (None, e.register)]
        return open_rates([e for e, _ in picked], [f for _, f in picked])

    return {**of(None), "registers": {r: of(r) for r in dict.fromkeys(e.register for e in examples)}}


def margin(rates: dict[str, Any]) -> float:
    return (rates["harmful"] or 0.0) - (rates["harmless"] or 0.0)


def print_read_outs(rows: list[dict[str, Any]]) -> None:
    """One line per read-out: flagged harmful/harmless shares on val and ood_val, and the margin there."""
    for r in rows:
        val, ood = r["val"], r["ood_val"]
        level = f" {r['val_safety']:.2f}" if "val_safety" in r else ""
        print(f"{r['pooling']:>4} {r['hookpoint']:>16}{level}  val {val['harmful']:.2f}/{val['harmless']:.2f}"
              f"  ood_val {ood['harmful']:.2f}/{ood['harmless']:.2f}  margin {margin(ood):+.3f}")


def candidates(x: dict[tuple[str, str], dict[str, np.ndarray]], splits: dict[str, list[Example]],
               levels: list[float], base: GateConfig) -> list[dict[str, Any]]:
    """Every (pooling, hookpoint) read-out, its probe fitted once on train (C on val), at every level (its
    threshold on val): the flag rates on val and ood_val."""
    rows = []
    for (pooling, hookpoint), features in x.items():
        cfg = GateConfig(**{**base.__dict__, "hookpoint": hookpoint, "pooling": pooling})
        gate = fit_gate_on(features["train"], splits["train"], features["val"], splits["val"], hookpoint, cfg)
        val_harmful = gate.probe.scores(features["val"])[[e.kind == "harmful" for e in splits["val"]]]
        for level in levels:
            gate.probe.threshold, gate.val_safety = safety_threshold(val_harmful, level), level
            rows.append({"hookpoint": hookpoint, "pooling": pooling, "val_safety": level, "c": gate.probe.c,
                         "val_auroc": round(gate.probe.val_auroc, 4),
                         **{name: flag_rates(gate.flags(features[name]), splits[name])
                            for name in ("val", "ood_val")}})
    return rows


def choose(rows: list[dict[str, Any]], pipeline_hookpoint: str) -> dict[str, Any]:
    """The rule: highest harmful - harmless flag share on ood_val; ties: the pipeline's hookpoint, then the
    last-token read-out, then the lower level."""
    return max(rows, key=lambda r: (round(margin(r["ood_val"]), 6), r["hookpoint"] == pipeline_hookpoint,
                                    r["pooling"] == "last", -r["val_safety"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run folder (its data and model are read)")
    parser.add_argument("--ood-val-per-kind", type=int, default=120)
    parser.add_argument("--ood-val-from", choices=("left_out", "val"), default="left_out",
                        help="the OOD validation set's behaviours: left out of every split (quick), or the "
                             "val split's (full, where none is left out); asked in the untrained registers")
    parser.add_argument("--layers", default=DEFAULT_LAYERS, help="comma-separated block indices")
    parser.add_argument("--levels", default="0.9,0.95,0.96,0.97,0.98,0.99,1.0",
                        help="val harmful shares the threshold flags")
    parser.add_argument("--poolings", default="last,mean",
                        help=f"comma-separated prompt-token poolings of the read-out ({', '.join(POOLINGS)})")
    args = parser.parse_args()
    setup_logging()
    began, load_before = time.perf_counter(), os.getloadavg()
    run_dir = Path(args.run)
    run = stored_run(run_dir, "give a run folder the pipeline wrote")
    if run is None:
        return 2
    cfg = run.cfg
    splits = {"train": run.data.train, "val": run.data.val,
              "ood_val": ood_validation_set(run_dir, run, args.ood_val_from, args.ood_val_per_kind)}
    if not splits["ood_val"]:
        print(f"{run_dir}: the {args.ood_val_from} out-of-distribution validation set is empty (at the full "
              "preset every behaviour is in a split); use --ood-val-from val", file=sys.stderr)
        return 2
    hookpoints = [f"model.layers.{i}" for i in args.layers.split(",")]
    poolings = args.poolings.split(",")
    if unknown := sorted(set(poolings) - set(POOLINGS)):
        print(f"--poolings: {unknown} not among {', '.join(POOLINGS)}", file=sys.stderr)
        return 2
    prompts = [e.prompt for s in splits.values() for e in s]
    ends = np.cumsum([len(s) for s in splits.values()])[:-1]
    x = {}
    for pooling in poolings:
        every = request_features(run.model, run.tokenizer, prompts, hookpoints, cfg.gate.batch_size,
                                 cfg.gate.max_length, pooling)
        x.update({(pooling, hp): dict(zip(splits, np.split(every[hp], ends), strict=True))
                  for hp in hookpoints})
    levels = [float(v) for v in args.levels.split(",")]
    rows = candidates(x, splits, levels, cfg.gate)
    defaults = GateConfig()
    default = next((r for r in rows if r["hookpoint"] == cfg.hookpoint and r["pooling"] == defaults.pooling
                    and r["val_safety"] == defaults.val_safety), None)
    chosen = choose(rows, cfg.hookpoint)
    write_result(f"sails_gate_{cfg.preset}_validation", {
        "run": str(run_dir.resolve()), "preset": cfg.preset, "ood_val_from": args.ood_val_from,
        "ood_val_per_kind": args.ood_val_per_kind if args.ood_val_from == "left_out" else None,
        "n": {name: {k: sum(e.kind == k for e in s) for k in ("harmful", "harmless", "borderline")}
              for name, s in splits.items()},
        "ood_val_registers": sorted({e.register or "" for e in splits["ood_val"]}),
        "selection_rule": "The highest flagged harmful share minus flagged harmless share on the out-of-"
                          "distribution validation set; ties: the pipeline's hookpoint, then the last-token "
                          "read-out, then the lower level.",
        "default": default and {k: default[k] for k in ("hookpoint", "pooling", "val_safety")},
        "chosen": {k: chosen[k] for k in ("hookpoint", "pooling", "val_safety")},
        "candidates": rows, **run_facts(began, load_before)})
    print_read_outs(rows)
    print(f"chosen: {chosen['pooling']} {chosen['hookpoint']} at {chosen['val_safety']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
