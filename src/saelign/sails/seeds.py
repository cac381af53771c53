"""One SAILS comparison under several seeds: the upstream stages run once, each seed trains and evaluates
every method, and the results are summarised as means with 95 % intervals (issue 11).

Layout: OUT/seed<s>/ is an ordinary run directory per seed. The first seed's run makes the shared units (data,
SAE, labels, selection, aligned slots, targets, the base model's evaluation); every other seed's folder gets a
copy of those files and of their run.json records (marked `shared_from`), so its own run skips them and only
trains and evaluates. A seed sets `sft.seed` (data order, dropout) and `lora.seed` (PEFT's random A, a random
subspace's basis); generation is greedy, so nothing else is drawn.

The summary resamples seeds and prompts together (`stats.crossed_bootstrap`): every seed and method answers
the same prompts, so a comparison of two methods is paired by seed and prompt."""

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from saelign.errors import SaelignError
from saelign.io import read_json_object, write_json_atomic
from saelign.progress import logger
from saelign.runinfo import read_run_record
from saelign.sails.pipeline import run_pipeline
from saelign.sails.presets import SailsConfig
from saelign.sails.rundir import RUN_FILE, RunDir
from saelign.sails.seed_record import check_same_upstream, load_seed, merge_seeds, outcome_rows
from saelign.sails.stages import STAGES
from saelign.stats import crossed_bootstrap

SHARED = ("data", "sae", "labels", "select", "align", "targets", "gate")
PER_SEED = ("train", "eval", "gated")
PARTS = ("in_distribution", "ood_registers", "ood_sources", "ood")
# parts also read per register ("in_distribution.question"): the held-out sources' few harmless prompts per
# register would make noise, and their harmful ones are in the pooled "ood_sources" part
BY_REGISTER = ("in_distribution", "ood_registers")
# metric -> (kind of prompt, whether a higher value is better); the outcome is "the judge says refused"
RATES = {"safety_rate": ("harmful", True), "over_refusal": ("harmless", False)}


def seed_config(cfg: SailsConfig, seed: int) -> SailsConfig:
    return dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, seed=seed),
                               lora=dataclasses.replace(cfg.lora, seed=seed))


