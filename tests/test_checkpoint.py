"""The trainers' shared layer: checkpoint round trip and atomicity, resume fingerprint, optimizer/RNG state, LR."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from saelign import checkpoint
from saelign.align.posttrain import PostTrainConfig
from saelign.checkpoint import STATE_FILE, fingerprint, load, save, scheduled_lr
from saelign.errors import SaelignError
from saelign.sae.train import SAETrainConfig
from saelign.sails.sft import SFTConfig


def tensors(value: float) -> dict[str, dict[str, torch.Tensor]]:
    return {"weights": {"w": torch.full((2, 3), value)}, "rng": {"torch": torch.arange(4)}}


def test_round_trip_keeps_one_checkpoint(tmp_path):
    assert load(tmp_path, {}) is None
    save(tmp_path, 3, tensors(1.0), {"lr": 1}, note="first")
    save(tmp_path, 7, tensors(2.0), {"lr": 1}, note="second")
    state, loaded = load(tmp_path, {"lr": 1})
    assert (state["step"], state["note"], state["options"]) == (7, "second", {"lr": 1})
    assert torch.equal(loaded["weights"]["w"], torch.full((2, 3), 2.0))
    assert torch.equal(loaded["rng"]["torch"], torch.arange(4))
    assert {p.name for p in tmp_path.iterdir()} == {STATE_FILE, "rng-step000000007.safetensors",
                                                    "weights-step000000007.safetensors"}


def test_a_crash_at_any_point_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    # Tensor files without a state file (a first save that died) are no checkpoint.
    (tmp_path / "weights-step000000005.safetensors").write_bytes(b"half-written")
    assert load(tmp_path, {}) is None
    save(tmp_path, 5, tensors(1.0), {})

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "write_json_atomic", die)  # the new tensors are written, the state is not
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 9, tensors(2.0), {})
    monkeypatch.undo()
    assert (tmp_path / "weights-step000000009.safetensors").exists()
    state, loaded = load(tmp_path, {})
    assert state["step"] == 5 and torch.equal(loaded["weights"]["w"], torch.full((2, 3), 1.0))
    save(tmp_path, 10, tensors(3.0), {})  # the next save clears the orphans
    assert {p.name for p in tmp_path.glob("*.safetensors")} == {"weights-step000000010.safetensors",
                                                                "rng-step000000010.safetensors"}


def test_loading_removes_what_a_crash_left_beside_the_checkpoint(tmp_path):
    """A run killed after its last state file but before the files it replaced were removed (the align-train
    fault trial) resumes at its last step and never saves again: loading clears them, and temp files too."""
    save(tmp_path, 5, tensors(1.0), {})
    stale = ("weights-step000000004.safetensors", ".weights-step000000006.safetensors.k2j4.tmp", ".tmpAb12Cd")
    for name in stale:
        (tmp_path / name).write_bytes(b"left by a crash")
    state, loaded = load(tmp_path, {})
    assert state["step"] == 5 and torch.equal(loaded["weights"]["w"], torch.full((2, 3), 1.0))
    assert {p.name for p in tmp_path.iterdir()} == {STATE_FILE, "rng-step000000005.safetensors",
                                                    "weights-step000000005.safetensors"}


def test_a_removal_cut_short_leaves_no_checkpoint(tmp_path, monkeypatch):
    """The sails-train fault trial: killed while the finished SFT checkpoint was deleted, the state file
    outlived a tensor file and the rerun failed on it. The state file goes first."""
    save(tmp_path, 5, tensors(1.0), {})

    def killed(path, ignore_errors=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.remove(tmp_path)
    monkeypatch.undo()
    assert load(tmp_path, {}) is None
    checkpoint.remove(tmp_path)
    assert not tmp_path.exists()


def test_a_foreign_state_file_is_refused(tmp_path):
    (tmp_path / STATE_FILE).write_text(json.dumps({"format_version": 99, "files": {}}))
    with pytest.raises(SaelignError, match="delete the checkpoint folder"):
        load(tmp_path, {})


def test_fingerprint_refusal_names_the_changed_options_and_ignores_free_ones(tmp_path):
    cfg = SFTConfig(out="a", eval_every=5)
    saved = fingerprint(cfg, data_sha256="x")
    assert "lr" in saved and "out" not in saved and "eval_every" not in saved
    save(tmp_path, 1, tensors(1.0), saved)
    assert load(tmp_path, fingerprint(dataclasses.replace(cfg, out="b", eval_every=0), data_sha256="x"))
    changed = fingerprint(dataclasses.replace(cfg, lr=1.0, seed=3), data_sha256="y")
    with pytest.raises(SaelignError, match=r"different options \(data_sha256, lr, seed\).*another --out"):
        load(tmp_path, changed)
    # An option added after a checkpoint was written is compared at the value the older run used.
    save(tmp_path, 2, tensors(1.0), {k: v for k, v in saved.items() if k != "seed"})
    assert load(tmp_path, saved, added={"seed": cfg.seed})
    with pytest.raises(SaelignError, match=r"\(seed\)"):
        load(tmp_path, saved, added={"seed": cfg.seed + 1})


@pytest.mark.parametrize("cls", [SAETrainConfig, PostTrainConfig, SFTConfig])
def test_free_options_are_fields_of_their_config(cls):
    names = {f.name for f in dataclasses.fields(cls)}
    assert cls.RESUME_FREE and cls.RESUME_FREE <= names
    assert "seed" in names - cls.RESUME_FREE  # what changes the result is never free


def test_optimizer_state_resumes_a_transposed_parameter_exactly():
    def make() -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
        weight = torch.nn.Parameter(torch.arange(12.0).reshape(4, 3).t())  # stored transposed, like SAE.W_enc
        return weight, torch.optim.Adam([weight], lr=0.1, fused=True)

    def step(weight: torch.nn.Parameter, optimizer: torch.optim.Optimizer, seed: int) -> None:
        grad = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed))
        (weight * grad).sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    a, opt_a = make()
    for seed in range(3):
        step(a, opt_a, seed)
    flat, groups = checkpoint.optimizer_tensors(opt_a)
    b, opt_b = make()
    with torch.no_grad():
        b.copy_(a)
    checkpoint.load_optimizer(opt_b, {k: v.contiguous().clone() for k, v in flat.items()},
                              json.loads(json.dumps(groups)))
    for seed in range(3, 6):
        step(a, opt_a, seed)
        step(b, opt_b, seed)
    assert torch.equal(a, b)


def test_rng_state_round_trip():
    state = checkpoint.rng_state()
    first = torch.rand(5)
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(5), first)


def test_lr_schedule_values_at_known_steps():
    # Linear warm-up to 10 (at the step's end), linear decay over the last 40 of 100 (from the step's start).
    lr = [scheduled_lr(2.0, s, s + 1, 100, warmup=10, decay=40) for s in range(100)]
    assert lr[0] == pytest.approx(0.2) and lr[4] == pytest.approx(1.0) and lr[9] == lr[59] == 2.0
    assert lr[60] == pytest.approx(2.0) and lr[80] == pytest.approx(1.0) and lr[99] == pytest.approx(0.05)
    assert [scheduled_lr(1.0, s, s + 1, 10) for s in (0, 9)] == [1.0, 1.0]
    cosine = [scheduled_lr(1.0, s, s + 1, 10, warmup=2, cosine=True) for s in (0, 1, 5, 9)]
    assert cosine == pytest.approx([0.5, 0.5 * (1 + math.cos(math.pi / 10)), 0.5, 0.5 * (1 - math.cos(math.pi / 10))])


def test_lr_schedule_matches_the_trainers_former_formulas_bitwise():
    def sae(peak, done, size, total, warmup_fraction, decay_fraction):
        factor = 1.0 if warmup_fraction == 0 else min(1.0, (done + size) / (warmup_fraction * total))
        if decay_fraction:
            factor *= min(1.0, (total - done) / (decay_fraction * total))
        return peak * factor

    def sft(lr, step, steps, warmup, cosine):
        warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        if cosine:
            return lr * warm * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
        return lr * warm

    total, size = 7_000, 333
    for warmup, decay in ((0.0, 0.0), (0.01, 0.5), (0.3, 0.2), (0.0, 0.7)):
        for done in range(0, total, size):
            assert scheduled_lr(3.7e-3, done, done + size, total, warmup * total, decay * total) == \
                   sae(3.7e-3, done, size, total, warmup, decay)
    for warmup in (0, 1, 7):
        for cosine in (False, True):
            for step in range(23):
                assert scheduled_lr(2.5e-4, step, step + 1, 23, warmup, cosine=cosine) == \
                       sft(2.5e-4, step, 23, warmup, cosine)
