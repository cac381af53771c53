"""A SAILS run directory: its files, the run.json record of what each unit made under which key, and the
inputs stages share (models, data, SAE, subspace), loaded once on first use.

A unit is a stage, or one method or model of a per-method stage ("train:sails"). Its key hashes the config
values the stage declares and the keys of its upstream units."""

import copy
import dataclasses
import functools
import hashlib
import json
import operator
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from saelign.configs import config_to_dict
from saelign.dashboard.build import SAILS_READINGS
from saelign.datasets.corpus import open_corpus
from saelign.errors import SaelignError
from saelign.io import ensure_writable_dir, load_tensors, read_json, read_json_object, save_tensors_atomic
from saelign.label.describe import attach_readings
from saelign.label.labels import LatentLabel, load_labels
from saelign.label.reading import load_readings
from saelign.models import load_model, resolve_hookpoints
from saelign.runinfo import record_stage
from saelign.sae import SAE, load_sae
from saelign.sae.formats import check_sae_matches
from saelign.sails.adapters import load_adapter
from saelign.sails.aligned import AlignedSubspace, load_aligned_subspace
from saelign.sails.data import SafetyData, load_safety_data
from saelign.sails.evaluate import CapabilityData, build_capability_data, heldout_contexts, training_stems
from saelign.sails.lora_init import check_targets
from saelign.sails.methods import ALIGNED
from saelign.sails.presets import SailsConfig

RUN_FILE = "run.json"


@dataclass(frozen=True)
class Stage:
    """One pipeline stage. `fn(run, name)` writes its outputs (name: the method or model of a per-method
    stage, else '') and returns extra facts for run.json."""

    name: str
    help: str
    fn: Callable[["RunDir", str], dict[str, Any]]
    outputs: tuple[str, ...] = ()  # files that mark a unit done ("{name}": its method); none: always rerun
    keys: tuple[str, ...] = ()  # SailsConfig sections or fields (dotted) the outputs depend on
    upstream: tuple[str, ...] = ()  # stages whose outputs it reads
    reads: tuple[str, ...] = ()  # single units of other per-method stages it also reads (gated: gate:gate)
    folder: str = ""  # removed, with any checkpoints in it, before a unit is redone
    per: Callable[[SailsConfig], Sequence[str]] | None = None  # the methods/models of a per-method stage
    # Options newer than some run folders (dotted, within `keys`), at the value those runs effectively used:
    # left out of the key while they hold it, so the folders keep their keys.
    added: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _has(values: Mapping[str, Any], dotted: str) -> bool:
    *parents, leaf = dotted.split(".")
    return leaf in functools.reduce(operator.getitem, parents, values)