def seed_dir(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed{seed}"


def share_upstream(source: Path, dest: Path, cfg: SailsConfig) -> list[str]:
    """Copy the shared units' files and run.json records from `source` into `dest` (a run of `cfg`) and check
    that `dest` takes them as done: their keys hold no seed, so they match unless other options differ."""
    recorded = read_json_object(source / RUN_FILE, "run.json")["stages"]
    units = [u for u in recorded if u.partition(":")[0] in SHARED or u == "eval:base"]
    run = RunDir(dest, cfg, STAGES)
    for unit in units:
        stage, _, name = unit.partition(":")
        folder = STAGES[stage].folder.format(name=name)
        paths = [folder] if folder else []
        paths += [p.format(name=name) for p in STAGES[stage].outputs
                  if not folder or not p.startswith(f"{folder}/")]
        for rel in paths:
            src, dst = source / rel, dest / rel
            if src.is_dir() and not dst.exists():
                shutil.copytree(src, dst)
            elif src.is_file() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    path = dest / RUN_FILE
    data = read_run_record(path)
    data["stages"].update({u: {**recorded[u], "shared_from": str(source)} for u in units})
    write_json_atomic(path, data)
    stale = [u for u in units if run.status(u) != "done"]
    if stale:
        raise SaelignError(f"{dest}: the shared units {', '.join(stale)} of {source} do not match this "
                           "seed's options; seeds may differ only in sft.seed and lora.seed")
    return units


def run_seeds(cfg: SailsConfig, out: str | Path, seeds: Sequence[int]) -> list[Path]:
    """Run every method of `cfg` under each seed (resumable: a rerun continues where a run stopped)."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise SaelignError(f"seeds: give each seed once, at least one (got {list(seeds)})")
    dirs = [seed_dir(out, s) for s in seeds]
    for seed, folder in zip(seeds, dirs, strict=True):
        seeded = seed_config(cfg, seed)
        if folder != dirs[0]:
            share_upstream(dirs[0], folder, seeded)
        logger.info(f"seed {seed}: {folder}")
        # One method more per pass, each evaluated before the next trains: a run cut short (a long preset
        # over several sessions) keeps every finished method's evaluation. The last pass holds all methods.
        for count in range(1, len(seeded.methods) + 1):
            some = dataclasses.replace(seeded, methods=list(seeded.methods[:count]))
            run_pipeline(some, folder, [*SHARED, *PER_SEED])  # align has no unit without sails_aligned
    return dirs


def _outcomes(rows: Sequence[dict[str, Any]]) -> dict[str, dict[tuple[str, str], bool]]:
    """Per part, (kind, prompt) -> refused, from a seed record's outcome rows; "ood" pools the ood parts, and
    "<part>.<register>" holds a BY_REGISTER part's prompts of one register (where the record names it)."""
    parts: dict[str, dict[tuple[str, str], bool]] = {p: {} for p in PARTS}
    for row in rows:
        key = (row["kind"], row["prompt"])
        parts[row["part"]][key] = row["refused"]
        if row["part"].startswith("ood_"):
            parts["ood"][key] = row["refused"]
        if row["part"] in BY_REGISTER and row["register"]:
            parts.setdefault(f"{row['part']}.{row['register']}", {})[key] = row["refused"]
    return {p: v for p, v in parts.items() if v}


def _matrix(per_seed: Sequence[dict[tuple[str, str], bool]], kind: str) -> np.ndarray:
    prompts = [k for k in per_seed[0] if k[0] == kind]
    if any(sorted(k for k in o if k[0] == kind) != sorted(prompts) for o in per_seed):
        raise SaelignError("the seeds' runs were evaluated on different prompts; rerun them over one data "
                           "stage")
    matrix = np.array([[o[p] for p in prompts] for o in per_seed], dtype=float)
    return matrix.reshape(len(per_seed), len(prompts))


def _interval(arrays: Sequence[np.ndarray], statistic: Callable[..., float] = np.mean,
              n_boot: int = 2000) -> dict[str, Any]:
    mean, lo, hi = crossed_bootstrap(arrays, statistic, n_boot)
    return {"mean": mean, "lo": lo, "hi": hi, "n_seeds": arrays[0].shape[0], "n_prompts": arrays[0].shape[1]}


def _ppl_change(nll: np.ndarray, count: np.ndarray, base: np.ndarray) -> float:
    return float(np.exp((nll.sum() - base.sum()) / count.sum()) - 1)


def _ppl_gap(nll: np.ndarray, other: np.ndarray, count: np.ndarray, base: np.ndarray) -> float:
    return _ppl_change(nll, count, base) - _ppl_change(other, count, base)


def records_of(sources: Sequence[Path | dict[str, Any]], methods: Sequence[str],
               allow_drift: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """Seed records (`seed_record`) from run folders, record files or records, checked to share one
    upstream, and the upstream files that drifted between them (`check_same_upstream`)."""
    records = merge_seeds([s if isinstance(s, dict) else load_seed(s, list(methods)) for s in sources])
    return records, check_same_upstream(records, allow_drift)


def _load(records: Sequence[dict[str, Any]], method: str) -> dict[str, Any]:
    models = [r["models"].get(method) for r in records]
    missing = [r["source"] for r, m in zip(records, models, strict=True) if m is None]
    if missing:
        raise SaelignError(f"{method} was not evaluated in {', '.join(missing)}")
    nll = np.array([[n for n, _ in m["context_nll"]] for m in models], dtype=float)
    count = np.array([[c for _, c in m["context_nll"]] for m in models], dtype=float)
    return {"outcomes": [_outcomes(outcome_rows(r, method)) for r in records], "nll": nll, "count": count,
            "results": [m["result"] for m in models]}


def _steps(loaded: dict[str, Any], budget: int) -> np.ndarray:
    """Steps to 90 % val safety per seed, [seeds, 1]; a seed that never got there counts at the budget."""
    return np.array([[(r["steps_to"].get("0.9") or budget) if r else np.nan] for r in loaded["results"]])


def summarise_seeds(sources: Sequence[Path | dict[str, Any]], methods: Sequence[str],
                    compare_to: str = "sails", n_boot: int = 2000,
                    allow_upstream_drift: bool = False) -> dict[str, Any]:
    """Per method: in- and out-of-distribution safety and over-refusal, perplexity change against the base
    model and steps to 90 % val safety, each a mean with its 95 % interval; and `compare_to` minus every other
    method, paired, with whether the interval excludes 0 and which way is better. `sources`: the seeds' run
    folders, seed record files (a seed run in another session) or records; `upstream_drift` lists the shared
    files (SAE, subspaces, targets) that differ between them, allowed only with `allow_upstream_drift`."""
    records, drift = records_of(sources, methods, allow_upstream_drift)
    budget = records[0]["steps_budget"]
    base = _load(records, "base")
    loaded = {m: _load(records, m) for m in methods}
    arrays: dict[str, dict[str, list[np.ndarray]]] = {}  # method -> metric -> what its statistic reads
    seeds = [r["seed"] for r in records]
    summary: dict[str, Any] = {"seeds": seeds, "upstream_drift": drift, "methods": {}}
    for name, data in {"base": base, **loaded}.items():
        arrays[name] = _arrays(data, base, budget, trained=name != "base")
        metrics = {key: _interval(value, _ppl_change if key == "perplexity_change" else np.mean, n_boot)
                   for key, value in arrays[name].items()}
        if name != "base":
            reached = sum(bool(r and r["steps_to"].get("0.9")) for r in data["results"])
            metrics["steps_to_90"]["reached"] = reached
            metrics["steps_trained"] = [r["steps"] if r else None for r in data["results"]]
        summary["methods"][name] = metrics
    summary["comparisons"] = {f"{compare_to} - {other}": _compare(arrays[compare_to], arrays[other], n_boot)
                              for other in methods if other != compare_to and compare_to in arrays}
    return summary


def _arrays(data: dict[str, Any], base: dict[str, Any], budget: int,
            trained: bool) -> dict[str, list[np.ndarray]]:
    """Metric -> the arrays its statistic reads: refusal matrices per part and kind, the perplexity change's
    NLLs (with the base model's), and a trained model's steps to 90 % val safety."""
    arrays = {}
    # a part every seed has: records written before they kept registers have no per-register parts
    for part in [p for p in data["outcomes"][0] if all(p in o for o in data["outcomes"])]:
        for metric, (kind, _) in RATES.items():
            matrix = _matrix([o[part] for o in data["outcomes"]], kind)
            if matrix.size:
                arrays[f"{part}.{metric}"] = [matrix]
    if base["nll"].size and data["nll"].shape == base["nll"].shape:
        arrays["perplexity_change"] = [data["nll"], base["count"], base["nll"]]
    if trained:
        arrays["steps_to_90"] = [_steps(data, budget)]
    return arrays


def compare_runs(dirs: Sequence[Path], other_dirs: Sequence[Path], method: str = "sails",
                 other_method: str | None = None, n_boot: int = 2000) -> dict[str, Any]:
    """`method` in the runs `dirs` minus `other_method` (default: the same) in `other_dirs`: the same seeds,
    data and base model under other training options, paired by seed and prompt (`summarise_seeds`' way)."""
    groups = [records_of(dirs, [method])[0], records_of(other_dirs, [other_method or method])[0]]
    seeds = [[r["seed"] for r in group] for group in groups]
    base, other_base = _load(groups[0], "base"), _load(groups[1], "base")
    if seeds[0] != seeds[1] or not np.array_equal(base["nll"], other_base["nll"]):
        raise SaelignError(f"compare_runs: the two groups must be the same seeds ({seeds[0]} vs {seeds[1]}) "
                           "over one data stage and base model (share_upstream)")
    budget = groups[0][0]["steps_budget"]
    mine, other = (_arrays(_load(group, name), base, budget, trained=True)
                   for group, name in ((groups[0], method), (groups[1], other_method or method)))
    return _compare(mine, other, n_boot)


def _compare(mine: dict[str, list[np.ndarray]], other: dict[str, list[np.ndarray]],
             n_boot: int) -> dict[str, Any]:
    out = {}
    for key in mine.keys() & other.keys():
        if key == "perplexity_change":
            nll, count, base = mine[key]
            result = _interval([nll, other[key][0], count, base], _ppl_gap, n_boot)
            higher_better = False
        else:
            result = _interval([mine[key][0] - other[key][0]], n_boot=n_boot)
            higher_better = key != "steps_to_90" and RATES[key.rsplit(".", 1)[1]][1]
        shown = result["lo"] > 0 or result["hi"] < 0
        better = (result["mean"] > 0) == higher_better
        out[key] = {**result, "excludes_zero": shown,
                    "verdict": ("better" if better else "worse") if shown else "no difference shown"}
    return dict(sorted(out.items()))
