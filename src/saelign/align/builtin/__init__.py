"""Built-in ontologies from real data, by name: relations, biographies, pos, ner, sentiment, wordnet (each
builder's options are documented on it). `filter_known_facts` then keeps the relation facts a given model
answers."""

import inspect
from collections.abc import Callable
from typing import Any

from saelign.align.builtin.biographies import build_biographies
from saelign.align.builtin.facts import filter_known_facts
from saelign.align.builtin.pos import build_ner, build_pos
from saelign.align.builtin.relations import build_relations
from saelign.align.builtin.sentiment import build_sentiment
from saelign.align.builtin.wordnet import build_wordnet
from saelign.align.ontology import Ontology
from saelign.errors import SaelignError

BUILDERS: dict[str, tuple[Callable[..., Ontology], str]] = {
    "relations": (build_relations, "capital, currency, nationality, city-in-state, continent, language and 4 "
                                   "grammatical relations (gensim questions-words + countryinfo), answers given"),
    "biographies": (build_biographies, "made-up people's birth date, birth city, university, major, employer "
                                       "and employer city (names, countryinfo), Q/A, fill-in and instruction "
                                       "templates; to fine-tune on"),
    "pos": (build_pos, "part of speech of the last word of State of the Union sentence prefixes (spaCy)"),
    "ner": (build_ner, "named-entity type ending State of the Union sentence prefixes (spaCy)"),
    "sentiment": (build_sentiment, "positive / negative / neutral sentences rated by people (VADER ground truth)"),
    "wordnet": (build_wordnet, "WordNet lexical classes (noun.animal, verb.motion, ...) of single words"),
}


def build_ontology(name: str, **options: Any) -> Ontology:
    """Build the named built-in ontology; `options` go to its builder."""
    if name not in BUILDERS:
        raise SaelignError(f"unknown built-in ontology {name!r}; choose from {', '.join(BUILDERS)} or give a .yaml/.json file")
    builder, _ = BUILDERS[name]
    valid = list(inspect.signature(builder).parameters)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise SaelignError(f"built-in ontology {name!r}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return builder(**options)


__all__ = ["BUILDERS", "build_biographies", "build_ner", "build_ontology", "build_pos", "build_relations",
           "build_sentiment", "build_wordnet", "filter_known_facts"]
