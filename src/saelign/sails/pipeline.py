"""The SAILS pipeline over one run directory:
data → sae → labels → select → targets → train → eval → effect → report.

Each stage (for train/eval/effect: each method) writes its files, then records in run.json a key: a hash of the
options it used and of the keys of the stages it reads. A rerun skips every stage whose files exist under the same
key, so an interrupted run continues where it stopped (SAE training and fine-tuning also resume mid-way from
their checkpoints). Files made under other options are never replaced silently: that is an error naming the stage
and the options, unless `overwrite` is set. The report is rebuilt on every run.

Layout: config.json, run.json, data/, sae/ (or sae.json naming an existing SAE), labels.json, select/,
targets/, methods/<method>/{adapter/, result.json, history.json}, eval/<model>.json, effect/<method>.json,
report.md/.html.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from saelign.configs import config_to_dict
from saelign.errors import SaelignError
from saelign.io import ensure_writable_dir, load_tensors, read_json, save_tensors_atomic, write_json_atomic
from saelign.models import load_model
from saelign.progress import logger
from saelign.runinfo import record_stage
from saelign.sae import SAE, load_sae
from saelign.sails import stages
from saelign.sails.adapters import load_adapter
from saelign.sails.data import SafetyData, load_safety_data
from saelign.sails.evaluate import CapabilityData, build_capability_data
from saelign.sails.lora_init import linear_module_names
from saelign.sails.presets import SailsConfig

STAGES = ("data", "sae", "labels", "select", "targets", "train", "eval", "effect", "report")
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"


class Run:
    """A run directory with a resolved config: stage keys, skip/resume decisions, and lazily loaded inputs."""

    def __init__(self, run_dir: str | Path, cfg: SailsConfig, overwrite: bool = False):
        self.dir = ensure_writable_dir(run_dir)
        self.cfg, self.overwrite = cfg, overwrite
        self._keys: dict[str, str] = {}

    # ---- paths -------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def outputs(self, unit: str) -> list[Path]:
        stage, _, name = unit.partition(":")
        return {
            "data": [self.path("data", f"{s}.jsonl") for s in ("train", "val", "test")],
            "sae": [self.path("sae.json")] if self.cfg.sae_path else [self.path("sae", "cfg.json")],
            "labels": [self.path("labels.json")],
            "select": [self.path("select", "selection.json"), self.path("select", "subspace.safetensors")],
            "targets": [self.path("targets", "train.jsonl")],
            "train": [self.path("methods", name, "result.json")],
            "eval": [self.path("eval", f"{name}.json")],
            "effect": [self.path("effect", f"{name}.json")],
        }[stage]

    def clear(self, unit: str) -> None:
        """Remove a unit's files before redoing it: its own folder (with checkpoints) where it has one."""
        stage, _, name = unit.partition(":")
        folder = self.path("methods", name) if stage == "train" else self.path(stage)
        if stage in ("data", "sae", "select", "targets", "train"):
            shutil.rmtree(folder, ignore_errors=True)
        for path in self.outputs(unit):
            path.unlink(missing_ok=True)

    # ---- keys ----------------------------------------------------------------------------------------------
    def components(self, unit: str) -> dict[str, Any]:
        """What a unit's output depends on: its options and the keys of the units it reads."""
        c = self.cfg
        stage, _, name = unit.partition(":")
        sae = {k: v for k, v in config_to_dict(c.sae).items() if not k.startswith("label_")}
        evaluation = {k: v for k, v in config_to_dict(c.eval).items() if not k.startswith("val_")}
        validation = {k: getattr(c.eval, k) for k in ("judge", "batch_size", "val_per_kind", "val_max_new_tokens")}
        return {
            "data": lambda: {"model": c.model.model, "data": config_to_dict(c.data)},
            "sae": lambda: {"up": self.key("data"), "hookpoint": c.hookpoint, "sae_path": c.sae_path,
                            "sae": {} if c.sae_path else sae},
            "labels": lambda: {"up": self.key("sae"), "tokens": c.sae.label_tokens, "contexts": c.sae.label_contexts},
            "select": lambda: {"up": self.key("sae"), "select": config_to_dict(c.select), "contrast": c.contrast,
                               "subspace": config_to_dict(c.subspace)},
            "targets": lambda: {"up": self.key("data"), "targets": config_to_dict(c.targets)},
            "train": lambda: {"up": [self.key("select"), self.key("targets")], "lora": config_to_dict(c.lora),
                              "sft": config_to_dict(c.sft), "validation": validation,
                              **({"full_lr": c.full_lr} if name == "full" else {})},
            "eval": lambda: {"up": self.key("data") if name == "base" else self.key(f"train:{name}"), "eval": evaluation},
            "effect": lambda: {"up": [self.key(f"train:{name}"), self.key("labels")], "top": c.effect_top},
        }[stage]()

    def key(self, unit: str) -> str:
        if unit not in self._keys:
            text = json.dumps(self.components(unit), sort_keys=True, default=str)
            self._keys[unit] = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._keys[unit]

    def recorded(self) -> dict[str, Any]:
        path = self.path(RUN_FILE)
        return read_json(path, "run.json").get("stages", {}) if path.is_file() else {}

    def units(self, stage_names: Sequence[str]) -> list[str]:
        per_method = {"train": self.cfg.methods, "eval": ["base", *self.cfg.methods], "effect": self.cfg.methods}
        return [f"{s}:{m}" if s in per_method else s for s in stage_names for m in per_method.get(s, [""])]

    def status(self, unit: str) -> str:
        """'todo', 'done', or 'stale' (files exist under other options or of unknown origin)."""
        if not all(p.exists() for p in self.outputs(unit)):
            return "todo"
        return "done" if self.recorded().get(unit, {}).get("key") == self.key(unit) else "stale"

    def check_stale(self, units: Sequence[str]) -> None:
        """Fail before any work if a unit's files were made under other options and overwrite is off."""
        stale = [u for u in units if self.status(u) == "stale"]
        if stale and not self.overwrite:
            recorded = self.recorded()
            details = []
            for unit in stale:
                before, now = recorded.get(unit, {}).get("config", {}), self.components(unit)
                changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
                named = ", ".join("earlier stages" if k == "up" else k for k in changed)
                details.append(f"{unit} ({named or 'unknown origin'})")
            raise SaelignError(f"{self.dir} holds results made with other options: {'; '.join(details)}; pass --overwrite "
                               "to redo them, or choose another --out")

    # ---- shared inputs -------------------------------------------------------------------------------------
    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.base_model[1]

    @cached_property
    def base_model(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The pristine base model, never modified: methods train on deep copies of it."""
        model, tokenizer = load_model(self.cfg.model)
        unknown = sorted(set(self.cfg.lora.target_modules) - set(linear_module_names(model)))
        if unknown:
            raise SaelignError(f"lora.target_modules: {', '.join(unknown)} not found in {type(model).__name__}; its linear "
                               f"modules are {', '.join(linear_module_names(model))}")
        return model, tokenizer

    @property
    def model(self) -> PreTrainedModel:
        return self.base_model[0]

    def fresh_model(self) -> PreTrainedModel:
        return copy.deepcopy(self.model)

    def require(self, unit: str) -> None:
        if not all(p.exists() for p in self.outputs(unit)):
            raise SaelignError(f"{unit} results are missing in {self.dir}; run `saelign sails {unit.split(':')[0]} "
                               f"--run {self.dir}` (or `saelign sails run`) first")

    @cached_property
    def data(self) -> SafetyData:
        self.require("data")
        return load_safety_data(self.path("data"))

    @cached_property
    def targets(self) -> SafetyData:
        self.require("targets")
        return load_safety_data(self.path("targets"))

    @cached_property
    def sae(self) -> SAE:
        self.require("sae")
        folder = read_json(self.path("sae.json"), "sae.json")["path"] if self.cfg.sae_path else self.path("sae")
        return load_sae(folder, device=self.model.device)

    @cached_property
    def selection(self) -> dict[str, Any]:
        self.require("select")
        return read_json(self.path("select", "selection.json"), "selection file")

    @cached_property
    def basis(self) -> torch.Tensor:
        self.require("select")
        return load_tensors(self.path("select", "subspace.safetensors"), "subspace file")["U"]

    @cached_property
    def capability(self) -> CapabilityData:
        """The held-out probes every evaluated model gets: nothing in them appears in the training split."""
        return build_capability_data(self.tokenizer, self.cfg.eval, training=self.data.train)

    def save_basis(self, basis: torch.Tensor) -> None:
        save_tensors_atomic(self.path("select", "subspace.safetensors"), {"U": basis})

    def trained_model(self, method: str) -> torch.nn.Module:
        """The method's saved result loaded back the stock way: PEFT adapter on a fresh base, or the full model."""
        self.require(f"train:{method}")
        folder = self.path("methods", method, "adapter")
        if method == "full":
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=self.model.dtype)
            return model.to(self.model.device).eval()
        return load_adapter(self.fresh_model(), folder).eval()


