"""`sails_aligned`: safety concepts of the training data bound to AlignSAE slots; the span of their decoder
rows is the subspace the method adapts in.

The ontology comes from labels the project already has (as the grounded feature labels do, `label.grounding`):
the kind of each request (harmful, harmless, borderline), AdvBench's harm categories (looked up by behaviour,
so every rewording of a request carries its categories) and the topic of a harmless or borderline source. Each
(facet, value) with at least `min_examples` training prompts is a concept, named as the labels name it
("'Privacy loss' harmful requests", "coding requests"). A prompt carries every concept it belongs to, one
post-training row per concept, so a slot starts at (and, with fixed slot decoders, keeps) the mean offset of
exactly its own prompts. The form of a request (its register) is never a concept: each concept holds its
prompts in every register they come in, and the concept table counts them.

The run's SAE is post-trained (`align.posttrain`) on residuals pooled as feature selection pools them, while
corpus activations keep the free bank reconstructing; the basis is the span of the slots' decoder rows, built
as SAILS builds its own (`tau`, at most SAILS' rank)."""

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saelign.align.metrics import auc
from saelign.align.posttrain import PostTrainConfig, post_train
from saelign.align.slots import SlotMap, load_slot_map
from saelign.configs import help_field
from saelign.errors import SaelignError, require
from saelign.io import load_tensors, read_json, save_tensors_atomic, write_json_atomic
from saelign.label.grounding import LabelledPrompt, advbench_harm_categories, build_groups, labelled_examples
from saelign.progress import logger
from saelign.sae import load_sae
from saelign.sae.model import SAE
from saelign.sails import sources
from saelign.sails.bridge import slots_to_subspace, subspace_provenance
from saelign.sails.data import Example, behaviour_id
from saelign.sails.select import FeatureSelectConfig, residual_activations
from saelign.sails.subspace import basis_hash, explained_share

FACETS = ("kind", "harm", "topic")  # never "form": a slot for a register is what the method must not learn


@dataclass
class SafetyOntologyConfig:
    min_examples: int = help_field(
        8, "training prompts a kind, harm category or topic needs to become a concept with its own slot"
    )
    generic_tokens: int = help_field(
        8192,
        "corpus tokens (captured as for the SAE) the free bank keeps reconstructing during post-training",
    )

    def __post_init__(self) -> None:
        require(self.min_examples >= 1, f"ontology.min_examples must be at least 1, got {self.min_examples}")
        require(
            self.generic_tokens >= 1, f"ontology.generic_tokens must be positive, got {self.generic_tokens}"
        )


@dataclass
class SafetyConcept:
    name: str
    facet: str
    value: str
    rows: list[int]  # the training examples that carry it
    registers: dict[str, int]  # how many of them are asked in each register

    def holds(self, prompt: LabelledPrompt) -> bool:
        return self.value in prompt.labels.get(self.facet, ())


def advbench_categories() -> dict[str, tuple[str, ...]]:
    """{behaviour id: harm categories} of pyrit's AdvBench: rewordings find their behaviour's categories."""
    by_prompt = advbench_harm_categories(sources.pyrit_dir() / sources.ADVBENCH)
    return {behaviour_id(prompt): categories for prompt, categories in by_prompt.items()}


def concept_labels(
    examples: Sequence[Example], harm_categories: Mapping[str, tuple[str, ...]]
) -> list[LabelledPrompt]:
    """Kind, topic and harm labels of each example (harm categories keyed by behaviour id)."""
    harms = {
        e.prompt.strip(): harm_categories[e.behaviour] for e in examples if e.behaviour in harm_categories
    }
    return labelled_examples(examples, harms)


def safety_concepts(
    examples: Sequence[Example], harm_categories: Mapping[str, tuple[str, ...]], min_examples: int
) -> list[SafetyConcept]:
    """The concepts of training examples: every kind, harm category and topic with >= min_examples prompts."""
    labelled = concept_labels(examples, harm_categories)
    groups = [g for g in build_groups(labelled, min_examples) if g.facet in FACETS]
    concepts = [
        SafetyConcept(
            g.name, g.facet, g.value, list(g.rows), dict(Counter(examples[r].register or "" for r in g.rows))
        )
        for g in groups
    ]
    if len(concepts) < 2:
        raise SaelignError(
            f"the safety ontology has {len(concepts)} concept(s) with at least ontology.min_examples="
            f"{min_examples} training prompts; AlignSAE needs 2 or more: lower --ontology-min-examples "
            "or give more training prompts"
        )
    return concepts


