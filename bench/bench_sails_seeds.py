"""SAILS and its baselines under several seeds, with 95 % intervals (issue 11, item 4).

The upstream stages (data, SAE, labels, feature selection, aligned slots, targets, the base model's
evaluation) run once, for the first seed, and are shared by the others; each seed then trains and evaluates
every method, one at a time: each is evaluated before the next one trains, so a run cut short keeps the
finished methods' results, and `--summarise-only` later summarises them (`saelign.sails.seeds`). Every method
trains for the preset's step budget and stops early at the first validation check with safety >= 95 % and
over-refusal <= 10 % (the full preset's rule; `--no-stop-rule`: the whole budget). Writes
bench/results/sails_seeds_<preset>[_<tag>].json: per method the mean and 95 % interval (bootstrap over prompts
and seeds) of in- and out-of-distribution safety and over-refusal, the perplexity change against the base
model and the steps to 90 % val safety, and SAILS minus each other method, paired by seed and prompt.

  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_sails_seeds.py --preset quick --out runs/seeds-quick
  .venv/bin/python bench/bench_sails_seeds.py --preset full --out runs/seeds-full \\
      --methods sails,lora,act_pca,random_subspace,pissa,full,sails_aligned
  .venv/bin/python bench/bench_sails_seeds.py --preset quick --out runs/seeds-quick --summarise-only

Each finished seed is also kept as a small record file (`--records-dir`, default
bench/results/sails_seeds_<preset>[_<tag>]_records/seed<s>.json). A seed run in another session joins the
summary with `--with-records FILE ...`, where its upstream files, prompts and base-model answers match this
run's (rebuilt under the same options and thread count):

  .venv/bin/python bench/bench_sails_seeds.py --preset full --seeds 2 --out runs/seeds-full \\
      --methods sails,lora,act_pca,random_subspace,pissa,full,sails_aligned --tag v2 \\
      --with-records bench/results/sails_seeds_full_v2_records/seed0.json \\
      bench/results/sails_seeds_full_v2_records/seed1.json

A method named with "+gate" (`--methods sails,sails+gate`) is that method behind the refusal gate
(`saelign.sails.gate`, `--gate-enabled`): the adapter answers only requests the gate's probe flags.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

from common import write_result
from saelign.configs import load_config_file
from saelign.io import read_json
from saelign.progress import setup_logging
from saelign.sails.gate import SUFFIX as GATED
from saelign.sails.presets import preset_layer, resolve_config
from saelign.sails.seed_record import merge_seeds, read_seed_record, write_seed_record
from saelign.sails.seeds import run_seeds, seed_dir, summarise_seeds

STOP_RULE = {"stop_at_safety": 0.95, "stop_max_over_refusal": 0.1}  # the full preset's, read on val only
DEFAULT_METHODS = "sails,lora,act_pca,sails_aligned"


def gate_options(dirs: list[Path]) -> dict | None:
    """The gate the seeds' METHOD+gate rows were read behind (the first seed's; the gate unit is shared)."""
    path = dirs[0] / "gate" / "summary.json" if dirs else None
    if path is None or not path.is_file():
        return None
    summary = read_json(path, "gate summary")
    return {"pooling": summary.get("pooling", "last"),  # gates fitted before pooling was an option
            "harmless_budget": summary.get("harmless_budget", 0.0),  # gates fitted before the budget rule
            **{k: summary[k] for k in ("hookpoint", "val_safety", "threshold", "c", "val_auroc")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=["quick", "compare", "full"])
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated; sails first")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (the first run is shared)")
    parser.add_argument("--out", required=True, help="folder of the per-seed run directories (resumable)")
    parser.add_argument("--config", help="a YAML/JSON config layer over the preset (e.g. other data caps); "
                        "the stop rule and --methods still apply on top")
    parser.add_argument("--no-stop-rule", action="store_true", help="train every method for the whole budget")
    parser.add_argument("--summarise-only", action="store_true",
                        help="summarise the finished seeds, train nothing")
    parser.add_argument("--records-dir", help="where each seed's record file goes (default: "
                        "bench/results/sails_seeds_<preset>[_<tag>]_records)")
    parser.add_argument("--with-records", nargs="*", default=[], metavar="FILE",
                        help="seed record files of seeds run earlier over the same upstream")
    parser.add_argument("--allow-upstream-drift", action="store_true",
                        help="combine --with-records seeds whose SAE, subspace or targets files differ from "
                        "this run's (an upstream rebuilt on another CPU); the result lists the files")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--tag", default="", help="suffix of the result file (sails_seeds_<preset>_<tag>"
                        ".json), so a rerun under new defaults keeps the old file")
    args = parser.parse_args()
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    eval_every = preset_layer(args.preset)["sft"]["eval_every"]
    sft = {} if args.no_stop_rule else {**STOP_RULE, "eval_every": eval_every}
    layer = load_config_file(args.config) if args.config else {}
    trained = list(dict.fromkeys(m.removesuffix(GATED) for m in methods))  # "sails+gate": sails, gated
    gate = {"gate": {"enabled": True}} if any(m.endswith(GATED) for m in methods) else {}
    cfg = resolve_config([preset_layer(args.preset), layer, {"methods": trained, "sft": sft, **gate}])
    setup_logging()
    began, load_before = time.perf_counter(), os.getloadavg()
    if not args.summarise_only:
        run_seeds(cfg, args.out, seeds)

    def done(method: str) -> list[Path]:  # the seeds' runs that evaluated `method`
        return [d for d in map(functools.partial(seed_dir, args.out), seeds)
                if (d / "eval" / f"{method}.json").is_file()]

    name = f"sails_seeds_{args.preset}" + (f"_{args.tag}" if args.tag else "")
    records_dir = Path(args.records_dir or Path(__file__).parent / "results" / f"{name}_records")
    dirs = [d for d in done("base") if d in done(methods[0])]
    records = [read_seed_record(p) for p in args.with_records]
    records += [write_seed_record(d, methods, records_dir)[0] for d in dirs]
    records = merge_seeds(records)  # a seed whose methods were run in two sessions: one record

    def has(method: str) -> list[dict]:
        return [r for r in records if method in r["models"]]

    every = [m for m in methods if len(has(m)) == len(records)]
    if not records or methods[0] not in every:
        print(f"no seed has evaluated {methods[0]} yet, or not every seed has", file=sys.stderr)
        return 1
    summary = summarise_seeds(records, every, compare_to=methods[0], n_boot=args.n_boot,
                              allow_upstream_drift=args.allow_upstream_drift)
    # A method some seeds lack (a run cut short) is summarised over the seeds it has, beside the first method.
    summary["fewer_seeds"] = {m: summarise_seeds(has(m), [methods[0], m], compare_to=methods[0],
                                                 n_boot=args.n_boot,
                                                 allow_upstream_drift=args.allow_upstream_drift)
                              for m in methods if m not in every and has(m)}
    write_result(name, {
        "preset": args.preset, "methods": every, "stop_rule": None if args.no_stop_rule else STOP_RULE,
        "steps_budget": cfg.sft.steps, "eval_every": cfg.sft.eval_every, "lr": cfg.sft.lr,
        "harmless_weight": cfg.harmless_weight, "config_layer": layer,
        "shared_across_seeds": "data, SAE, labels, feature selection and subspace, aligned slots, targets "
                               "and the base model's evaluation come from the first seed's run; a seed sets "
                               "the data order (sft.seed) and PEFT's random init / a random subspace "
                               "(lora.seed)",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "wall_seconds": round(time.perf_counter() - began, 1),
        "out": str(Path(args.out).resolve()), "records": [r["source"] for r in records],
        "records_dir": str(records_dir), "gate": gate_options(dirs) if gate else None, **summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
