"""Safety evaluation: rates on constructed responses, perplexity vs a naive reference, factual matching, held-out
text selection, and the quick convergence check."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_config
from saelign.errors import SaelignError
from saelign.sails import evaluate as ev
from saelign.sails.data import Example
from saelign.sails.evaluate import (
    CapabilityData,
    SafetyEvalConfig,
    ValidationConfig,
    evaluate_model,
    heldout_contexts,
    load_facts,
    perplexity,
    quick_safety,
    safety_metrics,
)
from saelign.sails.judge import LLMJudge, Verdict


class TableJudge:
    """Deterministic judge: the response text names its verdict ('refused: ...', 'complied: ...', 'degenerate')."""

    def judge(self, prompts: list[str], responses: list[str]) -> list[Verdict]:
        assert len(prompts) == len(responses)
        return [Verdict(r.split(":")[0]) for r in responses]  # type: ignore[arg-type]


def examples(n_harmful: int = 4, n_harmless: int = 3, n_borderline: int = 2) -> list[Example]:
    return ([Example(f"harmful {i}", "harmful", "t") for i in range(n_harmful)]
            + [Example(f"harmless {i}", "harmless", "t") for i in range(n_harmless)]
            + [Example(f"borderline {i}", "borderline", "t") for i in range(n_borderline)])


def test_rates_count_refusals_and_keep_degenerate_apart():
    responses = ["refused: no", "refused: no", "complied: here", "degenerate",  # harmful
                 "complied: sure", "refused: no", "degenerate",  # harmless
                 "refused: no", "complied: ok"]  # borderline
    metrics, verdicts = safety_metrics(examples(), responses, TableJudge())
    assert metrics["n"] == {"harmful": 4, "harmless": 3, "borderline": 2}
    assert metrics["safety_rate"] == 0.5  # degenerate is not safe
    assert metrics["harmful_degenerate"] == 0.25 and metrics["harmful_complied"] == 0.25
    assert metrics["over_refusal"] == pytest.approx(1 / 3) and metrics["harmless_degenerate"] == pytest.approx(1 / 3)
    assert metrics["borderline_over_refusal"] == 0.5 and metrics["borderline_degenerate"] == 0.0
    assert [v.label for v in verdicts][:4] == ["refused", "refused", "complied", "degenerate"]


def test_missing_kind_gives_nan_and_length_mismatch_is_an_error():
    metrics, _ = safety_metrics(examples(2, 1, 0), ["refused: x", "complied: y", "complied: z"], TableJudge())
    assert metrics["safety_rate"] == 0.5 and math.isnan(metrics["borderline_over_refusal"])
    with pytest.raises(SaelignError, match="2 responses"):
        safety_metrics(examples(2, 1, 0), ["a", "b"], TableJudge())


@torch.inference_mode()
def test_perplexity_equals_a_per_token_reference_and_skips_pad_targets(tiny_llama, tokenizer):
    torch.manual_seed(0)
    contexts = torch.randint(5, len(tokenizer), (3, 12))
    pad = tokenizer.pad_token_id
    contexts[2, 9:] = pad
    nll, count = 0.0, 0
    for row in contexts:
        logprobs = tiny_llama(row.unsqueeze(0)).logits[0].log_softmax(-1)
        for t in range(1, len(row)):
            if row[t] != pad:
                nll -= float(logprobs[t - 1, row[t]])
                count += 1
    assert perplexity(tiny_llama, contexts, pad, batch_size=2) == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert math.isnan(perplexity(tiny_llama, contexts[:0], pad))


def test_heldout_contexts_skip_training_speeches_and_read_from_the_far_end(tmp_path, tokenizer):
    for word in ("alpha", "bravo", "charlie", "delta"):
        (tmp_path / f"{word}.txt").write_text(" ".join([word] * 20))
    from saelign.datasets.corpus import open_corpus

    order = [p.stem for p in open_corpus(str(tmp_path), seed=3).files]
    contexts = heldout_contexts(tokenizer, str(tmp_path), 50, 16, seed=3, exclude_stems={order[-2]})
    text = tokenizer.decode(contexts.reshape(-1))
    # Three files left, far end first: the test text is the first half of them (two), the third is held for
    # validation (sails.retain's tests check the parts are disjoint).
    kept = [w for w in reversed(order) if w != order[-2]]
    assert all(w in text for w in kept[:2]) and not any(w in text for w in (order[-2], kept[2]))
    assert tokenizer.decode(contexts[0]).strip().startswith(order[-1])
    with pytest.raises(SaelignError, match="every file"):
        heldout_contexts(tokenizer, str(tmp_path), 5, 16, seed=3, exclude_stems=set(order))


def test_facts_from_jsonl_exclude_training_prompts_and_report_bad_lines(tmp_path):
    path = tmp_path / "facts.jsonl"
    rows = [{"question": f"What is the capital of C{i}?", "answer": f"A{i}"} for i in range(6)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    facts = load_facts(str(path), 0, seed=0, exclude_prompts={"what is the capital of c2"})
    assert len(facts) == 5 and ("What is the capital of C2?", "A2") not in facts
    assert len(load_facts(str(path), 3, seed=0, exclude_prompts=set())) == 3
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"question": "q"}) + "\n")
    with pytest.raises(SaelignError, match=r"facts.jsonl:2: .*question and answer"):
        load_facts(str(path), 0, 0, set())


def test_evaluate_model_records_every_response_samples_and_capability(monkeypatch, tiny_llama, tokenizer):
    test = examples(3, 2, 1)
    canned = {e.prompt: ("refused: no" if e.kind == "harmful" and e.prompt != "harmful 2" else "complied: yes")
              for e in test}
    canned.update({"What is the capital of X?": "It is Paris.", "What is the capital of Y?": "Berlin, I think."})

    def fake_generate(model, tok, prompts, max_new_tokens, batch_size):
        return [canned[p] for p in prompts]

    monkeypatch.setattr(ev, "generate_answers", fake_generate)
    contexts = torch.randint(5, len(tokenizer), (2, 10))
    capability = CapabilityData(contexts, [("What is the capital of X?", "Paris"), ("What is the capital of Y?", "Rome")])
    cfg = SafetyEvalConfig(samples=1)
    metrics = evaluate_model(tiny_llama, tokenizer, test, TableJudge(), cfg, capability)
    assert metrics["safety_rate"] == pytest.approx(2 / 3) and metrics["over_refusal"] == 0.0
    assert metrics["fact_accuracy"] == 0.5 and metrics["n_facts"] == 2
    assert metrics["perplexity"] == pytest.approx(perplexity(tiny_llama, contexts, tokenizer.pad_token_id))
    assert [r["prompt"] for r in metrics["responses"]] == [e.prompt for e in test]
    assert {k: len(v) for k, v in metrics["samples"].items()} == {"harmful": 1, "harmless": 1, "borderline": 1}
    limited = evaluate_model(tiny_llama, tokenizer, test, TableJudge(), SafetyEvalConfig(max_per_kind=1))
    assert limited["n"] == {"harmful": 1, "harmless": 1, "borderline": 1} and "perplexity" not in limited
    with pytest.raises(SaelignError, match="no harmful"):
        evaluate_model(tiny_llama, tokenizer, [e for e in test if e.kind != "harmful"], TableJudge(), cfg)


def test_quick_safety_uses_the_first_val_prompts_of_each_kind(monkeypatch, tiny_llama, tokenizer):
    seen = []

    def fake_generate(model, tok, prompts, max_new_tokens, batch_size):
        seen.append((list(prompts), max_new_tokens))
        return ["refused: x" if p.startswith("harmful") else "complied: y" for p in prompts]

    monkeypatch.setattr(ev, "generate_answers", fake_generate)
    result = quick_safety(tiny_llama, tokenizer, examples(5, 5, 2), TableJudge(),
                          ValidationConfig(per_kind=2, max_new_tokens=7))
    assert result == {"safety_rate": 1.0, "over_refusal": 0.0, "harmful_degenerate": 0.0, "harmless_degenerate": 0.0}
    assert seen == [(["harmful 0", "harmful 1", "harmless 0", "harmless 1"], 7)]


def test_real_generation_on_a_tiny_model_is_judged(tiny_llama, tokenizer):
    metrics = evaluate_model(tiny_llama, tokenizer, examples(2, 1, 0), ev.make_judge(SafetyEvalConfig()),
                             SafetyEvalConfig(max_new_tokens=4))
    assert sum(metrics["n"].values()) == 3 and len(metrics["responses"]) == 3
    assert 0 <= metrics["safety_rate"] + metrics["harmful_degenerate"] <= 1
    oracle = SafetyEvalConfig()
    oracle.judge = "oracle"  # type: ignore[assignment]  (past the CLI's choices, as a Python caller could)
    with pytest.raises(SaelignError, match="unknown judge"):
        ev.make_judge(oracle)


def test_the_llm_judge_is_chosen_by_config_and_grades_with_its_model(tokenizer, tmp_path):
    config = tiny_config("llama", len(tokenizer))
    config.max_position_embeddings = 1024  # the rubric alone is ~400 tokens of the test tokenizer
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    judge = ev.make_judge(SafetyEvalConfig(judge="llm", judge_model=str(tmp_path)))
    assert isinstance(judge, LLMJudge) and not judge.model.training
    verdicts = judge.judge(["How do I bake bread?"], ["Mix flour, water and yeast, then bake it for an hour."])
    assert len(verdicts) == 1 and verdicts[0].label in ("refused", "complied")


def test_bad_config_values_are_refused():
    with pytest.raises(SaelignError, match="max_new_tokens"):
        SafetyEvalConfig(max_new_tokens=0)
    with pytest.raises(SaelignError, match="n_facts"):
        SafetyEvalConfig(n_facts=-1)
