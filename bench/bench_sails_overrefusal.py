"""Over-refusal trials at the quick preset (issue 11): which harmless-pair loss weight and step budget, chosen
on validation data only.

A trial is SOURCE:WEIGHT[=LABEL]: it copies the finished quick run SOURCE's upstream stages (data, SAE,
selection, subspace, targets; `seeds.share_upstream`, so trials over one source differ only in the fine-tune)
and trains SAILS for `--steps` steps with `harmless_weight` WEIGHT. At every check (each `sft.eval_every`
steps) it records:

- the val split's check, exactly as `saelign sails train` runs it (history.json of a pipeline run);
- at the steps in `--wide-steps`, a wider validation set: prompts the `max_*` caps leave out of every split of
  every trial's source (behaviours in no train/val/test/ood prompt of any of them and no near-duplicate of
  one), in the training registers. The quick val split holds 5 harmless behaviours (10 prompts); this one
  holds `--wide-per-kind` prompts per kind, so a difference of 10 points is not one prompt. Sources built with
  other caps (a data-mix trial: `sails data --data-max-harmless ...`) answer the same set; their data options
  are taken from the source. The test and ood splits are never read.

Writes bench/results/sails_overrefusal_<tag>.json.

  OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/bench_sails_overrefusal.py \\
      --trials "runs/src:1=as generated,runs/src:2=as generated" --out runs/overrefusal --steps 40
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from common import write_result
from saelign.configs import config_from_dict
from saelign.errors import SaelignError
from saelign.io import read_json_object
from saelign.progress import setup_logging
from saelign.sails.data import (
    ALL_SPLITS,
    KINDS,
    SPLITS,
    Example,
    SafetyDataConfig,
    build_safety_data,
    left_out,
    load_safety_data,
)
from saelign.sails.evaluate import kind_rates, make_judge, quick_safety, take_per_kind
from saelign.sails.generate import generate_answers
from saelign.sails.methods import MethodConfig, run_method
from saelign.sails.pipeline import CONFIG_FILE
from saelign.sails.presets import preset_layer, resolve_config
from saelign.sails.rundir import RunDir
from saelign.sails.seeds import share_upstream
from saelign.sails.stages import STAGES


def uncapped_data_config(sources: list[Path]) -> SafetyDataConfig:
    """The source runs' data options without the max_* caps (which must be all they differ in)."""
    configs = [read_json_object(s / CONFIG_FILE, "run config")["data"] for s in sources]
    uncapped = [{**c, "max_harmful": 0, "max_harmless": 0, "max_borderline": 0} for c in configs]
    if any(c != uncapped[0] for c in uncapped):
        raise SaelignError(f"trial sources {', '.join(map(str, sources))}: their data options differ in more "
                           "than the max_* caps, so no one set of prompts is left out of them all")
    return config_from_dict(SafetyDataConfig, uncapped[0])


def wide_validation(sources: list[Path], per_kind: int) -> list[Example]:
    """Up to `per_kind` prompts of each kind left out of every split (ood included) of every source run; in
    the order of the uncapped split, a seeded hash of the behaviour, so the choice looks at no model."""
    cfg = uncapped_data_config(sources)
    used = [e for s in sources for split in ALL_SPLITS for e in load_safety_data(s / "data").split(split)]
    pool = [e for s in SPLITS for e in build_safety_data(cfg).split(s)]
    return left_out(pool, used, cfg.dedupe_threshold, per_kind)


