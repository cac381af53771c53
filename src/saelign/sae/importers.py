"""Readers for SAEs trained by other libraries: EleutherAI sparsify and saprmarks dictionary_learning.

Each reader maps the library's parameters onto our SAE so that `encode`/`decode` compute exactly what that
library's own `encode`/`decode` compute on raw activations. Conventions that differ from ours are folded into
the weights instead of adding options to the SAE:
- no input centring (`x @ W_enc + b_enc` instead of `(x - b_dec) @ W_enc + b_enc`): b_enc += b_dec @ W_enc;
- ReLU applied before a threshold (`relu(pre) * (pre > t)`): thresholds below 0 are raised to 0, which gives
  the same latents with our `pre * (pre > t)`;
- a scalar threshold (dictionary_learning BatchTopK) is broadcast to one threshold per latent.
Decoder rows are kept as stored (not renormalised): renormalising would change which latents win a top-k."""

from pathlib import Path

import torch

from saelign.errors import SaelignError, require
from saelign.io import load_tensors, read_json
from saelign.progress import logger
from saelign.sae.model import SAE, SAEConfig

SPARSIFY_WEIGHTS = "sae.safetensors"
SPARSIFY_CFG = "cfg.json"
DICTIONARY_WEIGHTS = "ae.pt"
DICTIONARY_CFG = "config.json"


def assemble_sae(cfg: SAEConfig, source: Path, *, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor,
                 b_dec: torch.Tensor, threshold: torch.Tensor | None = None, norm_scale: float = 1.0) -> SAE:
    """Build an fp32 SAE from tensors read from `source`, checking every shape against cfg."""
    expected = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.d_in), "b_dec": (cfg.d_in,)}
    given = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if threshold is not None:
        expected["threshold"], given["threshold"] = (cfg.d_sae,), threshold
    for name, shape in expected.items():
        if tuple(given[name].shape) != shape:
            raise SaelignError(f"{source}: {name} has shape {tuple(given[name].shape)}, expected {shape} for "
                               f"d_in={cfg.d_in}, d_sae={cfg.d_sae}; the weights do not match the config")
    check_weights(given, source)
    require(norm_scale > 0, f"{source}: norm_scale must be positive, got {norm_scale}; the config is corrupt")
    sae = SAE(cfg)
    with torch.no_grad():
        for name, tensor in given.items():
            getattr(sae, name).copy_(tensor.float())
        sae.norm_scale.fill_(norm_scale)
    if sae.threshold is not None and threshold is None:
        raise SaelignError(f"{source}: activation {cfg.activation} needs a threshold tensor, none was found")
    return sae


