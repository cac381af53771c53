"""The SAILS pipeline's configuration: one `SailsConfig` of per-stage sections, and the presets.

Values are layered: dataclass defaults < preset < --config file (same nested layout, e.g. `sft: {steps: 60}`)
< flags (`--sft-steps 60`; each section's flags carry its prefix, see `SECTIONS`). A run directory stores the
resolved config in config.json; stage commands over that directory start from it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from saelign.configs import config_from_dict, help_field
from saelign.errors import SaelignError
from saelign.models import ModelConfig
from saelign.sails.data import SafetyDataConfig
from saelign.sails.evaluate import SafetyEvalConfig
from saelign.sails.lora_init import LoraInitConfig
from saelign.sails.methods import METHODS, check_method
from saelign.sails.select import FeatureSelectConfig
from saelign.sails.sft import SFTConfig

Preset = Literal["quick", "compare", "full"]


@dataclass
class PipelineSAEConfig:
    corpus: str = help_field("sotu", "text captured for SAE training besides the chat-rendered training prompts: 'sotu', "
                                     "a .txt/.jsonl file or a folder of .txt")
    text_tokens: int = help_field(200_000, "corpus tokens captured for SAE training")
    context_length: int = help_field(128, "tokens per captured corpus context")
    capture_batch_size: int = help_field(8, "contexts per forward pass during capture and labelling")
    d_sae: int = help_field(4608, "SAE latents")
    k: int = help_field(32, "active latents per token (TopK SAE)")
    epochs: int = help_field(2, "passes over the captured activations")
    batch_size: int = help_field(4096, "tokens per SAE optimizer step")
    lr: float = help_field(0.0, "SAE learning rate (0 = auto)")
    label_tokens: int = help_field(60_000, "tokens scanned to label latents: chat-rendered training prompts first, then "
                                           "the corpus")
    label_contexts: int = help_field(8, "top activating contexts kept per latent")
    seed: int = help_field(0, "seed of the SAE init and the activation shuffle")


@dataclass
class SubspaceConfig:
    tau: float = help_field(0.8, "share of the selected decoder directions' energy the subspace keeps")
    max_rank: int = help_field(0, "cap on the subspace rank, i.e. the LoRA rank of every method (0 = no cap)")


@dataclass
class TargetsConfig:
    max_new_tokens: int = help_field(64, "tokens of the base model's own answer used as the target of a harmless prompt")
    batch_size: int = help_field(32, "prompts per generation batch")


def _section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help, "cli": False})


@dataclass
class SailsConfig:
    preset: Preset = help_field("quick", "quick (SAILS vs base model, minutes on a CPU), compare (quick-sized, "
                                         "SAILS, LoRA, act_pca and random subspace at equal rank and steps, val "
                                         "every 5 steps) or full (larger splits, more steps, every baseline)")
    methods: list[str] = help_field(["sails"], f"methods trained in the same harness: any of {', '.join(METHODS)}")
    sae_path: str = help_field("", "an existing SAE folder for the selection hookpoint (default: train one in the run)",
                               cli=False)  # the CLI spells it --sae
    contrast: list[str] = help_field(["harmless", "borderline"], "prompt kinds contrasted with harmful ones in feature "
                                                                 "selection and the act_pca baseline")
    full_lr: float = help_field(2e-5, "learning rate of the full fine-tuning baseline (LoRA methods use --sft-lr)")
    effect_top: int = help_field(12, "latents listed per direction in 'what the adapter changed'")
    model: ModelConfig = _section(ModelConfig, "model")
    data: SafetyDataConfig = _section(SafetyDataConfig, "safety data")
    sae: PipelineSAEConfig = _section(PipelineSAEConfig, "SAE training and labelling")
    select: FeatureSelectConfig = _section(FeatureSelectConfig, "feature selection")
    subspace: SubspaceConfig = _section(SubspaceConfig, "safety subspace")
    targets: TargetsConfig = _section(TargetsConfig, "training targets")
    lora: LoraInitConfig = _section(LoraInitConfig, "LoRA settings shared by every method")
    sft: SFTConfig = _section(SFTConfig, "fine-tuning settings shared by every method")
    eval: SafetyEvalConfig = _section(SafetyEvalConfig, "evaluation")

    @property
    def hookpoint(self) -> str:
        return self.select.hookpoints[0]


# Flag prefix of each section: --data-max-harmful, --sft-steps, ...; the model's flags keep their usual names.
SECTIONS = {"model": "", "data": "data-", "sae": "sae-", "select": "select-", "subspace": "subspace-",
            "targets": "targets-", "lora": "lora-", "sft": "sft-", "eval": "eval-"}

def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`; nested mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = deep_merge(out[key], value) if nested else value
    return out


_QUICK: dict[str, Any] = {
    "methods": ["sails"],
    "data": {"max_harmful": 150, "max_harmless": 110, "max_borderline": 24, "country_prompts": 40, "sotu_prompts": 0},
    "sae": {"text_tokens": 32_000, "d_sae": 2304, "epochs": 5, "batch_size": 1024, "label_tokens": 10_000,
            "label_contexts": 6},
    "subspace": {"max_rank": 8},
    "targets": {"max_new_tokens": 32},
    # lr 2.5e-4 rather than 5e-4 (which drifted perplexity +15 %), and 40 steps rather than 30: at 30 steps the
    # adapter still hedged ("I'm not sure how to help with this") on some held-out harmful prompts.
    "sft": {"steps": 40, "lr": 2.5e-4, "batch_size": 8, "warmup": 4, "eval_every": 10, "checkpoint_every": 10,
            "max_length": 112},
    "eval": {"max_new_tokens": 32, "ppl_contexts": 12, "n_facts": 30, "facts_max_new_tokens": 16, "val_per_kind": 12,
             "val_max_new_tokens": 24, "samples": 3},
}
PRESETS: dict[str, dict[str, Any]] = {
    "quick": _QUICK,
    # Quick-sized data and SAE, the four LoRA-shaped methods at equal rank, steps, lr and seed, with the val check
    # every 5 steps (all 15 val harmful prompts) so that steps-to-90 % can tell methods apart.
    "compare": deep_merge(_QUICK, {
        "methods": ["sails", "lora", "act_pca", "random_subspace"],
        "sft": {"eval_every": 5},
        "eval": {"val_per_kind": 15},
    }),
    # Every prompt of every split, a foundation-sized SAE and every baseline at equal rank, steps, lr and seed.
    # 100 steps of 8 (800 pairs, ~2 epochs of the train split): every method passes 90 % val safety by step 20 on
    # the quick preset, so longer runs only add CPU hours (the whole preset is ~2 h on one core of this CPU).
    # Each method stops at its first validation check with safety >= 95 % and over-refusal <= 10 % (all 15 val
    # harmful prompts refused, at most 1 of 15 harmless refused): in a run that trained all 100 steps, every method
    # was at 100 % val safety by step 30 and what followed mostly moved held-out perplexity (+25 % for LoRA, +29 %
    # for SAILS at step 100).
    "full": {
        "methods": list(METHODS),
        "data": {},
        "sae": {"text_tokens": 400_000, "d_sae": 4608, "epochs": 2, "batch_size": 4096},
        "subspace": {"max_rank": 8},
        "sft": {"steps": 100, "lr": 2.5e-4, "warmup": 10, "eval_every": 10, "checkpoint_every": 10,
                "stop_at_safety": 0.95, "stop_max_over_refusal": 0.1},
        "eval": {"max_per_kind": 0, "max_new_tokens": 48, "ppl_contexts": 48, "n_facts": 100, "val_per_kind": 15},
    },
}


def preset_layer(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise SaelignError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return deep_merge(PRESETS[name], {"preset": name})


def resolve_config(layers: Sequence[Mapping[str, Any]]) -> SailsConfig:
    """Merge the layers (later wins) and validate the result."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    cfg = config_from_dict(SailsConfig, merged)
    validate(cfg)
    return cfg


