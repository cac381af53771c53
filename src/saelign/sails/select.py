"""SAILS feature selection: which SAE latents separate harmful from harmless requests.

Prompts are chat-formatted with the generation prompt, run through the model up to the deepest hookpoint, and
each SAE encodes its hookpoint's output. Latents are pooled per prompt over the chosen token positions (the last
prompt token, the last n, or all but the attention-sink first token), then scored by one of:

- `register_matched` (default): |harmful - harmless difference within each register of the request|, averaged
  over the registers both sides have (`sails.registers`). A latent that tracks the form of a request
  ("imperative") rather than its harm separates the pooled sets whenever one side is richer in that form, but
  not two requests of the same form: it scores near zero here;
- `mean_diff`: |mean on harmful - mean on harmless| over the pooled sets;
- `logistic_l1`: |coefficient| of an L1-regularised logistic probe.

Whatever the score, each selected latent records how much of its pooled difference survives within one
register (the within-register difference over the pooled one, per register and overall), so a report shows
which features only separate forms. Several hookpoints (one SAE each) share one forward pass; their selections
are kept apart, each tagged with its hookpoint."""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saelign.configs import help_field
from saelign.errors import SaelignError, require
from saelign.models.hookpoints import forward_capture, resolve_hookpoints
from saelign.progress import logger, progress
from saelign.sae.model import SAE
from saelign.sails.generate import encode_chat
from saelign.sails.registers import classify
from saelign.text import pad, pad_token_id

Positions = Literal["last", "last_n", "all"]
Score = Literal["register_matched", "mean_diff", "logistic_l1"]


@dataclass
class FeatureSelectConfig:
    hookpoints: list[str] = help_field(["model.layers.15"], "residual hookpoints to select at, one SAE each")
    positions: Positions = help_field("last", "prompt tokens pooled per prompt: last, last_n, or all (first token excluded)")
    last_n: int = help_field(4, "number of final prompt tokens pooled when positions=last_n")
    score: Score = help_field("register_matched", "register_matched (|harmful - harmless| within each register of "
                              "the request, averaged), mean_diff (|mean harmful - mean harmless| pooled) or "
                              "logistic_l1 (|coef| of an L1 probe)")
    top_k: int = help_field(32, "latents kept per hookpoint")
    l1_c: float = help_field(0.1, "inverse L1 strength of the logistic probe (smaller = fewer non-zero latents)")
    batch_size: int = help_field(8, "prompts per forward pass")
    max_length: int = help_field(256, "prompt tokens kept per prompt (the last ones, which hold the assistant header)")

    def __post_init__(self) -> None:
        if self.last_n < 1 or self.top_k < 1:
            raise SaelignError(f"last_n={self.last_n} and top_k={self.top_k} must be at least 1")


@dataclass
class Selection:
    """Selected latents at one hookpoint, best first. sign +1: more active on harmful prompts.

    `survival[i]`: latent i's harmful - harmless difference within a register (averaged as `register_matched`
    does) over its pooled difference; `register_survival[i]`: the same per register. 1 = the whole difference
    holds between requests of one form, 0 = it only separates forms (None where the pooled difference is 0).
    `registers`: prompts per register and side; empty lists and dicts when no registers were given."""

    hookpoint: str
    latent_ids: list[int]
    scores: list[float]
    mean_harmful: list[float]
    mean_harmless: list[float]
    signs: list[int]
    labels: dict[int, str] = field(default_factory=dict)
    score: str = "mean_diff"
    survival: list[float | None] = field(default_factory=list)
    register_survival: list[dict[str, float | None]] = field(default_factory=list)
    registers: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_sae(model: PreTrainedModel, sae: SAE, hookpoint: str) -> None:
    resolve_hookpoints(model, [hookpoint])
    if sae.cfg.hookpoint and sae.cfg.hookpoint != hookpoint:
        raise SaelignError(f"SAE hookpoint {sae.cfg.hookpoint!r} does not match the selection hookpoint {hookpoint!r}; "
                           "load the SAE trained at that hookpoint or change hookpoints")


