"""Data parallelism: two CPU processes (gloo) started through torchrun on the tiny model give what one process
gives on the same global batches -- capture (as a multiset of rows), SAE training, AlignSAE post-training and
adapter SFT -- and the single-process helpers are no-ops.

Tolerances: the two-process runs differ from one process only in float summation order (gradients summed over
ranks, reductions in another order), measured at ~4e-7 on the SAE weights; the tests allow 1e-5 absolute on
every trained weight (SAE, aligned SAE, LoRA adapter), relative to it above 1. Capture must match exactly."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ddp_worker
import saelign
import test_sails_pipeline as sails_case
from conftest import TRAINING_TEXT
from saelign import distributed
from saelign.cli import main
from saelign.io import load_tensors
from saelign.models import ModelConfig
from saelign.sae import load_sae
from saelign.sae.model import SAEConfig
from saelign.sae.pipeline import train_from_store
from saelign.sails import pipeline
from saelign.store import ActivationStore, CaptureConfig, capture

TESTS = Path(__file__).parent
inputs = sails_case.inputs  # the SAILS pipeline tests' fixture: a tiny run's data, corpus and config
HOOKPOINT, SECOND = "model.layers.1", "model.layers.2"
WEIGHT_ATOL = 1e-5


def cpu_env() -> dict[str, str]:
    """The worktree's saelign, one thread a process, and no GPU: two ranks on one GPU could not both take it
    (one process per GPU), and the test compares CPU runs."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(saelign.__file__).parents[1]), str(TESTS)]),
        "OMP_NUM_THREADS": "1",
        "SAELIGN_QUIET": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",
    }


def torchrun(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Two gloo processes on this machine (--standalone: a free port, so parallel runs do not collide)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    done = subprocess.run(cmd, env=cpu_env(), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"torchrun failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}")
    return done


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_llama_dir):
    """One-process and two-process captures of the same corpus, and the worker's two-process jobs."""
    root = tmp_path_factory.mktemp("ddp")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(TRAINING_TEXT * 3), encoding="utf-8")
    cfg = CaptureConfig(
        hookpoints=[HOOKPOINT, SECOND],
        corpus=str(corpus),
        context_length=32,
        token_budget=2000,
        batch_size=4,
        shard_tokens=256,
        out=str(root / "one"),
    )
    capture(ModelConfig(model=str(tiny_llama_dir), device="cpu"), cfg)
    began = time.perf_counter()
    cli = torchrun(
        "-m",
        "saelign",
        "capture",
        "--model",
        str(tiny_llama_dir),
        "--device",
        "cpu",
        "--hookpoints",
        f"{HOOKPOINT},{SECOND}",
        "--corpus",
        str(corpus),
        "--context-length",
        "32",
        "--token-budget",
        "2000",
        "--batch-size",
        "4",
        "--shard-tokens",
        "256",
        "--out",
        str(root / "two"),
    )
    store = root / "one" / HOOKPOINT
    torchrun(
        str(TESTS / "ddp_worker.py"),
        str(store),
        str(root / "work"),
        str(root / "two" / HOOKPOINT),
        str(root / "two" / SECOND),
    )
    return {"root": root, "store": store, "cli": cli, "seconds": time.perf_counter() - began}


def sorted_rows(path: Path) -> torch.Tensor:
    """Every row of a store with its context, position and token, in (context, position) order."""
    chunks = [
        torch.cat(
            [
                c["context_ids"][:, None].double(),
                c["positions"][:, None].double(),
                c["token_ids"][:, None].double(),
                c["activations"].double(),
            ],
            dim=1,
        )
        for c in ActivationStore(path).iter_rows_with_tokens()
    ]
    rows = torch.cat(chunks)
    return rows[torch.argsort(rows[:, 0] * 100_000 + rows[:, 1])]


@pytest.mark.parametrize("hookpoint", [HOOKPOINT, SECOND])
def test_two_ranks_capture_the_rows_of_one(world, hookpoint):
    one, two = world["root"] / "one" / hookpoint, world["root"] / "two" / hookpoint
    merged = json.loads((two / "manifest.json").read_text())
    assert merged["parts"] == ["part-000-of-002", "part-001-of-002"] and merged["complete"]
    assert {s["file"].split("/")[0] for s in merged["shards"]} == set(merged["parts"])
    assert torch.equal(sorted_rows(one), sorted_rows(two))  # the same multiset, bit for bit
    assert f"{hookpoint}: 2000 tokens" in world["cli"].stdout
    assert world["cli"].stdout.count("tokens x") == 2  # rank 0 alone reports, one line per hookpoint


def test_distribute_modules_trains_each_hookpoint_on_one_rank(world, tmp_path):
    for rank, hookpoint in enumerate([HOOKPOINT, SECOND]):
        folder = world["root"] / "work" / "modules" / hookpoint
        record = json.loads((folder / "run.json").read_text())["stages"]["sae_train"]
        assert (record["rank"], record["processes"]) == (rank, 1)  # alone on its rank
        cfg = dataclasses.replace(
            ddp_worker.per_hookpoint_config(str(tmp_path / hookpoint)), distribute_modules=False
        )
        (one,) = train_from_store(
            world["root"] / "two" / hookpoint, [SAEConfig(d_sae=32, activation="topk", k=4)], cfg
        )
        # the same computation in one process (not bit for bit: ~3e-8 on W_enc, from the matmul kernels)
        assert_same_weights(one.state_dict(), load_sae(folder).state_dict())


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        gap = float((a[name].float() - b[name].float()).abs().max())
        scale = max(1.0, float(a[name].float().abs().max()))  # norm_scale is ~47: its float steps are larger
        assert gap <= WEIGHT_ATOL * scale, f"{name}: two processes differ from one by {gap:.3g}"


