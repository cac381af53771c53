"""Fact learning: fine-tune a model on an ontology's train prompts until it answers them.

AlignSAE's swap results were measured on a model fine-tuned on synthetic biographies, where every fact of
every relation is known and known alike. This stage makes such a model: the train-template prompts of an
ontology whose entities carry answers (e.g. `builtin:biographies`) become plain-text (prompt, " answer<eos>")
pairs, trained with the project's SFT loop (full fine-tuning, or LoRA merged into the weights), and accuracy
is read on the train templates and on the unseen ones, per concept and per phrasing style. Training stops at
the first periodic check whose sampled train accuracy reaches `target_accuracy`, or after `max_minutes`.

The output folder holds `model/` (an ordinary HF folder: pass it as `--model` to every other stage),
`facts.json` (the accuracies and the check history), `run.json` and `sft/` (the resumable checkpoint)."""

import dataclasses
import os
import random
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saelign.align.builtin.facts import answers_given
from saelign.align.ontology import ConceptExample, Ontology
from saelign.align.pipeline import resolve_ontology
from saelign.configs import config_to_dict, help_field
from saelign.errors import SaelignError, require
from saelign.io import ensure_writable_dir, write_json_atomic
from saelign.models import ModelConfig, load_model
from saelign.progress import logger
from saelign.runinfo import record_stage
from saelign.sails.lora_init import LoraInitConfig, make_peft_model, prepare_full_finetune
from saelign.sails.sft import SFTConfig, encode_completion, train_sft

MODEL_DIR = "model"
FACTS_FILE = "facts.json"
SFT_DIR = "sft"


@dataclass
class LearnFactsConfig:
    ontology: str = help_field(
        "builtin:biographies",
        "ontology whose train prompts are learnt (file or builtin:NAME; "
        "every entity or example needs an answer)",
    )
    out: str = help_field("facts_model", "folder for model/, facts.json, run.json and the sft/ checkpoint")
    method: Literal["full", "lora"] = help_field(
        "full", "full fine-tuning, or LoRA (merged into the saved model)"
    )
    target_accuracy: float = help_field(
        0.95, "stop at the first check whose sampled train accuracy reaches this (0: train every step)"
    )
    max_minutes: float = help_field(
        0.0, "stop at the first check after this many minutes of training (0: no limit)"
    )
    check_every: int = help_field(20, "check the train accuracy every N optimizer steps")
    check_prompts: int = help_field(
        128, "train prompts (seeded sample) in each periodic check; the final check reads every prompt"
    )
    generation_batch_size: int = help_field(32, "prompts per batch when checking answers")
    lora: LoraInitConfig = field(
        default_factory=LoraInitConfig,
        metadata={
            "help": "LoRA settings (method lora)",
            "hide": {
                "init": "learn-facts uses PEFT's default LoRA init",
                **dict.fromkeys(("writer_modules", "init_scale", "freeze_subspace"), "SAILS subspaces only"),
            },
        },
    )
    sft: SFTConfig = field(
        default_factory=SFTConfig,
        metadata={
            "help": "fine-tuning settings",
            "hide": {
                "out": "the checkpoint goes to OUT/sft",
                "eval_every": "set by --check-every",
                "stop_at_safety": "learn-facts stops on --target-accuracy",
                "stop_max_over_refusal": "a safety rule",
            },
        },
    )

    def __post_init__(self) -> None:
        require(
            0 <= self.target_accuracy <= 1,
            f"target_accuracy is a share in [0, 1], got {self.target_accuracy}",
        )
        require(
            self.check_every >= 1 and self.check_prompts >= 1,
            f"check_every and check_prompts must be positive, got {self.check_every}, {self.check_prompts}",
        )
        require(
            self.max_minutes >= 0, f"max_minutes must be 0 (no limit) or positive, got {self.max_minutes}"
        )
        require(self.method != "lora" or self.lora.rank >= 1, "method lora needs --lora-rank N (N >= 1)")


def fact_pairs(ontology: Ontology) -> list[tuple[str, str]]:
    """(prompt, answer) for every train prompt of the ontology."""
    examples = ontology.examples("train")
    missing = next((ex for ex in examples if not ex.answer), None)
    if missing is not None:
        raise SaelignError(
            f"ontology {ontology.name!r}: the train prompt {missing.text!r} ({missing.concept}) has no "
            "answer to learn; give every entity or example an `answer`"
        )
    return [(ex.text, str(ex.answer)) for ex in examples]