def binding_auroc(
    sae: SAE,
    slot_map: SlotMap,
    acts: torch.Tensor,
    labelled: Sequence[LabelledPrompt],
    concepts: Sequence[SafetyConcept],
) -> dict[str, float | None]:
    """Per concept: how well its slot's value ranks its own prompts above the rest (ROC AUC; None if a split
    has no prompt on one side). Prompts carry several concepts, so an argmax accuracy would not apply."""
    with torch.inference_mode():
        z = sae.encode(acts.to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu()
    out: dict[str, float | None] = {}
    for concept, slot in zip(concepts, slot_map.slots, strict=True):
        member = torch.tensor([concept.holds(p) for p in labelled])
        out[concept.name] = (
            float(auc(z[:, [slot]], member)[0]) if 0 < int(member.sum()) < len(member) else None
        )
    return out


@dataclass
class AlignedSubspace:
    sae: SAE
    slot_map: SlotMap
    basis: torch.Tensor
    info: dict[str, Any]

    @property
    def labels(self) -> dict[int, str]:
        """{slot: concept name}: the method's feature labels."""
        return dict(zip(self.slot_map.slots, self.slot_map.concepts, strict=True))

    def provenance(self) -> dict[str, Any]:
        """The adapter sidecar's record of this subspace (slots are the method's latents). The sidecar's
        `rank` is the LoRA rank, so the basis' own rank is `subspace_rank`, as for SAILS."""
        record = subspace_provenance(self.slot_map, None, self.basis)
        record["subspace_rank"] = record.pop("rank")
        return {**record, "latent_ids": list(self.slot_map.slots), "labels": self.labels}


def align_safety_slots(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sae: SAE,
    train: Sequence[Example],
    val: Sequence[Example],
    generic: torch.Tensor,
    harm_categories: Mapping[str, tuple[str, ...]],
    ontology: SafetyOntologyConfig,
    post: PostTrainConfig,
    select: FeatureSelectConfig,
    tau: float,
    max_rank: int,
    sails_basis: torch.Tensor | None = None,
) -> AlignedSubspace:
    """Post-train `sae` so each safety concept of `train` owns a slot; the basis spans the slots' decoder
    rows. With post.out set, the aligned SAE and slot_map.json are saved there (and post-training resumes
    there); `sails_basis`, if given, is compared with the aligned basis."""
    concepts = safety_concepts(train, harm_categories, ontology.min_examples)
    (hookpoint,) = select.hookpoints
    pooled = {
        name: residual_activations(model, tokenizer, [hookpoint], [e.prompt for e in split], select)[
            hookpoint
        ]
        for name, split in (("train", train), ("val", val))
        if split
    }
    rows = [r for c in concepts for r in c.rows]
    labels = torch.tensor([i for i, c in enumerate(concepts) for _ in c.rows])
    logger.info(
        f"safety ontology: {len(concepts)} concepts over {len(train)} training prompts ({len(rows)} rows)"
    )
    aligned, slot_map = post_train(
        sae,
        pooled["train"][rows],
        labels,
        generic,
        post,
        [c.name for c in concepts],
        position=select.positions,
    )
    basis = slots_to_subspace(aligned, slot_map, tau=tau, max_rank=max_rank)
    slot_rows = aligned.W_dec.detach()[slot_map.slots]
    auroc = {
        name: binding_auroc(aligned, slot_map, pooled[name], concept_labels(split, harm_categories), concepts)
        for name, split in (("train", train), ("val", val))
        if name in pooled
    }
    table = [
        {
            **{k: v for k, v in asdict(c).items() if k != "rows"},
            "slot": slot,
            "n_train": len(c.rows),
            **{f"auroc_{split}": values[c.name] for split, values in auroc.items()},
        }
        for c, slot in zip(concepts, slot_map.slots, strict=True)
    ]
    info = {
        "hookpoint": hookpoint,
        "concepts": table,
        "rank": int(basis.shape[1]),
        "tau": tau,
        "max_rank": max_rank,
        "explained": explained_share(slot_rows, basis),
        "n_train": len(train),
        "rows": len(rows),
        "generic_rows": int(generic.shape[0]),
        "in_sails_span": explained_share(basis.T, sails_basis) if sails_basis is not None else None,
    }
    return AlignedSubspace(aligned, slot_map, basis, info)


INFO_FILE, BASIS_FILE = "aligned.json", "subspace.safetensors"


def save_aligned_subspace(result: AlignedSubspace, folder: str | Path) -> None:
    """The basis and the concept table beside the aligned SAE and slot_map.json that post-training saved."""
    folder = Path(folder)
    save_tensors_atomic(folder / BASIS_FILE, {"U": result.basis})
    write_json_atomic(folder / INFO_FILE, {**result.info, "basis_sha256": basis_hash(result.basis)})


def load_aligned_subspace(folder: str | Path, device: str | torch.device = "cpu") -> AlignedSubspace:
    folder = Path(folder)
    sae = load_sae(folder, device=device)
    return AlignedSubspace(
        sae,
        load_slot_map(folder, sae),
        load_tensors(folder / BASIS_FILE, "aligned subspace")["U"],
        read_json(folder / INFO_FILE, "aligned subspace record"),
    )
