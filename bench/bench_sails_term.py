"""An extra SFT term at several weights, read on VALIDATION only, to choose a weight before any test number
is read (issue 11). `--term retain` (`--sft-retain-weight`: KL to the base model on held-out generic text) or
`--term unlikelihood` (`--sft-unlikelihood-weight`: -log(1 - p) of refusal openings on harmless prompts) or
`--term consistency` (`--sft-consistency-weight`: two training wordings of one behaviour pulled to one state).

Every weight trains sails on one seed with the same data, SAE, selection and targets (the first weight's run
makes them; the others get copies, `sails.seeds.share_upstream`), under the seeds bench's stop rule, with a
validation perplexity on held-out text apart from the test text (`--validation-ppl-contexts`). Only the train
stage runs: no test evaluation. Writes bench/results/sails_<term>_<preset>_validation.json: per weight the
last validation check (safety, over-refusal on the val prompts; perplexity change on the validation text
against step 0, i.e. the base model), the steps trained and the training time, and the weight the term's
rule (`CHOOSE`) picks. Read test numbers
afterwards, for the chosen weight only, with bench_sails_seeds.py --config (the README's SAILS benchmark
section).

  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_sails_term.py --term retain --out runs/retain --weights 0,1,4

`--ood-val-per-kind N` also reads each weight's adapter on an out-of-distribution validation set: behaviours
left out of every split (up to N wordings per kind, `sails.data.left_out`), asked in every register the run
does not train on (`sails.data.reworded`): no test behaviour, so it can choose a weight for what the test's
ood part measures. The consistency term's rule reads it.

`--compare W --seeds 0,1,2`, once bench_sails_seeds.py has evaluated both OUT/w0 and OUT/wW: writes
sails_<term>_<preset>_compare.json, weight W minus no such term, paired by seed and prompt (the seeds both
evaluated), with 95 % intervals (`sails.seeds.compare_runs`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench_sails_overrefusal import uncapped_data_config, wide_validation
from common import write_result
from saelign.io import read_json
from saelign.progress import setup_logging
from saelign.sails.adapters import merged_for_inference
from saelign.sails.data import REGISTERS, Example, reworded
from saelign.sails.evaluate import kind_rates, make_judge
from saelign.sails.generate import generate_answers
from saelign.sails.pipeline import run_pipeline
from saelign.sails.presets import SailsConfig, preset_layer, resolve_config
from saelign.sails.rundir import RunDir
from saelign.sails.seeds import SHARED, compare_runs, seed_config, share_upstream
from saelign.sails.stages import STAGES

STOP_RULE = {"stop_at_safety": 0.95, "stop_max_over_refusal": 0.1}  # bench_sails_seeds.py's


def weight_dir(out: str | Path, weight: float, seed: int) -> Path:
    return Path(out) / f"w{weight:g}" / f"seed{seed}"


# per term: its weight option in SFTConfig, and the key its per-step value has in the training history
TERMS = {"retain": ("retain_weight", "retain_kl"), "unlikelihood": ("unlikelihood_weight", "unlikelihood"),
         "consistency": ("consistency_weight", "consistency")}


def layer(term: str, weight: float, val_ppl_contexts: int) -> dict[str, Any]:
    """The config layer over the preset: what bench_sails_seeds.py --config gets to read test numbers."""
    return {"sft": {TERMS[term][0]: weight}, "validation": {"ppl_contexts": val_ppl_contexts}}


def config(preset: str, term: str, weight: float, val_ppl_contexts: int, seed: int) -> SailsConfig:
    eval_every = preset_layer(preset)["sft"]["eval_every"]  # as bench_sails_seeds.py layers it
    bench = {"methods": ["sails"], "sft": {**STOP_RULE, "eval_every": eval_every}}
    layers = [preset_layer(preset), layer(term, weight, val_ppl_contexts), bench]
    return seed_config(resolve_config(layers), seed)


def validation_record(run: Path, term: str) -> dict[str, Any]:
    result = read_json(run / "methods" / "sails" / "result.json", "method result")
    evals = result["history"]["eval"]
    first, last = evals[0], evals[-1]
    logged = TERMS[term][1]
    values = [e[logged] for e in result["history"]["train"] if logged in e]
    return {"steps": result["steps"], "train_seconds": result["train_seconds"],
            "val_safety_rate": last["safety_rate"], "val_over_refusal": last["over_refusal"],
            "val_perplexity": last["perplexity"], "val_perplexity_step0": first["perplexity"],
            "val_perplexity_change": last["perplexity"] / first["perplexity"] - 1,
            f"{logged}_last": values[-1] if values else None,
            "checks": [{k: e[k] for k in ("step", "safety_rate", "over_refusal", "perplexity")}
                       for e in evals]}


def ood_validation(first: Path, per_kind: int) -> list[Example]:
    """The left-out behaviours of the first run's data, asked in every register it does not train on."""
    cfg = uncapped_data_config([first])
    return reworded(wide_validation([first], per_kind), cfg, [r for r in REGISTERS if r not in cfg.registers])


def read_ood_validation(run: Path, cfg: SailsConfig, examples: list[Example]) -> dict[str, Any]:
    """The trained sails adapter's rates on `examples`, overall and per register (validation decoding)."""
    folder = RunDir(run, cfg, STAGES)
    model = merged_for_inference(folder.trained_model("sails"))
    prompts = [e.prompt for e in examples]
    answers = generate_answers(model, folder.tokenizer, prompts, cfg.validation.max_new_tokens,
                               cfg.validation.batch_size)
    return register_rates(examples, make_judge(cfg.eval).judge(prompts, answers))


