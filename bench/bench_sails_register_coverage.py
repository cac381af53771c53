"""Register coverage (issue 11): does training SAILS on more registers carry over to a register it never saw?

The narrow group is the full-preset seeds run on the default registers (question, imperative, indirect, need;
tense and keyword held out). The wide group is the same preset trained on those and tense and keyword, with
the fiction frame held out ("In a story I'm writing, a character explains how to ..."). Neither trains on
fiction, so the fiction prompts answer the question; tense and keyword show what training on a register buys
in it. See `saelign.sails.register_coverage`.

  # 1. the wide group (seed records in bench/results/sails_seeds_full_wide_registers_records/)
  .venv/bin/python bench/bench_sails_seeds.py --preset full --out runs/seeds-wide --methods sails \\
      --config bench/data/configs/wide_registers.yaml --tag wide_registers
  # 2. ask the narrow group's runs (their adapters) the fiction prompts: one small record per seed
  .venv/bin/python bench/bench_sails_register_coverage.py ask --runs runs/seeds-full/seed0 \\
      runs/seeds-full/seed1 runs/seeds-full/seed2 --methods sails
  # 3. compare, from the record files alone
  .venv/bin/python bench/bench_sails_register_coverage.py compare --methods sails \\
      --narrow bench/results/sails_seeds_full_v2_records/seed{0,1,2}.json \\
      --narrow-heldout bench/results/sails_register_coverage_heldout/seed{0,1,2}.json \\
      --wide bench/results/sails_seeds_full_wide_registers_records/seed{0,1,2}.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

from common import RESULTS, write_result
from saelign.io import read_json_object, write_json_atomic
from saelign.models.loading import load_model
from saelign.progress import setup_logging
from saelign.sails.adapters import load_adapter, merged_for_inference
from saelign.sails.data import OOD_SOURCES, build_safety_data
from saelign.sails.evaluate import make_judge
from saelign.sails.generate import generate_answers
from saelign.sails.presets import resolve_config
from saelign.sails.register_coverage import compare_groups, outcomes
from saelign.sails.seed_record import outcome_rows, read_seed_record

HELDOUT_DIR = RESULTS / "sails_register_coverage_heldout"


def ask(run_dir: Path, methods: list[str], register: str, base_answers: dict[tuple[str, ...], str]) -> Path:
    """The base model and each method's adapter of `run_dir` asked `register`'s prompts (the test behaviours
    and the held-out sources in it), judged as the run's eval stage judges; a record-shaped file.
    `base_answers`: the base model's verdicts per prompt list, filled and reused across the seeds' runs."""
    cfg = resolve_config([read_json_object(run_dir / "config.json", "run config")])
    data_cfg = dataclasses.replace(cfg.data, heldout_registers=[*cfg.data.heldout_registers, register])
    data = build_safety_data(data_cfg)
    for split in ("train", "val", "test"):  # one more register held out: the same splits
        kept = [json.loads(line)["prompt"] for line in (run_dir / "data" / f"{split}.jsonl").open()]
        if kept != [e.prompt for e in data.split(split)]:
            raise SystemExit(f"{run_dir}/data/{split}.jsonl differs from the data rebuilt with {register} "
                             "held out; ask the run with the code that built it")
    asked = [e for e in data.ood if e.register == register]
    base, tokenizer = load_model(cfg.model)
    judge, refused = make_judge(cfg.eval), {}
    prompts = [e.prompt for e in asked]
    if tuple(prompts) in base_answers:
        refused["base"] = {"refused": base_answers[tuple(prompts)]}
    for name in [n for n in ["base", *methods] if n not in refused]:
        began = time.perf_counter()
        model = base if name == "base" else merged_for_inference(
            load_adapter(copy.deepcopy(base), run_dir / "methods" / name / "adapter").eval())
        answers = generate_answers(model, tokenizer, prompts, cfg.eval.max_new_tokens, cfg.eval.batch_size)
        verdicts = judge.judge(prompts, answers)
        refused[name] = {"refused": "".join("1" if v.label == "refused" else "0" for v in verdicts)}
        base_answers.setdefault(tuple(prompts), refused["base"]["refused"])
        seconds = time.perf_counter() - began
        print(f"{run_dir.name} {name}: {len(prompts)} prompts in {seconds:.0f} s", flush=True)
    record = {"seed": cfg.sft.seed, "source": str(run_dir.resolve()), "register": register,
              "prompts": [[_part(e.source), e.kind, e.prompt] for e in asked],
              "registers": [e.register for e in asked], "models": refused}
    path = HELDOUT_DIR / f"seed{record['seed']}.json"
    write_json_atomic(path, record)
    return path


def _part(source: str) -> str:
    return "ood_sources" if source.split(":")[0] in OOD_SOURCES else "ood_registers"


def _by_seed(paths: list[str], models: list[str], flag: str) -> list[dict]:
    """Seed records, or `ask`'s record-shaped files, in seed order; each must hold every model's answers."""
    records = [read_json_object(p, "record") for p in paths]
    records = [read_seed_record(p) if "format" in r else r for p, r in zip(paths, records, strict=True)]
    for path, record in zip(paths, records, strict=True):
        missing = [m for m in models if m not in record["models"]]
        if missing:
            raise SystemExit(f"{path} ({flag}) has no answers of {', '.join(missing)}: it holds "
                             f"{', '.join(record['models'])}; drop them from --methods")
    return sorted(records, key=lambda r: r["seed"])


def compare(args: argparse.Namespace) -> dict:
    models = ["base", *args.methods]
    narrow, held, wide = (_by_seed(getattr(args, flag), models, "--" + flag.replace("_", "-"))
                          for flag in ("narrow", "narrow_heldout", "wide"))
    seeds = [[r["seed"] for r in group] for group in (narrow, held, wide)]
    if not seeds[0] == seeds[1] == seeds[2]:
        raise SystemExit(f"the three groups of records must hold the same seeds, got {seeds}")
    out = {}
    for name in models:
        narrow_rows = [outcomes(outcome_rows(r, name) + outcome_rows(h, name))
                       for r, h in zip(narrow, held, strict=True)]
        wide_rows = [outcomes(outcome_rows(r, name)) for r in wide]
        out[name] = compare_groups(narrow_rows, wide_rows, n_boot=args.n_boot)
    return {"seeds": seeds[0], "narrow_registers": ["question", "imperative", "indirect", "need"],
            "wide_registers": ["question", "imperative", "indirect", "need", "tense", "keyword"],
            "held_out_of_both": "fiction", "rows": out,
            "records": {"narrow": args.narrow, "narrow_heldout": args.narrow_heldout, "wide": args.wide}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    asking = sub.add_parser("ask", help="ask narrow runs the prompts of a register none of them trained on")
    asking.add_argument("--runs", nargs="+", required=True, type=Path)
    asking.add_argument("--methods", default="sails")
    asking.add_argument("--register", default="fiction")
    comparing = sub.add_parser("compare", help="narrow vs wide, from record files")
    for name in ("--narrow", "--narrow-heldout", "--wide"):
        comparing.add_argument(name, nargs="+", required=True)
    comparing.add_argument("--methods", default="sails")
    comparing.add_argument("--n-boot", type=int, default=2000)
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    setup_logging()
    if args.command == "ask":
        base_answers: dict[tuple[str, ...], str] = {}
        for run in args.runs:
            print(f"wrote {ask(run, args.methods, args.register, base_answers)}")
        return 0
    write_result("sails_register_coverage", compare(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
