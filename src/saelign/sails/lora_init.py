"""LoRA adapters initialised inside the safety subspace, and the baselines built in the same harness.

Everything goes through PEFT (`get_peft_model`), so the adapter is a stock PEFT LoRA; SAILS only overwrites the
freshly created factors. With U [d_model, r] orthonormal and ΔW = s·B·A:

- reader modules (q, k, v, gate, up: they read the residual stream): A's rows = U^T, B = 0. The first update
  then only changes B, so ΔW = B·A responds only to the input's component in span(U).
- writer modules (o, down: they write into it): B's columns = U, A = 0. A gets a non-zero gradient at once
  (s·U^T·G, because B ≠ 0), and ΔW = U·A writes only into span(U).

Both give ΔW = 0 at step 0; from the second step on ΔW may leave span(U) (SAILS *initialises* in the
subspace) unless `freeze_subspace` keeps the U factor fixed.

The non-zero factor has rows/columns of norm `init_scale`; the default 1/√3 is the row norm of PEFT's default
(Kaiming-uniform) A, so one learning rate serves every init. Extra rank beyond the subspace's gets random unit
mixtures of U's columns (mirrored rows would receive identical updates forever). All layers are adapted by
default: the residual stream is one vector space across blocks, so span(U) is meaningful at every depth.
`get_peft_model` modifies the model in place (PiSSA even rewrites base weights): use a fresh model each."""

import re
from dataclasses import dataclass
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from saelign.configs import help_field
from saelign.errors import SaelignError, require

Init = Literal["sails", "lora", "pissa", "random_subspace", "act_pca"]
SUBSPACE_INITS = ("sails", "random_subspace", "act_pca")
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_WRITERS = ["o_proj", "down_proj", "c_proj", "out_proj", "dense_4h_to_h", "fc2"]
# A PiSSA model's base weights are rewritten, so saving it as a plain LoRA needs its initial factors.
PISSA_INIT_ATTR = "_saelign_pissa_init"


@dataclass
class LoraInitConfig:
    init: Init = help_field("sails", "sails (SAE subspace), lora (PEFT default), pissa (PEFT built-in), "
                                     "random_subspace, or act_pca (PCA of raw activation differences)")
    rank: int = help_field(0, "LoRA rank; 0 = the subspace rank (lora/pissa then need an explicit rank)")
    alpha: float = help_field(16.0, "LoRA alpha; the update is scaled by alpha/rank")
    dropout: float = help_field(0.0, "LoRA dropout")
    target_modules: list[str] = help_field(DEFAULT_TARGETS, "linear module names to adapt (last path component)")
    writer_modules: list[str] = help_field(DEFAULT_WRITERS, "module names that write into the residual stream "
                                                            "(their B gets U); every other target must read it")
    layers: list[int] = help_field([], "block indices to adapt (empty = all blocks)")
    init_scale: float = help_field(3 ** -0.5, "norm of each subspace-initialised factor row/column")
    freeze_subspace: bool = help_field(False, "subspace inits: keep the factor set to U frozen (readers' A, writers' "
                                              "B), so ΔW stays inside span(U) for the whole fine-tune")
    seed: int = help_field(0, "seed for PEFT's random A init and for extra in-subspace rows")

    def __post_init__(self) -> None:
        require(self.rank >= 0, f"rank must be 0 (the subspace rank) or positive, got {self.rank}")
        require(self.alpha > 0 and self.init_scale > 0, f"alpha and init_scale must be positive, got "
                                                        f"{self.alpha} and {self.init_scale}")
        require(0 <= self.dropout < 1, f"dropout must lie in [0, 1), got {self.dropout}")
        require(all(i >= 0 for i in self.layers), f"layers must be block indices (0 or more), got {self.layers}")


def _layer_index(name: str) -> int | None:
    match = re.search(r"\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def check_targets(model: nn.Module, target_modules: list[str], layers: list[int],
                  where: str = "target_modules") -> None:
    """Fail unless every target names a linear module of `model` and every layer index exists."""
    require(target_modules, f"{where} is empty; name at least one linear module, e.g. q_proj")
    available = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                        if isinstance(m, nn.Linear | Conv1D) and name})
    unknown = [t for t in target_modules if t not in available]
    require(not unknown, f"{where}: {', '.join(unknown)} not found in {type(model).__name__}; "
                         f"its linear modules are {', '.join(available)}")
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0))
    bad = [i for i in layers if not 0 <= i < n_layers]
    require(not bad, f"layers: {bad} out of range; the model has blocks 0..{n_layers - 1}")