def position_mask(lengths: torch.Tensor, width: int, positions: str, last_n: int = 4) -> torch.Tensor:
    """[batch, width] bool: which tokens of each right-padded row of `lengths` tokens are pooled under
    `positions` (last, last_n, or all but the first)."""
    index = torch.arange(width).unsqueeze(0)
    last = (lengths - 1).unsqueeze(1)
    if positions == "last":
        return index == last
    if positions == "last_n":
        first = (last - last_n + 1).clamp_min(1)
    else:
        first = torch.ones_like(last)
    # Position 0 is the attention sink (huge norm, masked out of SAE training); keep it only for 1-token prompts.
    first = torch.minimum(first, last)
    return (index >= first) & (index <= last)


def pooled_activations(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                       encoders: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
                       cfg: FeatureSelectConfig) -> dict[str, torch.Tensor]:
    """{hookpoint: [n_prompts, width]}: per prompt, the mean of encoders[hookpoint](activation) over the pooled tokens."""
    require(prompts, "no prompts given for feature selection")
    encoded = [ids[-cfg.max_length:] for ids in encode_chat(tokenizer, prompts)]
    return pooled_rows(model, encoded, encoders, cfg.positions, cfg.last_n, cfg.batch_size, pad_token_id(tokenizer))


@torch.inference_mode()
def pooled_rows(model: PreTrainedModel, rows: Sequence[Sequence[int]],
                encoders: Mapping[str, Callable[[torch.Tensor], torch.Tensor]], positions: str, last_n: int = 4,
                batch_size: int = 8, pad_id: int = 0, desc: str = "select: prompts") -> dict[str, torch.Tensor]:
    """{hookpoint: [n_rows, width]}: per token-id row, the mean of encoders[hookpoint](activation) over the tokens
    `positions` pools (`position_mask`); the forward stops after the last hookpoint."""
    hookpoints = list(encoders)
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together: less padding
    pooled: dict[str, list[torch.Tensor]] = {hp: [] for hp in hookpoints}
    batches = range(0, len(order), batch_size)
    for start in progress(batches, total=len(batches), desc=desc, unit="batch"):
        picked = order[start:start + batch_size]
        ids, mask = pad([rows[i] for i in picked], pad_id)
        captured = forward_capture(model, hookpoints, ids.to(device), mask.to(device), stop_early=True)
        keep = position_mask(mask.sum(1), ids.shape[1], positions, last_n)
        counts = keep.sum(1, keepdim=True).float()
        for hp in hookpoints:
            values = encoders[hp](captured[hp][keep.to(device)]).float().cpu()  # [n_kept_tokens, width]
            owner = torch.arange(len(picked)).repeat_interleave(keep.sum(1))
            summed = torch.zeros(len(picked), values.shape[1]).index_add_(0, owner, values)
            pooled[hp].append(summed / counts)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return {hp: torch.cat(chunks)[inverse] for hp, chunks in pooled.items()}


def _sae_encoder(sae: SAE) -> Callable[[torch.Tensor], torch.Tensor]:
    param = sae.W_enc
    return lambda x: sae.encode(x.to(device=param.device, dtype=param.dtype))


def latent_activations(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sae: SAE, hookpoint: str,
                       prompts: Sequence[str], cfg: FeatureSelectConfig) -> torch.Tensor:
    """[n_prompts, d_sae] SAE latents at `hookpoint`, pooled over cfg.positions."""
    _check_sae(model, sae, hookpoint)
    return pooled_activations(model, tokenizer, prompts, {hookpoint: _sae_encoder(sae)}, cfg)[hookpoint]


def residual_activations(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, hookpoints: Sequence[str],
                         prompts: Sequence[str], cfg: FeatureSelectConfig) -> dict[str, torch.Tensor]:
    """{hookpoint: [n_prompts, d_model]} raw activations pooled like the latents (for the act_pca baseline)."""
    resolved = resolve_hookpoints(model, list(hookpoints))
    return pooled_activations(model, tokenizer, prompts, dict.fromkeys(resolved, lambda x: x), cfg)


