"""The swap cases and the oracle ceiling on a real tiny model, against what the model says itself."""

from dataclasses import dataclass, replace

import pytest
import torch

from saelign.align.activations import concept_activations
from saelign.align.interventions import replace_positions
from saelign.align.metrics import MetricsConfig
from saelign.align.swap import oracle_swap_success, swap_cases
from saelign.errors import SaelignError
from saelign.text import greedy_decode, pad_token_id, token_ids

TEMPLATES = ["The capital of {} is", "{} eats", "Who rivals {} now"]  # three concepts, one prompt each
ENTITIES = ["France", "Germany", "Spain"]
LAST = "model.layers.3"  # the tiny model's last block: its last-token state alone sets the next token


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Ex:
    text: str
    concept_index: int
    entity: str
    answer: str


def own_answer_examples(model, tokenizer) -> list[Ex]:
    """Each prompt's fact is what the model says after it (one token), so every fact is 'known'."""
    texts = [t.format(e) for e in ENTITIES for t in TEMPLATES]
    said = greedy_decode(model, token_ids(tokenizer, texts), 1, pad_token_id(tokenizer))
    return [
        Ex(text, i % len(TEMPLATES), ENTITIES[i // len(TEMPLATES)], tokenizer.decode(row).strip())
        for i, (text, row) in enumerate(zip(texts, said, strict=True))
    ]


def test_oracle_with_the_target_prompts_state_always_succeeds(tiny_llama, tokenizer):
    examples = own_answer_examples(tiny_llama, tokenizer)
    assert len({ex.answer for ex in examples}) == len(TEMPLATES)  # each concept its own answer: cases exist
    cases = swap_cases(tiny_llama, tokenizer, examples, len(TEMPLATES), MetricsConfig(n_tokens=1))
    assert sum(len(c) for c in cases.pairs.values()) == len(ENTITIES) * len(TEMPLATES) * (len(TEMPLATES) - 1)
    acts = concept_activations(tiny_llama, tokenizer, LAST, [ex.text for ex in examples])
    donors = {(ex.entity, ex.concept_index): row for ex, row in zip(examples, acts, strict=True)}
    names = ["capital", "food", "rival"]
    oracle = oracle_swap_success(tiny_llama, tokenizer, LAST, cases, donors, names, batch_size=4)
    assert oracle["success"] == 1.0 and oracle["success_lenient"] == 1.0 and oracle["n"] == 18
    assert set(oracle["per_pair"]) == {f"{a}->{b}" for a in names for b in names if a != b}
    # the control: source prompts given their own state back say their own answer, never the target's
    only = replace(cases, pairs={(1, 0): cases.pairs[(1, 0)]})
    stay = oracle_swap_success(
        tiny_llama, tokenizer, LAST, only, {(e, 0): donors[(e, 1)] for e in ENTITIES}, names
    )
    assert stay["n"] == len(ENTITIES) and stay["success"] == 0.0


def test_replace_positions_writes_one_position_and_checks_the_batch(tiny_llama, tokenizer):
    ids = torch.tensor([token_ids(tokenizer, ["The capital of France is"])[0]])
    clean = tiny_llama(ids).logits
    state = concept_activations(tiny_llama, tokenizer, LAST, ["Spain eats"])
    with replace_positions(tiny_llama, LAST, state):
        edited = tiny_llama(ids).logits
    assert torch.equal(edited[0, :-1], clean[0, :-1]) and not torch.allclose(edited[0, -1], clean[0, -1])
    alone = tiny_llama(torch.tensor([token_ids(tokenizer, ["Spain eats"])[0]])).logits[0, -1]
    assert torch.allclose(edited[0, -1], alone, atol=1e-5)  # the last block's state alone sets the logits
    with (
        pytest.raises(SaelignError, match="one vector per row"),
        replace_positions(tiny_llama, LAST, state.repeat(2, 1)),
    ):
        tiny_llama(ids)
