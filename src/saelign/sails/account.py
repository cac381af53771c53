"""A plain-language account of what an adapter changed, written from the measured latent changes.

The paragraph names, per prompt kind (harmful first), the labelled features the adapter pushes down and raises
most, each linked to its dashboard page, and says how large the change on harmless requests is next to the
change on harmful ones (a safety adapter should move harmful requests and leave harmless ones alone). Words
first, numbers in brackets.
"""

from collections.abc import Callable, Mapping, Sequence

from saelign.sails.effect import EffectResult, LatentChange

_ORDER = ("harmful", "borderline", "harmless")


def _kinds(effect: EffectResult) -> list[str]:
    return sorted(effect.top, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k))


def _mention(change: LatentChange, kind: str, labels: Mapping[int, str],
             link: Callable[[int], str] | None) -> str:
    name = labels.get(change.latent) or change.label or f"feature {change.latent}"
    text = f"[{name}]({link(change.latent)})" if link else name
    return f"{text} ({change.delta[kind]:+.2g})"


def _strength(effect: EffectResult, kind: str) -> float:
    rows = effect.top[kind]["up"] + effect.top[kind]["down"]
    return sum(abs(r.delta[kind]) for r in rows) / len(rows) if rows else 0.0


def adapter_account(effect: EffectResult, labels: Mapping[int, str] | None = None,
                    link: Callable[[int], str] | None = None, n: int = 3, method: str = "the adapter",
                    answers: bool = False) -> str:
    """One Markdown paragraph; `labels` maps latent -> readable label, `link` latent -> dashboard page URL.
    With answers=True the effect is `response.response_effect`'s (features of the generated answers)."""
    labels = labels or {}
    sentences: list[str] = []
    for kind in _kinds(effect):
        lead = f"In its answers to {kind} requests" if answers else f"On {kind} requests"
        down = [_mention(c, kind, labels, link) for c in effect.top[kind]["down"][:n]]
        up = [_mention(c, kind, labels, link) for c in effect.top[kind]["up"][:n]]
        if not down and not up:
            sentences.append(f"{lead} {method} changes no feature measurably.")
            continue
        parts = ([f"pushes down {_join(down)}"] if down else []) + ([f"raises {_join(up)}"] if up else [])
        sentences.append(f"{lead} {method} {' and '.join(parts)}.")
    if "harmful" in effect.top and "harmless" in effect.top:
        harmful, harmless = _strength(effect, "harmful"), _strength(effect, "harmless")
        ratio = harmless / harmful if harmful > 0 else float("nan")
        verdict = ("mostly leaves harmless requests alone" if ratio < 0.5 else
                   "moves harmless requests about as much as harmful ones" if ratio < 1.5 else
                   "moves harmless requests more than harmful ones")
        where = "answers to " if answers else ""
        sentences.append(f"It {verdict} (mean |change| of the listed features {harmless:.2g} on "
                         f"{where}harmless vs {harmful:.2g} on {where}harmful requests).")
    return " ".join(sentences)


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
