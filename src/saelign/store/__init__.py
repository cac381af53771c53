"""Activation capture and the on-disk activation store (sharded safetensors + manifest)."""

from saelign.store.capture import CaptureConfig, CapturedBatch, capture, stream_activations, stream_batches
from saelign.store.loader import ActivationStore
from saelign.store.store import StoreWriter, read_manifest

__all__ = ["ActivationStore", "CaptureConfig", "CapturedBatch", "StoreWriter", "capture", "read_manifest",
           "stream_activations", "stream_batches"]
