"""ReLU with an L1 penalty, SAELens' "standard" SAE."""

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from saelign.configs import help_field
from saelign.sae.activations.base import DenseActivation, register
from saelign.sae.losses import SAEParts


@register
@dataclass
class ReLU(DenseActivation):
    """z = relu(pre). Loss: summed squared error per token + l1_coefficient * sum of latents (decoder rows are
    unit norm), SAELens' convention, so its coefficients carry over."""

    name: ClassVar[str] = "relu"
    architecture: ClassVar[str] = "standard"
    elementwise: ClassVar[bool] = True

    l1_coefficient: float = help_field(2.0, "relu: weight of the L1 penalty (SAELens convention: summed "
                                            "squared error per token + coefficient * sum of latents)")

    @property
    def coefficient(self) -> float:
        return self.l1_coefficient

    def sparsify(self, pre: torch.Tensor, sae: SAEParts, training: bool = False) -> torch.Tensor:
        return F.relu(pre)

    def latents(self, pre: torch.Tensor, sae: SAEParts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = F.relu(pre)
        with torch.no_grad():
            counts = torch.sign(z).sum(0)  # sign of a ReLU output is its 0/1 firing indicator, no bool pass
        return z, counts, z.sum() / pre.shape[0]