def _share(values: list[bool]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def fact_accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[ConceptExample],
    batch_size: int = 32,
) -> dict[str, Any]:
    """Share of prompts answered: per split (train / test = unseen templates), per style within each split
    (where the ontology names styles), per concept."""
    hits = answers_given(model, tokenizer, examples, batch_size)
    split: dict[str, list[bool]] = defaultdict(list)
    style: dict[str, dict[str, list[bool]]] = {"train": defaultdict(list), "test": defaultdict(list)}
    concept: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for ex, ok in zip(examples, hits, strict=True):
        split[ex.split].append(ok)
        concept[ex.concept][ex.split].append(ok)
        if ex.style is not None:
            style[ex.split][ex.style].append(ok)
    return {
        "train": _share(split["train"]),
        "test": _share(split["test"]),
        "prompts": len(hits),
        "train_by_style": {name: _share(v) for name, v in style["train"].items()},
        "test_by_style": {name: _share(v) for name, v in style["test"].items()},
        "per_concept": {
            name: {part: _share(v[part]) for part in ("train", "test")} for name, v in concept.items()
        },
    }


def _trainable(model: PreTrainedModel, cfg: LearnFactsConfig) -> nn.Module:
    if cfg.method == "lora":
        return make_peft_model(model, None, dataclasses.replace(cfg.lora, init="lora"))
    return prepare_full_finetune(model)


def _save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path) -> Path:
    """Write the HF folder beside `target`, then rename it into place: a crash leaves no half-written one."""
    staging = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=ensure_writable_dir(target.parent))
    )
    try:
        model.save_pretrained(str(staging / "m"), safe_serialization=True)
        tokenizer.save_pretrained(str(staging / "m"))
        if target.exists():
            os.replace(target, staging / "old")
        os.replace(staging / "m", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def learn_facts(
    model_cfg: ModelConfig, cfg: LearnFactsConfig, ontology: Ontology | None = None
) -> dict[str, Any]:
    """Fine-tune `model_cfg`'s model on the ontology's facts into `cfg.out`; return (and write) facts.json."""
    ontology = ontology or resolve_ontology(cfg.ontology)
    pairs = fact_pairs(ontology)
    model, tokenizer = load_model(model_cfg)
    out = ensure_writable_dir(cfg.out)
    train_examples = ontology.examples("train")
    checked = random.Random(cfg.sft.seed).sample(train_examples, min(cfg.check_prompts, len(train_examples)))
    started = time.perf_counter()

    def check(trained: nn.Module, step: int) -> dict[str, Any]:
        hits = answers_given(trained, tokenizer, checked, cfg.generation_batch_size)
        minutes = (time.perf_counter() - started) / 60
        logger.info(
            f"step {step}: {sum(hits)}/{len(hits)} sampled train prompts answered ({minutes:.1f} min)"
        )
        return {"train_accuracy": sum(hits) / len(hits), "minutes": minutes}

    def stop(result: dict[str, Any]) -> bool:
        reached = cfg.target_accuracy > 0 and result["train_accuracy"] >= cfg.target_accuracy
        return reached or (cfg.max_minutes > 0 and result["minutes"] >= cfg.max_minutes)

    sft = dataclasses.replace(cfg.sft, eval_every=cfg.check_every, out=str(out / SFT_DIR))
    trainable = _trainable(model, cfg)
    # plain text, not chat turns: the prompts are read (and later probed) exactly as written
    history = train_sft(trainable, tokenizer, pairs, sft, check, stop, encode=encode_completion)
    trained = trainable.merge_and_unload() if cfg.method == "lora" else trainable
    train_minutes = (time.perf_counter() - started) / 60
    accuracy = fact_accuracy(trained, tokenizer, ontology.examples(None), cfg.generation_batch_size)
    _save_model(trained, tokenizer, out / MODEL_DIR)
    report = {
        "ontology": ontology.name,
        "facts": len({(ex.concept, ex.entity) for ex in train_examples}),
        "train_pairs": len(pairs),
        "method": cfg.method,
        "steps": history["train"][-1]["step"] if history["train"] else 0,
        "train_minutes": round(train_minutes, 2),
        "accuracy": accuracy,
        "checks": history["eval"],
        "final_loss": history["train"][-1]["loss"] if history["train"] else None,
        "model": str(out / MODEL_DIR),
    }
    write_json_atomic(out / FACTS_FILE, report)
    record_stage(
        out,
        "learn-facts",
        {**config_to_dict(cfg), "model": config_to_dict(model_cfg)},
        accuracy_train=accuracy["train"],
        accuracy_test=accuracy["test"],
    )
    logger.info(
        f"learnt facts: train {accuracy['train']}, unseen templates {accuracy['test']} "
        f"({accuracy['test_by_style']}) -> {out / MODEL_DIR}"
    )
    return report
