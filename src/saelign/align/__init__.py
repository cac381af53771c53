"""AlignSAE: concept ontologies, concept-aligned SAE post-training, slot reading and concept swaps.

`saelign.align.ontology` defines the ontology format (concepts with labelled examples, or prompt templates ×
entities with expected answers, and which token carries the concept); `saelign.align.builtin` builds ontologies
from real data (relations, part of speech, named entities, sentiment, WordNet lexical classes).
"""
