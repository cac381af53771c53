"""A plain-language account of what an adapter changed, written from the measured latent changes.

The paragraph names, per prompt kind (harmful first), the labelled features the adapter pushes down and raises
most, each linked to its dashboard page, and says how large the change on harmless requests is next to the
change on harmful ones (a safety adapter should move harmful requests and leave harmless ones alone). Words
first, numbers in brackets. It comes as text pieces and links for `Report.paragraph`, which renders both
the Markdown and the HTML report."""

import math
from collections.abc import Callable, Mapping, Sequence

from saelign.report import Link
from saelign.sails.effect import EffectResult, LatentChange

Part = str | Link

_ORDER = ("harmful", "borderline", "harmless")


def _kinds(effect: EffectResult, kinds: Sequence[str] | None) -> list[str]:
    shown = [k for k in effect.top if kinds is None or k in kinds]
    return sorted(shown, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k))


def _mention(change: LatentChange, kind: str, labels: Mapping[int, str],
             link: Callable[[int], str] | None) -> list[Part]:
    name = labels.get(change.latent) or change.label or f"feature {change.latent}"
    return [Link(name, link(change.latent)) if link else name, f" ({change.delta[kind]:+.2g})"]


def _strength(effect: EffectResult, kind: str) -> float:
    rows = effect.top[kind]["up"] + effect.top[kind]["down"]
    return sum(abs(r.delta[kind]) for r in rows) / len(rows) if rows else 0.0


def adapter_account(effect: EffectResult, labels: Mapping[int, str] | None = None,
                    link: Callable[[int], str] | None = None, n: int = 3, method: str = "the adapter",
                    answers: bool = False, kinds: Sequence[str] | None = None) -> list[Part]:
    """One paragraph as text pieces and links; `labels` maps latent -> readable label, `link` latent ->
    dashboard page URL, `kinds` the prompt kinds told (default: all). With answers=True the effect is
    `response.response_effect`'s (features of the generated answers)."""
    labels = labels or {}
    out: list[Part] = []
    told = _kinds(effect, kinds)
    for kind in told:
        lead = f"In its answers to {kind} requests" if answers else f"On {kind} requests"
        down = [_mention(c, kind, labels, link) for c in effect.top[kind]["down"][:n]]
        up = [_mention(c, kind, labels, link) for c in effect.top[kind]["up"][:n]]
        if not down and not up:
            out.append(f"{lead} {method} changes no feature measurably. ")
            continue
        out.append(f"{lead} {method} ")
        if down:
            out += ["pushes down ", *_join(down)]
        if up:
            out += [", and raises " if down else "raises ", *_join(up)]
        out.append(". ")
    harmful, harmless = (_strength(effect, k) if k in effect.top else 0.0 for k in ("harmful", "harmless"))
    if "harmful" in told and "harmless" in told and harmful + harmless > 0:
        ratio = harmless / harmful if harmful > 0 else math.inf
        verdict = ("mostly leaves harmless requests alone" if ratio < 0.5 else
                   "moves harmless requests about as much as harmful ones" if ratio < 1.5 else
                   "moves harmless requests more than harmful ones")
        where = "answers to " if answers else ""
        out.append(f"It {verdict} (mean |change| of the listed features {harmless:.2g} on "
                   f"{where}harmless vs {harmful:.2g} on {where}harmful requests).")
    if out and isinstance(out[-1], str):
        out[-1] = out[-1].rstrip()
    return out


def account_text(parts: Sequence[Part]) -> str:
    """The paragraph as plain text (links as their text)."""
    return "".join(p.text if isinstance(p, Link) else p for p in parts)


def _join(items: Sequence[list[Part]]) -> list[Part]:
    out: list[Part] = []
    for i, item in enumerate(items):
        out += ([", "] if 0 < i < len(items) - 1 else [" and "] if i else []) + item
    return out