def _logistic_coefficients(harmful: torch.Tensor, harmless: torch.Tensor, c: float) -> torch.Tensor:
    from sklearn.linear_model import LogisticRegression

    if len(harmful) < 2 or len(harmless) < 2:
        raise SaelignError("score=logistic_l1 needs at least 2 harmful and 2 harmless prompts; give more or use mean_diff")
    x = torch.cat([harmful, harmless]).double()
    # Standardised so the L1 penalty treats latents with different activation scales alike.
    x = x / x.std(0).clamp_min(1e-8)
    y = np.r_[np.ones(len(harmful)), np.zeros(len(harmless))]
    probe = LogisticRegression(l1_ratio=1.0, C=c, solver="liblinear", max_iter=1000).fit(x.numpy(), y)
    return torch.from_numpy(probe.coef_[0]).float()


@dataclass
class RegisterContrast:
    """Harmful - harmless mean differences [d_sae] per register both sides have, with their weights."""

    diffs: dict[str, torch.Tensor]
    weights: dict[str, float]
    counts: dict[str, dict[str, int]]  # every register seen: {"harmful": n, "harmless": n}

    def matched(self) -> torch.Tensor:
        """The weighted mean of the within-register differences."""
        total = sum(self.weights.values())
        return sum(self.weights[r] * d for r, d in self.diffs.items()) / total


def register_contrast(harmful: torch.Tensor, harmless: torch.Tensor, harmful_registers: Sequence[str],
                      harmless_registers: Sequence[str]) -> RegisterContrast:
    """Within-register differences of pooled latents. A register counts with weight n_h n_l / (n_h + n_l), the
    inverse variance of a difference of two means up to the noise scale, so a register with one prompt on a side
    cannot sway the score as much as a full one (for balanced registers this is a plain mean)."""
    if len(harmful_registers) != len(harmful) or len(harmless_registers) != len(harmless):
        raise SaelignError(f"registers: {len(harmful_registers)} harmful and {len(harmless_registers)} harmless "
                           f"given for {len(harmful)} and {len(harmless)} prompts; give one register per prompt")
    h_reg, l_reg = np.asarray(harmful_registers), np.asarray(harmless_registers)
    counts = {r: {"harmful": int((h_reg == r).sum()), "harmless": int((l_reg == r).sum())}
              for r in sorted(set(h_reg) | set(l_reg))}
    diffs, weights = {}, {}
    for register, n in counts.items():
        if n["harmful"] and n["harmless"]:
            h = harmful[torch.from_numpy(h_reg == register)].mean(0)
            diffs[register] = h - harmless[torch.from_numpy(l_reg == register)].mean(0)
            weights[register] = n["harmful"] * n["harmless"] / (n["harmful"] + n["harmless"])
    return RegisterContrast(diffs, weights, counts)


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole != 0 else None


