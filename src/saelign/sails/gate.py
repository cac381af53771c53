"""A refusal gate: the adapter answers only the requests a linear probe on the base model's own activations
flags as harmful; the base model answers the rest (issue 11).

Why: a safety fine-tune learns the forms it is trained on and shifts its refusal threshold on the rest (more
refusal of everything, or less), while the base model's activations still rank unseen forms well (the probe
ceiling, `bench/bench_probe_ceiling.py`). A gate puts the decision where the ranking is: the adapter writes
the refusal, the probe decides when. It is the conditional form of activation steering (CAST, Lee et al.
2024) applied to a trained adapter.

The probe (`saelign.sails.probe.fit_probe`) reads the residual stream at `hookpoint` at the last prompt token
of the chat-rendered request (or, with `pooling="mean"`, its average over the request's tokens), with the
adapter off. It is fitted on the train split, harmful against harmless
and borderline, its strength and threshold chosen on the val split: the highest score that flags
`val_safety` of the val harmful prompts, or, with `harmless_budget` above 0, the lowest that flags at most
that share of the val harmless prompts (an over-refusal budget, which asks nothing of harmful requests in
forms or from sources the training data lacks). Nothing else is chosen anywhere.

A gate is a safetensors file (mean, scale, coef) plus a JSON file (hookpoint, intercept, threshold, the
options it was fitted with), both written atomically; `load_gate` reads them back without unpickling.
`gated_answers` decodes with a PEFT adapter on for flagged requests and off for the rest.
`compose_evaluation` builds the gated model's evaluation out of the base model's and the adapted model's
evaluation files: under greedy decoding a gated answer is one of those two answers, so nothing is decoded or
judged again."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saelign.configs import help_field
from saelign.errors import SaelignError, require
from saelign.io import load_tensors, read_json_object, save_tensors_atomic, write_json_atomic
from saelign.models.hookpoints import resolve_hookpoints
from saelign.sails.data import KINDS, Example
from saelign.sails.evaluate import kind_rates, perplexity_of
from saelign.sails.generate import encode_chat, generate_answers
from saelign.sails.judge import Verdict
from saelign.sails.ood import by_register, in_part
from saelign.sails.probe import Probe, ProbeConfig, budget_threshold, fit_probe
from saelign.sails.select import pooled_rows

FORMAT = "saelign.sails.gate/1"
TENSORS, META = "gate.safetensors", "gate.json"
SUFFIX = "+gate"  # the gated model of method m is evaluated as "m+gate"
POOLINGS = {"last": "last", "mean": "all"}  # the gate's pooling -> select.position_mask's positions
Pooling = Literal["last", "mean"]


@dataclass
class GateConfig:
    enabled: bool = help_field(False, "also evaluate every method behind a refusal gate: the adapter answers "
                                      "only requests a probe on the base model's activations flags (gate/)")
    hookpoint: str = help_field("", "residual hookpoint the gate's probe reads (empty: the pipeline's "
                                    "hookpoint)")
    pooling: Pooling = help_field("last", "prompt tokens the probe reads: last (the assistant header's last "
                                          "token) or mean (the average over every token but the first)")
    val_safety: float = help_field(0.95, "the gate's threshold: the highest probe score that flags this "
                                         "share of the val harmful prompts")
    harmless_budget: float = help_field(0.0, "above 0, the threshold instead: the lowest probe score that "
                                             "flags at most this share of the val harmless prompts (an "
                                             "over-refusal budget; bench_sails_gate_budget.py)")
    c_grid: list[float] = help_field([1e-3, 1e-2, 1e-1, 1.0, 10.0], "inverse L2 strengths of the probe "
                                     "tried; the best val AUROC is kept")
    batch_size: int = help_field(16, "requests per forward pass when reading the gate's activations")
    max_length: int = help_field(256, "prompt tokens read per request (the last ones)")

    def __post_init__(self) -> None:
        require(0 < self.val_safety <= 1, f"gate.val_safety must lie in (0, 1], got {self.val_safety}; "
                                          "e.g. 0.95 flags 95 % of the val harmful prompts")
        require(0 <= self.harmless_budget < 1,
                f"gate.harmless_budget must lie in [0, 1), got {self.harmless_budget}; e.g. 0.1 flags at "
                "most 10 % of the val harmless prompts, 0 thresholds by gate.val_safety")
        require(bool(self.c_grid) and all(c > 0 for c in self.c_grid),
                f"gate.c_grid must hold positive values, got {self.c_grid}")
        require(self.pooling in POOLINGS, f"gate.pooling must be one of {', '.join(POOLINGS)}, got "
                                          f"{self.pooling!r}")
        require(self.batch_size >= 1 and self.max_length >= 1, f"gate.batch_size and gate.max_length must "
                                                                f"be positive, got {self.batch_size}, "
                                                                f"{self.max_length}")


@dataclass
class Gate:
    hookpoint: str
    probe: Probe
    val_safety: float
    max_length: int = 256
    pooling: str = "last"
    harmless_budget: float = 0.0

    def flags(self, features: np.ndarray) -> np.ndarray:
        return self.probe.scores(features) >= self.probe.threshold

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        p = self.probe
        vectors = {"mean": p.mean, "scale": p.scale, "coef": p.coef}
        save_tensors_atomic(folder / TENSORS, {k: torch.from_numpy(np.asarray(v, dtype=np.float64))
                                               for k, v in vectors.items()})
        write_json_atomic(folder / META, {
            "format": FORMAT, "hookpoint": self.hookpoint, "intercept": p.intercept, "threshold": p.threshold,
            "c": p.c, "val_auroc": p.val_auroc, "val_safety": self.val_safety, "max_length": self.max_length,
            "pooling": self.pooling, "harmless_budget": self.harmless_budget})
        return folder


def load_gate(folder: str | Path) -> Gate:
    """The gate saved in `folder` (gate.json + gate.safetensors), checked for shape and format."""
    folder = Path(folder)
    meta = read_json_object(folder / META, "gate file")
    if meta.get("format") != FORMAT:
        raise SaelignError(f"{folder / META}: format {meta.get('format')!r} is not {FORMAT}; refit the gate "
                           "(saelign sails run --gate-enabled --out RUN)")
    for field in ("hookpoint", "intercept", "threshold", "c", "val_auroc", "val_safety", "max_length"):
        require(field in meta, f"{folder / META}: field {field!r} is missing; refit the gate")
    tensors = load_tensors(folder / TENSORS, "gate tensors")
    missing = {"mean", "scale", "coef"} - set(tensors)
    shapes = {tuple(t.shape) for t in tensors.values()}
    if missing or len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise SaelignError(f"{folder / TENSORS}: needs 1-D mean, scale and coef of one width (missing "
                           f"{sorted(missing)}, shapes {sorted(shapes)}); refit the gate")
    probe = Probe(tensors["mean"].numpy(), tensors["scale"].numpy(), tensors["coef"].numpy(),
                  float(meta["intercept"]), float(meta["c"]), float(meta["val_auroc"]),
                  float(meta["threshold"]))
    pooling = str(meta.get("pooling", "last"))  # gates written before pooling was an option: last token
    require(pooling in POOLINGS, f"{folder / META}: pooling {pooling!r} is not one of {', '.join(POOLINGS)}; "
                                 "refit the gate")
    return Gate(str(meta["hookpoint"]), probe, float(meta["val_safety"]), int(meta["max_length"]), pooling,
                float(meta.get("harmless_budget", 0.0)))  # gates written before the budget: 0


def residual_features(model: PreTrainedModel, rows: Sequence[Sequence[int]], hookpoints: Sequence[str],
                      batch_size: int = 16, pooling: str = "last") -> dict[str, np.ndarray]:
    """{hookpoint: [n_rows, d_model]}: the residual of each token-id row (fp32) at its last token
    (`pooling="last"`) or averaged over its tokens but the first, the attention sink (`"mean"`); the forward
    stops after the last hookpoint. A PEFT model is read as it is: disable its adapter for the base's."""
    require(len(rows) > 0 and all(len(r) for r in rows), "the gate needs at least one non-empty request")
    require(pooling in POOLINGS, f"gate pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    resolved = resolve_hookpoints(model, list(hookpoints))
    pooled = pooled_rows(model, rows, dict.fromkeys(resolved, lambda x: x), POOLINGS[pooling],
                         batch_size=batch_size, desc="gate: requests")
    return {hp: pooled[r].numpy() for hp, r in zip(hookpoints, resolved, strict=True)}


def request_features(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                     hookpoints: Sequence[str], batch_size: int = 16, max_length: int = 256,
                     pooling: str = "last") -> dict[str, np.ndarray]:
    """`residual_features` of the chat-rendered requests (last: the assistant header's last token)."""
    rows = [ids[-max_length:] for ids in encode_chat(tokenizer, prompts)]
    return residual_features(model, rows, hookpoints, batch_size, pooling)


def fit_gate_on(x_train: np.ndarray, train: Sequence[Example], x_val: np.ndarray, val: Sequence[Example],
                hookpoint: str, cfg: GateConfig) -> Gate:
    """The gate's probe on activations read at `hookpoint`: fitted on train, C and threshold chosen on val
    (the threshold by `cfg.harmless_budget` over the val harmless prompts when it is above 0)."""
    probe_cfg = ProbeConfig(c_grid=list(cfg.c_grid), val_safety=cfg.val_safety)
    probe = fit_probe(x_train, train, x_val, val, probe_cfg)
    if cfg.harmless_budget > 0:
        harmless = probe.scores(x_val)[[e.kind == "harmless" for e in val]]
        require(len(harmless) > 0, "gate.harmless_budget sets the threshold on the val harmless prompts and "
                                   "the val split has none: raise --data-val-fraction, or set "
                                   "--gate-harmless-budget 0")
        probe.threshold = budget_threshold(harmless, cfg.harmless_budget)
    return Gate(hookpoint, probe, cfg.val_safety, cfg.max_length, cfg.pooling, cfg.harmless_budget)


def fit_gate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train: Sequence[Example],
             val: Sequence[Example], hookpoint: str, cfg: GateConfig) -> Gate:
    """The gate's probe on the base `model`'s activations, fitted on `train`; C and threshold from `val`."""
    x_train, x_val = (request_features(model, tokenizer, [e.prompt for e in split], [hookpoint],
                                       cfg.batch_size, cfg.max_length, cfg.pooling)[hookpoint]
                      for split in (train, val))
    return fit_gate_on(x_train, train, x_val, val, hookpoint, cfg)


