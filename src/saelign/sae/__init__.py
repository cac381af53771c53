"""Sparse autoencoders: model, training, evaluation and file formats."""

from saelign.sae.model import SAE, SAEConfig

__all__ = ["SAE", "SAEConfig"]
