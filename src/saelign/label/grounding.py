"""Data-grounded descriptions: where a latent fires over the labelled prompts the project already has.

Every prompt carries labels along a few facets: its kind (harmful / harmless / borderline), its topic (the
harmless and borderline categories, country facts, speech passages), AdvBench's harm categories, and the form
of the request (question, instruction...). Each (facet, value) pair is a group; a latent's firing rate and
mean value per group give one line a person reads, e.g. "fires on 81 % of Privacy loss requests and 3 % of
coding requests (mean 2.1 vs 0.1)". A latent that fires on most requests of every kind says so instead of
naming one group. No language model is involved."""

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import yaml

from saelign.errors import SaelignError

FACETS = ("kind", "topic", "harm", "form")
_WH = {"what", "why", "how", "when", "where", "who", "which", "whose", "whom"}
_AUX = {"is", "are", "can", "could", "would", "should", "do", "does", "will", "may", "might", "have", "has",
        "am"}
_PAST = {"did", "was", "were", "had"}
_FIRST_PERSON = {"i", "i'm", "my", "we", "our", "i've", "i'd"}
_WORD = re.compile(r"[A-Za-z']+")
# Sources whose name carries the prompt's topic ("harmless:coding"), and topic names for sources without one.
_CATEGORY_SOURCES = ("harmless", "borderline", "imperatives")
_SOURCE_TOPICS = {"countries": "country facts", "sotu": "speech passages"}


@dataclass(frozen=True)
class LabelledPrompt:
    prompt: str
    labels: Mapping[str, tuple[str, ...]]  # facet -> values (AdvBench prompts carry several harm categories)


@dataclass(frozen=True)
class Group:
    facet: str
    value: str
    rows: tuple[int, ...]

    @property
    def name(self) -> str:
        value = self.value.replace("_", " ")
        if self.facet == "form":
            return {"question": "questions", "instruction": "instructions",
                    "past-tense question": "past-tense questions",
                    "first-person request": "first-person requests"}.get(value, value)
        if self.facet == "harm":
            return f"'{value}' harmful requests"
        return f"{value} requests"


class _Example(Protocol):  # sails.data.Example, without importing the SAILS package here
    prompt: str
    kind: str
    source: str


def request_form(prompt: str) -> str:
    """question / past-tense question / first-person request / instruction, from the first words and end."""
    words = [w.lower() for w in _WORD.findall(prompt[:200])]
    first, second = (words + ["", ""])[:2]
    if first in _PAST or (first in _WH and second in _PAST):
        return "past-tense question"
    if first in _WH or first in _AUX or prompt.rstrip().endswith("?"):
        return "question"
    if first in _FIRST_PERSON:
        return "first-person request"
    return "instruction"


