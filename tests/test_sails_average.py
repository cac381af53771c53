"""SFT's moving average of the weights (`sft.ema_decay`): it leaves training itself alone, the checks read
the average and the model ends as the average (equal to one computed by hand from the plain run's steps), a
resumed run keeps the average it had, and off is the old path."""

from __future__ import annotations

import pytest
import torch

from saelign.errors import SaelignError
from saelign.sails.sft import AVERAGE_FIELDS, CHECKPOINT_DIR, SFTConfig, train_sft
from test_sails_sft import PAIRS, lora_model, trainable

DECAY = 0.6


def snapshots(model, step: int, seen: list) -> dict[str, float]:
    """An eval_fn that keeps the trainable weights the check sees."""
    seen.append(trainable(model))
    return {"safety_rate": 0.0, "over_refusal": 0.0}


def run(tokenizer, seen: list, **options):
    model = lora_model(tokenizer)
    cfg = SFTConfig(**{"steps": 4, "lr": 2e-2, "batch_size": 2, "warmup": 1, "eval_every": 1, **options})
    history = train_sft(model, tokenizer, PAIRS, cfg, eval_fn=lambda m, step: snapshots(m, step, seen))
    return model, history


def test_the_average_is_evaluated_and_returned_and_training_is_unchanged(tokenizer):
    steps, averaged = [], []
    _, plain = run(tokenizer, steps)
    model, history = run(tokenizer, averaged, ema_decay=DECAY)
    # the average does not feed back: every step's loss is the plain run's
    assert [e["loss"] for e in history["train"]] == [e["loss"] for e in plain["train"]]
    expected = [steps[0]]  # step 0: the initial weights
    for weights in steps[1:]:
        expected.append({n: DECAY * expected[-1][n] + (1 - DECAY) * w for n, w in weights.items()})
    assert len(averaged) == len(expected) == 5
    for got, want in zip(averaged, expected, strict=True):
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)
    moved = max(float((expected[-1][n] - steps[-1][n]).abs().max()) for n in steps[-1])
    assert moved > 1e-3  # the average is not the last step's weights
    for name, weight in trainable(model).items():
        torch.testing.assert_close(weight, expected[-1][name], rtol=1e-5, atol=1e-7)


def test_a_resumed_run_continues_its_average(tokenizer, tmp_path):
    whole, _ = run(tokenizer, [], ema_decay=DECAY)
    run(tokenizer, [], ema_decay=DECAY, steps=2, checkpoint_every=1, out=str(tmp_path / "run"))
    resumed, history = run(tokenizer, [], ema_decay=DECAY, checkpoint_every=1, out=str(tmp_path / "run"))
    assert [e["step"] for e in history["train"]] == [1, 2, 3, 4]
    for (name, x), y in zip(trainable(whole).items(), trainable(resumed).values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)
    state = (tmp_path / "run" / CHECKPOINT_DIR / "state.json").read_text()
    assert "ema_decay" in state
    with pytest.raises(SaelignError):  # another decay is another run: not resumed into
        run(tokenizer, [], ema_decay=0.9, checkpoint_every=1, out=str(tmp_path / "run"))


def test_decay_zero_is_the_old_path(tokenizer, tmp_path):
    plain, _ = run(tokenizer, [])
    off, _ = run(tokenizer, [], ema_decay=0.0, checkpoint_every=1, out=str(tmp_path / "off"))
    for (name, x), y in zip(trainable(plain).items(), trainable(off).values(), strict=True):
        assert torch.equal(x, y), name
    state = (tmp_path / "off" / CHECKPOINT_DIR / "state.json").read_text()
    assert not any(name in state for name in AVERAGE_FIELDS)


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_a_decay_outside_zero_to_one_is_refused(decay):
    with pytest.raises(SaelignError, match="ema_decay"):
        SFTConfig(ema_decay=decay)
