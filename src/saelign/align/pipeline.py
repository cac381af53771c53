"""The AlignSAE stages over files: ontology → post-training → evaluation (+ report), and the swap / generate tools.

`train_aligned` reads a vanilla SAE folder and an ontology and writes the aligned SAE, `slot_map.json`, a copy of
the ontology and `run.json` into one folder (resumable through the post-training checkpoint). `evaluate_aligned`
measures the aligned SAE against the SAE it came from and writes `metrics.json` and `report.md/.html`.
Generic activations (what the free bank must keep reconstructing, and what FVU is measured on) come from an
activation store or are captured on the fly; evaluation skips the tokens post-training saw."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign import distributed
from saelign.align.activations import answer_token_ids, example_activations
from saelign.align.builtin import build_ontology
from saelign.align.interventions import SlotGuard, concept_swap, generate_with, slot_zero
from saelign.align.metrics import MetricsConfig, alignment_report
from saelign.align.ontology import Ontology, load_ontology, save_ontology
from saelign.align.posttrain import PostTrainConfig, post_train
from saelign.align.slots import SlotMap, load_slot_map
from saelign.configs import config_to_dict, help_field
from saelign.datasets.corpus import iter_contexts, open_corpus
from saelign.errors import SaelignError, require
from saelign.io import read_json_object, write_json_atomic
from saelign.models import ModelConfig, load_model
from saelign.progress import logger
from saelign.runinfo import record_stage
from saelign.sae import SAE, load_sae
from saelign.sae.evaluate import context_batches
from saelign.sae.formats import check_sae_matches
from saelign.store import ActivationStore, CaptureConfig, stream_batches
from saelign.store.capture import masked_token_ids

BUILTIN_PREFIX = "builtin:"
ONTOLOGY_COPY = "ontology.yaml"
METRICS_FILE = "metrics.json"


@dataclass
class AlignTrainConfig:
    sae: str = help_field("", "folder of the vanilla SAE to post-train (saelign/SAELens layout)")
    ontology: str = help_field("", "ontology .yaml/.json file, or builtin:NAME (relations, biographies, "
                                   "pos, ner, sentiment, wordnet)")
    store: str = help_field("", "activation store at the SAE's hookpoint for the generic batches (empty: "
                                "capture on the fly)")
    corpus: str = help_field("sotu", "text captured on the fly for the generic batches (as in `saelign capture`)")
    generic_tokens: int = help_field(65536, "generic activation rows read from the store or captured")
    context_length: int = help_field(128, "tokens per context when capturing on the fly")
    prompt_batch_size: int = help_field(16, "concept prompts per forward pass")

    def __post_init__(self) -> None:
        require(self.sae, "--sae is required: the folder of the SAE to post-train")


@dataclass
class AlignEvalConfig(MetricsConfig):
    aligned: str = help_field("", "folder written by `saelign align train` (SAE + slot_map.json)")
    vanilla: str = help_field("", "the SAE before post-training (empty: the one recorded in the aligned "
                                  "folder's run.json)")
    ontology: str = help_field("", "ontology file or builtin:NAME (empty: the copy saved in the aligned folder)")
    out: str = help_field("align_eval", "output folder for metrics.json and report.md/.html")
    store: str = help_field("", "activation store for the generic evaluation rows (empty: capture on the fly)")
    corpus: str = help_field("sotu", "text captured on the fly for generic rows and CE-loss contexts")
    generic_tokens: int = help_field(16384, "generic activation rows for FVU and entanglement")
    skip_tokens: int = help_field(-1, "generic rows skipped first (-1: as many as post-training read, so the "
                                      "text is unseen)")
    context_length: int = help_field(128, "tokens per context")
    splice_contexts: int = help_field(8, "contexts for CE loss recovered / KL with each SAE spliced in (0: skip)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.aligned, "--aligned is required: the folder written by `saelign align train`")


def resolve_ontology(spec: str) -> Ontology:
    """An ontology file, or `builtin:NAME` (built from its pinned data with default options)."""
    require(spec, "no ontology given; pass --ontology FILE.yaml or --ontology builtin:relations")
    if spec.startswith(BUILTIN_PREFIX):
        return build_ontology(spec[len(BUILTIN_PREFIX):])
    return load_ontology(spec)


def load_aligned(path: str | Path, device: str = "cpu") -> tuple[SAE, SlotMap]:
    """The aligned SAE and its slot map, checked against each other."""
    sae = load_sae(path, device=device)
    return sae, load_slot_map(path, sae)


def _checked_model(model_cfg: ModelConfig | None, sae: SAE) -> tuple[nn.Module, PreTrainedTokenizerBase, str]:
    """The model with `sae` checked against it and moved to its device."""
    hookpoint = sae.cfg.hookpoint
    if not hookpoint:
        raise SaelignError("the SAE's cfg.json records no hookpoint; set `hook_name` in it to the module it reads")
    model, tokenizer = load_model(model_cfg)
    check_sae_matches(sae, model, hookpoint)
    sae.to(next(model.parameters()).device)
    return model, tokenizer, hookpoint


def generic_activations(model: nn.Module, tokenizer: PreTrainedTokenizerBase, hookpoint: str, n_tokens: int,
                        store: str = "", corpus: str = "sotu", context_length: int = 128, skip: int = 0) -> torch.Tensor:
    """Residual activations [n, d] of ordinary text at `hookpoint`: rows skip..skip+n of a store or of the corpus."""
    require(n_tokens >= 1, f"generic_tokens must be positive, got {n_tokens}")
    if store:
        st = ActivationStore(store)
        require(st.hookpoint == hookpoint, f"store {store} holds {st.hookpoint!r} activations but the SAE "
                                           f"reads {hookpoint!r}; capture a store at the SAE's hookpoint")
        skip = min(skip, max(0, st.num_tokens - n_tokens))  # the last n_tokens rows when skip leaves too few
        return torch.cat(list(st.batches(4096, shuffle=False, max_tokens=skip + n_tokens)))[skip:]
    cfg = CaptureConfig(hookpoints=[hookpoint], corpus=corpus, context_length=context_length, token_budget=skip + n_tokens)
    chunks = [b.activations[hookpoint][max(0, skip - b.first_row):].cpu()
              for b in stream_batches(model, tokenizer, cfg, skip_rows=skip)]
    rows = torch.cat(chunks) if chunks else torch.zeros(0)
    if rows.shape[0] == 0:
        raise SaelignError(f"corpus {corpus!r} has no text after the first {skip} tokens; use a larger corpus or fewer tokens")
    return rows


def _align_record(run_json: Path) -> dict[str, Any]:
    """What train_aligned recorded in a folder's run.json; {} for folders made otherwise."""
    stages = read_json_object(run_json, "run.json").get("stages", {}) if run_json.is_file() else {}
    record = stages.get("align-train", {}) if isinstance(stages, dict) else None
    if not isinstance(record, dict):
        raise SaelignError(f"{run_json}: its align-train record is malformed; restore the file or align again")
    return record