def advbench_harm_categories(path: Path) -> dict[str, tuple[str, ...]]:
    """{prompt: harm categories} from pyrit's adv_bench.prompt (each seed's `harm_categories` list)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SaelignError(f"cannot read AdvBench file {path}: {exc}") from exc
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if not isinstance(seeds, list):
        raise SaelignError(f"{path}: expected a top-level `seeds` list; the file format changed")
    out = {}
    for i, seed in enumerate(seeds):
        categories = seed.get("harm_categories") if isinstance(seed, dict) else None
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            raise SaelignError(f"{path}: seeds[{i}] has no `harm_categories` list of strings")
        out[str(seed.get("value", "")).strip()] = tuple(categories)
    return out


def labelled_examples(examples: Iterable[_Example],
                      harm_categories: Mapping[str, tuple[str, ...]] | None = None) -> list[LabelledPrompt]:
    """Labels of SAILS safety examples: kind, topic from the source (`harmless:coding` -> coding),
    AdvBench harm categories by prompt text, and the request form."""
    out = []
    for e in examples:
        labels: dict[str, tuple[str, ...]] = {"kind": (e.kind,), "form": (request_form(e.prompt),)}
        origin, _, category = e.source.partition(":")
        topic = category if origin in _CATEGORY_SOURCES else _SOURCE_TOPICS.get(origin)
        if topic:
            labels["topic"] = (topic,)
        harms = (harm_categories or {}).get(e.prompt.strip())
        if harms:
            labels["harm"] = harms
        out.append(LabelledPrompt(e.prompt, labels))
    return out


def build_groups(prompts: Sequence[LabelledPrompt], min_size: int = 8) -> list[Group]:
    """One group per (facet, value) with at least `min_size` prompts, in facet order then by size."""
    members: dict[tuple[str, str], list[int]] = {}
    for row, item in enumerate(prompts):
        for facet, values in item.labels.items():
            for value in values:
                members.setdefault((facet, value), []).append(row)
    order = {facet: i for i, facet in enumerate(FACETS)}
    keys = sorted((k for k, rows in members.items() if len(rows) >= min_size),
                  key=lambda k: (order.get(k[0], len(order)), -len(members[k]), k[1]))
    return [Group(facet, value, tuple(members[(facet, value)])) for facet, value in keys]


@dataclass
class GroupStat:
    facet: str
    value: str
    n: int
    rate: float  # share of the group's prompts where the latent is > threshold
    mean: float


@dataclass
class Grounding:
    line: str
    groups: list[GroupStat]


def _percent(rate: float) -> str:
    return f"{round(100 * rate)} %"


def _line(stats: list[GroupStat], names: list[str], fired_outside: list[float], n_prompts: int) -> str:
    kinds = [(s, name) for s, name in zip(stats, names, strict=True) if s.facet == "kind"]
    if max((s.rate for s in stats), default=0.0) == 0:
        return f"never fires on the {n_prompts} labelled requests"
    if len(kinds) > 1 and min(s.rate for s, _ in kinds) >= 0.5:
        rates = ", ".join(f"{_percent(s.rate)} of {s.value}" for s, _ in kinds)
        # Firing says little here; its value still varies: say which kind and which groups drive it most.
        top_kind, low_kind = max(kinds, key=lambda k: k[0].mean)[0], min(kinds, key=lambda k: k[0].mean)[0]
        kind_text = (f", stronger on {top_kind.value} than {low_kind.value} requests "
                     f"(mean {top_kind.mean:.2g} vs {low_kind.mean:.2g})"
                     if top_kind.mean > 1.5 * max(low_kind.mean, 1e-9) else "")
        finer = [i for i, s in enumerate(stats) if s.facet in ("topic", "harm")] or list(range(len(stats)))
        high = max(finer, key=lambda i: stats[i].mean)
        low = min(finer, key=lambda i: stats[i].mean)
        return (f"fires on most requests whatever their kind ({rates}){kind_text}; "
                f"strongest on {names[high]} (mean {stats[high].mean:.2g}), "
                f"weakest on {names[low]} (mean {stats[low].mean:.2g})")
    # The most specific group: largest rate inside minus rate outside.
    best = max(range(len(stats)), key=lambda i: (stats[i].rate - fired_outside[i], stats[i].mean))
    others = [i for i in range(len(stats)) if stats[i].facet in ("kind", "topic") and i != best]
    text = f"fires on {_percent(stats[best].rate)} of {names[best]}"
    if not others:
        return f"{text} (mean {stats[best].mean:.2g})"
    low = min(others, key=lambda i: (stats[i].rate, stats[i].mean, -stats[i].n))
    return (f"{text} and {_percent(stats[low].rate)} of {names[low]} "
            f"(mean {stats[best].mean:.2g} vs {stats[low].mean:.2g})")


def ground_latents(acts: torch.Tensor, prompts: Sequence[LabelledPrompt], latents: Sequence[int],
                   min_group: int = 8, threshold: float = 0.0) -> dict[int, Grounding]:
    """{latent: Grounding} from acts [n_prompts, len(latents)] (one value per prompt, e.g. the last token)."""
    if not prompts:
        raise SaelignError("the labelled example set is empty: give labelled prompts to ground lines on")
    if acts.shape != (len(prompts), len(latents)):
        raise SaelignError(f"activations have shape {tuple(acts.shape)}, "
                           f"expected ({len(prompts)}, {len(latents)})")
    groups = build_groups(prompts, min_group)
    fires = (acts.float() > threshold).float()
    total = fires.sum(0)
    out = {}
    for col, latent in enumerate(latents):
        stats, outside = [], []
        for g in groups:
            rows = torch.tensor(g.rows)
            fired = fires[rows, col].sum()
            stats.append(GroupStat(g.facet, g.value, len(rows), float(fired) / len(rows),
                                   float(acts[rows, col].float().mean())))
            rest = len(prompts) - len(rows)
            outside.append(float(total[col] - fired) / rest if rest else 0.0)
        out[latent] = Grounding(_line(stats, [g.name for g in groups], outside, len(prompts)), stats)
    return out


_STRONGER_KIND = re.compile(r"stronger on (\S+) than ")
_STRONGEST = re.compile(r"strongest on (.+?) \(mean")
_FIRES_ON = re.compile(r"^fires on \d+ % of (.+?)(?: and \d+ % of | \(mean|$)")


def grounded_phrase(line: str) -> str:
    """What a grounded line says the latent is about ("'Cyber attack' harmful requests"), for a detector."""
    kind = _STRONGER_KIND.search(line)
    if kind:
        return f"{kind.group(1)} requests"
    match = _STRONGEST.search(line) or _FIRES_ON.search(line)
    return match.group(1) if match else line


_BRACKETS = re.compile(r" \([^()]*\)")


def grounded_summary(line: str) -> str:
    """A grounded line without its bracketed numbers and kind rates, short enough to name a feature in a
    sentence: "fires on 81 % of 'Cyber attack' harmful requests and 3 % of coding requests"."""
    return _BRACKETS.sub("", line).replace(" whatever their kind", "")