def _adapter_off(model: torch.nn.Module) -> Any:
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        raise SaelignError(f"a gated model needs a PEFT model whose adapter can be switched off; got "
                           f"{type(model).__name__}: load the adapter with peft.PeftModel.from_pretrained "
                           "and do not merge it")
    return disable()


def base_flags(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], gate: Gate,
               batch_size: int = 16) -> np.ndarray:
    """Which `prompts` the gate opens the adapter for, read from the plain base `model`."""
    features = request_features(model, tokenizer, prompts, [gate.hookpoint], batch_size, gate.max_length,
                                gate.pooling)
    return gate.flags(features[gate.hookpoint])


def gated_flags(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                gate: Gate, batch_size: int = 16) -> np.ndarray:
    """Which `prompts` the gate opens the adapter for, read from the PEFT `model` with its adapter off."""
    with _adapter_off(model):  # the wrapped transformers model keeps the hookpoint names of the base's
        return base_flags(model.get_base_model(), tokenizer, prompts, gate, batch_size)


def gated_answers(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                  gate: Gate, max_new_tokens: int = 64, batch_size: int = 16) -> tuple[list[str], list[bool]]:
    """Greedy answers of the gated model, in order, and whether the gate opened for each: the PEFT `model`
    with its adapter on for flagged requests, off for the rest."""
    flags = [bool(f) for f in gated_flags(model, tokenizer, prompts, gate, batch_size)]
    answers = [""] * len(prompts)
    for opened in (True, False):
        picked = [i for i, f in enumerate(flags) if f == opened]
        if not picked:
            continue
        chosen = [prompts[i] for i in picked]
        if opened:
            decoded = generate_answers(model, tokenizer, chosen, max_new_tokens, batch_size)
        else:
            with _adapter_off(model):
                decoded = generate_answers(model, tokenizer, chosen, max_new_tokens, batch_size)
        for i, text in zip(picked, decoded, strict=True):
            answers[i] = text
    return answers, flags


