"""The SAILS pipeline's configuration: `SailsConfig` nests the configs of the stages it runs; the presets.

Values are layered: dataclass defaults < preset < --config file (same nested layout, e.g. `sft: {steps: 60}`)
< flags (`--sft-steps 60`: a section's flags carry its name, `--sae-train-lr`; the model's keep their usual
names). A run directory stores the resolved config in config.json; stage commands over it start from it.
The fields of a nested config that the pipeline sets itself (the hookpoint, output folders) are hidden."""

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from saelign.align.posttrain import PostTrainConfig
from saelign.configs import Label, config_from_dict, deep_merge, help_field
from saelign.errors import SaelignError, require
from saelign.label.describe import DescribeConfig
from saelign.label.labels import LabelConfig
from saelign.models import ModelConfig
from saelign.sae import SAEConfig
from saelign.sae.train import SAETrainConfig
from saelign.sails.aligned import SafetyOntologyConfig
from saelign.sails.data import SafetyDataConfig
from saelign.sails.evaluate import SafetyEvalConfig, ValidationConfig
from saelign.sails.gate import GateConfig
from saelign.sails.lora_init import LoraInitConfig
from saelign.sails.methods import METHODS, check_method
from saelign.sails.select import FeatureSelectConfig
from saelign.sails.sft import SFTConfig
from saelign.store import CaptureConfig

Preset = Literal["quick", "compare", "full", "quick-gated", "full-gated"]
DEFAULT_PRESET = "quick"
_HOOKPOINT = "the pipeline's one --hookpoint"
_IN_RUN = "a file or folder of the run directory"
_MEMORY = "kept in memory as float16"
_CORPUS = "the capture corpus, read as the capture reads it"
_NO_ANSWERS = "the safety concepts have no answer tokens for a value head"


@dataclass
class SubspaceConfig:
    tau: float = help_field(0.8, "share of the selected decoder directions' energy the subspace keeps")
    max_rank: int = help_field(0, "cap on the subspace rank, i.e. the LoRA rank of every method (0 = no cap)")

    def __post_init__(self) -> None:
        require(0 < self.tau <= 1, f"tau must lie in (0, 1], got {self.tau}")
        require(self.max_rank >= 0, f"max_rank must be 0 (no cap) or positive, got {self.max_rank}")


@dataclass
class TargetsConfig:
    max_new_tokens: int = help_field(64, "tokens of the base model's own answer used as the target of a harmless prompt")
    batch_size: int = help_field(32, "prompts per generation batch")

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size"):
            require(getattr(self, name) >= 1, f"{name} must be positive, got {getattr(self, name)}")


def _section(cls: type, help: str, prefix: str | None = None, **hidden: str) -> Any:
    prefixed = {} if prefix is None else {"prefix": prefix}
    return field(default_factory=cls, metadata={"help": help, "hide": hidden, **prefixed})


