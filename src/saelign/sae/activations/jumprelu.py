"""JumpReLU (Rajamanoharan et al. 2024): z = pre * H(pre - theta) with a learnt threshold theta per latent."""

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch.autograd import Function

from saelign.configs import help_field
from saelign.errors import require
from saelign.sae.activations.base import DenseActivation, register
from saelign.sae.losses import SAEParts


def above_threshold(pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """pre * H(pre - threshold): JumpReLU's encode, also BatchTopK's at inference."""
    return pre * (pre > threshold).to(pre.dtype)


class _JumpReLU(Function):
    """z = pre * H(pre - theta) and per-latent firing counts, with straight-through gradients for theta only:
    dz/dtheta = -(theta / eps) K and dH/dtheta = -(1 / eps) K, K = 1{|pre - theta| < eps / 2} (a rectangle
    kernel). One function for both so the [B, d_sae] masks are computed once per pass."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth):  # type: ignore[override]
        # Float masks: on CPU, multiplying by or summing a bool tensor first makes a converted copy of it.
        mask = (pre > theta).to(pre.dtype)
        ctx.save_for_backward(pre, theta, mask)
        ctx.bandwidth = bandwidth
        ctx.set_materialize_grads(False)
        return pre * mask, mask.sum(0, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_z, grad_counts):  # type: ignore[override]
        pre, theta, mask = ctx.saved_tensors
        eps = ctx.bandwidth
        near = ((pre - theta).abs_() < eps / 2).to(pre.dtype)
        d_pre = d_theta = None
        if grad_z is not None:
            d_pre = grad_z * mask
            d_theta = -(theta / eps) * (grad_z * near).sum(0)
        if grad_counts is not None:
            from_counts = -grad_counts * near.sum(0) / eps
            d_theta = from_counts if d_theta is None else d_theta + from_counts
        return d_pre, d_theta, None


def jumprelu(pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre * H(pre - theta) [B, d_sae], firing counts per latent [d_sae]), straight-through for theta."""
    return _JumpReLU.apply(pre, theta, bandwidth)


@register
@dataclass
class JumpReLU(DenseActivation):
    """Theta is trained with straight-through estimators, a rectangle kernel of width `jumprelu_bandwidth`;
    sparsity is the L0 (step STE) or Anthropic's tanh(c * z) penalty."""

    name: ClassVar[str] = "jumprelu"
    architecture: ClassVar[str] = "jumprelu"
    uses_threshold: ClassVar[bool] = True

    jumprelu_sparsity_coefficient: float = help_field(1.0, "jumprelu: weight of the sparsity penalty "
                                                           "(higher = lower L0)")
    jumprelu_tanh_scale: float = help_field(4.0, "jumprelu: c in the tanh penalty")
    jumprelu_penalty: Literal["l0", "tanh"] = help_field(
        "l0", "jumprelu sparsity penalty: l0 (step function, Gemma Scope) or tanh(c * latent) (Anthropic)")
    jumprelu_bandwidth: float = help_field(0.05, "jumprelu: width of the threshold's straight-through kernel")
    jumprelu_init_threshold: float = help_field(0.01, "jumprelu: initial threshold (pre-activations start "
                                                      "~N(0, 0.1^2))")
    # The thresholds live on the normalised pre-activation scale (~0.1-1) and must get there within the run:
    # at the weights' lr Adam moves them by only ~1e-4 per step.
    jumprelu_threshold_lr: float = help_field(0.03, "jumprelu: peak Adam learning rate of the thresholds, on "
                                                    "the same schedule as lr")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.jumprelu_threshold_lr >= 0, f"jumprelu_threshold_lr must not be negative, got "
                                                 f"{self.jumprelu_threshold_lr}")

    @property
    def coefficient(self) -> float:
        return self.jumprelu_sparsity_coefficient

    def sparsify(self, pre: torch.Tensor, sae: SAEParts, training: bool = False) -> torch.Tensor:
        return above_threshold(pre, sae.threshold)

    def prepare(self, sae: SAEParts) -> list[dict[str, Any]]:
        super().prepare(sae)
        # Trained directly (not in log space) at a raised learning rate: see jumprelu_threshold_lr.
        with torch.no_grad():
            sae.threshold.fill_(self.jumprelu_init_threshold)
        return [{"params": [sae.threshold.requires_grad_(True)], "peak_lr": self.jumprelu_threshold_lr}]

    def latents(self, pre: torch.Tensor, sae: SAEParts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z, counts = jumprelu(pre, sae.threshold, self.jumprelu_bandwidth)
        if self.jumprelu_penalty == "tanh":
            return z, counts, torch.tanh(self.jumprelu_tanh_scale * z).sum() / pre.shape[0]
        return z, counts, counts.sum() / pre.shape[0]

    @torch.no_grad()
    def after_step(self, sae: SAEParts) -> None:
        sae.threshold.clamp_min_(0.0)

    def finish(self, sae: SAEParts) -> None:
        sae.threshold.requires_grad_(False)
