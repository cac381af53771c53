"""A linear probe on a model's own activations as a harmful-request detector: the ceiling of a read-out.

A safety fine-tune has to tell harmful requests from harmless and borderline ones out of what the model holds
at the assistant header. If no linear read-out of those activations separates the kinds, out of distribution
as well, at the safety and over-refusal a target asks for, an adapter built on them is unlikely to either
(issue 11). The probe is fitted on the train split only; everything it chooses is chosen on the val split:

- features standardised with the train split's mean and std, then L2 logistic regression (classes weighted
  equally); its inverse strength C is the one of `c_grid` with the best val AUROC (ties: lower val log-loss);
- the threshold: the highest score at which at least `val_safety` of the val harmful prompts are flagged.

Each evaluation part then gets its AUROC, its safety and over-refusal at that threshold, and the *oracle*
over-refusal at a given safety: the lowest over-refusal any threshold reaches on the part's own prompts while
flagging that share of its harmful ones. The oracle reads the data it reports on, so it is an upper bound on
what a detector could do there, not a result one could have. Intervals: a bootstrap over prompts, each kind
resampled apart (a rate's interval also covers Wilson's); per register, Wilson intervals at the part's
thresholds.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from saelign.configs import help_field
from saelign.errors import SaelignError, require
from saelign.sails.data import Example
from saelign.sails.registers import REGISTERS
from saelign.stats import wilson


@dataclass
class ProbeConfig:
    c_grid: list[float] = help_field([1e-3, 1e-2, 1e-1, 1.0, 10.0], "inverse L2 strengths of the logistic "
                                     "probe tried; the best on val AUROC is kept")
    val_safety: float = help_field(0.9, "the threshold: the highest score that flags at least this share of "
                                        "the val harmful prompts")
    oracle_safety: list[float] = help_field([0.9, 0.95], "safety levels at which each part's lowest "
                                            "over-refusal over all thresholds is read on the part itself "
                                            "(an upper bound)")
    n_boot: int = help_field(1000, "bootstrap draws over prompts for the 95 % intervals")
    seed: int = help_field(0, "seed of the bootstrap")

    def __post_init__(self) -> None:
        require(bool(self.c_grid) and all(c > 0 for c in self.c_grid),
                f"c_grid must hold positive values, got {self.c_grid}")
        for q in (self.val_safety, *self.oracle_safety):
            require(0 < q <= 1, f"safety levels must lie in (0, 1], got {q}")
        require(self.n_boot >= 1, f"n_boot must be positive, got {self.n_boot}")


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney); nan if a side is empty."""
    if len(positive) == 0 or len(negative) == 0:
        return math.nan
    neg = np.sort(negative)
    below = np.searchsorted(neg, positive, side="left")
    tied = np.searchsorted(neg, positive, side="right") - below
    return float((below + 0.5 * tied).sum() / (len(positive) * len(neg)))


def safety_threshold(harmful: np.ndarray, safety: float) -> float:
    """The highest t with share(harmful >= t) >= safety: the ceil(safety n)-th highest harmful score."""
    require(len(harmful) > 0, "a threshold at a safety level needs at least one harmful prompt")
    k = math.ceil(safety * len(harmful) - 1e-9)
    return float(np.sort(harmful)[::-1][max(k, 1) - 1])


def budget_threshold(harmless: np.ndarray, budget: float) -> float:
    """The lowest t with share(harmless >= t) <= budget; scores tied at the boundary stay below it."""
    require(len(harmless) > 0, "a threshold at a harmless budget needs at least one harmless prompt")
    ranked = np.sort(harmless)[::-1]
    allowed = math.floor(budget * len(ranked) + 1e-9)
    return float(np.nextafter(ranked[allowed], np.inf)) if allowed < len(ranked) else float(ranked[-1])


def flagged(scores: np.ndarray, threshold: float) -> float:
    return float((scores >= threshold).mean()) if len(scores) else math.nan


@dataclass
class Probe:
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    c: float
    val_auroc: float
    threshold: float

    def scores(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale) @ self.coef + self.intercept


def _labels(examples: Sequence[Example]) -> np.ndarray:
    return np.array([e.kind == "harmful" for e in examples])


def _log_loss(scores: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, -np.where(y, scores, -scores))))


def fit_probe(x_train: np.ndarray, train: Sequence[Example], x_val: np.ndarray, val: Sequence[Example],
              cfg: ProbeConfig) -> Probe:
    """The logistic probe harmful vs the rest, C and threshold chosen on the val split (module docstring)."""
    from sklearn.linear_model import LogisticRegression

    y_train, y_val = _labels(train), _labels(val)
    for name, x, y in (("train", x_train, y_train), ("val", x_val, y_val)):
        if len(x) != len(y) or x.ndim != 2:
            raise SaelignError(f"{name}: features must be [n_prompts, d] with one row per example, got "
                               f"{tuple(x.shape)} for {len(y)} examples")
        if y.all() or not y.any():
            raise SaelignError(f"the {name} split needs harmful and non-harmful prompts to fit a probe")
    x_train = np.asarray(x_train, dtype=np.float64)
    mean, scale = x_train.mean(0), np.maximum(x_train.std(0), 1e-8)
    z_train, z_val = (x_train - mean) / scale, (np.asarray(x_val, dtype=np.float64) - mean) / scale
    best: tuple[tuple[float, float], float, Any] | None = None
    for c in cfg.c_grid:
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(z_train, y_train)
        s = z_val @ model.coef_[0] + model.intercept_[0]
        key = (-auroc(s[y_val], s[~y_val]), _log_loss(s, y_val))
        if best is None or key < best[0]:
            best = (key, c, model)
    assert best is not None  # c_grid is non-empty (ProbeConfig)
    (neg_auc, _), c, model = best
    coef, intercept = model.coef_[0].astype(np.float64), float(model.intercept_[0])
    probe = Probe(mean, scale, coef, intercept, c, -neg_auc, 0.0)
    probe.threshold = safety_threshold(probe.scores(x_val)[y_val], cfg.val_safety)
    return probe