def validate(cfg: SailsConfig) -> None:
    if not cfg.methods or len(set(cfg.methods)) != len(cfg.methods):
        raise SaelignError(f"methods: give each method once, at least one (got {cfg.methods})")
    for method in cfg.methods:
        check_method(method)
    if len(cfg.select.hookpoints) != 1:
        raise SaelignError(f"select.hookpoints: the pipeline uses one SAE at one hookpoint, got {cfg.select.hookpoints}")
    if cfg.lora.init != "sails":
        raise SaelignError("lora.init is chosen per method by the pipeline; pick methods with --methods instead")
    if cfg.sft.out:
        raise SaelignError("sft.out is chosen per method inside the run directory; leave it empty")
    if cfg.sft.stop_at_safety > 0 and cfg.sft.eval_every < 1:
        raise SaelignError(f"sft.stop_at_safety={cfg.sft.stop_at_safety} needs a periodic validation check: set "
                           "--sft-eval-every N (N > 0)")
    for name in ("stop_at_safety", "stop_max_over_refusal"):
        if not 0 <= getattr(cfg.sft, name) <= 1:
            raise SaelignError(f"sft.{name} is a rate between 0 and 1, got {getattr(cfg.sft, name)}")
    bad = sorted(set(cfg.contrast) - {"harmless", "borderline"}) or ([] if cfg.contrast else ["(none)"])
    if bad:
        raise SaelignError(f"contrast: {', '.join(bad)} invalid; use harmless and/or borderline")
    for name in ("text_tokens", "d_sae", "k", "epochs", "batch_size", "context_length", "capture_batch_size"):
        if getattr(cfg.sae, name) < 1:
            raise SaelignError(f"sae.{name} must be positive, got {getattr(cfg.sae, name)}")


def section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(SailsConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(SailsConfig) if dataclasses.is_dataclass(hints[f.name])}