def _check_same_alignment(out: Path, ontology: Ontology, vanilla: Path) -> None:
    """An --out that holds a finished alignment is handed back unchanged, so it must be of the same ontology
    and SAE (an unfinished one is checked by post-training's resume fingerprint, which names the concepts)."""
    copy = out / ONTOLOGY_COPY
    if copy.is_file() and load_ontology(copy).to_dict() != ontology.to_dict():
        raise SaelignError(f"{out} holds an alignment on another ontology ({copy}); choose another --out, or "
                           f"delete {out} to align this ontology there")
    run_json = out / "run.json"
    record = _align_record(run_json)
    if record.get("vanilla_sae") not in (None, str(vanilla)):
        raise SaelignError(f"{out} holds an alignment of the SAE {record['vanilla_sae']}, not {vanilla}; choose "
                           f"another --out, or delete {out} to start over")


def train_aligned(model_cfg: ModelConfig, cfg: AlignTrainConfig,
                  post: PostTrainConfig) -> tuple[SAE, SlotMap]:
    """Post-train `cfg.sae` on `cfg.ontology` into `post.out` (rerun to resume), on the model's device."""
    require(post.out, "--out is required: the folder that receives the aligned SAE and slot_map.json")
    ontology = resolve_ontology(cfg.ontology)
    out = Path(post.out)
    _check_same_alignment(out, ontology, Path(cfg.sae).resolve())
    sae = load_sae(cfg.sae)
    model, tokenizer, hookpoint = _checked_model(model_cfg, sae)
    examples = ontology.examples("train")
    acts = example_activations(model, tokenizer, hookpoint, examples, cfg.prompt_batch_size)
    labels = torch.tensor([ex.concept_index for ex in examples])
    answers = None
    if post.value_coeff > 0:
        if any(not ex.answer for ex in examples):
            raise SaelignError("value_coeff > 0 needs an answer for every training example of the ontology")
        answers = answer_token_ids(tokenizer, [ex.text for ex in examples], [str(ex.answer) for ex in examples])
    generic = generic_activations(model, tokenizer, hookpoint, cfg.generic_tokens, cfg.store, cfg.corpus, cfg.context_length)
    aligned, slot_map = post_train(sae, acts, labels, generic, post, ontology.concept_names, answers, ontology.position)
    if distributed.is_main():
        save_ontology(ontology, out / ONTOLOGY_COPY)
    record_stage(out, "align-train", {**config_to_dict(cfg), "model": config_to_dict(model_cfg)},
                 vanilla_sae=str(Path(cfg.sae).resolve()),
                 examples=len(examples), generic_rows=int(generic.shape[0]))
    return aligned, slot_map


