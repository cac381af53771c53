"""Sparse autoencoders: model, training, evaluation and file formats."""

from saelign.sae.formats import load_sae, save_sae
from saelign.sae.model import SAE, SAEConfig
from saelign.sae.pipeline import evaluate_sae_files, train_from_store, train_on_the_fly

__all__ = ["SAE", "SAEConfig", "evaluate_sae_files", "load_sae", "save_sae", "train_from_store",
           "train_on_the_fly"]
