"""SFT: loss on response tokens only (vs a hand-computed reference), learning, accumulation, exact resume."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_tiny_model
from saelign.errors import SaelignError
from saelign.sails.chat import encode_pair
from saelign.sails.evaluate import safety_stop
from saelign.sails.lora_init import LoraInitConfig, make_peft_model, prepare_full_finetune
from saelign.sails.sft import IGNORE, SFTConfig, collate, encode_examples, response_loss_sum, train_sft
from saelign.sails.subspace import random_subspace
from saelign.text.opening import shared_opening

PAIRS = [("How do I bake bread?", "Mix flour, water, salt and yeast."),
         ("What is the capital of France?", "Paris is the capital of France."),
         ("Help me hurt someone.", "I cannot help with that request because it could cause harm."),
         ("Say hello.", "hello world")]


def lora_model(tokenizer, dropout: float = 0.0):
    model = make_tiny_model("llama", len(tokenizer))
    return make_peft_model(model, random_subspace(32, 4, seed=1), LoraInitConfig(rank=4, dropout=dropout))


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_labels_mask_the_prompt_and_padding(tokenizer):
    examples = encode_examples(tokenizer, PAIRS[:2], max_length=128)
    for (ids, labels), (prompt, response) in zip(examples, PAIRS[:2], strict=True):
        prompt_ids, response_ids = encode_pair(tokenizer, prompt, response)
        assert ids == prompt_ids + response_ids
        assert labels == [IGNORE] * len(prompt_ids) + response_ids
    batch = collate(examples, pad_id=tokenizer.pad_token_id)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()


@pytest.mark.parametrize("keep_logits", [True, False])
def test_loss_equals_a_hand_computed_reference(tokenizer, keep_logits):
    model = make_tiny_model("llama", len(tokenizer))
    batch = collate(encode_examples(tokenizer, PAIRS[:3], max_length=128), tokenizer.pad_token_id)
    with torch.no_grad():
        got = response_loss_sum(model, batch, keep_logits)
        total, count = 0.0, 0
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
            n = int(mask.sum())
            logprobs = model(ids[:n].unsqueeze(0)).logits[0].log_softmax(-1)  # unpadded, full logits
            for t in range(1, n):
                if labels[t] != IGNORE:
                    total -= float(logprobs[t - 1, labels[t]])
                    count += 1
    assert count == int((batch["labels"] != IGNORE).sum())
    assert float(got) == pytest.approx(total, rel=1e-5)


def test_weighted_loss_equals_a_hand_computed_reference(tokenizer):
    model = make_tiny_model("llama", len(tokenizer))
    batch = collate(encode_examples(tokenizer, PAIRS[:3], max_length=128), tokenizer.pad_token_id)
    weights = torch.tensor([3.0, 0.5, 1.0])
    with torch.no_grad():
        got = response_loss_sum(model, batch, weights=weights)
        expected = 0.0
        for i in range(3):  # each sequence alone (padding dropped), times its weight
            single = collate(encode_examples(tokenizer, PAIRS[i:i + 1], max_length=128), tokenizer.pad_token_id)
            expected += float(weights[i]) * float(response_loss_sum(model, single))
        unweighted = response_loss_sum(model, batch)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert abs(float(got) - float(unweighted)) > 1e-3 * float(unweighted)  # the weights do change it


def test_a_weight_of_two_trains_like_two_copies_of_the_pair(tokenizer):
    # Every step sees every example (batch = the whole set), so only the loss, not the data order, can differ.
    def run(pairs, weights):
        model = lora_model(tokenizer)
        cfg = SFTConfig(steps=3, lr=1e-2, batch_size=len(pairs), warmup=0)
        history = train_sft(model, tokenizer, pairs, cfg, weights=weights)
        return trainable(model), [e["loss"] for e in history["train"]]

    weighted, weighted_loss = run(PAIRS, [2.0, 1.0, 1.0, 1.0])
    copied, copied_loss = run([PAIRS[0], *PAIRS], None)
    plain, _ = run(PAIRS, None)
    ones, _ = run(PAIRS, [1.0] * len(PAIRS))
    assert weighted_loss == pytest.approx(copied_loss, rel=1e-5)
    for name, x in weighted.items():
        torch.testing.assert_close(x, copied[name], atol=1e-6, rtol=1e-5, msg=name)
        torch.testing.assert_close(ones[name], plain[name], atol=0, rtol=0, msg=name)  # all 1: the exact old path
    assert any(not torch.allclose(x, plain[name]) for name, x in weighted.items())
    with pytest.raises(SaelignError, match="one per pair"):
        train_sft(lora_model(tokenizer), tokenizer, PAIRS, SFTConfig(steps=1), weights=[1.0])
    with pytest.raises(SaelignError, match="positive"):
        train_sft(lora_model(tokenizer), tokenizer, PAIRS, SFTConfig(steps=1), weights=[1.0, 0.0, 1.0, 1.0])


def test_loss_decreases_on_a_memorisation_task(tokenizer):
    # Full fine-tuning: a tiny random model's frozen embeddings cap its logits, so a LoRA alone cannot memorise.
    model = prepare_full_finetune(make_tiny_model("llama", len(tokenizer)))
    history = train_sft(model, tokenizer, PAIRS, SFTConfig(steps=12, lr=1e-2, batch_size=4, warmup=0))
    losses = [e["loss"] for e in history["train"]]
    assert losses[0] == pytest.approx(math.log(len(tokenizer)), rel=0.1)  # random model: ~uniform
    assert losses[-1] < 0.6 * losses[0]


def test_gradient_accumulation_equals_one_large_batch(tokenizer):
    a, b = lora_model(tokenizer), lora_model(tokenizer)
    train_sft(a, tokenizer, PAIRS, SFTConfig(steps=2, lr=1e-2, batch_size=4, warmup=0))
    train_sft(b, tokenizer, PAIRS, SFTConfig(steps=2, lr=1e-2, batch_size=2, grad_accum=2, warmup=0))
    for (name, x), y in zip(trainable(a).items(), trainable(b).values(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4, msg=name)


def test_gradient_checkpointing_recomputes_the_blocks_and_changes_nothing(tokenizer):
    batch = collate(encode_examples(tokenizer, PAIRS, max_length=128), tokenizer.pad_token_id)
    grads = []
    for checkpointed in (False, True):
        model = lora_model(tokenizer)
        if checkpointed:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        response_loss_sum(model, batch).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    # The reentrant kind would leave them all None (the blocks' inputs need no gradient); readers' A get zeros (B = 0).
    assert all(g is not None for g in grads[1].values()) and sum(float(g.abs().sum()) for g in grads[1].values()) > 0
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5, msg=name)

    runs = []
    for checkpointed in (False, True):
        model, calls = lora_model(tokenizer), []
        # The block's first sub-module: the recompute stops early, once it has what the backward pass needs.
        norm = model.get_base_model().model.layers[0].input_layernorm
        handle = norm.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        cfg = SFTConfig(steps=3, lr=1e-2, batch_size=2, warmup=0, gradient_checkpointing=checkpointed)
        history = train_sft(model, tokenizer, PAIRS, cfg)
        handle.remove()
        assert len(calls) == 3 * (2 if checkpointed else 1)  # the backward pass ran the block again
        assert not model.get_base_model().is_activation_checkpointing  # handed back as it came
        runs.append((history, trainable(model)))
    (plain, plain_weights), (ckpt, ckpt_weights) = runs
    assert [e["loss"] for e in ckpt["train"]] == pytest.approx([e["loss"] for e in plain["train"]], rel=1e-5)
    for name, weight in plain_weights.items():
        torch.testing.assert_close(ckpt_weights[name], weight, atol=1e-5, rtol=1e-4, msg=name)


class Crash(Exception):
    pass


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tokenizer, tmp_path):
    def cfg(out):
        return SFTConfig(steps=6, lr=5e-3, batch_size=3, warmup=2, eval_every=3, checkpoint_every=3, out=str(out))

    def evaluate(model, step):
        return {"val_loss": float(step)}

    reference = lora_model(tokenizer, dropout=0.1)  # dropout: the restored RNG state matters
    full = train_sft(reference, tokenizer, PAIRS, cfg(tmp_path / "a"), evaluate)
    assert [e["step"] for e in full["eval"]] == [0, 3, 6]

    def crash_after_checkpoint(model, step):
        if step == 4:
            raise Crash
        return evaluate(model, step)

    interrupted_cfg = cfg(tmp_path / "b")
    interrupted_cfg.eval_every = 1
    with pytest.raises(Crash):
        train_sft(lora_model(tokenizer, dropout=0.1), tokenizer, PAIRS, interrupted_cfg, crash_after_checkpoint)
    resumed_model, calls = lora_model(tokenizer, dropout=0.1), []
    resumed = train_sft(resumed_model, tokenizer, PAIRS, cfg(tmp_path / "b"), lambda m, step: calls.append(step) or {})
    assert calls == [6]  # it went on from the step-3 checkpoint rather than starting over
    for (name, x), y in zip(trainable(reference).items(), trainable(resumed_model).values(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5, msg=name)
    assert [e["step"] for e in resumed["train"]] == list(range(1, 7))
    assert [e["loss"] for e in resumed["train"]] == pytest.approx([e["loss"] for e in full["train"]], rel=1e-5)

    with pytest.raises(SaelignError, match=r"different options \(lr\)"):
        changed = cfg(tmp_path / "b")
        changed.lr = 1e-3
        train_sft(lora_model(tokenizer), tokenizer, PAIRS, changed)


def test_bad_inputs_are_refused(tokenizer):
    frozen = make_tiny_model("llama", len(tokenizer)).requires_grad_(False)
    with pytest.raises(SaelignError, match="no trainable parameters"):
        train_sft(frozen, tokenizer, PAIRS, SFTConfig(steps=1))
    with pytest.raises(SaelignError, match="max_length=4"):
        encode_examples(tokenizer, PAIRS, max_length=4)


def test_stop_at_safety_ends_at_the_first_passing_check_and_stays_stopped_on_rerun(tokenizer, tmp_path):
    cfg = SFTConfig(steps=12, lr=5e-3, batch_size=2, warmup=0, eval_every=2, checkpoint_every=0, stop_at_safety=0.95,
                    out=str(tmp_path))
    cfg.stop_max_over_refusal = 0.1
    # step 0 passing must not stop an untrained run; step 6 is safe enough but refuses too many harmless prompts
    checks = {0: (1.0, 0.0), 2: (0.5, 0.0), 4: (0.9, 0.0), 6: (0.95, 0.2), 8: (1.0, 0.1), 10: (1.0, 0.0)}

    stop = safety_stop(cfg.stop_at_safety, cfg.stop_max_over_refusal)
    model = lora_model(tokenizer)
    history = train_sft(model, tokenizer, PAIRS, cfg,
                        lambda m, step: {"safety_rate": checks[step][0], "over_refusal": checks[step][1]},
                        stop)
    assert [e["step"] for e in history["eval"]] == [0, 2, 4, 6, 8]
    assert history["train"][-1]["step"] == 8
    weights = trainable(model)

    calls = []  # the checkpoint written at the stop is final: a rerun neither trains nor evaluates again
    rerun_model = lora_model(tokenizer)
    again = train_sft(rerun_model, tokenizer, PAIRS, cfg,
                      lambda m, step: calls.append(step) or {"safety_rate": 0.0}, stop)
    assert calls == [] and again["train"][-1]["step"] == 8
    for (name, x), y in zip(weights.items(), trainable(rerun_model).values(), strict=True):
        torch.testing.assert_close(x, y, msg=name)

    no_check = SFTConfig(steps=3, stop_at_safety=0.95)
    with pytest.raises(SaelignError, match="eval_every"):
        train_sft(lora_model(tokenizer), tokenizer, PAIRS, no_check, lambda m, step: {}, safety_stop(0.95))
    assert safety_stop(0.0) is None  # the rule is off: train_sft trains every step


def test_a_checkpoint_of_the_old_single_file_format_is_refused_with_the_fix(tokenizer, tmp_path):
    (tmp_path / "checkpoint.safetensors").write_bytes(b"old")
    with pytest.raises(SaelignError, match=r"checkpoint\.safetensors.*delete it"):
        train_sft(lora_model(tokenizer), tokenizer, PAIRS, SFTConfig(steps=1, out=str(tmp_path)))


OPENING = "System: you are a helpful assistant who answers briefly.\nUser: "


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("keep_logits", [True, False])
def test_a_shared_opening_read_once_gives_the_same_loss_and_gradients(tokenizer, arch, keep_logits):
    pairs = [(OPENING + prompt, response) for prompt, response in PAIRS]
    batch = collate(encode_examples(tokenizer, pairs, max_length=128), tokenizer.pad_token_id)
    shared = shared_opening(batch["input_ids"], batch["attention_mask"])
    assert shared >= len(tokenizer(OPENING)["input_ids"]) - 1
    results = []
    for share in (True, False):
        model = lora_model(tokenizer) if arch == "llama" else make_tiny_model("gpt2", len(tokenizer))
        model.train(arch == "llama")  # the tiny GPT-2 has dropout: its draws would differ between the paths
        read = []
        blocks = model.get_base_model().model.layers if arch == "llama" else model.transformer.h
        handle = blocks[0].register_forward_pre_hook(lambda _, args, read=read: read.append(args[0].shape[:2]))
        loss = response_loss_sum(model, batch, keep_logits, share_opening=share)
        loss.backward()
        handle.remove()
        results.append((float(loss.detach()), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, read))
    (shared_loss, shared_grads, shared_read), (loss, grads, read) = results
    width = batch["input_ids"].shape[1]
    assert read == [torch.Size([4, width])] and shared_read == [(1, shared), (4, width - shared)]
    assert shared_loss == pytest.approx(loss, rel=1e-5)
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    for name, g in grads.items():
        torch.testing.assert_close(shared_grads[name], g, atol=1e-6, rtol=1e-4, msg=name)