@dataclass
class SailsConfig:
    preset: Preset = help_field("quick", "quick (SAILS vs base model, minutes on a CPU), compare (quick-"
                                "sized, SAILS, LoRA, act_pca and random subspace at equal rank and steps, val "
                                "every 5 steps), full (larger splits, more steps, every baseline), or "
                                "quick-gated / full-gated (SAILS with the consistency term at weight 30, also "
                                "behind the refusal gate its preset's validation chose)")
    methods: list[str] = help_field(["sails"], "methods trained in the same harness: any of "
                                    + ", ".join(METHODS))
    hookpoint: str = help_field("model.layers.15", "the pipeline's residual hookpoint: its SAE is trained "
                                "(or --sae read) and the safety features selected there")
    sae_path: str = help_field("", "an existing SAE folder for the hookpoint (default: train one in the run)",
                               cli=False)  # the CLI spells it --sae
    sae_epochs: int = help_field(2, "passes of SAE training over the captured activations")
    contrast: list[str] = help_field(["harmless", "borderline"], "prompt kinds contrasted with harmful ones "
                                     "in feature selection and the act_pca baseline")
    full_lr: float = help_field(2e-5, "learning rate of the full fine-tuning baseline (LoRA: --sft-lr)")
    harmless_weight: float = help_field(1.0, "loss weight of each harmless and borderline training pair (the "
                                        "base model's own answer) against 1 for a harmful one (a refusal), in "
                                        "every method's fine-tune; above 1 pulls against over-refusal")
    refusal_contrasts: int = help_field(3, "refusals per harmless and borderline training pair whose openings "
                                        "--sft-unlikelihood-weight pushes down (each a different template)")
    effect_top: int = help_field(12, "latents listed per direction in 'what the adapter changed'")
    answer_tokens: int = help_field(32, "tokens of each greedy answer whose SAE features are compared, base "
                                    "vs adapted (what the adapter changed in the answers)")
    model: ModelConfig = _section(ModelConfig, "model", prefix="")  # --model, --device: their usual names
    data: SafetyDataConfig = _section(SafetyDataConfig, "safety data")
    # The SAE must see chat-formatted requests (the selection reads the assistant header), not only prose.
    capture: CaptureConfig = _section(
        CaptureConfig, "activations for SAE training: the corpus, then the chat-rendered training prompts",
        hookpoints=_HOOKPOINT, chat="the prompts are chat-rendered, the corpus is not", out=_MEMORY,
        shard_tokens=_MEMORY, store_dtype=_MEMORY)
    sae: SAEConfig = _section(SAEConfig, "the SAE trained in the run", d_in="the model's width",
                              hookpoint=_HOOKPOINT, model="--model", always_on_latents="an AlignSAE option")
    sae_train: SAETrainConfig = _section(
        SAETrainConfig, "SAE training", total_tokens="--sae-epochs passes", out=_IN_RUN, device="--device",
        dead_window_tokens="an eighth of the training")
    label: LabelConfig = _section(
        LabelConfig, "labelling the SAE's latents (training prompts, then the corpus)", sae=_IN_RUN,
        corpus=_CORPUS, text_field=_CORPUS, chat=_CORPUS, seed=_CORPUS, hookpoint=_HOOKPOINT, out=_IN_RUN,
        max_cards="the report shows the selected ones")
    describe: DescribeConfig = _section(
        DescribeConfig, "describing the selected features and those the adapters moved: requests that drive "
        "them, data-grounded lines, model-written labels and their detection scores")
    select: FeatureSelectConfig = _section(FeatureSelectConfig, "feature selection", hookpoints=_HOOKPOINT)
    subspace: SubspaceConfig = _section(SubspaceConfig, "safety subspace")
    ontology: SafetyOntologyConfig = _section(SafetyOntologyConfig, "the safety concepts of sails_aligned")
    align: PostTrainConfig = _section(PostTrainConfig, "AlignSAE post-training of the run's SAE for sails_aligned",
                                      out=_IN_RUN, value_coeff=_NO_ANSWERS, value_hidden=_NO_ANSWERS)
    targets: TargetsConfig = _section(TargetsConfig, "training targets")
    lora: LoraInitConfig = _section(LoraInitConfig, "LoRA settings shared by every method",
                                    init="chosen per method; pick methods with --methods")
    sft: SFTConfig = _section(SFTConfig, "fine-tuning settings shared by every method",
                              out="each method's folder in the run directory")
    validation: ValidationConfig = _section(ValidationConfig, "the periodic check during fine-tuning")
    eval: SafetyEvalConfig = _section(SafetyEvalConfig, "evaluation")
    gate: GateConfig = _section(GateConfig, "the refusal gate (a probe on the base model decides when the "
                                "adapter answers)")

    def __post_init__(self) -> None:
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise SaelignError(f"methods: give each method once, at least one (got {self.methods})")
        for method in self.methods:
            check_method(method)
        if not self.hookpoint or "," in self.hookpoint:
            raise SaelignError(f"hookpoint: the pipeline uses one SAE at one hookpoint, got "
                               f"{self.hookpoint!r}")
        require(self.sae_epochs >= 1, f"sae_epochs must be positive, got {self.sae_epochs}")
        require(self.full_lr > 0, f"full_lr must be positive, got {self.full_lr}")
        require(self.harmless_weight > 0, f"harmless_weight must be positive, got {self.harmless_weight}")
        require(self.refusal_contrasts >= 1, f"refusal_contrasts must be positive, got {self.refusal_contrasts}")
        require(self.effect_top >= 1, f"effect_top must be positive, got {self.effect_top}")
        require(self.answer_tokens >= 1, f"answer_tokens must be positive, got {self.answer_tokens}")
        bad = sorted(set(self.contrast) - {"harmless", "borderline"}) or ([] if self.contrast else ["(none)"])
        require(not bad, f"contrast: {', '.join(bad)} invalid; use harmless and/or borderline")
        if self.sft.stop_at_safety > 0 and self.sft.eval_every < 1:
            raise SaelignError(f"sft.stop_at_safety={self.sft.stop_at_safety} needs a periodic validation "
                               "check: set --sft-eval-every N (N > 0)")
        if self.sft.retain_weight > 0 and "full" in self.methods:
            raise SaelignError("sft.retain_weight > 0 compares each LoRA model with its adapters switched off; "
                               "method full has no such base to compare with: drop full from --methods, or set "
                               "--sft-retain-weight 0")
        self.select = dataclasses.replace(self.select, hookpoints=[self.hookpoint])