def open_rates(examples: Sequence[Example], opened: Sequence[bool]) -> dict[str, float | None]:
    """The share of each kind's requests the gate opens the adapter for."""
    out: dict[str, float | None] = {}
    for kind in KINDS:
        picked = [o for e, o in zip(examples, opened, strict=True) if e.kind == kind]
        out[kind] = round(float(np.mean(picked)), 4) if picked else None
    return out


def _composed(base: Sequence[Mapping[str, Any]], adapted: Sequence[Mapping[str, Any]],
              opened: Mapping[str, bool], keys: tuple[str, ...], what: str,
              names: tuple[str, str]) -> list[dict[str, Any]]:
    """The gated rows of one response list: the adapted model's row where the gate opens, else the base's."""
    rows = []
    for side, name in zip((base, adapted), names, strict=True):
        keyed = {tuple(r[k] for k in keys): r for r in side}
        require(len(keyed) == len(side), f"{name}: a {what} request appears twice; rerun its eval stage")
        rows.append(keyed)
    if set(rows[0]) != set(rows[1]):
        raise SaelignError(f"{names[1]} was evaluated on other {what} prompts than {names[0]}; rerun both "
                           "eval stages over this run's data")
    missing = sorted({r["prompt"] for r in base} - set(opened))
    require(not missing, f"the gate has no decision for {len(missing)} {what} prompt(s), e.g. {missing[:1]}")
    return [{**(rows[1][key] if opened[row["prompt"]] else row), "gate_open": bool(opened[row["prompt"]])}
            for key, row in rows[0].items()]


