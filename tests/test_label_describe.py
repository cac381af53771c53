from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from saelign.errors import SaelignError
from saelign.label import LatentLabel, explain
from saelign.label.describe import DescribeConfig, attach_readings, describe_latents
from saelign.label.grounding import labelled_examples
from saelign.sae import SAE, SAEConfig


@dataclass(frozen=True)
class Ex:
    prompt: str
    kind: str
    source: str


PROMPTS = labelled_examples([Ex(f"bake {i}", "harmless", "harmless:cooking") for i in range(8)]
                            + [Ex(f"virus {i}", "harmful", "advbench") for i in range(8)])


def test_describe_then_explain_and_score_on_tiny_models(tiny_llama, tokenizer, monkeypatch):
    monkeypatch.setattr(explain, "EXPLAIN_PROMPT", "{top}|{bottom}|{grounded}")  # fits the tiny 256-token context
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=32, d_sae=16, activation="relu", hookpoint="model.layers.1"))
    with torch.no_grad():
        sae.b_enc.fill_(0.05)  # most latents fire somewhere: gives held-out firing examples
    cfg = DescribeConfig(n_examples=1, n_heldout=3, label_tokens=4)
    plain = describe_latents(tiny_llama, tokenizer, sae, "model.layers.1", PROMPTS, [1, 2], cfg)
    assert all(r.grounded and not r.explanation and not r.detection for r in plain.values())
    readings = describe_latents(tiny_llama, tokenizer, sae, "model.layers.1", PROMPTS, [1, 2], cfg,
                                token_labels={1: "'bread'"}, explainer=(tiny_llama, tokenizer))
    assert set(readings[1].detection) <= {"model", "grounded", "tokens"} and readings[1].explanation is not None
    for reading in readings.values():
        for score in reading.detection.values():
            assert score != score or 0.0 <= score <= 1.0
    labels = {1: LatentLabel(1, "'bread'", [], [], [], [], 0.1)}
    with pytest.raises(SaelignError, match=r"\[2\] have readings but no label"):
        attach_readings(labels, readings)
    attach_readings(labels, {1: readings[1]})
    assert labels[1].reading is readings[1]


def test_bad_options():
    with pytest.raises(SaelignError, match="n_examples"):
        DescribeConfig(n_examples=0)
