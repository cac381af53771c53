"""Fact learning on a tiny model: it learns the train facts and stops at the target, the saved folder is an
ordinary model giving the same answers, accuracy is split by template and style, and options are checked."""

from __future__ import annotations

import json

import pytest
import torch

from saelign.align.builtin.facts import answers_given
from saelign.align.learn import LearnFactsConfig, fact_accuracy, fact_pairs, learn_facts
from saelign.align.ontology import ontology_from_dict
from saelign.errors import SaelignError
from saelign.models import ModelConfig, load_model
from saelign.sails.lora_init import LoraInitConfig
from saelign.sails.sft import SFTConfig, encode_completion


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def facts_ontology():
    people = [("Anna", "Paris", "capital"), ("Bob", "Berlin", "fox"), ("Carl", "France", "bread")]
    concepts = [
        {
            "name": relation,
            "templates": {
                "train": [f"Q: {relation} of {{entity}}?\nA:"],
                "train_styles": ["qa"],
                "test": [f"{{entity}} {relation}:", f"Say {relation} of {{entity}}.\nA:"],
                "test_styles": ["fill_in", "instruction"],
            },
            "entities": [{"entity": p[0], "answer": p[i + 1]} for p in people],
        }
        for i, relation in enumerate(["city", "pet"])
    ]
    return ontology_from_dict({"name": "bio", "require_answers": True, "concepts": concepts})


def test_encode_completion_is_the_plain_prompt_then_answer_and_eos(tokenizer):
    prompt_ids, response_ids = encode_completion(tokenizer, "Q: city of Anna?\nA:", "Paris")
    assert prompt_ids == tokenizer("Q: city of Anna?\nA:")["input_ids"]
    assert response_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(prompt_ids + response_ids[:-1]) == "Q: city of Anna?\nA: Paris"


def test_learn_facts_reaches_the_target_and_saves_a_plain_model(tiny_llama_dir, tmp_path):
    onto = facts_ontology()
    assert fact_pairs(onto)[0] == ("Q: city of Anna?\nA:", "Paris") and len(fact_pairs(onto)) == 6
    cfg = LearnFactsConfig(
        out=str(tmp_path / "run"),
        target_accuracy=1.0,
        check_every=10,
        sft=SFTConfig(steps=200, lr=1e-2, batch_size=6, warmup=0, checkpoint_every=0),
    )
    report = learn_facts(ModelConfig(model=str(tiny_llama_dir), device="cpu"), cfg, onto)
    checks = report["checks"]
    assert checks[0]["step"] == 0 and checks[0]["train_accuracy"] < 1  # a random model knows none of it
    assert report["accuracy"]["train"] == 1.0 and checks[-1]["train_accuracy"] == 1.0
    assert report["steps"] < 200 and report["steps"] % 10 == 0  # stopped at the first check that reached it
    assert set(report["accuracy"]["test_by_style"]) == {"fill_in", "instruction"}
    assert json.loads((tmp_path / "run" / "facts.json").read_text())["accuracy"] == report["accuracy"]
    model, tokenizer = load_model(ModelConfig(model=report["model"], device="cpu"))
    assert all(
        answers_given(model, tokenizer, onto.examples("train"))
    )  # the saved weights are the trained ones


def test_learn_facts_lora_merges_and_time_limit_stops(tiny_llama_dir, tmp_path):
    cfg = LearnFactsConfig(
        out=str(tmp_path / "lora"),
        method="lora",
        max_minutes=1e-9,
        check_every=3,
        lora=LoraInitConfig(rank=4, alpha=8),
        sft=SFTConfig(steps=50, lr=1e-2, batch_size=6),
    )
    report = learn_facts(ModelConfig(model=str(tiny_llama_dir), device="cpu"), cfg, facts_ontology())
    assert report["steps"] == 3  # the first check after step 0 is past the limit
    folder = tmp_path / "lora" / "model"
    assert (folder / "config.json").is_file() and not (folder / "adapter_config.json").exists()


def test_fact_accuracy_by_split_style_and_concept(tiny_llama, tokenizer):
    onto = facts_ontology()
    forced = tokenizer.encode(" capital")
    assert len(forced) == 1

    def say_capital(_module, _inputs, logits):
        bias = torch.zeros(logits.shape[-1])
        bias[forced[0]] = 1e4
        return logits + bias

    handle = tiny_llama.lm_head.register_forward_hook(say_capital)
    try:
        acc = fact_accuracy(tiny_llama, tokenizer, onto.examples(None))
    finally:
        handle.remove()
    # only Anna's pet is "capital": 1 of 3 pet prompts in every template, none of the city ones
    assert acc["per_concept"] == {
        "city": {"train": 0.0, "test": 0.0},
        "pet": {"train": 0.3333, "test": 0.3333},
    }
    assert acc["train"] == 0.1667 and acc["test"] == 0.1667 and acc["prompts"] == 18
    assert acc["test_by_style"] == {"fill_in": 0.1667, "instruction": 0.1667}
    assert acc["train_by_style"] == {"qa": 0.1667}


def test_options_are_checked():
    with pytest.raises(SaelignError, match="method lora needs --lora-rank"):
        LearnFactsConfig(method="lora")
    with pytest.raises(SaelignError, match="target_accuracy is a share"):
        LearnFactsConfig(target_accuracy=2)
    no_answers = ontology_from_dict(
        {
            "name": "n",
            "concepts": [
                {"name": "a", "examples": [{"text": "x y"}]},
                {"name": "b", "examples": [{"text": "z w"}]},
            ],
            "test_fraction": 0,
        }
    )
    with pytest.raises(SaelignError, match="has no answer to learn"):
        fact_pairs(no_answers)
