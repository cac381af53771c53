"""saelign: interpretable alignment of language models with sparse autoencoders."""

from saelign.errors import SaelignError
from saelign.models import ModelConfig, load_model, resolve_hookpoints
from saelign.runinfo import SAELIGN_VERSION as __version__
from saelign.sae import SAE, SAEConfig, evaluate_sae_files, load_sae, train_from_store
from saelign.store import ActivationStore, CaptureConfig, capture

__all__ = ["SAE", "ActivationStore", "CaptureConfig", "ModelConfig", "SAEConfig", "SaelignError",
           "__version__", "capture", "evaluate_sae_files", "load_model", "load_sae", "resolve_hookpoints",
           "train_from_store"]