STAGE_FUNCTIONS: dict[str, Callable[[Run, str], dict[str, Any]]] = {
    "data": stages.data_stage, "sae": stages.sae_stage, "labels": stages.labels_stage, "select": stages.select_stage,
    "targets": stages.targets_stage, "train": stages.train_stage, "eval": stages.eval_stage,
    "effect": stages.effect_stage,
}


def save_config(run_dir: str | Path, cfg: SailsConfig) -> None:
    write_json_atomic(Path(run_dir) / CONFIG_FILE, config_to_dict(cfg))


def stored_config(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / CONFIG_FILE
    return read_json(path, "run config") if path.is_file() else None


def run_pipeline(cfg: SailsConfig, run_dir: str | Path, stage_names: Sequence[str] | None = None,
                 overwrite: bool = False) -> tuple[Path, Path] | None:
    """Run the given stages (default: all) in order; return the report paths (.md, .html) if it was written."""
    stage_names = list(stage_names or STAGES)
    unknown = [s for s in stage_names if s not in STAGES]
    if unknown:
        raise SaelignError(f"unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGES)}")
    run = Run(run_dir, cfg, overwrite)
    units = run.units([s for s in STAGES if s in stage_names and s != "report"])
    run.check_stale(units)
    save_config(run.dir, cfg)
    for unit in units:
        status = run.status(unit)
        if status == "done":
            logger.info(f"{unit}: done earlier, skipped")
            continue
        if status == "stale":  # only reachable with overwrite
            run.clear(unit)
        logger.info(f"{unit}: running")
        began = time.perf_counter()
        stage, _, name = unit.partition(":")
        extra = STAGE_FUNCTIONS[stage](run, name)
        seconds = round(time.perf_counter() - began, 2)
        record_stage(run.dir, unit, run.components(unit), key=run.key(unit), seconds=seconds, **extra)
        logger.info(f"{unit}: finished in {seconds:.0f} s")
    if "report" in stage_names:
        from saelign.sails.report import write_run_report

        return write_run_report(run)
    return None