def _subspace_factor(basis: torch.Tensor, rank: int, seed: int) -> torch.Tensor:
    """[d, rank] columns inside span(basis): its first `rank` columns, then random unit mixtures of them."""
    k = basis.shape[1]
    if rank <= k:
        return basis[:, :rank]
    mixes = torch.randn(k, rank - k, generator=torch.Generator().manual_seed(seed))
    return torch.cat([basis, basis @ (mixes / mixes.norm(dim=0, keepdim=True))], dim=1)


@torch.no_grad()
def _init_in_subspace(peft_model: PeftModel, factor: torch.Tensor, cfg: LoraInitConfig) -> None:
    d_model = factor.shape[0]
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight  # [r, in], [out, r]
        leaf = name.rsplit(".", 1)[-1]
        scaled = (cfg.init_scale * factor).to(device=a.device, dtype=a.dtype)
        if leaf in cfg.writer_modules:
            if b.shape[0] != d_model:
                raise SaelignError(f"writer_modules: {name} writes width {b.shape[0]}, not the residual width {d_model}; "
                                   "remove it from writer_modules")
            b.copy_(scaled)
            a.zero_()
            fixed = b
        else:
            if a.shape[1] != d_model:
                raise SaelignError(f"target_modules: {name} reads width {a.shape[1]}, not the residual width {d_model}; "
                                   "list it in writer_modules if it writes into the residual stream, or drop it")
            a.copy_(scaled.T)
            b.zero_()
            fixed = a
        if cfg.freeze_subspace:
            fixed.requires_grad_(False)


def make_peft_model(model: PreTrainedModel, basis: torch.Tensor | None, cfg: LoraInitConfig) -> PeftModel:
    """Wrap `model` (in place) in a PEFT LoRA per cfg.init; `basis` U [d_model, k] is needed for subspace inits."""
    check_targets(model, cfg.target_modules, cfg.layers)
    d_model = model.get_input_embeddings().weight.shape[1]
    if cfg.init in SUBSPACE_INITS:
        if basis is None or basis.ndim != 2 or basis.shape[0] != d_model or basis.shape[1] < 1:
            shape = None if basis is None else tuple(basis.shape)
            raise SaelignError(f"init={cfg.init} needs a subspace basis of shape [d_model={d_model}, r], got {shape}; "
                               "the SAE/subspace does not match this model")
    rank = cfg.rank or (basis.shape[1] if cfg.init in SUBSPACE_INITS and basis is not None else 0)
    if rank < 1:
        raise SaelignError(f"rank: init={cfg.init} has no subspace to take its rank from; set rank to a positive value")
    # GPT-2-style Conv1D stores its weight transposed; PEFT wants to be told rather than warn and guess.
    conv1d = any(isinstance(m, Conv1D) and n.rsplit(".", 1)[-1] in cfg.target_modules for n, m in model.named_modules())
    config = LoraConfig(r=rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
                        layers_to_transform=list(cfg.layers) or None, bias="none", task_type="CAUSAL_LM",
                        fan_in_fan_out=conv1d, init_lora_weights="pissa" if cfg.init == "pissa" else True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        peft_model = get_peft_model(model, config)
    if cfg.init in SUBSPACE_INITS:
        assert basis is not None
        _init_in_subspace(peft_model, _subspace_factor(basis.detach().float().cpu(), rank, cfg.seed), cfg)
    if cfg.init == "pissa":
        initial = get_peft_model_state_dict(peft_model)
        setattr(peft_model, PISSA_INIT_ATTR, {k: v.detach().clone().cpu() for k, v in initial.items()})
    return peft_model


def prepare_full_finetune(model: PreTrainedModel, target_modules: list[str] | None = None,
                          layers: list[int] | None = None) -> PreTrainedModel:
    """Full fine-tuning baseline: every parameter trainable, or only the weights of the named modules/layers."""
    require(getattr(model, "hf_quantizer", None) is None, "method full trains the base weights, which a model loaded "
            "with --quantize cannot; use a LoRA method, or load the model without --quantize")
    if target_modules is None:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    check_targets(model, target_modules, layers or [])
    for param in model.parameters():
        param.requires_grad_(False)
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in target_modules and (not layers or _layer_index(name) in layers):
            for param in module.parameters():
                param.requires_grad_(True)
    return model


def trainable_share(model: nn.Module) -> dict[str, float]:
    """Trainable parameters against the base model's size (adapter weights are not counted in the total)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    return {"trainable": trainable, "total": total, "share": trainable / total if total else 0.0}