def _rates(records: Sequence[Mapping[str, Any]], examples: Mapping[str, Example]) -> dict[str, Any]:
    chosen = [examples[r["prompt"]] for r in records]
    return {**kind_rates(chosen, [Verdict(r["verdict"]) for r in records]),
            "gate_open": open_rates(chosen, [r["gate_open"] for r in records])}


def compose_evaluation(base: Mapping[str, Any], adapted: Mapping[str, Any], opened: Mapping[str, bool],
                       context_open: Sequence[bool], examples: Mapping[str, Example],
                       names: tuple[str, str] = ("base", "adapted")) -> dict[str, Any]:
    """The gated model's evaluation, in the eval files' format, from the base model's and the adapted model's
    (same prompts, same decoding): each answer and verdict is the adapted model's where the gate opens
    (`opened`: prompt -> bool), the base model's elsewhere; perplexity mixes their per-context NLL by
    `context_open` the same way. `examples`: prompt -> Example; `names`: the two files, for errors."""
    records = _composed(base["responses"], adapted["responses"], opened, ("prompt", "kind"), "test", names)
    result: dict[str, Any] = {**_rates(records, examples), "responses": records}
    by_prompt = {(r["prompt"], r["kind"]): r for r in records}
    result["samples"] = {kind: [by_prompt[(r["prompt"], r["kind"])] for r in rows]
                         for kind, rows in base.get("samples", {}).items()}
    nll_base, nll_adapted = base.get("context_nll", []), adapted.get("context_nll", [])
    if nll_base:
        require(len(nll_base) == len(nll_adapted) == len(context_open),
                f"{names[0]} and {names[1]} hold {len(nll_base)} and {len(nll_adapted)} perplexity contexts, "
                f"the gate read {len(context_open)}; rerun both eval stages")
        nll = [a if o else b for a, b, o in zip(nll_adapted, nll_base, context_open, strict=True)]
        result.update(context_nll=nll, perplexity=perplexity_of(nll),
                      contexts_open=round(float(np.mean(context_open)), 4))
    if "splits" in base and "splits" in adapted:
        rows = _composed(base["splits"]["responses"], adapted["splits"]["responses"], opened,
                         ("part", "prompt", "kind"), "out-of-distribution", names)
        splits: dict[str, Any] = {}
        for part in [*dict.fromkeys(r["part"] for r in rows), "ood"]:
            chosen = [r for r in rows if in_part(r["part"], part)]
            if chosen:
                pairs = [(examples[r["prompt"]], Verdict(r["verdict"])) for r in chosen]
                splits[part] = {**_rates(chosen, examples), "by_register": by_register(pairs)}
        result["splits"] = {**splits, "responses": rows}
    return result


def gate_summary(gate: Gate, flags: Mapping[str, np.ndarray],
                 examples: Mapping[str, Sequence[Example]]) -> dict[str, Any]:
    """The gate's own facts: its options and the share of each split's kinds it flags."""
    return {"hookpoint": gate.hookpoint, "pooling": gate.pooling, "threshold": gate.probe.threshold,
            "c": gate.probe.c, "val_auroc": gate.probe.val_auroc, "val_safety": gate.val_safety,
            "harmless_budget": gate.harmless_budget,
            "flagged": {name: open_rates(examples[name], [bool(x) for x in f]) for name, f in flags.items()}}