def check_weights(tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Weights are floating point and finite: an integer tensor would be cast silently and a NaN spreads to
    every latent it touches."""
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise SaelignError(f"{source}: {name} has dtype {tensor.dtype}, expected a floating dtype; the "
                               "file is not SAE weights, save the SAE again")
        if not bool(torch.isfinite(tensor).all()):
            raise SaelignError(f"{source}: {name} holds NaN or infinite values; the SAE is broken (a diverged "
                               "training?), train or save it again")


def _require(tensors: dict[str, torch.Tensor], keys: list[str], source: Path) -> None:
    missing = [k for k in keys if k not in tensors]
    require(not missing, f"{source} lacks tensor(s) {', '.join(missing)} (has {', '.join(sorted(tensors))}); "
                         "it is not a complete SAE of this layout, or pass --from with the right layout")


def load_sparsify(directory: Path) -> SAE:
    """EleutherAI sparsify: cfg.json (k, num_latents/expansion_factor, d_in) + sae.safetensors
    (encoder.weight [d_sae, d_in], encoder.bias, W_dec [d_sae, d_in], b_dec). Math: topk(relu(W (x - b_dec) + b))."""
    cfg_path, weights_path = directory / SPARSIFY_CFG, directory / SPARSIFY_WEIGHTS
    raw = read_json(cfg_path, "sparsify config")
    tensors = load_tensors(weights_path, "sparsify weights")
    _require(tensors, ["encoder.weight", "encoder.bias", "W_dec", "b_dec"], weights_path)
    if raw.get("transcode") or "W_skip" in tensors or raw.get("skip_connection"):
        raise SaelignError(f"{directory} is a sparsify transcoder / skip-connection coder; only plain SAEs can be imported")
    if raw.get("activation", "topk") != "topk":
        raise SaelignError(f"{cfg_path}: activation {raw.get('activation')!r} is not supported; only topk sparsify SAEs")
    d_sae, d_in = tensors["encoder.weight"].shape
    if "d_in" in raw and raw["d_in"] != d_in:
        raise SaelignError(f"{cfg_path}: d_in={raw['d_in']} but encoder.weight has width {d_in}; the files do not belong together")
    require("k" in raw, f"{cfg_path} has no 'k'; add the TopK k the SAE was trained with")
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, activation="topk", k=int(raw["k"]))
    # sparsify names hookpoints relative to the base model ("layers.6" is "model.layers.6" on Llama), so the
    # folder name is only a hint; the user sets the real module path when converting.
    logger.info(f"imported sparsify SAE {directory.name}: set its hookpoint with --hookpoint (sparsify names are relative to the base model)")
    return assemble_sae(cfg, weights_path, W_enc=tensors["encoder.weight"].T, b_enc=tensors["encoder.bias"],
                        W_dec=tensors["W_dec"], b_dec=tensors["b_dec"])


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    require(path.is_file(), f"dictionary_learning weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with non-tensor objects, ...
        raise SaelignError(f"{path} cannot be read as a tensor state dict ({type(exc).__name__}: {exc}); "
                           "re-export it with torch.save(ae.state_dict(), path)") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SaelignError(f"{path} is not a state dict of tensors; re-export it with torch.save(ae.state_dict(), path)")
    return state


def load_dictionary_learning(directory: Path) -> SAE:
    """saprmarks dictionary_learning: ae.pt (state dict) + config.json ({"trainer": {dict_class, lm_name, ...}}).
    AutoEncoder: relu(enc(x - bias)), dec(f) + bias.  AutoEncoderNew: relu(enc(x)), dec(f) (dec has a bias).
    AutoEncoderTopK: topk(relu(enc(x - b_dec))).  BatchTopKSAE / MatryoshkaBatchTopKSAE (inference):
    relu(pre) * (relu(pre) > threshold), scalar threshold.  JumpReluAutoEncoder: relu(pre * (pre > threshold))
    with pre = x @ W_enc + b_enc (no centring)."""
    weights_path, cfg_path = directory / DICTIONARY_WEIGHTS, directory / DICTIONARY_CFG
    state = _read_state_dict(weights_path)
    trainer = read_json(cfg_path, "dictionary_learning config").get("trainer", {})
    dict_class = str(trainer.get("dict_class", ""))
    if "r_mag" in state or "Gated" in dict_class:
        raise SaelignError(f"{weights_path}: gated SAEs are not supported; import a ReLU, TopK, BatchTopK or JumpReLU SAE")
    if "encoder.weight" in state:
        sae_cfg, tensors = _linear_layout(state, dict_class, weights_path)
    else:
        sae_cfg, tensors = _parameter_layout(state, weights_path)
    sae_cfg.model = str(trainer.get("lm_name") or "")
    return assemble_sae(sae_cfg, weights_path, **tensors)


def _linear_layout(state: dict[str, torch.Tensor], dict_class: str, path: Path) -> tuple[SAEConfig, dict]:
    _require(state, ["encoder.weight", "encoder.bias", "decoder.weight"], path)
    d_sae, d_in = state["encoder.weight"].shape
    W_enc, b_enc, W_dec = state["encoder.weight"].T, state["encoder.bias"], state["decoder.weight"].T
    if "bias" in state:  # AutoEncoder: the shared bias is subtracted on input and added on output
        return SAEConfig(d_in=d_in, d_sae=d_sae, activation="relu"), dict(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=state["bias"])
    if "decoder.bias" in state:  # AutoEncoderNew: no input centring
        b_dec = state["decoder.bias"]
        return (SAEConfig(d_in=d_in, d_sae=d_sae, activation="relu"),
                dict(W_enc=W_enc, b_enc=b_enc + b_dec @ W_enc, W_dec=W_dec, b_dec=b_dec))
    _require(state, ["b_dec", "k"], path)
    k = int(state["k"].item())
    tensors = dict(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=state["b_dec"])
    if "BatchTopK" in dict_class:
        tensors["threshold"] = _scalar_threshold(state, d_sae, path)
        return SAEConfig(d_in=d_in, d_sae=d_sae, activation="batchtopk", k=k), tensors
    if dict_class and "TopK" not in dict_class:
        raise SaelignError(f"{path}: dict_class {dict_class!r} in config.json is not a supported dictionary_learning class")
    return SAEConfig(d_in=d_in, d_sae=d_sae, activation="topk", k=k), tensors


def _parameter_layout(state: dict[str, torch.Tensor], path: Path) -> tuple[SAEConfig, dict]:
    _require(state, ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"], path)
    d_in, d_sae = state["W_enc"].shape
    tensors = dict(W_enc=state["W_enc"], b_enc=state["b_enc"], W_dec=state["W_dec"], b_dec=state["b_dec"])
    if "k" in state:  # MatryoshkaBatchTopKSAE: centred input, scalar threshold
        tensors["threshold"] = _scalar_threshold(state, d_sae, path)
        return SAEConfig(d_in=d_in, d_sae=d_sae, activation="batchtopk", k=int(state["k"].item())), tensors
    # JumpReluAutoEncoder saves apply_b_dec_to_input=False implicitly (it is not in the state dict)
    tensors["b_enc"] = state["b_enc"] + state["b_dec"] @ state["W_enc"]
    tensors["threshold"] = state["threshold"].clamp_min(0)
    return SAEConfig(d_in=d_in, d_sae=d_sae, activation="jumprelu"), tensors


def _scalar_threshold(state: dict[str, torch.Tensor], d_sae: int, path: Path) -> torch.Tensor:
    _require(state, ["threshold"], path)
    value = float(state["threshold"].item())
    if value < 0:
        # the trainer never set it (-1 sentinel): the library's threshold encode is then a plain ReLU
        logger.warning(f"{path}: BatchTopK threshold was never calibrated (threshold={value}); importing it as 0 (plain ReLU)")
    return torch.full((d_sae,), max(value, 0.0))