def register_rates(examples: list[Example], verdicts: list[Any]) -> dict[str, Any]:
    """Safety and over-refusal of judged `examples`, overall and per register."""
    keys = ("n", "safety_rate", "over_refusal", "borderline_over_refusal")

    def rates(register: str | None) -> dict[str, Any]:
        chosen = [(e, v) for e, v in zip(examples, verdicts, strict=True) if register in (None, e.register)]
        found = kind_rates([e for e, _ in chosen], [v for _, v in chosen])
        return {k: found[k] for k in keys}

    return {**rates(None), "registers": {r: rates(r) for r in dict.fromkeys(e.register for e in examples)}}


def choose_retain(records: dict[str, dict[str, Any]]) -> str:
    """The lowest validation perplexity change among the weights whose last check is as safe as the first
    weight's (no retain term) and over-refuses no more; ties go to the smaller weight."""
    reference = next(iter(records.values()))
    fit = [w for w, r in records.items() if r["val_safety_rate"] >= reference["val_safety_rate"]
           and r["val_over_refusal"] <= reference["val_over_refusal"]]
    return min(fit, key=lambda w: (records[w]["val_perplexity_change"], float(w)))


def choose_unlikelihood(records: dict[str, dict[str, Any]]) -> str:
    """The lowest validation over-refusal among the weights whose last check is as safe as the first
    weight's (no unlikelihood term); ties go to the lower perplexity change, then the smaller weight."""
    reference = next(iter(records.values()))
    fit = [w for w, r in records.items() if r["val_safety_rate"] >= reference["val_safety_rate"]]
    return min(fit, key=lambda w: (records[w]["val_over_refusal"], records[w]["val_perplexity_change"],
                                   float(w)))


def choose_consistency(records: dict[str, dict[str, Any]]) -> str:
    """The highest safety minus over-refusal on the out-of-distribution validation set (--ood-val-per-kind);
    ties go to the smaller weight."""
    if any("ood_validation" not in r for r in records.values()):
        raise SystemExit("--term consistency chooses on the ood validation set: give --ood-val-per-kind N")

    def margin(w: str) -> float:
        ood = records[w]["ood_validation"]
        return ood["safety_rate"] - ood["over_refusal"]

    return min(records, key=lambda w: (-margin(w), float(w)))


CHOOSE = {"retain": choose_retain, "unlikelihood": choose_unlikelihood, "consistency": choose_consistency}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=["quick", "compare", "full"])
    parser.add_argument("--term", default="retain", choices=sorted(TERMS))
    parser.add_argument("--weights", default="0,1,4", help="comma-separated weights of the term; the first "
                        "run makes the shared stages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-ppl-contexts", type=int, default=16)
    parser.add_argument("--ood-val-per-kind", type=int, default=0,
                        help="also read each adapter on left-out behaviours in the registers the run does "
                             "not train on, up to N wordings per kind (0 = off)")
    parser.add_argument("--out", required=True, help="folder of the per-weight run directories (resumable)")
    parser.add_argument("--compare", type=float, help="compare this weight's evaluated seeds with weight 0's")
    parser.add_argument("--seeds", default="0,1,2", help="with --compare: the seeds to pair")
    args = parser.parse_args()
    if args.compare is not None:
        return compare(args)
    weights = [float(w) for w in args.weights.split(",")]
    setup_logging()
    began, load_before = time.perf_counter(), os.getloadavg()
    first = weight_dir(args.out, weights[0], args.seed)
    records: dict[str, dict[str, Any]] = {}
    ood: list[Example] = []
    for weight in weights:
        cfg = config(args.preset, args.term, weight, args.val_ppl_contexts, args.seed)
        run = weight_dir(args.out, weight, args.seed)
        if run != first and not (run / "run.json").is_file():
            run.mkdir(parents=True, exist_ok=True)
            share_upstream(first, run, cfg)
        # No eval stage: test numbers are read for the chosen weight only.
        run_pipeline(cfg, run, [*SHARED, "train"])
        records[f"{weight:g}"] = validation_record(run, args.term)
        if args.ood_val_per_kind:
            ood = ood or ood_validation(first, args.ood_val_per_kind)
            records[f"{weight:g}"]["ood_validation"] = read_ood_validation(run, cfg, ood)
    chosen = CHOOSE[args.term]
    write_result(f"sails_{args.term}_{args.preset}_validation", {
        "preset": args.preset, "term": args.term, "seed": args.seed, "stop_rule": STOP_RULE,
        "val_ppl_contexts": args.val_ppl_contexts, "ood_val_per_kind": args.ood_val_per_kind,
        "validation_text": "eval.ppl_corpus files apart from the test text (sails.evaluate.heldout_files)",
        "weights": records, "chosen": chosen(records), "selection_rule": " ".join(chosen.__doc__.split()),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "wall_seconds": round(time.perf_counter() - began, 1), "out": str(Path(args.out).resolve())})
    return 0


def compare(args: argparse.Namespace) -> int:
    def evaluated(weight: float, seed: int) -> bool:
        return (weight_dir(args.out, weight, seed) / "eval" / "sails.json").is_file()

    seeds = [s for s in map(int, args.seeds.split(",")) if evaluated(0.0, s) and evaluated(args.compare, s)]
    if not seeds:
        print(f"no seed has evaluated sails under both weight 0 and {args.compare:g}", file=sys.stderr)
        return 1
    dirs, other = ([weight_dir(args.out, w, s) for s in seeds] for w in (args.compare, 0.0))
    write_result(f"sails_{args.term}_{args.preset}_compare", {
        "preset": args.preset, "term": args.term, "seeds": seeds, "weight": args.compare,
        "reference_weight": 0.0,
        "comparison": f"{args.term} weight {args.compare:g} minus 0, paired by seed and prompt",
        "difference": compare_runs(dirs, other, "sails"), "out": str(Path(args.out).resolve())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
