"""Fact learning on the biographies ontology: fine-tune the default model until it answers the train facts,
then read its accuracy on train templates and on unseen ones (per style). Sized for a CPU budget: few people.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_facts.py [--people 10 --max-minutes 21]
(biographies_facts.json was run before the train set had fill-in and instruction templates: --train-styles qa
rebuilds its ontology; biographies_facts_styles.json trains on all three styles.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import peak_rss_mib, write_result
from saelign.align.builtin import build_biographies
from saelign.align.builtin.biographies import ATTRIBUTES
from saelign.align.learn import LearnFactsConfig, learn_facts
from saelign.align.ontology import save_ontology
from saelign.configs import config_to_dict
from saelign.models import ModelConfig
from saelign.sails.sft import SFTConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default="runs/bench_facts", help="run folder (model, checkpoint; not committed)"
    )
    parser.add_argument(
        "--max-minutes", type=float, default=21.0, help="training stops at the first check after this"
    )
    parser.add_argument(
        "--steps", type=int, default=2000, help="step cap (the time limit normally ends training)"
    )
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument(
        "--target-accuracy",
        type=float,
        default=0.95,
        help="stop at the first check whose sampled train accuracy reaches this (0: run --steps; a control "
        "matched in steps to another run)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--name", default="biographies_facts", help="result file name under bench/results/")
    parser.add_argument(
        "--train-styles",
        default="qa,fill_in,instruction",
        help="phrasing styles of the train templates (qa: the first, Q/A-only train set)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    train_styles = args.train_styles.split(",")
    ontology = build_biographies(people=args.people, seed=args.seed, train_styles=train_styles)
    per_style = {s: len(ATTRIBUTES["major"].train[s]) for s in train_styles}
    save_ontology(ontology, Path(args.out) / "biographies.yaml")
    cfg = LearnFactsConfig(
        out=args.out,
        method="full",
        target_accuracy=args.target_accuracy,
        max_minutes=args.max_minutes,
        check_every=40,
        check_prompts=60,
        sft=SFTConfig(
            steps=args.steps,
            lr=args.lr,
            batch_size=args.batch_size,
            warmup=10,
            checkpoint_every=0,
            seed=args.seed,
        ),
    )
    report = learn_facts(ModelConfig(), cfg, ontology)
    write_result(
        args.name,
        {
            "setting": f"SmolLM2-135M-Instruct, full fine-tuning on {args.people} made-up people x 6 "
            f"attributes, train templates per attribute and style = {per_style}; unseen = 2 Q/A + 2 "
            "fill-in + 2 instruction templates, none of them a train wording",
            "train_styles": train_styles,
            "config": config_to_dict(cfg),
            "people": args.people,
            "torch_threads": torch.get_num_threads(),
            "wall_minutes": round((time.perf_counter() - started) / 60, 2),
            "peak_rss_mib": round(peak_rss_mib()),
            **{k: v for k, v in report.items() if k != "model"},
        },
    )


if __name__ == "__main__":
    main()
