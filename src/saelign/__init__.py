"""saelign: interpretable alignment of language models with sparse autoencoders."""

__version__ = "0.1.0"

from saelign.errors import SaelignError  # noqa: E402
from saelign.models import ModelConfig, load_model, resolve_hookpoints  # noqa: E402
from saelign.sae import SAE, SAEConfig  # noqa: E402

__all__ = ["SAE", "ModelConfig", "SAEConfig", "SaelignError", "__version__", "load_model", "resolve_hookpoints"]
