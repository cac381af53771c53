"""Several seeds over one SAILS pipeline on the tiny Llama: the upstream stages run once and are shared, each
seed trains under its own seed, and the summary's means are those of the per-seed evaluation files."""

from __future__ import annotations

import dataclasses
import filecmp
import json
import math

import numpy as np
import pytest

from saelign.errors import SaelignError
from saelign.sails.seed_record import record_path, seed_record, write_seed_record
from saelign.sails.seeds import PER_SEED, compare_runs, run_seeds, seed_dir, share_upstream, summarise_seeds
from test_sails_pipeline import tiny_config, write_inputs

METHODS = ["sails", "lora"]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny_llama_dir):
    inputs = write_inputs(tmp_path_factory.mktemp("seeds_inputs"), tiny_llama_dir)
    out = tmp_path_factory.mktemp("seeds")
    cfg = tiny_config(inputs, methods=METHODS)
    return cfg, out, run_seeds(cfg, out, [0, 3])


def test_upstream_runs_once_and_each_seed_trains_its_own(seeded):
    cfg, out, (first, second) = seeded
    assert second == seed_dir(out, 3)
    stages = json.loads((second / "run.json").read_text())["stages"]
    for unit in ("data", "sae", "select", "targets", "eval:base"):
        assert stages[unit]["shared_from"] == str(first)
    assert "shared_from" not in stages["train:sails"]
    basis = "select/subspace.safetensors"
    assert filecmp.cmp(first / basis, second / basis, shallow=False)
    for method in METHODS:
        results = [json.loads((d / "methods" / method / "result.json").read_text()) for d in (first, second)]
        assert [r["seed"] for r in results] == [0, 3]
    lora = [json.loads((d / "methods" / "lora" / "result.json").read_text())["history"]["train"][0]["loss"]
            for d in (first, second)]
    assert lora[0] != lora[1]  # another data order and init, not a copy
    other = dataclasses.replace(cfg, select=dataclasses.replace(cfg.select, top_k=cfg.select.top_k + 1))
    with pytest.raises(SaelignError, match="do not match this seed's options"):
        share_upstream(first, out / "other", other)


def test_each_method_is_evaluated_before_the_next_one_trains(seeded):
    _, _, (first, second) = seeded
    order = ["train:sails", "eval:sails", "train:lora", "eval:lora"]
    for folder, expected in ((first, ["train:sails", "eval:base", *order[1:]]), (second, order)):
        stages = json.loads((folder / "run.json").read_text())["stages"]  # units in the order they began
        own = [u for u, r in stages.items() if "shared_from" not in r and u.partition(":")[0] in PER_SEED]
        assert own == expected
        assert json.loads((folder / "config.json").read_text())["methods"] == METHODS


def _rate(path, kind: str) -> float:
    rows = json.loads(path.read_text())["responses"]
    return float(np.mean([r["verdict"] == "refused" for r in rows if r["kind"] == kind]))