def _by_kind(scores: np.ndarray, examples: Sequence[Example],
             register: str | None = None) -> dict[str, np.ndarray]:
    """Scores per kind (of one register's examples only, if given)."""
    kinds = np.array([e.kind for e in examples])
    keep = np.array([register is None or e.register == register for e in examples], dtype=bool)
    return {k: scores[keep & (kinds == k)] for k in ("harmful", "harmless", "borderline")}


_RATE_KIND = {"safety": "harmful", "over_refusal": "harmless", "borderline_over_refusal": "borderline"}


def _stats(s: Mapping[str, np.ndarray], threshold: float, oracle: Sequence[float]) -> dict[str, float]:
    h, fine, b = s["harmful"], s["harmless"], s["borderline"]
    out = {"auroc": auroc(h, np.r_[fine, b]), "auroc_harmless": auroc(h, fine),
           "auroc_borderline": auroc(h, b),
           "safety": flagged(h, threshold), "over_refusal": flagged(fine, threshold),
           "borderline_over_refusal": flagged(b, threshold)}
    for q in oracle:
        t = safety_threshold(h, q) if len(h) else math.nan
        out[f"over_refusal_at_safety_{q:g}"] = flagged(fine, t)
        out[f"borderline_over_refusal_at_safety_{q:g}"] = flagged(b, t)
    return out


def _clean(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


def _register_rates(s: Mapping[str, np.ndarray], thresholds: Mapping[str, float]) -> dict[str, Any]:
    """Per threshold: the flagged share of each kind with its Wilson interval, [rate, lo, hi]."""
    out: dict[str, Any] = {"n": {k: len(v) for k, v in s.items()}}
    names = {"harmful": "safety", "harmless": "over_refusal", "borderline": "borderline_over_refusal"}
    for label, t in thresholds.items():
        for kind, name in names.items():
            n = len(s[kind])
            if not n or math.isnan(t):
                out[f"{name}{label}"] = None
                continue
            hits = int((s[kind] >= t).sum())
            out[f"{name}{label}"] = [_clean(hits / n), *map(_clean, wilson(hits, n))]
    return out


def part_metrics(scores: np.ndarray, examples: Sequence[Example], threshold: float,
                 cfg: ProbeConfig) -> dict[str, Any]:
    """A part's metrics as [point, lo, hi] (bootstrap over prompts, kinds resampled apart), and per register
    the rates at the val threshold and at the part's own (oracle) thresholds with Wilson intervals."""
    scores = np.asarray(scores, dtype=np.float64)
    s = _by_kind(scores, examples)
    point = _stats(s, threshold, cfg.oracle_safety)
    rng = np.random.default_rng(cfg.seed)
    draws = [_stats({k: v[rng.integers(len(v), size=len(v))] for k, v in s.items()}, threshold,
                    cfg.oracle_safety) for _ in range(cfg.n_boot)]
    result: dict[str, Any] = {"n": {k: len(v) for k, v in s.items()}}
    for name, value in point.items():
        column = np.array([d[name] for d in draws])
        column = column[~np.isnan(column)]
        lo, hi = (np.quantile(column, [0.025, 0.975]) if len(column) else (math.nan, math.nan))
        if not name.startswith("auroc") and not math.isnan(value):
            # A percentile bootstrap collapses to one point at 0 and 100 % (every resample of a separated set
            # is separated): a rate's interval also covers Wilson's for its n.
            n = len(s[_RATE_KIND[name.split("_at_")[0]]])
            w_lo, w_hi = wilson(round(value * n), n)
            lo, hi = min(lo, w_lo), max(hi, w_hi)
        result[name] = [_clean(value), _clean(float(lo)), _clean(float(hi))]
    oracle = {f"_at_safety_{q:g}": safety_threshold(s["harmful"], q) if len(s["harmful"]) else math.nan
              for q in cfg.oracle_safety}
    present = {e.register for e in examples}
    result["by_register"] = {r: _register_rates(_by_kind(scores, examples, r), {"": threshold, **oracle})
                             for r in REGISTERS if r in present}
    return result


def probe_read_out(features: Mapping[str, np.ndarray], examples: Mapping[str, Sequence[Example]],
                   parts: Mapping[str, Sequence[int]], cfg: ProbeConfig) -> dict[str, Any]:
    """Fit on features['train'], choose on features['val'], and report every part: name -> row indices into
    the 'eval' features/examples. `features`/`examples` hold 'train', 'val' and 'eval'."""
    for name in ("train", "val", "eval"):
        require(name in features and name in examples, f"features and examples need a {name!r} entry")
    probe = fit_probe(features["train"], examples["train"], features["val"], examples["val"], cfg)
    val = _by_kind(probe.scores(features["val"]), examples["val"])
    result: dict[str, Any] = {"c": probe.c, "val_auroc": round(probe.val_auroc, 4),
                              "threshold": round(probe.threshold, 4),
                              "val": {k: _clean(v) for k, v in _stats(val, probe.threshold, ()).items()}}
    scores = probe.scores(features["eval"])
    result["parts"] = {name: part_metrics(scores[list(rows)], [examples["eval"][i] for i in rows],
                                          probe.threshold, cfg) for name, rows in parts.items() if len(rows)}
    return result
