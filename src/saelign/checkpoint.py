"""What every trainer (SAE training, AlignSAE post-training, adapter SFT) shares: checkpoints, the resume
fingerprint, optimizer and RNG state, the learning-rate schedule.

A checkpoint is `state.json` plus the tensor files it lists. Tensor files carry the step in their name and the
state file is written last (atomically), so a crash at any point leaves the previous checkpoint intact; stale
tensor files are removed only after the new state file is in place. A run resumes only under the options it
was started with: its config class declares in `RESUME_FREE` the fields that do not change the result (output
folder, device, logging and checkpoint cadence); every other field, and any new one, is in the fingerprint.

Under torchrun every rank calls `save` (the RNG states are gathered from all ranks) and rank 0 writes; every
rank reads the same checkpoint on resume and takes back its own RNG state, so `--out` must be on a filesystem
all ranks see."""

import math
import shutil
from pathlib import Path
from typing import Any

import torch

from saelign import distributed
from saelign.configs import config_to_dict
from saelign.errors import SaelignError
from saelign.io import (
    ensure_writable_dir,
    load_tensors,
    read_json_object,
    save_tensors_atomic,
    write_json_atomic,
)

STATE_FILE = "state.json"
FORMAT_VERSION = 1


def save(directory: str | Path, step: int, tensors: dict[str, dict[str, torch.Tensor]],
         fingerprint: dict[str, Any], **state: Any) -> None:
    """Write `tensors` (file stem -> named tensors), `fingerprint` and JSON-able `state` over the last one
    (rank 0 only; the other ranks return at once)."""
    if not distributed.is_main():
        return
    directory = ensure_writable_dir(directory)
    files = {stem: f"{stem}-step{step:09d}.safetensors" for stem in tensors}
    for stem, group in tensors.items():
        save_tensors_atomic(directory / files[stem], group)
    write_json_atomic(directory / STATE_FILE, {"format_version": FORMAT_VERSION, "options": fingerprint,
                                               **state, "step": step, "files": files})
    _remove_stale(directory, set(files.values()))


def remove(directory: str | Path) -> None:
    """Delete a checkpoint folder, its state file first: a crash midway leaves no checkpoint rather than a
    state file naming tensor files that are gone."""
    (Path(directory) / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(directory, ignore_errors=True)


def _remove_stale(directory: Path, live: set[str]) -> None:
    """Remove the tensor files the state file does not list, and temporary files a crash left mid-write."""
    for entry in directory.iterdir():
        stale = entry.suffix == ".safetensors" or entry.name.startswith(".")
        if stale and entry.is_file() and entry.name not in live:
            entry.unlink(missing_ok=True)


def load(directory: str | Path, fingerprint: dict[str, Any], added: dict[str, Any] | None = None,
         ) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]] | None:
    """(state, tensors) of the checkpoint in `directory`, None if there is none; refused if made under another
    fingerprint. `added`: options newer than some checkpoints, at the value those runs effectively used."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return None
    state = read_json_object(path, "training checkpoint state")
    files = state.get("files")
    # Tensor files are plain names in the checkpoint folder: a path that leads elsewhere is not one of ours.
    if state.get("format_version") != FORMAT_VERSION or not isinstance(files, dict) or not isinstance(
            state.get("options", {}), dict) or not all(
            isinstance(n, str) and n == Path(n).name and n.endswith(".safetensors") for n in files.values()):
        raise SaelignError(f"{path} is not a saelign training checkpoint (version {FORMAT_VERSION}); "
                           "delete the checkpoint folder to start over")
    saved = {**(added or {}), **state.get("options", {})}
    changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if changed:
        raise SaelignError(f"{directory} holds a checkpoint made with different options "
                           f"({', '.join(changed)}); rerun with the same options to resume, or use another "
                           "--out (or delete that folder) to start over")
    # A run that crashed after writing a state file but before removing the files it replaced, or while
    # writing the next checkpoint, left files of other steps; one that resumes here may never save again.
    _remove_stale(path.parent, set(state["files"].values()))
    return state, {stem: load_tensors(path.parent / name, "checkpoint tensors")
                   for stem, name in state["files"].items()}


def fingerprint(cfg: Any, **extra: Any) -> dict[str, Any]:
    """What must not change for a run to resume: the fields of `cfg` but those its class declares in
    RESUME_FREE, plus `extra` (e.g. a hash of the data)."""
    free = getattr(type(cfg), "RESUME_FREE", frozenset())
    return {**{k: v for k, v in config_to_dict(cfg).items() if k not in free}, **extra}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Flatten an optimizer's state: per-parameter tensors by "index.key", plus the JSON-able param groups."""
    sd = optimizer.state_dict()
    return {f"{index}.{key}": value for index, per_param in sd["state"].items()
            for key, value in per_param.items()}, sd["param_groups"]


def load_optimizer(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor],
                   param_groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in flat.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    # Checkpoints hold contiguous tensors, but a fused optimizer walks a parameter and its moments as flat
    # memory: each moment must take its parameter's layout again (SAE.W_enc is stored transposed), else
    # resuming would silently pair the wrong elements.
    for group in optimizer.param_groups:
        for param in group["params"]:
            moments = optimizer.state.get(param, {})
            for key, value in moments.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    moments[key] = torch.empty_like(param).copy_(value)


def rng_state() -> dict[str, torch.Tensor]:
    """The torch RNG state (CPU, and the current CUDA device's): dropout resumes where it stopped. Under
    torchrun every rank's, gathered (a collective: all ranks call it), rank r > 0's under "torch.r<r>"."""
    own = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        own["cuda"] = torch.cuda.get_rng_state()
    if distributed.world_size() == 1:
        return own
    states = {}
    for key, value in own.items():
        rows = distributed.all_gather_rows(value.unsqueeze(0), "the RNG-state gather for a checkpoint")
        states.update({key if r == 0 else f"{key}.r{r}": row for r, row in enumerate(rows)})
    return states


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    suffix = f".r{distributed.rank()}" if distributed.rank() else ""
    torch.set_rng_state(state.get(f"torch{suffix}", state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state.get(f"cuda{suffix}", state["cuda"]))


def scheduled_lr(peak: float, start: float, end: float, total: float, warmup: float = 0.0, decay: float = 0.0,
                 *, cosine: bool = False) -> float:
    """The learning rate of the step covering [start, end) of `total` units (tokens or steps): a linear
    warm-up over the first `warmup` units, measured at the step's end (the first step already moves), then a
    linear decay to 0 over the last `decay` units, measured at the step's start (the last step still moves),
    or with `cosine` a half cosine from the start of the run to 0 at `total`."""
    warm = min(1.0, end / warmup) if warmup > 0 else 1.0
    if cosine:
        return peak * warm * 0.5 * (1 + math.cos(math.pi * min(start, total) / total))
    return peak * (warm * min(1.0, (total - start) / decay) if decay > 0 else warm)
