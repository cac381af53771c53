"""AlignSAE loss terms (after the authors' code): binding, concept⊥free decorrelation, slot silence, value head.

All operate on latents in the SAE's normalised units. Binding reads the concept slots' pre-activations: ReLU is
monotone, so the argmax read-out is the same, and a slot pushed below zero still gets a gradient back."""

import torch
import torch.nn.functional as F
from torch import nn


def binding_loss(slot_pre: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Concept slots [n, C] against labels [n]: cross-entropy with the slots as logits, or MSE to one-hot."""
    if kind == "ce":
        return F.cross_entropy(slot_pre, labels)
    return F.mse_loss(slot_pre, F.one_hot(labels, slot_pre.shape[-1]).to(slot_pre.dtype))


def decorrelation_loss(slots: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """Sum of squared batch cross-covariances between concept slots [n, C] and free latents [n, F]."""
    cross = (slots - slots.mean(0)).T @ (free - free.mean(0)) / slots.shape[0]
    return cross.pow(2).sum()


def silence_loss(slots: torch.Tensor) -> torch.Tensor:
    """Concept slots [n, C] (after ReLU) on generic text should stay at zero: MSE to the all-zero target."""
    return slots.pow(2).mean()


def anchor_loss(columns: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """Mean over slots of ‖w − w₀‖² / ‖w₀‖²: how far each slot's encoder column [d_in, C] moved from its start."""
    return ((columns - initial).pow(2).sum(0) / initial.pow(2).sum(0).clamp_min(1e-12)).mean()


class ValueHead(nn.Module):
    """One small MLP per concept predicting the answer's first token from that concept's slot value (a scalar).
    The output covers only the answer tokens seen in training (`classes`), not the whole vocabulary: the
    authors' head maps to the full vocabulary: ~vocab·hidden parameters per concept for no gain."""

    def __init__(self, n_concepts: int, classes: torch.Tensor, hidden: int, generator: torch.Generator):
        super().__init__()
        k = len(classes)
        self.register_buffer("classes", classes.clone())
        self.w1 = nn.Parameter(torch.randn(n_concepts, hidden, generator=generator))
        self.b1 = nn.Parameter(torch.zeros(n_concepts, hidden))
        self.w2 = nn.Parameter(torch.randn(n_concepts, hidden, k, generator=generator) / hidden**0.5)
        self.b2 = nn.Parameter(torch.zeros(n_concepts, k))

    def forward(self, slot_value: torch.Tensor, concept: torch.Tensor) -> torch.Tensor:
        """Logits over `classes` [n, K] from each row's own concept slot value [n]."""
        h = F.relu(slot_value[:, None] * self.w1[concept] + self.b1[concept])
        return torch.einsum("nh,nhk->nk", h, self.w2[concept]) + self.b2[concept]

    def loss(self, slot_value: torch.Tensor, concept: torch.Tensor, answer_tokens: torch.Tensor) -> torch.Tensor:
        target = torch.searchsorted(self.classes, answer_tokens)
        return F.cross_entropy(self(slot_value, concept), target)