def test_sae_training_on_two_ranks_matches_one_process(world, tmp_path):
    two = load_sae(world["root"] / "work" / "sae")
    one = ddp_worker.train_sae(str(world["store"]), str(tmp_path / "sae"), reference=True)
    assert_same_weights(one.state_dict(), two.state_dict())
    log = json.loads((world["root"] / "work" / "sae" / "train_log.json").read_text())["entries"]
    assert log[-1]["tokens"] == 2000 and log[-1]["fvu"] < 1.0
    ranks = json.loads((world["root"] / "work" / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and ranks["sae"] == 0.0  # both ranks hold the very same weights


def test_post_training_on_two_ranks_matches_one_process(world, tmp_path):
    sae_dir = world["root"] / "work" / "sae"
    one = ddp_worker.align_sae(str(sae_dir), str(world["store"]), str(tmp_path / "align"))
    two = load_sae(world["root"] / "work" / "align")
    assert_same_weights(one.state_dict(), two.state_dict())
    assert json.loads((world["root"] / "work" / "ranks.json").read_text())["align"] == 0.0


def test_sft_on_two_ranks_matches_one_process(world, tmp_path):
    one = ddp_worker.fine_tune(str(tmp_path / "sft"))
    two = load_tensors(world["root"] / "work" / "sft" / "final.safetensors")
    assert_same_weights(one, two)
    assert any(float(t.abs().max()) > 0 for t in two.values())  # it trained
    history = json.loads((world["root"] / "work" / "sft" / "final_history.json").read_text())
    assert [e["step"] for e in history["eval"]] == [0, 3, 6]  # rank 0's evaluations, shared with rank 1
    assert json.loads((world["root"] / "work" / "ranks.json").read_text())["sft"] == 0.0


def test_one_process_helpers_are_no_ops():
    assert not distributed.launched() and distributed.world_size() == 1 and distributed.is_main()
    t = torch.arange(6.0)
    assert distributed.all_reduce_(t, "mean") is t and torch.equal(t, torch.arange(6.0))
    assert torch.equal(distributed.all_gather_rows(t), t) and distributed.split([1, 2, 3]) == [1, 2, 3]
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    distributed.require_divisible(7, "batch_size")  # anything divides by one process


def test_single_process_subcommands_refuse_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["sae", "eval", "--sae", "x", "--store", "y", "--out", "z"]) == 2
    assert "runs in one process: run it without torchrun" in capsys.readouterr().err


@pytest.mark.slow
def test_a_rank_that_dies_fails_the_job_and_the_rerun_resumes(world, tmp_path, tiny_llama_dir):
    """Kill rank 1 mid-training: torchrun stops at once with an error; the same command then resumes from the
    checkpoint and ends with the weights of an uninterrupted two-process run."""
    args = [
        "-m",
        "saelign",
        "sae",
        "train",
        "--store",
        str(world["store"]),
        "--k",
        "4",
        "--d-sae",
        "64",
        "--batch-size",
        "64",
        "--total-tokens",
        "200000",
        "--checkpoint-every-tokens",
        "20000",
        "--device",
        "cpu",
    ]
    torchrun(*args, "--out", str(tmp_path / "whole"))
    out = tmp_path / "cut"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *args,
        "--out",
        str(out),
    ]
    job = subprocess.Popen(
        cmd, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    state = out / "checkpoint" / "state.json"
    while not state.is_file() and job.poll() is None:
        time.sleep(0.05)
    assert job.poll() is None, "training ended before its first checkpoint; raise --total-tokens"
    worker = next(p for p in _children(job.pid) if f"--out {out}" in _cmdline(p) and _rank(p) == 1)
    os.kill(worker, signal.SIGKILL)
    began = time.perf_counter()
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0 and time.perf_counter() - began < 60
    assert "exitcode  : -9" in err or "Signal 9" in err  # torchrun names the rank that died
    torchrun(*args, "--out", str(out))
    assert_same_weights(load_sae(tmp_path / "whole").state_dict(), load_sae(out).state_dict())


def _children(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        path = Path(f"/proc/{parent}/task/{parent}/children")
        kids = [int(k) for k in path.read_text().split()] if path.exists() else []
        found += kids
        todo += kids
    return found


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def _rank(pid: int) -> int:
    env = dict(e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in e)
    return int(env.get("RANK", "-1"))


@pytest.mark.slow
def test_sails_train_stage_under_torchrun_matches_one_process(tmp_path, inputs):
    """`saelign sails train` on two ranks after the earlier stages ran in one process: the same adapter."""
    cfg = sails_case.tiny_config(inputs, model={"device": "cpu"})
    one, two = tmp_path / "one", tmp_path / "two"
    pipeline.run_pipeline(cfg, one, ["data", "sae", "labels", "select", "targets"])
    shutil.copytree(one, two)
    pipeline.run_pipeline(cfg, one, ["train"])
    torchrun("-m", "saelign", "sails", "train", "--run-dir", str(two))
    adapter = Path("methods") / "sails" / "adapter" / "adapter_model.safetensors"
    assert_same_weights(load_tensors(one / adapter), load_tensors(two / adapter))
    assert json.loads((two / "run.json").read_text())["stages"]["train:sails"]["processes"] == 2


def test_a_merged_store_knows_its_last_context(world):
    one, two = (ActivationStore(world["root"] / name / HOOKPOINT) for name in ("one", "two"))
    last = int(sorted_rows(world["root"] / "one" / HOOKPOINT)[-1, 0])
    assert two.last_context() == one.last_context() == last
