"""Model loading and hookpoints on real Hugging Face causal LMs."""

from saelign.models.hookpoints import (
           StopForward,
           capture_outputs,
           forward_capture,
           patch_output,
           resolve_hookpoints,
)
from saelign.models.loading import DEFAULT_MODEL, ModelConfig, load_model, load_tokenizer

__all__ = ["DEFAULT_MODEL", "ModelConfig", "StopForward", "capture_outputs", "forward_capture", "load_model",
           "load_tokenizer", "patch_output", "resolve_hookpoints"]
