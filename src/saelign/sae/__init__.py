"""Sparse autoencoders: model, training, evaluation and file formats."""

from saelign.sae.formats import load_sae, save_sae
from saelign.sae.model import SAE, SAEConfig

__all__ = ["SAE", "SAEConfig", "load_sae", "save_sae"]
