"""A seed's results in one small JSON file, so a seeds comparison can grow over several sessions (issue 11).

A full-preset seed takes longer than a working session, and run folders do not outlive it. A seed record keeps
what `seeds.summarise_seeds` reads from a seed's run folder, and nothing else:
- each model's judged outcome on every test and out-of-distribution prompt;
- its held-out perplexity contexts;
- a trained model's steps.

It also keeps a digest of the shared upstream files (data splits, SAE, subspaces, targets). Records of seeds
run on different days combine only when their upstream digests, prompts and base-model evaluation are
identical, that is, when they answer the same question."""

import hashlib
from pathlib import Path
from typing import Any

from saelign.errors import SaelignError
from saelign.io import iter_jsonl, read_json_object, write_json_atomic
from saelign.sails.gate import SUFFIX as GATED

FORMAT = "saelign.sails.seed_record/1"
# the shared files whose bytes decide what every seed trains on and is evaluated on
UPSTREAM_FILES = ("data/train.jsonl", "data/val.jsonl", "data/test.jsonl", "data/ood.jsonl",
                  "sae/*.safetensors", "select/subspace.safetensors", "align/subspace.safetensors",
                  "targets/train.jsonl")


def upstream_digest(run_dir: Path) -> dict[str, str]:
    """Relative path -> sha256 of each shared upstream file the run has."""
    digests = {}
    for pattern in UPSTREAM_FILES:
        for path in sorted(run_dir.glob(pattern)):
            digests[path.relative_to(run_dir).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _judged(metrics: dict[str, Any]) -> dict[tuple[str, str, str], bool]:
    """(part, kind, prompt) -> refused, from an eval file."""
    rows = metrics.get("splits", {}).get("responses")
    if rows is None:  # a run without an ood split: the test split is the in-distribution part
        rows = [{**r, "part": "in_distribution"} for r in metrics["responses"]]
    return {(r["part"], r["kind"], r["prompt"]): r["verdict"] == "refused" for r in rows}


def _registers(run_dir: Path, prompts: list[tuple[str, str, str]]) -> list[str]:
    """The request form (register) of each prompt of `prompts`, from the run's test and ood splits ("" where
    a split names none)."""
    register: dict[tuple[str, str], str] = {}
    for split in ("test", "ood"):
        path = run_dir / "data" / f"{split}.jsonl"
        for _, row in iter_jsonl(path, "data split") if path.is_file() else []:  # a run may have no ood
            register.setdefault((row["kind"], row["prompt"]), row.get("register") or "")
    return [register.get((kind, prompt), "") for _, kind, prompt in prompts]


def _model_record(run_dir: Path, name: str, prompts: list[tuple[str, str, str]]) -> dict[str, Any]:
    """What a seeds summary reads of one evaluated model; "refused" holds 1/0 per prompt of `prompts`."""
    metrics = read_json_object(run_dir / "eval" / f"{name}.json", "eval file")
    judged = _judged(metrics)
    if set(judged) != set(prompts):
        raise SaelignError(f"{run_dir / 'eval' / f'{name}.json'}: evaluated on other prompts than the base "
                           "model; rerun its eval stage over this run's data")
    # a gated model was trained as its method
    result_path = run_dir / "methods" / name.removesuffix(GATED) / "result.json"
    result = read_json_object(result_path, "method result") if result_path.is_file() else None
    return {"refused": "".join("1" if judged[p] else "0" for p in prompts),
            "context_nll": metrics.get("context_nll", []),
            "result": None if result is None else {"steps": result["steps"], "steps_to": result["steps_to"]}}


def seed_record(run_dir: str | Path, methods: list[str]) -> dict[str, Any]:
    """The record of one seed's run folder: the base model and every method in `methods` it has evaluated."""
    run_dir = Path(run_dir)
    cfg = read_json_object(run_dir / "config.json", "run config")
    prompts = list(_judged(read_json_object(run_dir / "eval" / "base.json", "eval file")))
    names = ["base", *[m for m in methods if (run_dir / "eval" / f"{m}.json").is_file()]]
    environment = read_json_object(run_dir / "run.json", "run.json").get("environment", {})
    return {"format": FORMAT, "seed": cfg["sft"]["seed"], "steps_budget": int(cfg["sft"]["steps"]),
            "source": str(run_dir.resolve()), "environment": environment,
            "upstream": upstream_digest(run_dir), "prompts": [list(p) for p in prompts],
            "registers": _registers(run_dir, prompts),
            "models": {name: _model_record(run_dir, name, prompts) for name in names}}


def outcome_rows(record: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """One row per prompt, {part, kind, prompt, register, refused}, of model `name` in a seed record (register
    "" in records written before they kept registers)."""
    refused = record["models"][name]["refused"]
    registers = record.get("registers") or [""] * len(record["prompts"])
    if not len(refused) == len(registers) == len(record["prompts"]):
        raise SaelignError(f"seed record {record['source']}: model {name} has {len(refused)} outcomes and "
                           f"{len(registers)} registers for {len(record['prompts'])} prompts")
    return [{"part": part, "kind": kind, "prompt": prompt, "register": register, "refused": flag == "1"}
            for (part, kind, prompt), register, flag
            in zip(record["prompts"], registers, refused, strict=True)]


def write_seed_record(run_dir: str | Path, methods: list[str], folder: Path) -> tuple[dict[str, Any], Path]:
    """Write the record of a seed's run folder into `folder` (at `record_path`); return it and its path."""
    record = seed_record(run_dir, methods)
    path = record_path(folder, record)
    write_json_atomic(path, record)
    return record, path


def record_path(folder: Path, record: dict[str, Any]) -> Path:
    """Where `record` goes in `folder`: seed<s>.json, or seed<s>.<n>.json where that file holds a record of
    another run (the same seed's other methods, run in an earlier session), which must not be overwritten."""
    for n in range(1000):
        path = folder / (f"seed{record['seed']}.json" if n == 0 else f"seed{record['seed']}.{n}.json")
        if not path.is_file():
            return path
        old = read_seed_record(path)
        if old["source"] == record["source"] and old["models"].keys() <= record["models"].keys():
            return path  # an earlier summary of this very run
    raise SaelignError(f"{folder}: 1000 records of seed {record['seed']}; clean the folder up")


def read_seed_record(path: str | Path) -> dict[str, Any]:
    record = read_json_object(path, "seed record")
    if record.get("format") != FORMAT:
        raise SaelignError(f"{path}: field 'format' is {record.get('format')!r}, not {FORMAT!r}; write it "
                           "with bench/bench_sails_seeds.py --records-dir (a seeds run's record of one seed)")
    return record


def load_seed(source: str | Path, methods: list[str]) -> dict[str, Any]:
    """A seed's record from a run folder or from a record file written earlier."""
    source = Path(source)
    return seed_record(source, methods) if source.is_dir() else read_seed_record(source)


def check_same_upstream(records: list[dict[str, Any]], allow_drift: bool = False) -> list[str]:
    """Refuse records that do not share one upstream: other data splits, prompts, base-model answers or step
    budget always; another SAE, subspace or targets file unless `allow_drift` (an upstream rebuilt on another
    CPU, whose float rounding differs: then those seeds also vary the SAE). Returns the files that drifted."""
    first, drifted = records[0], set()
    for other in records[1:]:
        where = f"seed {other['seed']} ({other['source']}) and seed {first['seed']} ({first['source']})"
        differ = sorted(k for k in first["upstream"].keys() | other["upstream"].keys()
                        if first["upstream"].get(k) != other["upstream"].get(k))
        data = [k for k in differ if k.startswith("data/")]
        if data or (differ and not allow_drift):
            raise SaelignError(f"{where} were not run over one upstream: {', '.join(data or differ)} differ; "
                               "rebuild the upstream under the same options (same CPU and thread count for "
                               "the SAE), or run the seeds together" + ("" if data else "; --allow-upstream-"
                               "drift combines them anyway, as seeds that also vary the SAE"))
        drifted.update(differ)
        if other["models"]["base"] != first["models"]["base"] or other["prompts"] != first["prompts"]:
            raise SaelignError(f"{where}: the base model's evaluation differs, so their prompts or judge "
                               "differ; records combine only over one data stage and base model")
        if other["steps_budget"] != first["steps_budget"]:
            raise SaelignError(f"{where}: step budgets {other['steps_budget']} and {first['steps_budget']} "
                               "differ")
    return sorted(drifted)


def merge_seeds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per seed: records of one seed whose runs trained different methods over the very same
    upstream (a seed finished over two sessions) merge into one; the same method twice is refused."""
    merged: dict[int, dict[str, Any]] = {}
    for record in records:
        seed = record["seed"]
        if seed not in merged:
            merged[seed] = {**record, "models": dict(record["models"])}
            continue
        first = merged[seed]
        check_same_upstream([first, record])
        twice = sorted((first["models"].keys() & record["models"].keys()) - {"base"})
        if twice:
            raise SaelignError(f"seed {seed}: {', '.join(twice)} evaluated in both {first['source']} and "
                               f"{record['source']}; give each seed's method once")
        first["models"].update(record["models"])
        first["registers"] = first.get("registers") or record.get("registers")  # the same prompts: checked
        first["source"] = f"{first['source']} + {record['source']}"
    return [merged[seed] for seed in sorted(merged)]
