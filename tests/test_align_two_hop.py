"""Bridge swaps on a real tiny model: the cases pair prompts of one template through another bridge value, and
a swap succeeds exactly when the edit writes the target value's answer."""

import pytest
import torch

from saelign.align.activations import concept_activations
from saelign.align.metrics import MetricsConfig
from saelign.align.ontology import Concept, Entity, Ontology
from saelign.align.swap import swap_cases
from saelign.align.two_hop import BridgeExample, bridge_examples, bridge_swap
from saelign.errors import SaelignError
from saelign.sae.model import SAE, SAEConfig
from saelign.text import greedy_decode, pad_token_id, token_ids

LAST = "model.layers.3"  # the tiny model's last block: its last-token state alone sets the next token
TEMPLATES = ["Where is the employer of {entity}", "Who employs {entity}"]
SUBJECTS = ["Paris", "Berlin", "France", "Germany"]  # each its own company; Germany's answer is made wrong


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_bridge_examples_pair_people_with_their_bridge_value_and_final_answer():
    ontology = Ontology(
        "bio",
        (
            Concept(
                "employer",
                entities=(
                    Entity("Ann", "Acme"),
                    Entity("Bob", "Bolt"),
                    Entity("Cy", "Acme"),
                    Entity("Di", "Dyn"),
                ),
            ),
            Concept(
                "employer_city", entities=(Entity("Ann", "Rome"), Entity("Bob", "Lima"), Entity("Cy", "Rome"))
            ),
        ),
    )
    examples, values = bridge_examples(
        ontology, ["Q: {entity}?", "{entity} works in"], "employer", "employer_city"
    )
    assert values == ["Acme", "Bolt"]  # Di has no city fact: left out
    assert [(ex.text, ex.concept_index, ex.answer) for ex in examples[:3]] == [
        ("Q: Ann?", 0, "Rome"),
        ("Q: Bob?", 1, "Lima"),
        ("Q: Cy?", 0, "Rome"),
    ]
    assert {ex.entity for ex in examples} == {"Q: {entity}?", "{entity} works in"}
    with pytest.raises(SaelignError, match="placeholder"):
        bridge_examples(ontology, ["Q: who?"], "employer", "employer_city")
    with pytest.raises(SaelignError, match="no entity with both"):
        bridge_examples(ontology, ["{entity}"], "boss", "employer_city")


def own_answer_examples(model, tokenizer) -> tuple[list[BridgeExample], list[int]]:
    """Each question's answer is the token the model says after it: the bridge value decides it, as a
    company decides its city. Also each value's answer token. Germany's answer is replaced by one the model
    never gives."""
    texts = [t.replace("{entity}", s) for t in TEMPLATES for s in SUBJECTS]
    said = greedy_decode(model, token_ids(tokenizer, texts), 1, pad_token_id(tokenizer))
    examples = []
    for i, (text, row) in enumerate(zip(texts, said, strict=True)):
        value = i % len(SUBJECTS)
        answer = "zzz" if SUBJECTS[value] == "Germany" else tokenizer.decode(row).strip()
        examples.append(BridgeExample(text, value, TEMPLATES[i // len(SUBJECTS)], answer, SUBJECTS[value]))
    return examples, [row[0] for row in said[: len(SUBJECTS)]]


def planted_sae(model, tokenizer, examples: list[BridgeExample], answer_tokens: list[int]) -> SAE:
    """Latent v reads bridge value v (a probe fitted to the questions' last-token states) and its decoder row
    writes the embedding of value v's answer token at the last block; two spare latents never fire."""
    x = concept_activations(model, tokenizer, LAST, [ex.text for ex in examples])
    n = len(SUBJECTS)
    sae = SAE(SAEConfig(d_in=32, d_sae=n + 2, activation="relu", hookpoint=LAST)).requires_grad_(False)
    values = torch.tensor([ex.concept_index for ex in examples])
    sae.W_enc.zero_()
    sae.W_enc[:, :n] = torch.linalg.lstsq(x, torch.nn.functional.one_hot(values, n).float()).solution
    sae.b_enc.zero_()
    sae.W_dec.zero_()
    emb = model.get_input_embeddings().weight.detach()
    sae.W_dec[:n] = 100 * torch.nn.functional.normalize(emb[answer_tokens], dim=1)
    return sae


def test_bridge_swap_writes_the_target_values_answer(tiny_llama, tokenizer):
    examples, answer_tokens = own_answer_examples(tiny_llama, tokenizer)
    assert len(set(answer_tokens)) == len(SUBJECTS)  # every value its own answer, so every pair is a case
    planted = planted_sae(tiny_llama, tokenizer, examples, answer_tokens)
    inert = SAE(planted.cfg).requires_grad_(False)
    inert.load_state_dict({**planted.state_dict(), "W_dec": torch.zeros_like(planted.W_dec)})
    cfg = MetricsConfig(alphas=[0.0, 2.0], n_tokens=1, max_rest=2, batch_size=4)
    cases = swap_cases(tiny_llama, tokenizer, examples, len(SUBJECTS), cfg, correct_sources=True)
    # a source about A, its target the same template's question about B
    for (s, t), pair in cases.pairs.items():
        for text, target in pair:
            source = next(ex for ex in examples if ex.text == text)
            assert source.concept_index == s != t == target.concept_index and source.entity == target.entity
            assert source.subject != "Germany" and target.subject != "Germany"

    result = bridge_swap(tiny_llama, tokenizer, {"planted": planted, "inert": inert}, examples, SUBJECTS, cfg)
    # Germany's questions are answered wrong: counted before the swap, never swapped nor a target
    assert result["accuracy_before"] == 0.75 and result["sources"] == 6
    assert result["n"] == 12 and result["skipped_unknown_target"] == 6  # 2 templates x 3 sources x 2 targets
    assert list(result["planted"]["latents"].values()) == [0, 1, 2, 3]  # the planted latents, by separation
    swapped, zeroed = result["planted"]["alphas"]["2.0"], result["planted"]["alphas"]["0.0"]
    assert swapped["success"] == 1.0 and swapped["success_lenient"] == 1.0
    assert swapped["rest_unchanged"] == 1.0  # the other values' questions keep their answers
    # with α 0 the edit no longer depends on the target: of a source's two targets at most one is said
    assert zeroed["success"] <= 0.5
    assert result["inert"]["alphas"]["2.0"]["success"] == 0.0  # a latent that writes nothing swaps nothing
    assert result["oracle"]["success"] == 1.0 and result["oracle"]["n"] == 12
