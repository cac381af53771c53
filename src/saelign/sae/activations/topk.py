"""TopK (Gao et al. 2024): each token keeps its k largest pre-activations (ReLU'd)."""

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from saelign.configs import help_field
from saelign.sae.activations.base import Activation, register
from saelign.sae.losses import SAEParts, StepResult, TrainBatch, sparse_step
from saelign.sae.sparse_ops import ActiveLatents


@register
@dataclass
class TopK(Activation):
    """Trained with `sparse_step`: only the k selected latents of each token get gradients; AuxK revives dead
    latents."""

    name: ClassVar[str] = "topk"
    architecture: ClassVar[str] = "topk"
    uses_k: ClassVar[bool] = True
    sparse: ClassVar[bool] = True
    slot_fill: ClassVar[float] = -math.inf  # never wins the top-k

    auxk_alpha: float = help_field(1 / 32, "topk/batchtopk: weight of the AuxK loss reviving dead latents")

    def sparsify(self, pre: torch.Tensor, sae: SAEParts, training: bool = False) -> torch.Tensor:
        values, indices = pre.topk(sae.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, F.relu(values))

    def select(self, pre: torch.Tensor, k: int) -> tuple[ActiveLatents, torch.Tensor]:
        """The (token, latent) pairs a training step keeps of pre-activations [B, d_sae], and their values."""
        values, indices = pre.topk(k, dim=-1, sorted=False)
        return ActiveLatents.from_topk(indices, pre.shape[1]), values.reshape(-1)

    def loss(self, sae: SAEParts, batch: TrainBatch) -> StepResult:
        return sparse_step(sae, batch, self.select, self.auxk_alpha)

    def saelens_cfg(self, sae: SAEParts) -> dict[str, Any]:
        return {"k": sae.cfg.k, "rescale_acts_by_decoder_norm": False}
