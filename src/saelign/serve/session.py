"""What the web page steers: one model (with an optional PEFT adapter), an SAE with labels and the SAILS
features, and an aligned SAE with its slot map; loaded once from a SAILS run folder and/or explicit paths.

A SAILS run folder holds config.json (the model), sae/ or sae.json (naming an SAE folder), labels.json,
select/selection.json (the selected latents) and methods/sails/adapter/ (a stock PEFT adapter). Explicit
paths override what the run names. The adapter is loaded once; the page switches it with PEFT's
`disable_adapter()` and never reloads it.
"""

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saelign.align.slots import SlotMap, load_slot_map
from saelign.errors import SaelignError
from saelign.io import read_json
from saelign.label.labels import LABELS_FILE, load_labels
from saelign.models import ModelConfig, load_model
from saelign.progress import logger
from saelign.sae.formats import check_sae_matches, load_sae
from saelign.sae.model import SAE
from saelign.sails.adapters import load_adapter
from saelign.serve.config import ServeConfig


@dataclass
class Feature:
    """A steerable SAE latent: its label and `scale`, its typical activation (the unit of its slider)."""

    id: int
    label: str
    scale: float


@dataclass
class Session:
    model: PreTrainedModel  # the HF model itself; with an adapter, its LoRA layers are injected in place
    tokenizer: PreTrainedTokenizerBase
    sae: SAE | None = None
    labels: dict[int, str] = field(default_factory=dict)
    features: list[Feature] = field(default_factory=list)  # the selected SAILS features, best first
    aligned: SAE | None = None
    slot_map: SlotMap | None = None
    peft: PeftModel | None = None
    dashboard: Path | None = None  # the labels' HTML dashboard, served as is

    def __post_init__(self) -> None:
        for sae in (self.sae, self.aligned):
            if sae is not None:
                check_sae_matches(sae, self.model, hookpoint(sae))
        if self.aligned is not None:
            if self.slot_map is None:
                raise SaelignError("an aligned SAE needs its slot map (slot_map.json beside it)")
            self.slot_map.validate(self.aligned)
        if self.features and self.sae is None:
            raise SaelignError("feature sliders need the SAE the features belong to")

    def adapter(self, on: bool) -> contextlib.AbstractContextManager:
        """The adapter's state for one forward: PEFT's own switch, a no-op without an adapter."""
        return contextlib.nullcontext() if on or self.peft is None else self.peft.disable_adapter()


def hookpoint(sae: SAE) -> str:
    if not sae.cfg.hookpoint:
        raise SaelignError(
            "the SAE's cfg.json names no hookpoint; the page cannot tell where to read or steer"
        )
    return sae.cfg.hookpoint


def _run_paths(run: Path) -> dict[str, Path | None]:
    """The parts a SAILS run folder holds, None where a part is missing."""
    if not (run / "config.json").is_file():
        raise SaelignError(
            f"{run} is not a SAILS run folder (no config.json); give --run the folder "
            "`saelign sails run --out` wrote"
        )
    sae = run / "sae"
    if (run / "sae.json").is_file():  # its path is the run's own sae/ (relative) or an absolute --sae folder
        sae = run / read_json(run / "sae.json", "sae.json")["path"]
    found = {
        "sae": sae,
        "labels": run / LABELS_FILE,
        "selection": run / "select" / "selection.json",
        "adapter": run / "methods" / "sails" / "adapter",
    }
    return {k: p if p.exists() else None for k, p in found.items()}


def _features(
    sae: SAE, selection: Path | None, labels: dict[int, str], scales: dict[int, float]
) -> list[Feature]:
    if selection is None:
        return []
    chosen = read_json(selection, "selection file")["selection"]
    features = []
    for i, latent in enumerate(chosen["latent_ids"]):
        if not 0 <= latent < sae.cfg.d_sae:
            raise SaelignError(f"{selection}: latent {latent} outside this SAE's 0..{sae.cfg.d_sae - 1}")
        mean = max(chosen["mean_harmful"][i], chosen["mean_harmless"][i])
        label = labels.get(latent) or chosen.get("labels", {}).get(str(latent), "")
        features.append(Feature(latent, label, scales.get(latent) or mean or 1.0))
    return features


def load_session(cfg: ServeConfig) -> Session:
    """Everything the page needs, loaded once; explicit paths win over the run folder's parts."""
    run, sae, aligned, adapter = cfg.run, cfg.sae, cfg.aligned, cfg.adapter
    paths = _run_paths(Path(run)) if run else {}
    model_name = cfg.model or read_json(Path(run) / "config.json", "run config")["model"]["model"]
    base, tokenizer = load_model(ModelConfig(model=model_name, device=cfg.device))
    sae_dir = Path(sae) if sae else paths.get("sae")
    features_sae = load_sae(sae_dir, device=base.device).requires_grad_(False) if sae_dir else None
    labels_file = paths.get("labels") or (
        sae_dir / LABELS_FILE if sae_dir and (sae_dir / LABELS_FILE).is_file() else None
    )
    full = load_labels(labels_file) if labels_file else {}
    labels = {i: label.short_label for i, label in full.items()}
    # A feature's slider unit: its strongest activation in the labelling corpus, when the labels have one.
    scales = {i: max((c.activation for c in label.top_contexts), default=0.0) for i, label in full.items()}
    features = _features(features_sae, paths.get("selection"), labels, scales) if features_sae else []
    aligned_sae = load_sae(aligned, device=base.device).requires_grad_(False) if aligned else None
    slot_map = load_slot_map(aligned, aligned_sae) if aligned else None
    adapter_dir = Path(adapter) if adapter else paths.get("adapter")
    peft = load_adapter(base, adapter_dir).eval() if adapter_dir else None
    dashboard = labels_file.with_suffix(".html") if labels_file else None
    logger.info(
        f"serve: model {model_name}, SAE {sae_dir}, {len(features)} features, aligned {aligned}, "
        f"adapter {adapter_dir}"
    )
    return Session(
        peft.get_base_model() if peft else base,
        tokenizer,
        features_sae,
        labels,
        features,
        aligned_sae,
        slot_map,
        peft,
        dashboard if dashboard and dashboard.is_file() else None,
    )
