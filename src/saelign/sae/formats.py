"""SAE files: save in SAELens' layout, load ours/SAELens/sparsify/dictionary_learning, check against a model.

The on-disk layout is SAELens v6 (`cfg.json` + `sae_weights.safetensors`), so `sae_lens.SAE.load_from_disk`
loads what we save and computes the same latents and reconstructions in raw activation units:
- architectures: each activation's own (relu -> "standard", batchtopk -> "jumprelu" with its per-latent
  threshold, as SAELens itself saves BatchTopK SAEs for inference);
- input normalisation: our SAE encodes `x * norm_scale` and decodes back by `/ norm_scale`. SAELens' on-disk
  loader applies no input scaling, so the scale is folded into the weights on save
  (W_enc * s, W_dec / s, b_dec / s -- exactly SAELens' own `fold_activation_norm_scaling_factor`), which keeps
  the latents identical; `metadata.saelign.norm_scale` records s so our loader unfolds it again.
  Unfolding is exact up to one float rounding per weight (~1e-7 relative);
- our own SAEConfig (activation, k, always-on latents, ...) goes in `metadata.saelign.config`; SAELens keeps
  unknown metadata keys when it re-saves, and ignores them otherwise."""

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from saelign.configs import config_from_dict, config_to_dict
from saelign.errors import SaelignError
from saelign.io import (
    ensure_writable_dir,
    load_tensors,
    read_json,
    read_json_object,
    remove_temp_files,
    save_tensors_atomic,
    share,
    write_json_atomic,
)
from saelign.models.hookpoints import forward_capture
from saelign.progress import logger
from saelign.runinfo import SAELIGN_VERSION
from saelign.sae.activations import ACTIVATIONS, activation_class
from saelign.sae.importers import (
    DICTIONARY_WEIGHTS,
    SPARSIFY_WEIGHTS,
    assemble_sae,
    check_weights,
    load_dictionary_learning,
    load_sparsify,
)
from saelign.sae.model import SAE, SAEConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# The SAELens release whose format we write; SAELens parses configs from >= 6.0 without legacy conversion.
SAELENS_FORMAT_VERSION = "6.54.12"
Format = Literal["auto", "saelens", "sparsify", "dictionary_learning"]
FORMATS = ("saelens", "sparsify", "dictionary_learning")