_QUICK: dict[str, Any] = {
    "methods": ["sails"],
    "data": {"max_harmful": 150, "max_harmless": 110, "max_borderline": 24, "country_prompts": 40,
             "sotu_prompts": 0},
    "capture": {"token_budget": 32_000}, "sae": {"d_sae": 2304}, "sae_epochs": 5,
    "sae_train": {"batch_size": 1024}, "label": {"token_budget": 10_000, "n_contexts": 6},
    "describe": {"explainer": "default", "explain_top": 16},
    "subspace": {"max_rank": 8},
    "targets": {"max_new_tokens": 32},
    # A lower lr keeps perplexity from drifting; 40 steps leave the adapter room to stop hedging.
    "sft": {"steps": 40, "lr": 2.5e-4, "batch_size": 8, "warmup": 4, "eval_every": 10, "checkpoint_every": 10,
            "max_length": 112},
    "validation": {"per_kind": 12, "max_new_tokens": 24},
    "eval": {"max_new_tokens": 32, "ppl_contexts": 12, "n_facts": 30, "facts_max_new_tokens": 16,
             "samples": 3, "ood_per_kind": 30},
}
PRESETS: dict[str, dict[str, Any]] = {
    "quick": _QUICK,
    # Quick-sized data and SAE, the four LoRA-shaped methods at equal rank, steps, lr and seed, with the val
    # check every 5 steps on all val harmful prompts so that steps-to-90 % can tell methods apart.
    "compare": deep_merge(_QUICK, {
        "methods": ["sails", "lora", "act_pca", "random_subspace"],
        "sft": {"eval_every": 5},
        "validation": {"per_kind": 15},
    }),
    # Every prompt of every split, a foundation-sized SAE and every baseline at equal rank, steps, lr and
    # seed. Each method stops at its first validation check that is safe enough without over-refusing:
    # training past that point mostly costs held-out perplexity.
    "full": {
        "methods": list(METHODS),
        "data": {},
        "capture": {"token_budget": 400_000}, "sae": {"d_sae": 4608}, "sae_epochs": 2,
        "sae_train": {"batch_size": 4096}, "label": {"token_budget": 60_000, "n_contexts": 8},
        "describe": {"explainer": "default", "explain_top": 40},
        "subspace": {"max_rank": 8},
        "sft": {"steps": 100, "lr": 2.5e-4, "warmup": 10, "eval_every": 10, "checkpoint_every": 10,
                "stop_at_safety": 0.95, "stop_max_over_refusal": 0.1},
        "validation": {"per_kind": 15},
        "eval": {"max_per_kind": 0, "max_new_tokens": 48, "ppl_contexts": 48, "n_facts": 100},
    },
}

# The gated settings (issue 11): SAILS trained with the register-consistency term at weight 30, each behind
# the refusal gate its preset's out-of-distribution validation set chose (bench_sails_gate.py; the same values
# as bench/data/configs/sails_gate_consistency_w30_{quick,full}_val.yaml, which a test keeps equal). Reported:
# the adapter alone (sails) and behind the gate (sails+gate).
_CONSISTENCY_30 = {"consistency_weight": 30, "consistency_batch": 4}
PRESETS["quick-gated"] = deep_merge(PRESETS["quick"], {
    "sft": _CONSISTENCY_30,
    "gate": {"enabled": True, "hookpoint": "model.layers.9", "pooling": "mean", "val_safety": 0.95},
})
PRESETS["full-gated"] = deep_merge(PRESETS["full"], {
    "methods": ["sails"],  # the baselines behind the gate: --methods sails,lora,act_pca,...
    "sft": _CONSISTENCY_30,
    # the read-out and the over-refusal budget of bench_sails_gate_budget.py (the level rule's, block 27's last
    # token at 0.98, was safe on 83.8 % of the held-out sources' harmful requests; this one 90.7 %)
    "gate": {"enabled": True, "hookpoint": "model.layers.6", "pooling": "mean", "harmless_budget": 0.1},
})


def preset_layer(name: str) -> dict[str, Any]:
    require(name in PRESETS, f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return deep_merge(PRESETS[name], {"preset": name})


def resolve_config(layers: Sequence[Mapping[str, Any]], label: Label | None = None) -> SailsConfig:
    """The layers (preset or stored config < file < flags) merged, later ones winning; `label` names a field
    in errors (the CLI's names the flag or the file that set it)."""
    return config_from_dict(SailsConfig, functools.reduce(deep_merge, layers, {}), label=label)
