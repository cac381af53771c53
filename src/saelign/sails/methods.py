"""One harness for SAILS and its baselines: same data, rank, target modules, layers, steps and seed.

Each method is one `Method` declaration in `METHODS`: how its adapter starts and, for a subspace method, where
its basis comes from. Each run starts from a fresh base model and saves a stock PEFT adapter (a model folder
for `full`) plus the provenance sidecar."""

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saelign import checkpoint, distributed
from saelign.errors import SaelignError, require
from saelign.progress import logger
from saelign.sails.adapters import save_adapter
from saelign.sails.consistency import Twin
from saelign.sails.evaluate import safety_stop
from saelign.sails.lora_init import LoraInitConfig, make_peft_model, prepare_full_finetune, trainable_share
from saelign.sails.select import FeatureSelectConfig, residual_activations
from saelign.sails.sft import CHECKPOINT_DIR, EvalFn, SFTConfig, train_sft
from saelign.sails.subspace import activation_diff_subspace, basis_hash, random_subspace
from saelign.sails.unlikelihood import Contrast

ALIGNED = "sails_aligned"


@dataclass(frozen=True)
class BasisInputs:
    """What a subspace method may build its basis from. Every LoRA method trains at SAILS' rank."""

    sails: torch.Tensor  # SAILS' basis U [d_model, r]
    seed: int = 0
    model: PreTrainedModel | None = None  # the base model, tokenizer, (harmful, harmless) training prompts and
    tokenizer: PreTrainedTokenizerBase | None = None  # the selection's pooling: for act_pca
    prompts: tuple[Sequence[str], Sequence[str]] | None = None
    select_cfg: FeatureSelectConfig | None = None
    given: torch.Tensor | None = None  # a basis a pipeline stage made for this method (sails_aligned)


@dataclass(frozen=True)
class Method:
    """A method of the harness: `init` is its LoRA init (`lora_init`; "full" unfreezes the target weights
    instead); a subspace init needs `basis`."""

    name: str
    help: str
    init: str
    basis: Callable[[BasisInputs], torch.Tensor] | None = None


def _act_pca(inputs: BasisInputs) -> torch.Tensor:
    model, tokenizer, prompts, select_cfg = inputs.model, inputs.tokenizer, inputs.prompts, inputs.select_cfg
    if model is None or tokenizer is None or prompts is None or select_cfg is None:
        raise SaelignError("act_pca needs the base model, tokenizer, training prompts and selection config")
    harmful, harmless = (residual_activations(model, tokenizer, select_cfg.hookpoints, list(p), select_cfg)
                         for p in prompts)
    return activation_diff_subspace(torch.cat(list(harmful.values())), torch.cat(list(harmless.values())),
                                    inputs.sails.shape[1])


def _given(inputs: BasisInputs) -> torch.Tensor:
    if inputs.given is None:
        raise SaelignError(f"{ALIGNED} adapts inside the subspace of the aligned safety slots, which the pipeline's "
                           f"align stage makes: run `saelign sails run --methods {ALIGNED}`, or pass the basis")
    return inputs.given


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("sails", "LoRA inside the SAE safety subspace U", "sails", lambda i: i.sails),
    Method("lora", "PEFT's default LoRA init", "lora"),
    Method("pissa", "PEFT's PiSSA init", "pissa"),
    Method("full", "every weight of the target modules in the chosen layers", "full"),
    Method("random_subspace", "LoRA inside a random subspace of U's rank", "sails",
           lambda i: random_subspace(i.sails.shape[0], i.sails.shape[1], i.seed)),
    Method("act_pca", "LoRA inside the PCA of raw harmful-vs-harmless residual differences (the \"direct "
           "identification\" baseline without an SAE)", "sails", _act_pca),
    Method(ALIGNED, "LoRA inside the span of the decoder rows of AlignSAE slots bound to safety concepts of the "
           "training data (harm categories, topics)", "sails", _given),
)}
THRESHOLDS = (0.9, 0.95)
ADAPTER_DIR = "adapter"
SIDECAR_FIELDS = ("method", "rank", "target_modules", "layers", "steps", "seed", "lr", "basis_sha256")


@dataclass(frozen=True)
class MethodConfig:
    """What every method shares: the LoRA shape, the fine-tuning settings (lr: full_lr for `full`), and where and
    how act_pca pools activations."""

    lora: LoraInitConfig
    sft: SFTConfig
    full_lr: float = 0.0  # 0 = sft.lr
    select: FeatureSelectConfig | None = None


