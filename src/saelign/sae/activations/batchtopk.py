"""BatchTopK (Bussmann et al. 2024): the k * B largest pre-activations of a batch of B tokens, so a token
keeps about k latents. At inference it is a JumpReLU with one threshold for all latents, the running mean of
the smallest selected activation in training; SAELens saves BatchTopK SAEs the same way."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from saelign.configs import help_field
from saelign.errors import require
from saelign.sae.activations.base import register
from saelign.sae.activations.jumprelu import above_threshold
from saelign.sae.activations.topk import TopK
from saelign.sae.losses import SAEParts, StepResult, TrainBatch
from saelign.sae.sparse_ops import ActiveLatents


def batch_topk_selection(pre: torch.Tensor, k: int) -> tuple[ActiveLatents, torch.Tensor]:
    """The k * B largest pre-activations of the whole batch, as a row-grouped selection and its values.
    A flat top-k over all B * d_sae entries costs ~6 row-wise top-k's, so winners are searched among each
    token's top 2k candidates; a token whose every candidate wins might hold more, and then the candidate
    width grows until none does. Exact up to ties at the threshold."""
    n_rows, n_cols = pre.shape
    total = k * n_rows
    width = min(n_cols, 2 * k)
    while True:
        cand_values, cand_cols = pre.topk(width, dim=-1, sorted=False)
        flat = cand_values.reshape(-1)
        threshold = flat.kthvalue(flat.numel() - total + 1).values
        if width == n_cols or not bool((cand_values.min(dim=1).values > threshold).any()):
            break
        width = min(n_cols, 4 * width)
    rows, pos = (cand_values >= threshold).nonzero(as_tuple=True)  # row-major, as ActiveLatents needs
    return ActiveLatents.from_rows(rows, cand_cols[rows, pos], n_rows, n_cols), cand_values[rows, pos]


@register
@dataclass
class BatchTopK(TopK):
    name: ClassVar[str] = "batchtopk"
    architecture: ClassVar[str] = "jumprelu"
    loads_architecture: ClassVar[bool] = False  # a SAELens jumprelu file is a JumpReLU
    uses_threshold: ClassVar[bool] = True
    slot_fill: ClassVar[float] = 0.0  # -inf would make the inference threshold's product NaN

    batchtopk_threshold_beta: float = help_field(0.9, "batchtopk: EMA factor of the inference threshold "
                                                      "estimate (the per-batch threshold is a stable "
                                                      "quantile; a short memory follows its drift)")

    def __post_init__(self) -> None:
        require(0 <= self.batchtopk_threshold_beta < 1, f"batchtopk_threshold_beta must lie in [0, 1), got "
                                                        f"{self.batchtopk_threshold_beta}")
        # a 0-d CPU tensor: the first update moves it to the device of the training batch
        self.threshold_ema, self.threshold_updates = torch.zeros(()), 0

    def sparsify(self, pre: torch.Tensor, sae: SAEParts, training: bool = False) -> torch.Tensor:
        if not training:
            return above_threshold(pre, sae.threshold)
        flat = F.relu(pre).reshape(-1)
        values, indices = flat.topk(sae.cfg.k * (flat.numel() // sae.d_sae), sorted=False)
        return torch.zeros_like(flat).scatter_(0, indices, values).reshape(pre.shape)

    select = staticmethod(batch_topk_selection)

    def saelens_cfg(self, sae: SAEParts) -> dict[str, Any]:
        return {}  # saved as a JumpReLU, which has no k

    def loss(self, sae: SAEParts, batch: TrainBatch) -> StepResult:
        result = super().loss(sae, batch)
        smallest = torch.where(result.values > 0, result.values, torch.inf).min()
        beta = self.batchtopk_threshold_beta
        self.threshold_ema = beta * self.threshold_ema + (1 - beta) * smallest
        self.threshold_updates += 1
        return result

    @torch.no_grad()
    def finish(self, sae: SAEParts) -> None:
        if self.threshold_updates:
            bias_correction = 1 - self.batchtopk_threshold_beta ** self.threshold_updates
            sae.threshold.fill_(float(self.threshold_ema) / bias_correction)

    def state(self) -> dict[str, Any]:
        return {"threshold_ema": float(self.threshold_ema), "threshold_updates": self.threshold_updates}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.threshold_ema = torch.tensor(state["threshold_ema"])
        self.threshold_updates = state["threshold_updates"]
