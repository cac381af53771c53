"""Detection scores of every label kind with each detector, on a SAILS run's selected features (issue 12).

Reads a finished run folder (its SAE, data, labels and selection; copy it first: the run folder is opened
for writing), reads the selected features over the run's labelled prompts as the describe stage does, asks
the explainer for labels, and scores on the same held-out prompts per feature (never shown to the explainer):

  tokens     the token-list label (top contexts + logit lens)
  grounded   the data-grounded line
  model      the explainer's greedy label (the describe stage's, --describe-explain-candidates 1)
  model_any  the first non-empty answer of the k ways of asking (more tries, no choice)
  model_best_<detector>  the answer that best tells the explainer's own top examples from its bottom ones,
             by that detector (--describe-explain-candidates k)
  examples   not a label, a reference point: the explainer's top examples joined ("; "), i.e. how far a
             reader gets when it is shown the evidence itself

with each detector (likelihood: the explainer's log-likelihood gain; embedding: all-MiniLM-L6-v2 cosine).
Per kind: balanced accuracy (median threshold) and AUROC, mean with a 95 % bootstrap interval over features,
over the features that have such a label and over all selected features with a missing label counted as
chance (0.5). Writes bench/results/detection_scores.json.

  cp -r runs/sails /tmp/sails-copy
  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_detection.py --run /tmp/sails-copy
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from statistics import fmean

import torch

from common import Timer, write_result
from saelign.align.metrics import auc
from saelign.label.describe import load_explainer, load_labelled_prompts
from saelign.label.detect import balanced_accuracy, held_out_examples, make_detector
from saelign.label.examples import prompt_activations
from saelign.label.explain import VARIANTS, choose_label, label_candidates
from saelign.label.grounding import grounded_phrase
from saelign.label.reading import readings_from_acts
from saelign.progress import setup_logging
from saelign.sails.pipeline import stored_config
from saelign.sails.presets import resolve_config
from saelign.sails.rundir import RunDir
from saelign.sails.stages import STAGES


def interval(values: list[float], n_boot: int, seed: int = 0) -> list[float]:
    """Percentile bootstrap 95 % interval of the mean over features."""
    if len(values) < 2:
        return [math.nan, math.nan]
    rng = random.Random(seed)
    means = sorted(fmean(rng.choices(values, k=len(values))) for _ in range(n_boot))
    return [means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]]


def summary(rows: list[dict], detector: str, kind: str, n_boot: int) -> dict:
    scored = [r["scores"][detector][kind] for r in rows if kind in r["scores"][detector]]
    filled = [r["scores"][detector].get(kind, {"balanced_accuracy": 0.5})["balanced_accuracy"] for r in rows]
    ba = [s["balanced_accuracy"] for s in scored]
    return {"n_features": len(ba), "mean_balanced_accuracy": fmean(ba) if ba else None,
            "ci95": interval(ba, n_boot), "mean_auroc": fmean(s["auroc"] for s in scored) if scored else None,
            "mean_balanced_accuracy_missing_as_chance": fmean(filled), "ci95_missing_as_chance":
                interval(filled, n_boot)}


def paired(rows: list[dict], detector: str, kind: str, base: str, n_boot: int) -> dict:
    """kind minus base per feature, a missing label counted as chance."""
    def value(r: dict, k: str) -> float:
        return r["scores"][detector].get(k, {"balanced_accuracy": 0.5})["balanced_accuracy"]
    diffs = [value(r, kind) - value(r, base) for r in rows]
    return {"mean": fmean(diffs), "ci95": interval(diffs, n_boot), "n_features": len(diffs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished SAILS run folder (a copy: opened to write)")
    parser.add_argument("--candidates", type=int, default=len(VARIANTS), help="ways of asking the explainer")
    parser.add_argument("--detectors", default="likelihood,embedding")
    parser.add_argument("--name", default="detection_scores")
    parser.add_argument("--n-heldout", type=int, default=0,
                        help="held-out firing (and as many quiet) prompts per score; 0: the run's option")
    parser.add_argument("--n-boot", type=int, default=2000)
    args = parser.parse_args()
    setup_logging()
    cfg = resolve_config([stored_config(args.run) or {}])
    run, d = RunDir(args.run, cfg, STAGES), cfg.describe
    batch, n_heldout = cfg.label.batch_size, args.n_heldout or d.n_heldout
    latents = [i for i in run.selection["selection"]["latent_ids"] if i in run.labels]
    latents = latents[:d.explain_top] if d.explain_top else latents
    prompts = load_labelled_prompts(run.path("data"))
    texts = [p.prompt for p in prompts]
    acts = prompt_activations(run.model, run.tokenizer, run.sae, cfg.hookpoint, texts, latents, batch)
    readings = readings_from_acts(acts, prompts, latents, {}, d.n_examples)
    explainer = (run.base_model if d.explainer in ("", "default", cfg.model.model)
                 else load_explainer(d.explainer))
    with Timer() as greedy_time:
        greedy = label_candidates(*explainer, readings, 1, d.label_tokens, batch)
    with Timer() as candidates_time:
        candidates = label_candidates(*explainer, readings, args.candidates, d.label_tokens, batch)
    names = args.detectors.split(",")
    detectors = {name: make_detector(name, explainer, batch, d.embedder) for name in names}
    labels: dict[int, dict[str, str]] = {}
    choose_time: dict[str, float] = {}
    for i in latents:
        labels[i] = {"tokens": run.labels[i].short_label, "grounded": grounded_phrase(readings[i].grounded),
                     "model": greedy[i][0], "model_any": choose_label(candidates[i], readings[i], None),
                     "examples": "; ".join(e.prompt for e in readings[i].top_prompts)}
    for name, detector in detectors.items():
        with Timer() as t:
            for i in latents:
                labels[i][f"model_best_{name}"] = choose_label(candidates[i], readings[i], detector)
        choose_time[name] = t.seconds
    rows, score_time = [], dict.fromkeys(names, 0.0)
    for col, i in enumerate(latents):
        shown = {e.prompt for e in readings[i].top_prompts + readings[i].bottom_prompts}
        firing, quiet = held_out_examples(acts[:, col], texts, shown, n_heldout, d.seed + i)
        row = {"latent": i, "grounded_line": readings[i].grounded, "labels": labels[i],
               "candidates": candidates[i], "n_heldout_each": len(firing), "scores": {}}
        for name, detector in detectors.items():
            row["scores"][name] = {}
            if not firing:
                continue
            with Timer() as t:
                for kind, label in labels[i].items():
                    if not label:
                        continue
                    f, q = detector.scores(label, firing), detector.scores(label, quiet)
                    positive = torch.tensor([True] * len(f) + [False] * len(q))
                    row["scores"][name][kind] = {
                        "balanced_accuracy": balanced_accuracy(f, q),
                        "auroc": float(auc(torch.tensor(f + q)[:, None], positive)[0])}
            score_time[name] += t.seconds
        rows.append(row)
    kinds = ["tokens", "grounded", "model", "model_any", *(f"model_best_{n}" for n in names), "examples"]
    result = {
        "run": args.run, "explainer": d.explainer or "the run's model", "embedder": d.embedder,
        "n_features": len(latents), "n_prompts": len(texts), "n_heldout_each": n_heldout, "seed": d.seed,
        "n_examples_shown": d.n_examples, "candidates": args.candidates,
        "greedy_matches_first_candidate": sum(greedy[i][0] == candidates[i][0] for i in latents),
        "seconds": {"explain_greedy": greedy_time.seconds, "explain_candidates": candidates_time.seconds,
                    "choose": choose_time, "score_all_kinds": score_time},
        "summary": {name: {kind: summary(rows, name, kind, args.n_boot) for kind in kinds} for name in names},
        "paired_vs_greedy_model": {name: {kind: paired(rows, name, kind, "model", args.n_boot)
                                          for kind in kinds if kind.startswith("model_")} for name in names},
        "features": rows,
    }
    write_result(args.name, result)
    for name in names:
        for kind in kinds:
            s = result["summary"][name][kind]
            print(f"{name:10s} {kind:22s} n={s['n_features']:2d} "
                  f"mean BA {s['mean_balanced_accuracy'] or 0:.3f} "
                  f"(missing=chance {s['mean_balanced_accuracy_missing_as_chance']:.3f}) AUROC "
                  f"{s['mean_auroc'] or 0:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
