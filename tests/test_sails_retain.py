"""SFT's retain term (KL to the base model on generic text) and the held-out text it reads: a hand-computed
KL, zero at step 0, off is the old path, on keeps the model nearer the base, exact resume, refusals; the
retain and validation text never share a file with the test text."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import TRAINING_TEXT, make_tiny_model
from saelign.datasets.corpus import open_corpus
from saelign.errors import SaelignError
from saelign.sails.evaluate import heldout_contexts, heldout_files
from saelign.sails.lora_init import prepare_full_finetune
from saelign.sails.retain import kl_to_base_sum, retain_mask
from saelign.sails.sft import CHECKPOINT_DIR, RETAIN_FIELDS, SFTConfig, train_sft
from test_sails_sft import PAIRS, lora_model


def contexts(tokenizer, n: int = 6, length: int = 24) -> torch.Tensor:
    """Generic text packed into [n, length] contexts, the last one padded at its end."""
    ids = tokenizer(" ".join(TRAINING_TEXT[:6]), add_special_tokens=False)["input_ids"]
    rows = [ids[i * length:(i + 1) * length] for i in range(n)]
    rows[-1] = rows[-1][: length // 2] + [tokenizer.pad_token_id] * (length - length // 2)
    return torch.tensor(rows)


def mean_kl(model, retain: torch.Tensor, pad_id: int) -> float:
    mask = retain_mask(retain, pad_id)
    with torch.no_grad():
        return float(kl_to_base_sum(model, retain, mask)) / int(mask.sum())


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_kl_equals_a_hand_computed_reference_and_is_zero_before_training(tokenizer):
    model = lora_model(tokenizer)
    base = copy.deepcopy(model.get_base_model())  # the untouched weights, before any adapter moves
    retain = contexts(tokenizer)
    # Delta W = 0 at step 0
    assert mean_kl(model, retain, tokenizer.pad_token_id) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    mask = retain_mask(retain, tokenizer.pad_token_id)
    with torch.no_grad():
        got = float(kl_to_base_sum(model, retain, mask))
        expected = 0.0
        for row, keep in zip(retain, mask, strict=True):
            n = int(keep.sum())  # pads only at the end: score the unpadded prefix
            p_base = base(row[:n].unsqueeze(0)).logits[0].log_softmax(-1)
            p_adapted = model(input_ids=row[:n].unsqueeze(0)).logits[0].log_softmax(-1)
            expected += float((p_base.exp() * (p_base - p_adapted)).sum())
    assert expected > 1e-3 and got == pytest.approx(expected, rel=1e-4)


def check_term_off(tokenizer, tmp_path, pairs, given: dict, fields: tuple[str, ...],
                   dropout: float = 0.0) -> None:
    """With its weight 0, an SFT term's input (`given` to train_sft) changes nothing: the same weights and
    losses as a run without it, and the checkpoint's options name none of its `fields`, so checkpoints written
    before the term existed stay resumable."""
    cfg = SFTConfig(steps=4, lr=5e-3, batch_size=2, warmup=1, checkpoint_every=2, out=str(tmp_path / "off"))
    plain, with_input = lora_model(tokenizer, dropout=dropout), lora_model(tokenizer, dropout=dropout)
    history = train_sft(plain, tokenizer, pairs, SFTConfig(steps=4, lr=5e-3, batch_size=2, warmup=1))
    history_given = train_sft(with_input, tokenizer, pairs, cfg, **given)
    for (name, x), y in zip(weights(plain).items(), weights(with_input).values(), strict=True):
        assert torch.equal(x, y), name
    assert [e["loss"] for e in history["train"]] == [e["loss"] for e in history_given["train"]]
    assert set(history_given["train"][0]) == set(history["train"][0])  # nothing more logged
    state = (tmp_path / "off" / CHECKPOINT_DIR / "state.json").read_text()
    assert "data_sha256" in state and not any(name in state for name in fields)


def test_retain_weight_zero_is_the_old_path(tokenizer, tmp_path):
    check_term_off(tokenizer, tmp_path, PAIRS, {"retain": contexts(tokenizer)},
                   (*RETAIN_FIELDS, "retain_sha256"), dropout=0.1)


def test_the_retain_term_keeps_the_model_nearer_the_base_on_the_retain_text(tokenizer):
    retain = contexts(tokenizer)
    drift = {}
    for weight in (0.0, 20.0):  # (Adam's steps keep a floor of drift near lr whatever the weight)
        model = lora_model(tokenizer)
        cfg = SFTConfig(steps=30, lr=5e-3, batch_size=4, warmup=1, retain_weight=weight, retain_batch=3)
        history = train_sft(model, tokenizer, PAIRS, cfg, retain=retain)
        drift[weight] = mean_kl(model, retain, tokenizer.pad_token_id)
        assert ("retain_kl" in history["train"][-1]) == (weight > 0)
    assert drift[0.0] > 0.005  # the fine-tune alone moves the model on text it never trained on
    assert drift[20.0] < 0.5 * drift[0.0]


def check_term_resumes(tokenizer, tmp_path, pairs, options: dict, logged: str, given: dict, other: dict,
                       dropout: float = 0.0) -> None:
    """A run with an SFT term (`options`, its input `given` to train_sft) stopped at step 2 and resumed ends
    with the weights and the term's `logged` values of an uninterrupted one; `other` input is another run."""
    def cfg(out, steps):
        return SFTConfig(steps=steps, lr=5e-3, batch_size=2, warmup=1, checkpoint_every=2, out=str(out),
                         **options)

    reference = lora_model(tokenizer, dropout=dropout)
    full = train_sft(reference, tokenizer, pairs, cfg(tmp_path / "a", 4), **given)
    train_sft(lora_model(tokenizer, dropout=dropout), tokenizer, pairs, cfg(tmp_path / "b", 2), **given)
    resumed_model = lora_model(tokenizer, dropout=dropout)
    resumed = train_sft(resumed_model, tokenizer, pairs, cfg(tmp_path / "b", 4), **given)
    for (name, x), y in zip(weights(reference).items(), weights(resumed_model).values(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5, msg=name)
    values = [e[logged] for e in full["train"]]
    assert [e[logged] for e in resumed["train"]] == pytest.approx(values)
    with pytest.raises(SaelignError, match="different options"):  # other input: not the same run
        train_sft(lora_model(tokenizer), tokenizer, pairs, cfg(tmp_path / "b", 6), **other)


def test_a_resumed_run_with_the_retain_term_ends_with_the_same_weights(tokenizer, tmp_path):
    retain = contexts(tokenizer)
    check_term_resumes(tokenizer, tmp_path, PAIRS, {"retain_weight": 1.0, "retain_batch": 2}, "retain_kl",
                       {"retain": retain}, {"retain": retain[1:]}, dropout=0.1)


@pytest.mark.parametrize("options, match", [
    ({"retain_weight": -1.0}, "retain_weight"),
    ({"retain_weight": float("nan")}, "retain_weight"),
    ({"retain_batch": 0}, "retain_batch"),
    ({"retain_contexts": 0}, "retain_contexts"),
    ({"retain_context_length": 1}, "retain_context_length"),
])
def test_bad_retain_options_are_refused(options, match):
    with pytest.raises(SaelignError, match=match):
        SFTConfig(**options)


def test_the_retain_term_needs_text_and_a_lora_model(tokenizer):
    cfg = SFTConfig(steps=1, retain_weight=1.0)
    with pytest.raises(SaelignError, match="needs retain text"):
        train_sft(lora_model(tokenizer), tokenizer, PAIRS, cfg)
    full = prepare_full_finetune(make_tiny_model("llama", len(tokenizer)), ["q_proj"], [0])
    with pytest.raises(SaelignError, match="method full"):
        train_sft(full, tokenizer, PAIRS, cfg, retain=contexts(tokenizer))


def test_validation_and_retain_text_never_share_a_file_with_the_test_text(tmp_path, tokenizer):
    words = [f"w{i}x" for i in range(9)]
    for word in words:
        (tmp_path / f"{word}.txt").write_text(" ".join([word] * 30))
    trained = {words[4]}  # a speech a training prompt quotes: in no part
    parts = heldout_files(str(tmp_path), seed=5, exclude_stems=trained)
    stems = {part: {p.stem for p in files} for part, files in parts.items()}
    assert stems["test"] and stems["validation"] and stems["retain"]
    assert not (stems["test"] & stems["validation"] or stems["test"] & stems["retain"]
                or stems["validation"] & stems["retain"])
    assert set().union(*stems.values()) == set(words) - trained
    order = [p.stem for p in reversed(open_corpus(str(tmp_path), seed=5).files) if p.stem not in trained]
    assert [p.stem for p in parts["test"]] == order[:4]  # the test text starts where it always started

    def read(part: str) -> set[str]:
        read = heldout_contexts(tokenizer, str(tmp_path), 100, 16, 5, trained, part=part)
        text = tokenizer.decode(read.reshape(-1))
        return {w for w in words if w in text}

    seen = {part: read(part) for part in parts}
    assert seen == stems  # each part's contexts read exactly its files
    one_file = tmp_path / "one.txt"
    one_file.write_text("a few words of text\n\nand a second paragraph")
    with pytest.raises(SaelignError, match="one file"):
        heldout_contexts(tokenizer, str(one_file), 2, 4, 0, set(), part="retain")
