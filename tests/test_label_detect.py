"""Detection scoring maths on constructed features, with a deterministic keyword detector."""

from __future__ import annotations

import math
import random

import pytest
import torch

from saelign.errors import SaelignError
from saelign.label.detect import (
    ChatDetector,
    KeywordDetector,
    LikelihoodDetector,
    balanced_accuracy,
    held_out_examples,
    score_labels,
)
from saelign.label.examples import PromptExample
from saelign.label.grounding import LabelledPrompt, ground_latents
from saelign.label.reading import Reading

COOKING = [
    "How long should I bake bread in the oven?",
    "Give me a soup recipe with leeks",
    "How do I bake a cake?",
    "What oven temperature roasts a chicken?",
    "Share a recipe for pancakes",
]
OTHER = [
    "How do I sort a list in Python?",
    "Explain photosynthesis",
    "What is the capital of Peru?",
    "Write a poem about rain",
    "How do I fix a flat tyre?",
]


def _data(copies: int = 8) -> tuple[list[str], torch.Tensor, list[LabelledPrompt]]:
    texts, topics = [], []
    for i in range(copies):
        texts += [f"{t} ({i})" for t in COOKING + OTHER]
        topics += ["cooking"] * len(COOKING) + ["other"] * len(OTHER)
    rng = random.Random(0)
    planted = torch.tensor([2.0 if t == "cooking" else 0.0 for t in topics])
    noise = torch.tensor([float(rng.random() < 0.5) for _ in topics])
    labelled = [
        LabelledPrompt(t, {"kind": ("harmless",), "topic": (topic,)})
        for t, topic in zip(texts, topics, strict=True)
    ]
    return texts, torch.stack([planted, noise], 1), labelled


def test_planted_topic_feature_scores_near_one_and_random_near_half():
    texts, acts, labelled = _data()
    grounded = ground_latents(acts, labelled, [0, 1])
    assert "cooking" in grounded[0].line
    labels = {"model": {0: "bake recipe oven", 1: "bake recipe oven"}, "tokens": {0: "'Python' 'sort'"}}
    scores = score_labels(KeywordDetector(), labels, acts, texts, [0, 1], n=15)
    assert scores[0]["model"] == 1.0
    assert scores[0]["tokens"] <= 0.5  # a label naming another topic tells nothing (or points the wrong way)
    assert abs(scores[1]["model"] - 0.5) <= 0.2 and "tokens" not in scores[1]


def test_balanced_accuracy_maths():
    assert balanced_accuracy([1, 1, 1], [1, 1, 1]) == 0.5  # a constant detector learns nothing
    assert balanced_accuracy([3, 2], [1, 0]) == 1.0 and balanced_accuracy([0, 1], [2, 3]) == 0.0
    assert balanced_accuracy([3, 0], [1, 0]) == 0.5
    with pytest.raises(SaelignError, match="empty"):
        balanced_accuracy([], [1.0])


def test_held_out_examples_skip_shown_prompts_and_balance():
    texts, acts, _ = _data(2)
    shown = {texts[0]}
    firing, quiet = held_out_examples(acts[:, 0], texts, shown, 100)
    assert len(firing) == len(quiet) == 9 and texts[0] not in firing
    dense = torch.arange(len(texts), dtype=torch.float) + 1  # > 0 everywhere: split at the median instead
    firing, quiet = held_out_examples(dense, texts, set(), 100)
    assert len(firing) == len(quiet) == 10 and set(firing) == set(texts[10:])
    reading = Reading("prompt", "", [], [PromptExample(texts[1], 2.0)], [], [0, 1], [1])
    scores = score_labels(
        KeywordDetector(), {"model": {0: "bake"}}, acts[:, :1] * 0, texts, [0], {0: reading}
    )
    assert math.isnan(scores[0]["model"]) and reading.detection == {}  # never fires: not scored


def test_chat_detector_plumbing_on_a_tiny_model(tiny_llama, tokenizer):
    detector = ChatDetector(tiny_llama, tokenizer, batch_size=2)
    scores = detector.scores("cooking", ["How do I bake bread?", "hello", "world"])
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    # batched = one at a time: right padding keeps the scored position exact
    assert scores[1] == pytest.approx(detector.scores("cooking", ["hello"])[0], abs=1e-4)


def test_chat_detector_refuses_a_model_without_chat_template(tiny_llama, tokenizer):
    plain = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    with pytest.raises(SaelignError, match="--detector: .*no chat template"):
        ChatDetector(tiny_llama, plain)


def test_likelihood_detector_is_a_log_likelihood_difference(tiny_llama, tokenizer, monkeypatch):
    detector = LikelihoodDetector(tiny_llama, tokenizer, batch_size=2)
    texts = ["How do I bake bread?", "hello", "world"]
    scores = detector.scores("cooking", texts)
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    assert scores[1] == pytest.approx(
        LikelihoodDetector(tiny_llama, tokenizer).scores("cooking", ["hello"])[0], abs=1e-4
    )  # batched with padding = one at a time
    monkeypatch.setattr(LikelihoodDetector, "LABELLED", LikelihoodDetector.NEUTRAL)
    assert LikelihoodDetector(tiny_llama, tokenizer).scores("cooking", texts) == pytest.approx(
        [0.0] * 3, abs=1e-5
    )


@pytest.mark.parametrize("batch_size", [1, 2])
def test_likelihood_is_the_texts_log_probability_after_the_prefix(tiny_any, tokenizer, batch_size):
    _, model, _ = tiny_any
    """The prefix is read once and its cache shared across padded batches: each value still equals the
    text's log-probability after the prefix read in one uncached pass, on every architecture."""
    prefix = "The following request is about bread.\n"
    texts = ["How do I bake bread at home today?", "hi", "", "Write a poem"]
    got = LikelihoodDetector(model, tokenizer, batch_size=batch_size)._log_likelihood(prefix, texts)
    head = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    assert got[2] == 0.0  # an empty text
    for text, value in zip(texts[:2] + texts[3:], got[:2] + got[3:], strict=True):
        body = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([head + body])).logits[0].log_softmax(-1)
        want = sum(float(logp[len(head) - 1 + j, token]) for j, token in enumerate(body))
        assert value == pytest.approx(want, abs=1e-3)
