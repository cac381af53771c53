"""A latent's reading: its examples at the right grain, its data-grounded line, a histogram of its per-prompt
values, and (once explained and scored) a model-written label and the detection scores of every label kind.

`label.describe.describe_latents` builds them over labelled prompts; they ride in the labels sidecar
(`LatentLabel.reading`) and feed the dashboard.
"""

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saelign.errors import SaelignError
from saelign.io import read_json, write_json_atomic
from saelign.label.examples import PromptExample, prompt_examples
from saelign.label.grounding import GroupStat, LabelledPrompt, ground_latents, grounded_summary
from saelign.sae import SAE

READINGS_FORMAT = "saelign-readings"


@dataclass
class Reading:
    grain: str  # "prompt": show whole requests; "token": show token windows
    grounded: str
    groups: list[GroupStat]
    top_prompts: list[PromptExample]
    bottom_prompts: list[PromptExample]
    hist_edges: list[float]
    hist_counts: list[int]
    explanation: str = ""
    detection: dict[str, float] = field(default_factory=dict)  # label kind -> balanced accuracy

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Reading":
        return cls(**{**data, "groups": [GroupStat(**g) for g in data["groups"]],
                      "top_prompts": [PromptExample(**p) for p in data["top_prompts"]],
                      "bottom_prompts": [PromptExample(**p) for p in data["bottom_prompts"]]})


def sae_fingerprint(sae: SAE) -> str:
    """Short sha256 of the decoder: tells this SAE's labels file from one of another SAE of the same width."""
    return hashlib.sha256(sae.W_dec.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def histogram(values: torch.Tensor, bins: int = 20) -> tuple[list[float], list[int]]:
    """Edges and counts of the values (one bin when all are equal)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return [lo, hi], [int(values.numel())]
    counts = torch.histc(values.float(), bins=bins, min=lo, max=hi)
    return torch.linspace(lo, hi, bins + 1).tolist(), [int(c) for c in counts.tolist()]


def readings_from_acts(acts: torch.Tensor, prompts: Sequence[LabelledPrompt], latents: Sequence[int],
                       grains: Mapping[int, str], n_examples: int = 5) -> dict[int, Reading]:
    """Readings from a [n_prompts, len(latents)] matrix of per-prompt values."""
    texts = [p.prompt for p in prompts]
    grounding = ground_latents(acts, prompts, latents)
    examples = prompt_examples(acts, texts, latents, n_examples)
    out = {}
    for col, latent in enumerate(latents):
        edges, counts = histogram(acts[:, col])
        top, bottom = examples[latent]
        out[latent] = Reading(grains.get(latent, "prompt"), grounding[latent].line, grounding[latent].groups,
                              top, bottom, edges, counts)
    return out


def sae_meta(sae: SAE) -> dict[str, Any]:
    """What a labels file records about its SAE so that it is never applied to another one."""
    return {"d_sae": sae.d_sae, "sae_fingerprint": sae_fingerprint(sae)}


def check_labels_meta(path: str, meta: Mapping[str, Any], sae: SAE) -> None:
    """Refuse a labels file written for another SAE (other width or other decoder)."""
    if not isinstance(meta, Mapping):
        raise SaelignError(f"{path}: 'meta' must be a mapping; re-run `saelign label`")
    if "d_sae" in meta and meta["d_sae"] != sae.d_sae:
        raise SaelignError(f"{path} labels an SAE with d_sae={meta['d_sae']}, this SAE has {sae.d_sae}; "
                           "label this SAE or pass its own labels file")
    if meta.get("sae_fingerprint") not in (None, sae_fingerprint(sae)):
        raise SaelignError(f"{path} was written for another SAE (decoder hash {meta['sae_fingerprint']} != "
                           f"{sae_fingerprint(sae)}); label this SAE or pass its own labels file")


def check_labels_file(path: str | Path, sae: SAE) -> None:
    data = read_json(path, "labels file")
    check_labels_meta(str(path), (data.get("meta") or {}) if isinstance(data, dict) else {}, sae)


def display_label(short_label: str, reading: Reading | None) -> str:
    """The label a report shows: the model-written label if any, the token label where the feature is read
    at ordinary text positions, then the data-grounded line."""
    if reading is None:
        return short_label
    parts = (reading.explanation, short_label if reading.grain == "token" else "", reading.grounded)
    return " — ".join(part for part in parts if part) or short_label


def shown_score(reading: Reading | None) -> float | None:
    """Detection score of the label `display_label` leads with (model-written, token or grounded)."""
    if reading is None:
        return None
    value = reading.detection.get("model" if reading.explanation else
                                  "tokens" if reading.grain == "token" else "grounded")
    return None if value is None or value != value else value


def feature_name(short_label: str, reading: Reading | None) -> str:
    """One readable name for a sentence: the model-written label where it scored better than the data-grounded
    line in the detection test (the measured line wins ties), else the grounded line, else the token label."""
    if reading is None:
        return short_label
    model, grounded = reading.detection.get("model", -1.0), reading.detection.get("grounded", -1.0)
    if reading.explanation and (model > grounded or not reading.grounded):
        return reading.explanation
    if reading.grain == "token":  # its examples are token windows; the grounded line reads ends of requests
        return short_label
    return grounded_summary(reading.grounded) or reading.explanation or short_label


def save_readings(path: str | Path, readings: Mapping[int, Reading], meta: Mapping[str, Any]) -> Path:
    """Atomic JSON of the readings of some features, apart from the labels file they add to."""
    rows = [{"latent": latent, **dataclasses.asdict(r)} for latent, r in readings.items()]
    write_json_atomic(path, {"format": READINGS_FORMAT, "meta": dict(meta), "readings": rows})
    return Path(path)


def load_readings(path: str | Path) -> dict[int, Reading]:
    data = read_json(path, "readings file")
    if not isinstance(data, dict) or data.get("format") != READINGS_FORMAT:
        raise SaelignError(f"{path} is not a saelign readings file (missing \"format\": "
                           f"\"{READINGS_FORMAT}\"); rerun the SAILS describe stage")
    out = {}
    for i, row in enumerate(data.get("readings", [])):
        try:
            latent = int(row.pop("latent"))
            out[latent] = Reading.from_dict(row)
        except (KeyError, TypeError, ValueError) as exc:
            raise SaelignError(f"{path}: readings[{i}] is malformed ({exc!r}); rerun the SAILS describe "
                               "stage") from exc
    return out
