"""What an SAE activation is, and the one table that names them all (`ACTIVATIONS`).

An activation is a dataclass whose fields are its training options: flags of `saelign sae train` and keys of
`SAETrainConfig.activation_options` (or of a config file's `train:` section) under their own names, so a name
means one thing wherever it is declared (relu and jumprelu share `sparsity_warmup_fraction`)."""

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

import torch

from saelign.configs import config_from_dict, help_field
from saelign.errors import SaelignError, require
from saelign.sae.losses import SAEParts, StepResult, TrainBatch, dense_step, linear_ramp

ACTIVATIONS: dict[str, type["Activation"]] = {}
T = TypeVar("T", bound="type[Activation]")


def register(cls: T) -> T:
    """Class decorator: `SAEConfig(activation=cls.name)` then builds an SAE with this activation."""
    defaults = {f.name: f.default for f in dataclasses.fields(options_class())}
    clash = [f.name for f in dataclasses.fields(cls) if defaults.get(f.name, f.default) != f.default]
    require(not clash, f"activation {cls.name}: option(s) {', '.join(clash)} have another default in "
                       "another activation; a name means one option, rename them")
    ACTIVATIONS[cls.name] = cls
    return cls


def activation_class(name: str) -> type["Activation"]:
    if name not in ACTIVATIONS:
        raise SaelignError(f"unknown SAE activation {name!r}; registered: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


def options_class() -> type:
    """One dataclass of every registered activation's options (CLI flags are made from it)."""
    specs = {}
    for cls in ACTIVATIONS.values():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            option = field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)
            specs[f.name] = (f.name, hints[f.name], option)
    return dataclasses.make_dataclass("ActivationOptions", list(specs.values()))


def full_options(given: dict[str, Any]) -> dict[str, Any]:
    """Every registered activation's options, `given` overriding the defaults; checked and converted."""
    options = dataclasses.asdict(config_from_dict(options_class(), given, where="activation_options"))
    for cls in ACTIVATIONS.values():
        cls.from_options(options)  # its own checks
    return options


@dataclass
class Activation:
    """One SAE activation: subclasses set the class attributes and override the hooks that differ. `sparsify`:
    latents from pre-activations (`training`: of a batch being trained on); `saelens_cfg`: cfg.json entries
    besides the architecture; `prepare`: ready a fresh SAE, return Adam groups beyond the weights
    ({"params": [...], "peak_lr": ...}); `state` / `load_state`: what a checkpoint keeps, as JSON."""

    name: ClassVar[str]  # SAEConfig.activation
    architecture: ClassVar[str]  # SAELens cfg.json architecture it is saved as
    loads_architecture: ClassVar[bool] = True  # a SAELens file of that architecture loads as this activation
    uses_k: ClassVar[bool] = False  # keeps SAEConfig.k latents per token
    uses_threshold: ClassVar[bool] = False  # the SAE has a per-latent `threshold` (saved with the weights)
    elementwise: ClassVar[bool] = False  # no competition nor threshold: always-on latents need no care
    slot_fill: ClassVar[float] = 0.0  # always-on latents' pre-activation while the others are sparsified
    # A step reads only the latents it selects: the trainer lends it a scratch buffer for the dense encoder
    # product and gives short runs a larger default learning rate (auto_lr).
    sparse: ClassVar[bool] = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Self:
        """This activation with its own options read from `options` (the others are ignored)."""
        own = {f.name for f in dataclasses.fields(cls)}
        return config_from_dict(cls, {k: v for k, v in options.items() if k in own}, "activation_options")

    def sparsify(self, pre: torch.Tensor, sae: SAEParts, training: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def saelens_cfg(self, sae: SAEParts) -> dict[str, Any]:
        return {}

    def prepare(self, sae: SAEParts) -> list[dict[str, Any]]:
        return []

    def loss(self, sae: SAEParts, batch: TrainBatch) -> StepResult:
        raise NotImplementedError

    def after_step(self, sae: SAEParts) -> None:
        pass

    def finish(self, sae: SAEParts) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        pass


@dataclass
class DenseActivation(Activation):
    """Trained with `dense_step`: `latents` gives latents, firing counts and penalty; the penalty's weight
    `coefficient` warms up."""

    sparsity_warmup_fraction: float = help_field(0.05, "relu/jumprelu: the sparsity coefficient ramps up "
                                                       "linearly over this fraction of training")
    encoder_init_scale: ClassVar[float] = 0.1  # small initial latents, else thousands of them fire at step 0

    def __post_init__(self) -> None:
        require(0 <= self.sparsity_warmup_fraction < 1, f"sparsity_warmup_fraction must lie in [0, 1), got "
                                                        f"{self.sparsity_warmup_fraction}")

    @property
    def coefficient(self) -> float:
        raise NotImplementedError

    def latents(self, pre: torch.Tensor, sae: SAEParts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(latents [B, d_sae], firing counts per latent [d_sae], sparsity penalty per token)."""
        raise NotImplementedError

    def prepare(self, sae: SAEParts) -> list[dict[str, Any]]:
        with torch.no_grad():
            sae.W_enc.mul_(self.encoder_init_scale)
        return []

    def loss(self, sae: SAEParts, batch: TrainBatch) -> StepResult:
        ramp = linear_ramp(batch.tokens_done, self.sparsity_warmup_fraction, batch.total_tokens)
        with torch.autocast(batch.x.device.type, dtype=batch.dtype, enabled=batch.dtype != torch.float32):
            return dense_step(sae, batch.x, lambda pre: self.latents(pre, sae), self.coefficient * ramp)