def test_summary_means_are_the_seeds_means_with_intervals_around_them(seeded):
    _, _, dirs = seeded
    summary = summarise_seeds(dirs, METHODS, n_boot=200)
    assert summary["seeds"] == [0, 3]
    for name in ["base", *METHODS]:
        metrics = summary["methods"][name]
        for metric, kind in (("safety_rate", "harmful"), ("over_refusal", "harmless")):
            m = metrics[f"in_distribution.{metric}"]
            rates = [_rate(d / "eval" / f"{name}.json", kind) for d in dirs]
            assert m["mean"] == pytest.approx(np.mean(rates))
            assert m["lo"] <= m["mean"] + 1e-12 and m["mean"] <= m["hi"] + 1e-12 and m["n_seeds"] == 2
        ppl = [json.loads((d / "eval" / f"{name}.json").read_text())["perplexity"] for d in dirs]
        base = json.loads((dirs[0] / "eval" / "base.json").read_text())["perplexity"]
        # every context has the same token count: the pooled change is the geometric mean of the seeds' ones
        expected = math.exp(np.mean([math.log(p / base) for p in ppl])) - 1
        assert metrics["perplexity_change"]["mean"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert summary["methods"]["base"]["perplexity_change"]["mean"] == 0
    steps = summary["methods"]["sails"]["steps_to_90"]
    assert steps["n_prompts"] == 1 and 0 <= steps["reached"] <= 2
    paired = summary["comparisons"]["sails - lora"]
    for key, row in paired.items():
        mine, theirs = summary["methods"]["sails"][key]["mean"], summary["methods"]["lora"][key]["mean"]
        assert row["mean"] == pytest.approx(mine - theirs, abs=1e-9)
        assert row["excludes_zero"] == (row["lo"] > 0 or row["hi"] < 0)
        assert row["excludes_zero"] or row["verdict"] == "no difference shown"


def test_runs_under_other_options_compare_paired_as_methods_do(seeded):
    _, _, dirs = seeded
    summary = summarise_seeds(dirs, METHODS, n_boot=200)
    assert compare_runs(dirs, dirs, "sails", "lora", n_boot=200) == summary["comparisons"]["sails - lora"]
    same = compare_runs(dirs, dirs, "sails", n_boot=200)
    assert all(row["mean"] == 0 and not row["excludes_zero"] for row in same.values())
    paired_by_seed = compare_runs(dirs, dirs[::-1], "sails", "lora", n_boot=200)  # the order does not matter
    assert paired_by_seed == summary["comparisons"]["sails - lora"]
    with pytest.raises(SaelignError, match="same seeds"):
        compare_runs(dirs, dirs[:1], n_boot=200)


def test_a_seed_kept_as_a_record_file_summarises_like_its_run_folder(seeded, tmp_path):
    """A seed run in an earlier session survives as a small record file: beside another seed's run folder it
    gives the summary the two run folders give, and records over another upstream are refused."""
    _, _, dirs = seeded
    record, path = write_seed_record(dirs[0], METHODS, tmp_path)
    assert path == tmp_path / "seed0.json"
    assert record["seed"] == 0 and set(record["models"]) == {"base", *METHODS}
    assert "select/subspace.safetensors" in record["upstream"] and "data/test.jsonl" in record["upstream"]
    assert path.stat().st_size < 200_000
    assert all(seed_record(d, METHODS)["environment"]["cpu_threads"] >= 1 for d in dirs)  # threads, torch
    together = summarise_seeds(dirs, METHODS, n_boot=200)
    assert together["upstream_drift"] == []
    assert summarise_seeds([path, dirs[1]], METHODS, n_boot=200) == together
    with pytest.raises(SaelignError, match="lora, sails evaluated in both"):
        summarise_seeds([path, dirs[0]], METHODS, n_boot=200)
    # a seed finished over two sessions: one record per session, each with some of the methods
    halves = [json.loads(path.read_text()) for _ in METHODS]
    for half, method in zip(halves, METHODS, strict=True):
        half["models"] = {name: m for name, m in half["models"].items() if name in ("base", method)}
    assert summarise_seeds([*halves, dirs[1]], METHODS, n_boot=200) == together
    # the second session's record does not overwrite the first's, a rerun of one run's summary does
    halves[1]["source"] = "/elsewhere/seed0"
    assert record_path(tmp_path, halves[1]) == tmp_path / "seed0.1.json"
    assert record_path(tmp_path, record) == path
    other = json.loads(path.read_text())
    other["upstream"]["select/subspace.safetensors"] = "0" * 64
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(other))
    with pytest.raises(SaelignError, match="select/subspace.safetensors differ"):
        summarise_seeds([moved, dirs[1]], METHODS, n_boot=200)
    drifted = summarise_seeds([moved, dirs[1]], METHODS, n_boot=200, allow_upstream_drift=True)
    assert drifted["upstream_drift"] == ["select/subspace.safetensors"]
    assert drifted["methods"] == together["methods"]
    other["upstream"]["data/test.jsonl"] = "0" * 64
    moved.write_text(json.dumps(other))
    with pytest.raises(SaelignError, match="data/test.jsonl differ"):
        summarise_seeds([moved, dirs[1]], METHODS, n_boot=200, allow_upstream_drift=True)
    other = json.loads(path.read_text())
    flags = other["models"]["base"]["refused"]
    other["models"]["base"]["refused"] = ("0" if flags[0] == "1" else "1") + flags[1:]
    moved.write_text(json.dumps(other))
    with pytest.raises(SaelignError, match="base model's evaluation differs"):
        summarise_seeds([moved, dirs[1]], METHODS, n_boot=200)
    moved.write_text(json.dumps({**other, "format": "something else"}))
    with pytest.raises(SaelignError, match="field 'format'"):
        summarise_seeds([moved, dirs[1]], METHODS, n_boot=200)


def test_rates_per_register_are_the_seeds_means_over_that_registers_prompts(seeded, tmp_path):
    """The issue's targets hold per register: each register's rate is the seeds' mean over its own prompts;
    a record written before records kept registers still summarises, without the per-register rates."""
    _, _, dirs = seeded
    summary = summarise_seeds(dirs, METHODS, n_boot=200)
    register = {(r["kind"], r["prompt"]): r["register"]
                for r in map(json.loads, (dirs[0] / "data" / "test.jsonl").read_text().splitlines())}
    registers = sorted(set(register.values()))
    assert len(registers) >= 2
    for name in ["base", *METHODS]:
        rows = [json.loads((d / "eval" / f"{name}.json").read_text())["responses"] for d in dirs]
        for reg in registers:
            for metric, kind in (("safety_rate", "harmful"), ("over_refusal", "harmless")):
                outcomes = [[r["verdict"] == "refused" for r in seed_rows
                             if register[(r["kind"], r["prompt"])] == reg and r["kind"] == kind]
                            for seed_rows in rows]
                got = summary["methods"][name].get(f"in_distribution.{reg}.{metric}")
                if not outcomes[0]:  # no prompt of this kind in the register
                    assert got is None
                else:
                    assert got["mean"] == pytest.approx(np.mean([np.mean(o) for o in outcomes]))
    record, path = write_seed_record(dirs[0], METHODS, tmp_path)
    old = {k: v for k, v in record.items() if k != "registers"}
    pooled = summarise_seeds([old, dirs[1]], METHODS, n_boot=200)["methods"]["sails"]
    assert not any(key.count(".") > 1 for key in pooled)
    key = "in_distribution.over_refusal"
    assert pooled[key] == summary["methods"]["sails"][key]
    short = {**record, "registers": record["registers"][:-1]}
    with pytest.raises(SaelignError, match=r"outcomes and \d+ registers for \d+ prompts"):
        summarise_seeds([short, dirs[1]], METHODS, n_boot=200)
