"""Post-training checkpoints: one safetensors file (SAE, value head, Adam state) whose metadata holds the step,
the slots and the options, written atomically, so the tensors and the step they belong to can never disagree.

Batches are drawn from per-step seeds, so no RNG state is needed: a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from saelign.configs import config_to_dict
from saelign.errors import SaelignError
from saelign.io import load_tensors, save_tensors_atomic

CHECKPOINT_FILE = "posttrain_checkpoint.safetensors"
# Options that may change between a run and its resumption without changing the result.
_FREE_OPTIONS = {"checkpoint_every", "device", "out"}


def _options(cfg: Any) -> dict[str, Any]:
    return {k: v for k, v in config_to_dict(cfg).items() if k not in _FREE_OPTIONS}


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for truncated headers
        raise SaelignError(f"checkpoint {path} is corrupt ({exc}); delete it to start over") from exc


def save_checkpoint(out: Path, cfg: Any, sae: torch.nn.Module, value_head: torch.nn.Module | None,
                    optimizer: torch.optim.Optimizer, slots: list[int], step: int) -> None:
    tensors = {f"sae.{k}": v for k, v in sae.state_dict().items()}
    if value_head is not None:
        tensors.update({f"value.{k}": v for k, v in value_head.state_dict().items()})
    for i, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{i}.{key}"] = torch.as_tensor(value)
    metadata = {"step": str(step), "slots": json.dumps(slots), "options": json.dumps(_options(cfg))}
    save_tensors_atomic(out / CHECKPOINT_FILE, tensors, metadata)


def load_checkpoint(out: Path, cfg: Any, sae: torch.nn.Module | None = None, value_head: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, slots: list[int] | None = None) -> int:
    """Restore the modules from `out`'s checkpoint and return its step (0 when there is none).

    Raises if the checkpoint was made with other options; without modules it only performs that check.
    """
    path = out / CHECKPOINT_FILE
    if not path.is_file():
        return 0
    meta = _metadata(path)
    saved, now = json.loads(meta.get("options", "{}")), _options(cfg)
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        raise SaelignError(f"{out} holds a post-training run made with different options ({', '.join(changed)}); "
                           "use the same options to resume, or a new --out")
    if slots is not None and json.loads(meta["slots"]) != slots:
        raise SaelignError(f"checkpoint {path} reserved slots {meta['slots']} but this run chose {slots}; "
                           "the SAE or the data changed: use a new --out")
    if sae is None:
        return int(meta["step"])
    tensors = load_tensors(path, "post-training checkpoint")
    sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
    if value_head is not None:
        value_head.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("value.")})
    if optimizer is not None:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        saved_state = optimizer.state_dict()
        saved_state["state"] = state
        optimizer.load_state_dict(saved_state)
    return int(meta["step"])
