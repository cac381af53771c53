"""saelign: interpretable alignment of language models with sparse autoencoders."""

__version__ = "0.1.0"

from saelign.errors import SaelignError  # noqa: E402
from saelign.models import ModelConfig, load_model, resolve_hookpoints  # noqa: E402
from saelign.sae import SAE, SAEConfig, evaluate_sae_files, load_sae, train_from_store  # noqa: E402
from saelign.store import ActivationStore, CaptureConfig, capture  # noqa: E402

__all__ = ["SAE", "ActivationStore", "CaptureConfig", "ModelConfig", "SAEConfig", "SaelignError",
           "__version__", "capture", "evaluate_sae_files", "load_model", "load_sae", "resolve_hookpoints",
           "train_from_store"]