def evaluate_aligned(model_cfg: ModelConfig, cfg: AlignEvalConfig,
                     layer_sweep: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Every metric for the aligned SAE and its vanilla baseline; writes metrics.json and the report into cfg.out."""
    from saelign.align.report import write_report

    aligned_dir = Path(cfg.aligned)
    aligned, slot_map = load_aligned(aligned_dir)
    run_json = aligned_dir / "run.json"  # what train_aligned recorded; {} for folders made otherwise
    record = _align_record(run_json)
    vanilla_path = cfg.vanilla or record.get("vanilla_sae")
    if not vanilla_path:
        raise SaelignError(f"{aligned_dir}/run.json names no vanilla SAE; pass --vanilla DIR (the SAE before post-training)")
    vanilla = load_sae(vanilla_path)
    ontology = resolve_ontology(cfg.ontology or str(aligned_dir / ONTOLOGY_COPY))
    if ontology.concept_names != slot_map.concepts:
        raise SaelignError(f"the ontology's concepts {ontology.concept_names} differ from the slot map's {slot_map.concepts}; "
                           "evaluate with the ontology the SAE was aligned on")
    model, tokenizer, hookpoint = _checked_model(model_cfg, aligned)
    vanilla.to(aligned.W_dec.device)
    skip = cfg.skip_tokens if cfg.skip_tokens >= 0 else int(record.get("config", {}).get("generic_tokens", 0))
    generic = generic_activations(model, tokenizer, hookpoint, cfg.generic_tokens, cfg.store, cfg.corpus,
                                  cfg.context_length, skip)
    token_batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    if cfg.splice_contexts > 0:
        contexts = iter_contexts(open_corpus(cfg.corpus), tokenizer, cfg.context_length)
        skip_contexts = -(-skip // max(1, cfg.context_length - 1))  # capture keeps context_length - 1 rows per context
        token_batches = list(context_batches(contexts, masked_token_ids(tokenizer), True, 4, cfg.splice_contexts, skip_contexts))
    metrics = alignment_report(model, tokenizer, vanilla, aligned, slot_map, ontology.examples("train"),
                               ontology.examples("test"), generic, cfg, token_batches=token_batches)
    metrics["ontology"] = {"name": ontology.name, "concepts": len(ontology.concepts),
                           "train_examples": len(ontology.examples("train")), "test_examples": len(ontology.examples("test"))}
    metrics["generic_rows"] = int(generic.shape[0])
    if layer_sweep:
        metrics["layer_sweep"] = list(layer_sweep)
    out = Path(cfg.out)
    write_json_atomic(out / METRICS_FILE, metrics)
    write_report(metrics, out)
    record_stage(out, "align-eval", {**config_to_dict(cfg), "model": config_to_dict(model_cfg)},
                 aligned=str(aligned_dir), vanilla=str(vanilla_path))
    return metrics


def swap_generate(aligned_dir: str | Path, prompt: str, source: str, target: str, alpha: float = 2.0,
                  model_cfg: ModelConfig | None = None, max_new_tokens: int = 16) -> tuple[str, str]:
    """(continuation without, continuation with) the swap at the prompt's last token."""
    sae, slot_map = load_aligned(aligned_dir)
    for concept in (source, target):  # unknown concept names fail before the model loads
        slot_map.index(concept)
    model, tokenizer, _ = _checked_model(model_cfg, sae)
    before = generate_with(model, tokenizer, prompt, max_new_tokens=max_new_tokens)
    after = generate_with(model, tokenizer, prompt, concept_swap(model, sae, slot_map, source, target, alpha),
                          max_new_tokens=max_new_tokens)
    return before, after


def guarded_generate(aligned_dir: str | Path, prompt: str, zero: Sequence[str] = (), guard: Sequence[str] = (),
                     model_cfg: ModelConfig | None = None, max_new_tokens: int = 32) -> dict[str, Any]:
    """Generate with the `zero` concepts' slots removed everywhere and a SlotGuard zeroing the `guard` concepts
    whenever they fire; returns the plain and edited texts and the guard's events."""
    require(zero or guard, "give --zero CONCEPT and/or --guard CONCEPT (otherwise use the model directly)")
    sae, slot_map = load_aligned(aligned_dir)
    for concept in [*zero, *guard]:
        slot_map.index(concept)
    model, tokenizer, _ = _checked_model(model_cfg, sae)
    sentry = SlotGuard(model, sae, slot_map, list(guard)) if guard else None
    zeroing = slot_zero(model, sae, list(zero), slot_map=slot_map) if zero else None
    interventions = [edit for edit in (zeroing, sentry) if edit is not None]
    plain = generate_with(model, tokenizer, prompt, max_new_tokens=max_new_tokens)
    edited = generate_with(model, tokenizer, prompt, *interventions, max_new_tokens=max_new_tokens, during="all")
    events = [{"forward": e.forward, "position": e.position, "concept": e.concept, "value": round(e.value, 4)}
              for e in (sentry.events if sentry else [])]
    logger.debug(f"guard events: {events}")
    return {"plain": plain, "edited": edited, "guard_events": events}


def example_counts(ontology: Ontology) -> list[dict[str, Any]]:
    """Per concept: examples in each split (what `saelign align check` prints)."""
    rows = [{"concept": name, "train": 0, "test": 0} for name in ontology.concept_names]
    for ex in ontology.examples(split=None):
        rows[ex.concept_index][ex.split] += 1
    return rows
