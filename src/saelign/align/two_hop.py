"""Bridge swaps on two-hop questions: "Where is the employer of X located?" reaches its answer through a
bridge entity (X's employer, company A); the swap edits the last prompt token so that the question runs
through another company B, and succeeds when the model answers B's city (strict and lenient, as every swap).

The concept-swap machinery (`swap_cases`, `swap_success`, `oracle_swap_success`) runs unchanged with the
bridge *values* in the role of concepts: each two-hop prompt is an example whose concept is its bridge value
and whose "entity" is its template, so a case pairs a prompt about A with the same template's prompt about B,
whose answer is B's city (A and B with one city are skipped). An ontology such as the biographies binds one
slot per relation (employer, employer_city, ...), never one per value, so an aligned SAE has no slot for a
company: each SAE's latent for a value is the one that best separates that value's prompts from the rest
(`best_latents`, as the vanilla baseline of the concept swap), and the swap sets A's latent to 0 and B's to
α × its mean activation. The oracle writes the last-token state of the same template's prompt about a person
whose bridge is B: the ceiling for any edit of that one position."""

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.align.activations import concept_activations
from saelign.align.metrics import best_latents
from saelign.align.metrics_config import MetricsConfig
from saelign.align.ontology import PLACEHOLDER, Ontology
from saelign.align.swap import oracle_swap_success, swap_cases, swap_success
from saelign.errors import require
from saelign.sae.model import SAE
from saelign.text import answer_matches


@dataclass(frozen=True)
class BridgeExample:
    """One two-hop prompt, shaped as the swap functions read an example."""

    text: str
    concept_index: int  # its bridge value's index among the values
    entity: str  # its template: a swap case pairs two prompts of one template
    answer: str  # the final answer (the bridge value's own fact, e.g. its city)
    subject: str  # whom the question is about


def bridge_examples(
    ontology: Ontology, templates: Sequence[str], bridge: str, answer: str
) -> tuple[list[BridgeExample], list[str]]:
    """(two-hop prompts, sorted bridge values): every template (with an {entity} placeholder) for every
    ontology entity that has both a `bridge` fact (its value is the bridge entity) and an `answer` fact
    (the fact the question asks for, reached through the bridge)."""
    require(
        templates and all(PLACEHOLDER in t for t in templates),
        f"two-hop templates need the {PLACEHOLDER} placeholder for the person asked about",
    )
    facts: dict[str, dict[str, str]] = defaultdict(dict)
    for concept in ontology.concepts:
        if concept.name in (bridge, answer):
            for ent in concept.entities:
                if ent.answer:
                    facts[ent.entity][concept.name] = str(ent.answer)
    subjects = [s for s, fact in facts.items() if bridge in fact and answer in fact]
    require(
        subjects,
        f"ontology {ontology.name!r} has no entity with both a {bridge!r} and an {answer!r} answer; "
        f"name two entity concepts of it as the bridge and the answer",
    )
    values = sorted({facts[s][bridge] for s in subjects})
    require(len(values) >= 2, f"every entity has the same {bridge!r} value; a bridge swap needs two")
    examples = [
        BridgeExample(t.replace(PLACEHOLDER, s), values.index(facts[s][bridge]), t, facts[s][answer], s)
        for t in templates
        for s in subjects
    ]
    return examples, values


def bridge_swap(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    saes: Mapping[str, SAE],
    examples: Sequence[BridgeExample],
    values: Sequence[str],
    cfg: MetricsConfig,
    selection: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Bridge-swap success per SAE (name -> `swap_success` result, plus the latent chosen for each value) and
    the oracle ceiling (`cfg.oracle`), on the two-hop prompts the model answers right before any edit. Every
    SAE reads one hookpoint. Latents are chosen on `selection` (activations [n, d] at that hookpoint and each
    row's value index), by default on all the questions' last tokens (right or wrong); there a value is
    confounded with its final answer (one company, one city), while e.g. one-hop "which company" prompts
    name the value itself."""
    hookpoints = {sae.cfg.hookpoint for sae in saes.values()}
    require(
        len(hookpoints) == 1 and "" not in hookpoints,
        f"bridge_swap compares SAEs at one hookpoint, got {sorted(hookpoints)}; pass SAEs of one layer",
    )
    (hookpoint,) = hookpoints
    acts = concept_activations(
        model, tokenizer, hookpoint, [ex.text for ex in examples], batch_size=cfg.batch_size
    )
    chosen_on = selection or (acts, torch.tensor([ex.concept_index for ex in examples]))
    cases = swap_cases(model, tokenizer, examples, len(values), cfg, correct_sources=True)
    right = {text for pair in cases.pairs.values() for text, _ in pair}
    out: dict[str, Any] = {
        "hookpoint": hookpoint,
        "values": list(values),
        "accuracy_before": cases.baseline_accuracy,
        "sources": len(right),
        "n": sum(len(pair) for pair in cases.pairs.values()),
        "skipped_same_answer": cases.skipped_same_answer,
        "skipped_unknown_target": cases.skipped_unknown_target,
    }
    for name, sae in saes.items():
        value_map = best_latents(sae, *chosen_on, values)
        out[name] = {
            "latents": dict(zip(values, value_map.slots, strict=True)),
            "scales": dict(zip(values, value_map.scales, strict=True)),
            **swap_success(model, tokenizer, sae, value_map, examples, cfg, cases=cases),
        }
    if cfg.oracle:
        # a target's state comes from a prompt of it that the model answers right (every target has one)
        donors = {
            (ex.entity, ex.concept_index): row
            for ex, row in zip(examples, acts, strict=True)
            if answer_matches(
                tokenizer.decode(list(cases.base[ex.text]), skip_special_tokens=True), ex.answer
            )
        }
        out["oracle"] = oracle_swap_success(
            model, tokenizer, hookpoint, cases, donors, values, cfg.batch_size
        )
    return out
