"""AlignSAE: concept ontologies (`ontology`: the format; `builtin`: built from real data), fact learning
(`learn`), concept-aligned SAE post-training, evaluation, slot reading, concept swaps and guards."""

from saelign.align.builtin import build_ontology, filter_known_facts
from saelign.align.interventions import SlotGuard, concept_swap, slot_zero
from saelign.align.learn import LearnFactsConfig, learn_facts
from saelign.align.metrics import MetricsConfig, alignment_report
from saelign.align.ontology import Ontology, load_ontology, save_ontology
from saelign.align.pipeline import (
    AlignEvalConfig,
    AlignTrainConfig,
    evaluate_aligned,
    guarded_generate,
    load_aligned,
    resolve_ontology,
    swap_generate,
    train_aligned,
)
from saelign.align.posttrain import PostTrainConfig, post_train
from saelign.align.slots import SlotMap, load_slot_map
from saelign.align.swap import oracle_swap_success, swap_cases, swap_success

__all__ = ["AlignEvalConfig", "AlignTrainConfig", "LearnFactsConfig", "MetricsConfig", "Ontology",
           "PostTrainConfig", "SlotGuard", "SlotMap", "alignment_report", "build_ontology", "concept_swap",
           "evaluate_aligned", "filter_known_facts", "guarded_generate", "learn_facts", "load_aligned",
           "load_ontology", "load_slot_map", "oracle_swap_success", "post_train", "resolve_ontology",
           "save_ontology", "slot_zero", "swap_cases", "swap_generate", "swap_success", "train_aligned"]