@dataclass
class MethodResult:
    method: str
    rank: int | None  # None for full fine-tuning
    target_modules: list[str]
    layers: list[int]
    steps: int
    seed: int
    lr: float
    data_sha256: str
    trainable: dict[str, float]
    history: dict[str, list]
    steps_to: dict[str, int | None]  # "0.9" / "0.95" -> first eval step with val safety >= threshold
    train_seconds: float
    wall_seconds: float
    adapter: str
    basis_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_method(name: str) -> str:
    require(name in METHODS, f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return name


def starts_as_base(name: str) -> bool:
    """Whether method `name`'s model at step 0 computes the base model's outputs to the last bit: LoRA with one
    factor zero adds exact zeros, full fine-tuning starts from the weights themselves. PiSSA moves each weight's
    principal part into its adapter: equal in exact arithmetic, not bit for bit."""
    return METHODS[check_method(name)].init != "pissa"


def steps_to_reach(evals: Sequence[Mapping[str, Any]], threshold: float, key: str = "safety_rate") -> int | None:
    """The first evaluated step whose `key` is at least `threshold` (None if never)."""
    return next((int(e["step"]) for e in evals if e.get(key) is not None and e[key] >= threshold), None)


def method_basis(method: str, sails_basis: torch.Tensor, model: PreTrainedModel | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None,
                 prompts: tuple[Sequence[str], Sequence[str]] | None = None,
                 select_cfg: FeatureSelectConfig | None = None, seed: int = 0,
                 given: torch.Tensor | None = None) -> torch.Tensor | None:
    """U for a subspace method, at SAILS' rank; None for lora/pissa/full. act_pca needs the base model, tokenizer,
    (harmful, harmless) training prompts and the selection config (hookpoints and pooling); sails_aligned the
    basis its pipeline stage made (`given`)."""
    spec = METHODS[check_method(method)]
    if spec.basis is None:
        return None
    return spec.basis(BasisInputs(sails_basis, seed, model, tokenizer, prompts, select_cfg, given))


def prepare_model(method: str, model: PreTrainedModel, basis: torch.Tensor | None, lora_cfg: LoraInitConfig,
                  rank: int) -> nn.Module:
    """The trainable model for `method` (modified in place): a PEFT LoRA, or the base with target weights unfrozen."""
    init = METHODS[check_method(method)].init
    if init == "full":
        return prepare_full_finetune(model, list(lora_cfg.target_modules), list(lora_cfg.layers))
    return make_peft_model(model, basis, dataclasses.replace(lora_cfg, init=init, rank=rank))


def run_method(method: str, model_factory: Callable[[], PreTrainedModel], tokenizer: PreTrainedTokenizerBase,
               pairs: Sequence[tuple[str, str]], sails_basis: torch.Tensor, cfg: MethodConfig, out_dir: str | Path,
               eval_fn: EvalFn | None = None, act_pca_prompts: tuple[Sequence[str], Sequence[str]] | None = None,
               provenance: Mapping[str, Any] | None = None, overwrite: bool = False,
               given_basis: torch.Tensor | None = None, weights: Sequence[float] | None = None,
               retain: torch.Tensor | None = None, contrasts: Sequence[Contrast] | None = None,
               twins: Sequence[Twin] | None = None) -> MethodResult:
    """Train `method` on (prompt, response) pairs, each of loss weight `weights[i]` (None: all 1); save
    OUT/adapter; resume from OUT/checkpoint. Rank = cfg.lora.rank or SAILS' subspace rank for every LoRA
    method; `given_basis`: see `method_basis`; `retain`, `contrasts` and `twins`: the retain term's text
    contexts, the unlikelihood term's refusal contrasts and the consistency term's twins (`train_sft`)."""
    check_method(method)
    out = Path(out_dir)
    adapter_dir = out / ADAPTER_DIR
    if adapter_dir.exists() and not overwrite:
        raise SaelignError(f"adapter directory {adapter_dir} already exists; pass --overwrite to retrain it, or choose "
                           "another output folder")
    began = time.perf_counter()
    lora_cfg = cfg.lora
    rank = lora_cfg.rank or sails_basis.shape[1]
    model = model_factory()
    basis = method_basis(method, sails_basis, model, tokenizer, act_pca_prompts, cfg.select, lora_cfg.seed,
                         given_basis)
    trainable = prepare_model(method, model, basis, lora_cfg, rank)
    lr = cfg.full_lr if method == "full" and cfg.full_lr else cfg.sft.lr
    sft = dataclasses.replace(cfg.sft, lr=lr, out=str(out))
    logger.info(f"{method}: training {trainable_share(trainable)['share']:.3%} of the parameters for {sft.steps} steps")
    stop = safety_stop(sft.stop_at_safety, sft.stop_max_over_refusal)
    history = train_sft(trainable, tokenizer, pairs, sft, eval_fn, stop, weights=weights, retain=retain,
                        contrasts=contrasts, twins=twins)
    trained = history["train"][-1]["step"] if history["train"] else 0  # < sft.steps when stop_at_safety ended it
    result = MethodResult(
        method=method, rank=None if method == "full" else rank, target_modules=list(lora_cfg.target_modules),
        layers=list(lora_cfg.layers), steps=trained, seed=sft.seed, lr=lr,
        data_sha256=hashlib.sha256(json.dumps([list(p) for p in pairs]).encode()).hexdigest(),
        trainable=trainable_share(trainable), history=history,
        steps_to={str(t): steps_to_reach(history["eval"], t) for t in THRESHOLDS},
        train_seconds=round(sum(e["seconds"] for e in history["train"]), 2), wall_seconds=0.0, adapter=str(adapter_dir),
        basis_sha256=basis_hash(basis) if basis is not None else None)
    sidecar = {k: getattr(result, k) for k in SIDECAR_FIELDS}
    if distributed.is_main():  # under torchrun every rank holds the same weights; rank 0 writes them
        save_adapter(trainable, adapter_dir, {**sidecar, **(provenance or {})}, overwrite=overwrite)
        checkpoint.remove(out / CHECKPOINT_DIR)  # the adapter is the result; checkpoints are big
    distributed.barrier("the adapter rank 0 writes")
    return dataclasses.replace(result, wall_seconds=round(time.perf_counter() - began, 2))