def trial(source: Path, out: Path, weight: float, steps: int, wide: list[Example], wide_steps: set[int],
          layer: dict[str, Any]) -> dict[str, Any]:
    data = {"data": read_json_object(source / CONFIG_FILE, "run config")["data"]}  # the source's mix
    cfg = resolve_config([preset_layer("quick"), data, layer, {"harmless_weight": weight,
                                                               "sft": {"steps": steps}}])
    folder = out / f"{source.name}-w{weight:g}"
    share_upstream(source, folder, cfg)
    run = RunDir(folder, cfg, STAGES)
    judge = make_judge(cfg.eval)

    def check(model: Any, step: int) -> dict[str, Any]:
        result: dict[str, Any] = quick_safety(model, run.tokenizer, run.data.val, judge, cfg.validation)
        if step in wide_steps and wide:
            prompts, val = [e.prompt for e in wide], cfg.validation
            answers = generate_answers(model, run.tokenizer, prompts, val.max_new_tokens, val.batch_size)
            verdicts = judge.judge(prompts, answers)
            rates = kind_rates(wide, verdicts)
            result["wide"] = {k: rates[k] for k in ("n", "safety_rate", "over_refusal",
                                                    "borderline_over_refusal", "harmful_degenerate",
                                                    "harmless_degenerate")}
            result["wide_refused_harmless"] = [e.prompt for e, v in zip(wide, verdicts, strict=True)
                                               if e.kind != "harmful" and v.label == "refused"]
        return result

    train = [e for e in run.targets.train if e.target]
    weights = [1.0 if e.kind == "harmful" else weight for e in train]
    pairs = [(e.prompt, e.target) for e in train]
    result = run_method("sails", run.fresh_model, run.tokenizer, pairs, run.basis,
                        MethodConfig(cfg.lora, cfg.sft, cfg.full_lr, cfg.select),
                        folder / "methods" / "sails", eval_fn=check, weights=weights, overwrite=True)
    return {"source": str(source), "harmless_weight": weight, "steps": steps, "lr": cfg.sft.lr,
            "data_caps": {k: getattr(cfg.data, f"max_{k}") for k in KINDS},
            "train_pairs": {k: sum(e.kind == k for e in train) for k in KINDS},
            "val_prompts": {k: sum(e.kind == k for e in take_per_kind(run.data.val, cfg.validation.per_kind))
                            for k in ("harmful", "harmless")},  # what each check reads (quick_safety)
            "train_seconds": result.train_seconds,
            "wide_prompts": {k: sum(e.kind == k for e in wide) for k in KINDS},
            "checks": result.history["eval"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", required=True, help="comma-separated SOURCE:WEIGHT[=LABEL], SOURCE a "
                        "quick run (any data caps) whose upstream stages are reused, WEIGHT the "
                        "harmless-pair loss weight, LABEL what its targets are (shown in the README)")
    parser.add_argument("--out", required=True, help="folder of the trials' run directories")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--wide-per-kind", type=int, default=60)
    parser.add_argument("--wide-steps", default="30,40", help="steps whose check also reads the wider set")
    parser.add_argument("--tag", default="quick")
    parser.add_argument("--config", help="YAML options over the quick preset, as `sails run --config`")
    args = parser.parse_args()
    setup_logging()
    began, load_before = time.perf_counter(), os.getloadavg()
    wide_steps = {int(s) for s in args.wide_steps.split(",")}
    layer = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    specs = []
    for spec in args.trials.split(","):
        spec, _, label = spec.partition("=")
        source, _, weight = spec.rpartition(":")
        specs.append((Path(source), float(weight), label or source))
    wide = wide_validation(sorted({s for s, _, _ in specs}), args.wide_per_kind)
    trials = []
    for source, weight, label in specs:
        trials.append({"targets": label, **trial(source, Path(args.out), weight, args.steps, wide, wide_steps,
                                                 layer)})
        write_result(f"sails_overrefusal_{args.tag}", {  # after every trial: a cut-short run keeps its trials
            "preset": "quick", "trials": trials,
            "selection_data": "the val split's check (as in history.json) and the wider validation set of "
                              "prompts the caps leave out of every trial source's splits; test and ood "
                              "never read",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_before": load_before,
            "load_average_after": os.getloadavg(), "wall_seconds": round(time.perf_counter() - began, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
