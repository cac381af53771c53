"""Latent labelling: top activating contexts, logit lens, short labels (JSON) and HTML feature cards."""

from saelign.label.contexts import ContextExample, LatentScan, scan_latents, top_contexts
from saelign.label.labels import (
    LatentLabel,
    label_latents,
    labels_path,
    load_labels,
    render_latent_cards,
    save_labels,
)
from saelign.label.logit_lens import TokenScore, logit_lens

__all__ = ["ContextExample", "LatentLabel", "LatentScan", "TokenScore", "label_latents", "labels_path",
           "load_labels", "logit_lens", "render_latent_cards", "save_labels", "scan_latents", "top_contexts"]
