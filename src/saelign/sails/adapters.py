"""Saving and loading trained adapters: a stock PEFT folder plus a `sails_provenance.json` sidecar.

`PeftModel.from_pretrained(base, folder)` loads the folder with no saelign code. The sidecar says where the
subspace came from (SAE, hookpoints, latent ids and labels, tau, rank, basis sha256, init kind). A folder is
written beside its destination and renamed into place, so a crash never leaves a half-written adapter, and an
existing folder is replaced only when asked to."""

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from peft import PeftModel
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel

from saelign.errors import SaelignError
from saelign.io import ensure_writable_dir, read_json, share, write_json_atomic
from saelign.runinfo import SAELIGN_VERSION
from saelign.sails.lora_init import PISSA_INIT_ATTR, trainable_share

PROVENANCE_FILE = "sails_provenance.json"


def _save_peft(model: PeftModel, folder: Path, scratch: Path) -> None:
    initial = getattr(model, PISSA_INIT_ATTR, None)
    if initial is None:
        model.save_pretrained(str(folder))
        return
    # PiSSA rewrote the base weights; PEFT re-expresses the trained adapter as a rank-2r LoRA on the original base
    # weights given the initial factors, which it reads from a folder whose name becomes a temporary adapter name.
    init_dir = scratch / "pissa_init"
    init_dir.mkdir()
    save_file(initial, str(init_dir / "adapter_model.safetensors"))
    with warnings.catch_warnings():  # PEFT warns that PiSSA rewrote the base; this conversion is the remedy it advises
        warnings.filterwarnings("ignore", message="PiSSA changes the base weights")
        model.save_pretrained(str(folder), path_initial_model_for_weight_conversion=str(init_dir))


def save_adapter(model: nn.Module, out_dir: str | Path, provenance: dict[str, Any], overwrite: bool = False) -> Path:
    """Write a PEFT adapter (or, for full fine-tuning, the whole model) and the provenance sidecar to out_dir."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise SaelignError(f"adapter directory {out} already exists; choose another output path or pass --overwrite")
    parent = ensure_writable_dir(out.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
    try:
        folder = staging / "adapter"
        if isinstance(model, PeftModel):
            _save_peft(model, folder, staging)
            kind = "peft"
        elif isinstance(model, PreTrainedModel):
            model.save_pretrained(str(folder), safe_serialization=True)
            kind = "full"
        else:
            raise SaelignError(f"cannot save a {type(model).__name__}: expected a PEFT model or a transformers model")
        write_json_atomic(folder / PROVENANCE_FILE, {"saelign_version": SAELIGN_VERSION, "kind": kind,
                                                     **trainable_share(model), **provenance})
        share(folder)  # PEFT's and transformers' safetensors files are written 0600
        if out.exists():
            previous = staging / "previous"
            os.replace(out, previous)
            try:
                os.replace(folder, out)
            except OSError:
                os.replace(previous, out)
                raise
        else:
            os.replace(folder, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def read_provenance(adapter_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(adapter_dir) / PROVENANCE_FILE, "SAILS provenance file")


def load_adapter(base_model: PreTrainedModel, adapter_dir: str | Path, is_trainable: bool = False) -> PeftModel:
    """Stock PEFT loading, with saelign's error messages for a missing or full-model folder."""
    folder = Path(adapter_dir)
    if not (folder / "adapter_config.json").is_file():
        if (folder / "config.json").is_file():
            raise SaelignError(f"{folder} holds a fully fine-tuned model, not an adapter; load it as --model {folder}")
        raise SaelignError(f"{folder} is not an adapter folder (no adapter_config.json); give the folder save_adapter wrote")
    try:
        return PeftModel.from_pretrained(base_model, str(folder), is_trainable=is_trainable)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:  # size mismatch, unknown module, bad file
        first = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise SaelignError(f"the adapter in {folder} does not fit this model ({first[:200]}); use an adapter "
                           "trained on this model, or the model it was trained on") from exc


def merged_for_inference(model: nn.Module) -> nn.Module:
    """A PEFT model with its adapter folded into the base weights (stock `merge_and_unload`): the same outputs
    up to float rounding, decoded faster (no separate low-rank products in every layer; bench_pipeline.py
    has merged vs plain `generate` on the PEFT model). Changes `model` in place, so give it a model loaded for inference only. A model that is not a PEFT
    model, or a quantised one (merging would round the adapter into 4/8-bit weights), is returned as it is."""
    if not isinstance(model, PeftModel) or getattr(model.get_base_model(), "hf_quantizer", None) is not None:
        return model
    return model.merge_and_unload().eval()