class RunDir:
    """A run directory with a resolved config and the stage table: keys, skip/redo decisions, inputs."""

    def __init__(self, run_dir: str | Path, cfg: SailsConfig, stages: Mapping[str, Stage],
                 overwrite: bool = False):
        self.dir = ensure_writable_dir(run_dir)
        self.cfg, self.stages, self.overwrite = cfg, stages, overwrite
        self._keys: dict[str, str] = {}
        self.resuming: set[str] = set()  # units begun under the same key by a run that did not finish them
        # The train stage's step-0 validation check of a model still equal to the base (`starts_as_base`): the
        # same for every such method of this process, so it runs once.
        self.check_at_start: dict[str, Any] | None = None
        self._check_links()

    def _check_links(self) -> None:
        """Stages write, replace and remove files here (--overwrite removes whole folders): a link that leads
        out of the run folder would let them reach files that are not the run's."""
        root = self.dir.resolve()
        for path in self.dir.rglob("*"):
            if path.is_symlink() and not (target := path.resolve()).is_relative_to(root):
                raise SaelignError(f"{path} is a link to {target}, outside the run folder {self.dir}; "
                                   "replace it with a copy of what it points to, or use another --out")

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def units(self, stage_names: Sequence[str]) -> list[str]:
        """The units of the given stages, in pipeline order."""
        out = []
        for stage in self.stages.values():
            if stage.name in stage_names:
                out += [f"{stage.name}:{m}" for m in stage.per(self.cfg)] if stage.per else [stage.name]
        return out

    def _split(self, unit: str) -> tuple[Stage, str]:
        stage, _, name = unit.partition(":")
        return self.stages[stage], name

    def outputs(self, unit: str) -> list[Path]:
        stage, name = self._split(unit)
        return [self.path(p.format(name=name)) for p in stage.outputs]

    def components(self, unit: str) -> dict[str, Any]:
        """What a unit's output depends on: its config values and the keys of the units it reads."""
        stage, name = self._split(unit)
        up = [self.key(u) for u in self.upstream(unit)]
        values = config_to_dict(self.cfg)  # without the hidden fields: the pipeline sets those itself
        for dotted, old in stage.added.items():
            *parents, leaf = dotted.split(".")
            section = functools.reduce(operator.getitem, parents, values)
            if section.get(leaf, old) == old:
                section.pop(leaf, None)
        return {"up": up, **{k: self._option(values, k) for k in stage.keys if _has(values, k)}}

    def _option(self, values: dict[str, Any], key: str) -> Any:
        """The config value at dotted `key`; a section without the fields its class declares OUTPUT_FREE
        (they change how a stage computes, not what: switching one leaves the stage done)."""
        value = functools.reduce(operator.getitem, key.split("."), values)
        free = getattr(type(functools.reduce(getattr, key.split("."), self.cfg)), "OUTPUT_FREE", frozenset())
        return {k: v for k, v in value.items() if k not in free} if free else value

    def upstream(self, unit: str) -> list[str]:
        """The units whose outputs `unit` reads."""
        stage, name = self._split(unit)
        out = []
        for u in (self.stages[s] for s in stage.upstream):
            if not u.per:
                out.append(u.name)
            elif not stage.per:  # a stage over the whole run reads every method's unit
                out += [f"{u.name}:{m}" for m in u.per(self.cfg)]
            elif name in u.per(self.cfg):  # eval:base reads no train:base
                out.append(f"{u.name}:{name}")
        return out + [u for u in stage.reads if u in self.units([u.partition(":")[0]])]

    def complete(self, unit: str) -> bool:
        """Done under the current options, and so is everything it read: its result may be reported."""
        return self.status(unit) == "done" and all(self.complete(u) for u in self.upstream(unit))

    def key(self, unit: str) -> str:
        if unit not in self._keys:
            text = json.dumps(self.components(unit), sort_keys=True, default=str)
            self._keys[unit] = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._keys[unit]

    def recorded(self) -> dict[str, Any]:
        path = self.path(RUN_FILE)
        stages = read_json_object(path, "run.json").get("stages", {}) if path.is_file() else {}
        if not isinstance(stages, dict) or not all(isinstance(v, dict) for v in stages.values()):
            raise SaelignError(f"{path}: 'stages' must map each unit to its record; restore the file or "
                               "rerun into a new --out")
        return stages

    def status(self, unit: str) -> str:
        """'todo', 'done', or 'stale' (files exist under other options or of unknown origin). A unit begun
        under the same key but not finished is 'todo': its files are its own, whatever they look like."""
        outputs = self.outputs(unit)
        if not outputs or not all(p.exists() for p in outputs):
            return "todo"
        record = self.recorded().get(unit, {})
        if record.get("key") != self.key(unit):
            return "stale"
        return "todo" if record.get("pending") else "done"

    def begin(self, unit: str) -> None:
        """Record the unit's key as pending before it writes anything, so that a rerun after a crash knows the
        files it left (complete outputs included) as its own; the unit's final record replaces this one."""
        record = self.recorded().get(unit, {})
        if record.get("pending") and record.get("key") == self.key(unit):
            self.resuming.add(unit)
        record_stage(self.dir, unit, self.components(unit), key=self.key(unit), pending=True)

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
            raise SaelignError(f"{self.dir} holds results made with other options: {'; '.join(details)}; "
                               "pass --overwrite to redo them, or choose another --out")

    def downstream(self, unit: str) -> list[str]:
        """The units that read `unit`'s outputs, directly or through others (eval:sails reads train:sails)."""
        stage, name = self._split(unit)
        out: list[str] = []
        for later in self.stages.values():
            if stage.name in later.upstream:
                for other in self.units([later.name]):
                    if not (stage.per and later.per) or self._split(other)[1] == name:
                        out += [other, *self.downstream(other)]
            if unit in later.reads:
                for other in self.units([later.name]):
                    out += [other, *self.downstream(other)]
        return list(dict.fromkeys(out))

    def clear(self, unit: str) -> None:
        """Remove a unit's files before redoing it: its own folder (with checkpoints) where it has one, and
        the files of every unit that read them, so no result of the old inputs outlives them (a report would
        otherwise show the evaluation of an adapter that is gone)."""
        for each in (unit, *self.downstream(unit)):
            stage, name = self._split(each)
            if stage.folder:
                # Moved aside first: a crash while deleting must not leave a half-deleted folder whose inner
                # markers (an adapter's config, a checkpoint's state file) still look complete.
                folder = self.path(stage.folder.format(name=name))
                trash = folder.with_name(f".{folder.name}.removing")
                shutil.rmtree(trash, ignore_errors=True)
                if folder.exists():
                    os.replace(folder, trash)
                shutil.rmtree(trash, ignore_errors=True)
            for path in self.outputs(each):
                path.unlink(missing_ok=True)

    def preflight(self) -> None:
        """Check what every stage shares (model, LoRA targets, hookpoints, a given SAE, the held-out corpus)
        before files go."""
        resolve_hookpoints(self.model, [self.cfg.hookpoint])
        if self.cfg.gate.enabled and self.cfg.gate.hookpoint:
            try:
                resolve_hookpoints(self.model, [self.cfg.gate.hookpoint])
            except SaelignError as exc:
                raise SaelignError(f"gate.hookpoint (--gate-hookpoint): {exc}") from exc
        if self.cfg.sae_path:
            check_sae_matches(load_sae(self.cfg.sae_path), self.model, self.cfg.hookpoint)
        cfg = self.cfg
        if cfg.eval.ppl_contexts or cfg.validation.ppl_contexts or cfg.sft.retain_weight > 0:
            open_corpus(cfg.eval.ppl_corpus, seed=cfg.eval.seed)  # a wrong path fails here, not at training

    def require(self, unit: str) -> None:
        if not all(p.exists() for p in self.outputs(unit)):
            raise SaelignError(f"{unit} results are missing in {self.dir}; run `saelign sails "
                               f"{unit.split(':')[0]} --run {self.dir}` (or `saelign sails run`) first")

    @cached_property
    def base_model(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The pristine base model, never modified: methods train on deep copies of it."""
        model, tokenizer = load_model(self.cfg.model)
        check_targets(model, self.cfg.lora.target_modules, [], where="lora.target_modules")
        return model, tokenizer

    @property
    def model(self) -> PreTrainedModel:
        return self.base_model[0]

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.base_model[1]

    def fresh_model(self) -> PreTrainedModel:
        return copy.deepcopy(self.model)

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
        folder = read_json(self.path("sae.json"), "sae.json")["path"]  # relative: the run's own sae/
        return load_sae(self.path(folder), device=self.model.device)

    @cached_property
    def selection(self) -> dict[str, Any]:
        self.require("select")
        return read_json(self.path("select", "selection.json"), "selection file")

    @cached_property
    def basis(self) -> torch.Tensor:
        self.require("select")
        return load_tensors(self.path("select", "subspace.safetensors"), "subspace file")["U"]

    @cached_property
    def aligned(self) -> AlignedSubspace:
        """The AlignSAE-aligned SAE, its slot map and the slots' subspace (sails_aligned)."""
        self.require(f"align:{ALIGNED}")
        return load_aligned_subspace(self.path("align"), device=self.model.device)

    @cached_property
    def labels(self) -> dict[int, LatentLabel]:
        """The labels stage's labels with the describe stage's readings attached (either may be absent)."""
        labels = load_labels(self.path("labels.json")) if self.path("labels.json").is_file() else {}
        if labels and self.path(SAILS_READINGS).is_file():
            attach_readings(labels, load_readings(self.path(SAILS_READINGS)))
        return labels

    @cached_property
    def capability(self) -> CapabilityData:
        """The held-out probes every evaluated model gets: nothing in them appears in the training split."""
        return build_capability_data(self.tokenizer, self.cfg.eval, training=self.data.train)

    def heldout(self, part: str, n: int, length: int) -> torch.Tensor:
        """[n', length] contexts of the held-out corpus's validation or retain files (not the test text)."""
        return heldout_contexts(self.tokenizer, self.cfg.eval.ppl_corpus, n, length, self.cfg.eval.seed,
                                training_stems(self.data.train), part=part)

    def save_basis(self, basis: torch.Tensor) -> None:
        save_tensors_atomic(self.path("select", "subspace.safetensors"), {"U": basis})

    def trained_model(self, method: str) -> torch.nn.Module:
        """The method's result loaded back the stock way: PEFT adapter on a fresh base, or the full model."""
        self.require(f"train:{method}")
        folder = self.path("methods", method, "adapter")
        if method == "full":
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=self.model.dtype)
            return model.to(self.model.device).eval()
        return load_adapter(self.fresh_model(), folder).eval()
