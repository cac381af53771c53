"""Keep only the facts a model knows: greedy-complete every prompt and compare with the expected answer.

A concept slot can only bind to a relation the model actually represents, so facts the model gets wrong are
dropped before alignment: a fact is kept when the model answers at least `min_accuracy` of its train-template
prompts (`saelign.text.answer_matches`)."""

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saelign.align.ontology import ConceptExample, Ontology
from saelign.errors import SaelignError
from saelign.progress import logger
from saelign.text import answer_matches, greedy_decode, pad_token_id, stop_ids, token_ids


def _fact_key(ex: ConceptExample) -> tuple[str, str]:
    """An entity of a template concept is one fact across its templates; a plain example is a fact of its own."""
    return (ex.concept, ex.entity if ex.template_id is not None and ex.entity is not None else ex.text)


def filter_known_facts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ontology: Ontology,
                       min_accuracy: float = 0.5, batch_size: int = 32,
                       max_new_tokens: int | None = None) -> tuple[Ontology, dict[str, dict[str, Any]]]:
    """Return (the ontology with only known facts, per-concept accuracy report).
    The report gives, per concept: facts, kept, train_accuracy and test_accuracy (share of prompts answered
    correctly before filtering, on train and unseen test templates; None without test prompts). It is also
    stored in the returned ontology's `source["fact_filter"]`."""
    examples = ontology.examples(split=None)
    where = f"ontology {ontology.name!r}"
    answered = answers_given(model, tokenizer, examples, batch_size, max_new_tokens, where)
    hits: dict[tuple[str, str], dict[str, list[bool]]] = defaultdict(lambda: {"train": [], "test": []})
    for ex, ok in zip(examples, answered, strict=True):
        hits[_fact_key(ex)][ex.split].append(ok)
    known = {key for key, h in hits.items() if _mean(h["train"] or h["test"]) >= min_accuracy}
    report = _report(ontology, hits, known)
    concepts = []
    for concept in ontology.concepts:
        kept = dataclasses.replace(
            concept, entities=tuple(e for e in concept.entities if (concept.name, e.entity) in known),
            examples=tuple(e for e in concept.examples
                           if (concept.name, ontology.fill(e.text, e.entity, literal_entity=True)[0]) in known))
        if kept.entities or kept.examples:
            concepts.append(kept)
        else:
            logger.warning(f"concept {concept.name!r}: the model answered none of its facts; dropped")
    summary = ", ".join(f"{name} {r['train_accuracy']:.0%} ({r['kept']}/{r['facts']} kept)" for name, r in report.items())
    logger.info(f"fact accuracy per concept: {summary}")
    if len(concepts) < 2:
        raise SaelignError(f"ontology {ontology.name!r}: the model knows facts of only {len(concepts)} concept(s) "
                           f"({summary}); use a stronger model, more entities, or lower min_accuracy")
    source = {**ontology.source, "fact_filter": {"model": str(getattr(model, "name_or_path", "")),
                                                 "min_accuracy": min_accuracy, "accuracy": report}}
    filtered = dataclasses.replace(ontology, concepts=tuple(concepts), source=source)
    return filtered.validate(f"ontology {ontology.name!r} after fact filtering"), report


def answers_given(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  examples: Sequence[ConceptExample], batch_size: int = 32, max_new_tokens: int | None = None,
                  where: str = "ontology") -> list[bool]:
    """Whether the model's greedy continuation of each example's prompt gives its answer (or an alias).
    `max_new_tokens` defaults to the longest answer's length plus room for a leading article."""
    missing = next((ex for ex in examples if not ex.answer), None)
    if missing is not None:
        raise SaelignError(f"{where}: concept {missing.concept!r} has a prompt without an answer "
                           f"({missing.text!r}); "
                           "checking facts needs an answer for every entity or example")
    if not examples:
        return []
    if max_new_tokens is None:
        longest = max(len(tokenizer(" " + str(ex.answer), add_special_tokens=False)["input_ids"])
                      for ex in examples)
        max_new_tokens = longest + 2
    prompts = token_ids(tokenizer, [ex.text for ex in examples])
    tokens = greedy_decode(model, prompts, max_new_tokens, pad_token_id(tokenizer),
                           stop_ids(model, tokenizer), batch_size, desc="checking facts")
    continuations = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return [answer_matches(text, str(ex.answer), ex.aliases)
            for ex, text in zip(examples, continuations, strict=True)]


def _mean(values: list[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def _report(ontology: Ontology, hits: dict[tuple[str, str], dict[str, list[bool]]],
            known: set[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    report: dict[str, dict[str, Any]] = {}
    for name in ontology.concept_names:
        keys = [k for k in hits if k[0] == name]
        train = [v for k in keys for v in hits[k]["train"]]
        test = [v for k in keys for v in hits[k]["test"]]
        report[name] = {"facts": len(keys), "kept": sum(k in known for k in keys),
                        "train_accuracy": round(_mean(train), 4),
                        "test_accuracy": round(_mean(test), 4) if test else None}
    return report