def select_features(harmful_acts: torch.Tensor, harmless_acts: torch.Tensor, cfg: FeatureSelectConfig,
                    hookpoint: str = "", labels: Mapping[int, str] | None = None,
                    registers: tuple[Sequence[str], Sequence[str]] | None = None) -> Selection:
    """Top-k latents by cfg.score from pooled latents [n_harmful, d_sae] and [n_harmless, d_sae]; `registers`:
    (harmful, harmless) register of each prompt, needed by score=register_matched."""
    if harmful_acts.ndim != 2 or harmless_acts.shape[1:] != harmful_acts.shape[1:]:
        raise SaelignError(f"latent activations must be [n, d_sae] with equal d_sae, got {tuple(harmful_acts.shape)} "
                           f"and {tuple(harmless_acts.shape)}")
    if len(harmful_acts) == 0 or len(harmless_acts) == 0:
        raise SaelignError("feature selection needs at least one harmful and one harmless prompt")
    harmful_acts, harmless_acts = harmful_acts.float(), harmless_acts.float()
    mean_harmful, mean_harmless = harmful_acts.mean(0), harmless_acts.mean(0)
    pooled = mean_harmful - mean_harmless
    contrast = register_contrast(harmful_acts, harmless_acts, *registers) if registers is not None else None
    if cfg.score == "register_matched":
        if contrast is None or not contrast.diffs:
            found = "no registers given" if contrast is None else f"registers {contrast.counts}"
            raise SaelignError(f"score=register_matched needs a register (request form) that both harmful and "
                               f"harmless prompts use ({found}); add prompts of a shared form, or set "
                               "--select-score mean_diff")
        signed = contrast.matched()
    elif cfg.score == "mean_diff":
        signed = pooled
    else:
        signed = _logistic_coefficients(harmful_acts, harmless_acts, cfg.l1_c)
    scores = signed.abs()
    ranked = torch.argsort(scores, descending=True, stable=True)
    ranked = ranked[scores[ranked] > 0][: cfg.top_k]
    if len(ranked) == 0:
        raise SaelignError(f"no latent at {hookpoint or 'this hookpoint'} separates harmful from harmless prompts "
                           "(all scores are 0); check the SAE matches the model, or give more prompts")
    if len(ranked) < cfg.top_k:
        logger.warning(f"only {len(ranked)} latents at {hookpoint or 'this hookpoint'} have a non-zero {cfg.score} score "
                       f"(top_k={cfg.top_k})")
    ids = ranked.tolist()
    labels = {int(k): v for k, v in (labels or {}).items()}  # JSON round-trips turn latent ids into strings
    survival: list[float | None] = []
    per_register: list[dict[str, float | None]] = []
    if contrast is not None and contrast.diffs:
        matched = contrast.matched()
        survival = [_ratio(float(matched[i]), float(pooled[i])) for i in ids]
        per_register = [{r: _ratio(float(d[i]), float(pooled[i])) for r, d in contrast.diffs.items()} for i in ids]
    return Selection(hookpoint=hookpoint, latent_ids=ids, scores=scores[ranked].tolist(),
                     mean_harmful=mean_harmful[ranked].tolist(), mean_harmless=mean_harmless[ranked].tolist(),
                     signs=[1 if s > 0 else -1 for s in signed[ranked].tolist()],
                     labels={i: labels[i] for i in ids if i in labels}, score=cfg.score, survival=survival,
                     register_survival=per_register, registers=contrast.counts if contrast is not None else {})


def select_safety_features(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, saes: Mapping[str, SAE],
                           harmful_prompts: Sequence[str], harmless_prompts: Sequence[str], cfg: FeatureSelectConfig,
                           labels: Mapping[str, Mapping[int, str]] | None = None,
                           registers: tuple[Sequence[str], Sequence[str]] | None = None) -> list[Selection]:
    """One Selection per cfg.hookpoint (saes maps hookpoint -> SAE; labels maps hookpoint -> {latent: label};
    registers: (harmful, harmless) register of each prompt, by default `sails.registers.classify` of it)."""
    missing = [hp for hp in cfg.hookpoints if hp not in saes]
    if missing or not cfg.hookpoints:
        raise SaelignError(f"hookpoints: no SAE given for {', '.join(missing) or '(none listed)'}; "
                           f"SAEs were given for {', '.join(saes) or 'no hookpoint'}")
    for hp in cfg.hookpoints:
        _check_sae(model, saes[hp], hp)
    encoders = {hp: _sae_encoder(saes[hp]) for hp in cfg.hookpoints}
    harmful = pooled_activations(model, tokenizer, harmful_prompts, encoders, cfg)
    harmless = pooled_activations(model, tokenizer, harmless_prompts, encoders, cfg)
    labels = labels or {}
    if registers is None:
        registers = ([classify(p) for p in harmful_prompts], [classify(p) for p in harmless_prompts])
    return [select_features(harmful[hp], harmless[hp], cfg, hookpoint=hp, labels=labels.get(hp), registers=registers)
            for hp in cfg.hookpoints]


def selection_directions(selections: Sequence[Selection], saes: Mapping[str, SAE]) -> torch.Tensor:
    """Unit decoder rows of every selected latent, stacked [n, d_model] (residual hookpoints share one space)."""
    rows = [saes[s.hookpoint].decoder_directions(s.latent_ids).cpu() for s in selections]
    widths = {r.shape[1] for r in rows}
    require(len(widths) == 1, f"selected SAEs read activations of different widths {sorted(widths)}; "
                              "a subspace needs hookpoints on the same residual stream")
    return torch.cat(rows)
