"""Training checkpoints: tensors in safetensors files, everything else in one JSON state file.

A checkpoint is `state.json` plus the tensor files it lists. Tensor files carry the step in their name and the
state file is written last (atomically), so a crash at any point leaves the previous checkpoint intact; stale
tensor files are removed only after the new state file is in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saelign.errors import SaelignError
from saelign.io import ensure_writable_dir, load_tensors, read_json, save_tensors_atomic, write_json_atomic

STATE_FILE = "state.json"
FORMAT_VERSION = 1


def save_checkpoint(directory: str | Path, step: int, tensors: dict[str, dict[str, torch.Tensor]],
                    state: dict[str, Any]) -> None:
    """Write `tensors` (file stem -> named tensors) and `state`; replaces the previous checkpoint."""
    directory = ensure_writable_dir(directory)
    files = {}
    for stem, group in tensors.items():
        name = f"{stem}-step{step:09d}.safetensors"
        save_tensors_atomic(directory / name, group)
        files[stem] = name
    write_json_atomic(directory / STATE_FILE, {"format_version": FORMAT_VERSION, **state, "step": step, "files": files})
    for old in directory.glob("*.safetensors"):
        if old.name not in files.values():
            old.unlink()


def load_checkpoint(directory: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]] | None:
    """(state, tensors) of the checkpoint in `directory`, or None if there is none."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return None
    state = read_json(path, "training checkpoint state")
    if state.get("format_version") != FORMAT_VERSION or not isinstance(state.get("files"), dict):
        raise SaelignError(f"{path} is not a saelign training checkpoint (version {FORMAT_VERSION}); "
                           "delete the checkpoint folder to start over")
    tensors = {stem: load_tensors(Path(directory) / name, "checkpoint tensors") for stem, name in state["files"].items()}
    return state, tensors


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Flatten an optimizer state dict: per-parameter tensors by "index.key", plus the JSON-able param groups."""
    sd = optimizer.state_dict()
    flat = {f"{index}.{key}": value for index, per_param in sd["state"].items() for key, value in per_param.items()}
    return flat, sd["param_groups"]


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor],
                           param_groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in flat.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    # Checkpoints hold contiguous tensors, but a fused optimizer walks a parameter and its moments as flat memory:
    # each moment must take its parameter's layout again (SAE.W_enc is stored transposed), else resuming would
    # silently pair the wrong elements.
    for group in optimizer.param_groups:
        for param in group["params"]:
            moments = optimizer.state.get(param, {})
            for key, value in moments.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    moments[key] = torch.empty_like(param).copy_(value)
