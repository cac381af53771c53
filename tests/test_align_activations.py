import pytest
import torch

from saelign.align.activations import (
    answer_token_ids,
    concept_activations,
    concept_offsets,
)
from saelign.align.ontology import Concept, Entity, Ontology, Templates
from saelign.errors import SaelignError
from saelign.models import forward_capture, resolve_hookpoints

PROMPTS = ["The capital of France is", "Hello", "How do I bake bread? Mix flour and", "I cannot help"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_batched_capture_equals_unpadded_capture(tiny_any, tokenizer):
    _, model, pattern = tiny_any
    hook = resolve_hookpoints(model, [pattern])[1]
    got = concept_activations(model, tokenizer, hook, PROMPTS, batch_size=3)
    at_second = concept_activations(model, tokenizer, hook, PROMPTS, position=[0, 0, 1, -2], batch_size=3)
    for i, text in enumerate(PROMPTS):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        alone = forward_capture(model, [hook], ids)[hook][0]
        torch.testing.assert_close(got[i], alone[-1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(at_second[i], alone[[0, 0, 1, -2][i]], rtol=1e-4, atol=1e-5)
    with pytest.raises(SaelignError, match="outside prompt 1"):
        concept_activations(model, tokenizer, hook, PROMPTS, position=5)


def test_answer_tokens_continue_the_prompt(tokenizer):
    got = answer_token_ids(tokenizer, ["The capital of France is", "Q: capital?\nA: "], ["Paris", "Paris"])
    assert got[0] == tokenizer("The capital of France is Paris")["input_ids"][len(tokenizer("The capital of France is")["input_ids"])]
    assert tokenizer.decode([int(got[1])]) == "Par"  # the prompt's trailing space stays part of the prompt
    with pytest.raises(SaelignError, match="empty answer"):
        answer_token_ids(tokenizer, ["x"], [" "])


def test_concept_offsets_follow_the_ontology_position(tokenizer):
    concept = Concept("capital", entities=(Entity("France", "Paris"),), templates=Templates(("The capital of {entity} is",)))
    other = Concept("language", entities=(Entity("France", "French"),), templates=Templates(("People in {entity} speak",)))
    last = Ontology("o", (concept, other)).examples("train")
    entity = Ontology("o", (concept, other), position="entity_last_token").examples("train")
    assert concept_offsets(tokenizer, last) == [-1, -1]
    offset = concept_offsets(tokenizer, entity)[0]
    ids = tokenizer(entity[0].text)["input_ids"]
    assert tokenizer.decode(ids[: len(ids) + offset + 1]).endswith("France")