def saelens_payload(sae: SAE, extra_cfg: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and cfg.json content of `sae` in SAELens' layout (norm_scale folded into the weights)."""
    cfg = sae.cfg
    scale = float(sae.norm_scale)
    params = (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    W_enc, b_enc, W_dec, b_dec = (t.detach().float().cpu() for t in params)
    tensors = {"W_enc": W_enc * scale, "b_enc": b_enc.clone(), "W_dec": W_dec / scale, "b_dec": b_dec / scale}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold.detach().float().cpu().clone()
        if (sae.threshold < 0).any():
            logger.warning("some JumpReLU thresholds are negative: SAELens applies ReLU before the threshold, so it "
                           "will zero latents whose pre-activation lies between the threshold and 0")
    if cfg.always_on_latents and not sae.activation.elementwise:
        logger.warning("always_on_latents are a saelign extension: SAELens will apply the top-k/threshold to them too")
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION, "model_name": cfg.model, "hook_name": cfg.hookpoint,
        "model_class_name": "AutoModelForCausalLM", **(extra_cfg or {}),
        "saelign": {"version": SAELIGN_VERSION, "config": config_to_dict(cfg), "norm_scale": scale}}
    cfg_json: dict[str, Any] = {
        "architecture": sae.activation.architecture, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
        "reshape_activations": "none", "metadata": metadata}
    cfg_json.update(sae.activation.saelens_cfg(sae))
    return tensors, cfg_json


def save_sae(sae: SAE, directory: str | Path, extra_cfg: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write `sae` to `directory` (cfg.json + sae_weights.safetensors); extra_cfg entries go into cfg metadata.
    A new directory is built under a temporary name and renamed into place, so a crash never leaves a
    complete-looking SAE; in an existing one cfg.json is removed first and written last."""
    directory = Path(directory)
    tensors, cfg_json = saelens_payload(sae, extra_cfg)
    if directory.is_dir() and any(directory.iterdir()):
        if (directory / CFG_FILE).exists():  # without it the folder holds no complete SAE (e.g. a crashed save)
            if _same_contents(directory, tensors, cfg_json):
                return directory
            if not overwrite:
                raise SaelignError(f"{directory} already holds a different SAE; pass overwrite=True (--overwrite) "
                                   "or choose another directory")
        (directory / CFG_FILE).unlink(missing_ok=True)
        for name in (WEIGHTS_FILE, CFG_FILE):  # a save killed mid-write left its temp file here
            remove_temp_files(directory / name)
        _write(directory, tensors, cfg_json)
        return directory
    ensure_writable_dir(directory.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".partial", dir=directory.parent))
    try:
        share(tmp)  # mkdtemp made it 0700
        _write(tmp, tensors, cfg_json)
        os.replace(tmp, directory)  # an absent or empty target directory is replaced atomically
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _write(directory: Path, tensors: dict[str, torch.Tensor], cfg_json: dict[str, Any]) -> None:
    save_tensors_atomic(directory / WEIGHTS_FILE, tensors)
    write_json_atomic(directory / CFG_FILE, cfg_json)  # last: its presence marks a complete SAE


def _same_contents(directory: Path, tensors: dict[str, torch.Tensor], cfg_json: dict[str, Any]) -> bool:
    try:
        old_cfg = read_json(directory / CFG_FILE)
        old = load_tensors(directory / WEIGHTS_FILE)
    except SaelignError:
        return False
    new_cfg = json.loads(json.dumps(cfg_json, default=str))
    return old_cfg == new_cfg and old.keys() == tensors.keys() and all(torch.equal(old[k], tensors[k]) for k in old)


def detect_format(path: str | Path) -> tuple[Path, str]:
    """Return (SAE directory, layout name) for a directory or one of its weight files."""
    path = Path(path).expanduser()
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise SaelignError(f"SAE not found: {path}; give the SAE directory (with cfg.json, or ae.pt for dictionary_learning)")
    if (path / WEIGHTS_FILE).is_file():
        if not (path / CFG_FILE).is_file():
            raise SaelignError(f"{path} has {WEIGHTS_FILE} but no {CFG_FILE}: the save was interrupted; save the SAE again")
        return path, "saelens"
    if (path / SPARSIFY_WEIGHTS).is_file():
        return path, "sparsify"
    if (path / DICTIONARY_WEIGHTS).is_file():
        return path, "dictionary_learning"
    if (path / CFG_FILE).is_file():
        raise SaelignError(f"{path} has {CFG_FILE} but no {WEIGHTS_FILE} (or sparsify {SPARSIFY_WEIGHTS}): the weights "
                           "were removed or never copied; copy or save the SAE again")
    nested = sorted(p.parent.name for name in (WEIGHTS_FILE, SPARSIFY_WEIGHTS, DICTIONARY_WEIGHTS) for p in path.glob(f"*/{name}"))
    if nested:
        raise SaelignError(f"{path} holds several SAEs ({', '.join(nested)}); pass one of these sub-directories")
    if not any(path.iterdir()):
        raise SaelignError(f"{path} is empty; it holds no SAE")
    raise SaelignError(f"{path} holds no SAE: expected {CFG_FILE} + {WEIGHTS_FILE} (SAELens/saelign), "
                       f"cfg.json + {SPARSIFY_WEIGHTS} (sparsify) or {DICTIONARY_WEIGHTS} + config.json (dictionary_learning)")


def load_sae(path: str | Path, device: str | torch.device = "cpu", format: Format = "auto") -> SAE:
    """Load an SAE saved by saelign or SAELens, or trained with sparsify or dictionary_learning."""
    if format == "auto":
        directory, format = detect_format(path)
    elif format in FORMATS:
        directory = Path(path).expanduser()
        directory = directory.parent if directory.is_file() else directory
    else:
        raise SaelignError(f"unknown SAE format {format!r}; use one of auto, {', '.join(FORMATS)}")
    loaders = {"saelens": _load_saelens, "sparsify": load_sparsify, "dictionary_learning": load_dictionary_learning}
    return loaders[format](directory).to(device)


def _load_saelens(directory: Path) -> SAE:
    cfg_path, weights_path = directory / CFG_FILE, directory / WEIGHTS_FILE
    raw = read_json_object(cfg_path, "SAE config")
    tensors = load_tensors(weights_path, "SAE weights")
    for key in ("architecture", "d_in", "d_sae"):
        if key not in raw:
            raise SaelignError(f"{cfg_path} has no {key!r}; it is not a SAELens/saelign SAE config")
    try:
        metadata = raw.get("metadata") or {}
        ours = metadata.get("saelign")
        if ours:
            cfg = config_from_dict(SAEConfig, _known_fields(ours.get("config", {})),
                                   where=f"{cfg_path} metadata.saelign.config")
            scale = float(ours.get("norm_scale", 1.0))
        else:
            cfg, scale = _foreign_config(raw, cfg_path), 1.0
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:  # a field of the wrong type
        raise SaelignError(f"{cfg_path} is malformed ({type(exc).__name__}: {exc}); save or convert the SAE "
                           "again") from exc
    if not math.isfinite(scale) or scale <= 0:
        raise SaelignError(f"{cfg_path}: norm_scale must be a positive number, got {scale}; save the SAE again")
    uses_threshold = activation_class(cfg.activation).uses_threshold
    missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if uses_threshold else ())
               if k not in tensors]
    if missing:
        raise SaelignError(f"{weights_path} lacks tensor(s) {', '.join(missing)}; the file is incomplete, save the SAE again")
    check_weights({k: tensors[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold") if k in tensors},
                  weights_path)  # before the float() below hides an integer dtype
    W_enc, b_enc, W_dec, b_dec = (tensors[k].float() for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
    threshold = tensors["threshold"].float() if uses_threshold else None
    if not raw.get("apply_b_dec_to_input", True):
        b_enc = b_enc + b_dec @ W_enc
    if raw.get("rescale_acts_by_decoder_norm"):
        norms = W_dec.norm(dim=1).clamp_min(1e-8)  # SAELens' topk treats the decoder as unit-norm
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    if threshold is not None and not ours:
        threshold = threshold.clamp_min(0)  # SAELens: relu(pre) * (pre > t), the same as ours for t >= 0
    return assemble_sae(cfg, weights_path, W_enc=W_enc / scale, b_enc=b_enc,
                        W_dec=W_dec * scale, b_dec=b_dec * scale, threshold=threshold, norm_scale=scale)


def _known_fields(data: dict[str, Any]) -> dict[str, Any]:
    # a file written by a newer saelign may carry config fields this version does not know
    known = set(SAEConfig.__dataclass_fields__)
    return {k: v for k, v in data.items() if k in known}


def _foreign_config(raw: dict[str, Any], cfg_path: Path) -> SAEConfig:
    """Our SAEConfig for an SAE saved by SAELens itself."""
    arch = raw["architecture"]
    readers = {cls.architecture: cls for cls in ACTIVATIONS.values() if cls.loads_architecture}
    if arch not in readers:
        raise SaelignError(f"{cfg_path}: SAELens architecture {arch!r} is not supported; use "
                           f"{', '.join(sorted(readers))}")
    norm = raw.get("normalize_activations", "none")
    # SAELens' own disk loader applies no scaling for expected_average_only_in either (it is folded on export)
    if norm not in ("none", "expected_average_only_in", None):
        raise SaelignError(f"{cfg_path}: normalize_activations={norm!r} is a per-token normalisation saelign does not "
                           "implement; only 'none' SAEs can be imported")
    metadata = raw.get("metadata") or {}
    k = raw.get("k", 1)
    if readers[arch].uses_k and float(k) != int(k):
        raise SaelignError(f"{cfg_path}: {arch} k={k} is not an integer")
    return SAEConfig(d_in=int(raw["d_in"]), d_sae=int(raw["d_sae"]), activation=readers[arch].name, k=int(k),
                     hookpoint=str(metadata.get("hook_name") or raw.get("hook_name") or ""),
                     model=str(metadata.get("model_name") or raw.get("model_name") or ""))


@torch.inference_mode()
def activation_width(model: nn.Module, hookpoint: str) -> int:
    """Width of the tensor `hookpoint` outputs, measured with a two-token forward that stops there."""
    device = next(model.parameters()).device
    token = getattr(model.config, "bos_token_id", None) or 0
    input_ids = torch.full((1, 2), int(token), dtype=torch.long, device=device)
    return int(forward_capture(model, [hookpoint], input_ids)[hookpoint].shape[-1])


def check_sae_matches(sae: SAE, model: nn.Module, hookpoint: str) -> None:
    """Raise a SaelignError when `sae` was made for another hookpoint or reads a different width."""
    recorded = sae.cfg.hookpoint
    if recorded and recorded != hookpoint:
        raise SaelignError(f"the SAE was trained on hookpoint {recorded!r} but {hookpoint!r} was requested; "
                           f"use --hookpoint {recorded} or an SAE trained on {hookpoint}")
    width = activation_width(model, hookpoint)
    if width != sae.cfg.d_in:
        raise SaelignError(f"the SAE reads d_in={sae.cfg.d_in} activations but {hookpoint} of this model outputs width "
                           f"{width}; use an SAE trained on this model and hookpoint")
