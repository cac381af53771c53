"""The sentiment ontology: positive / negative (/ neutral) texts rated by people, from the VADER paper's data.

Hutto & Gilbert (ICWSM 2014) had each sentence (tweets, movie and Amazon reviews, NYT editorials) rated by 20
people on -4..+4; the ground-truth files in the vaderSentiment sdist give the mean. The concept is read at the
last token, after the whole text."""

import html
import random
import re
import tarfile
from collections.abc import Sequence
from pathlib import Path

from saelign.align.ontology import Concept, LabelledText, Ontology
from saelign.datasets.registry import VADER, VADER_ARCHIVE
from saelign.errors import SaelignError, require

SOURCES = ("tweets", "movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets")


def read_ratings(archive: Path, sources: Sequence[str] = SOURCES) -> list[tuple[str, float, str]]:
    """(source, mean rating, text) for every rated sentence of the chosen sources, read from the nested tarball."""
    unknown = [s for s in sources if s not in SOURCES]
    require(not unknown, f"unknown VADER source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
    rows: list[tuple[str, float, str]] = []
    try:
        with tarfile.open(archive) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for source in sources:
                name = f"{source}_GroundTruth.txt"
                if name not in members:
                    raise SaelignError(f"{archive} has no {name}; is it the VADER hutto_ICWSM_2014 archive?")
                handle = tar.extractfile(members[name])
                assert handle is not None  # regular files always have a payload
                rows.extend((source, *_parse_line(line, f"{archive}:{name}:{n}"))
                            for n, line in enumerate(handle.read().decode("utf-8").splitlines(), 1) if line.strip())
    except tarfile.TarError as exc:
        raise SaelignError(f"{archive} is not a readable tar archive ({exc}); delete it so it is fetched again") from exc
    return rows


def _parse_line(line: str, where: str) -> tuple[float, str]:
    parts = line.split("\t", 2)
    try:
        rating = float(parts[1])
    except (IndexError, ValueError):
        raise SaelignError(f"{where}: expected `id<TAB>mean rating<TAB>text`, got {line[:80]!r}") from None
    require(len(parts) >= 3 and parts[2].strip(), f"{where}: the line has no text after the rating")
    return rating, re.sub(r"\s+", " ", html.unescape(parts[2])).strip()


def build_sentiment(max_per_concept: int = 200, threshold: float = 1.5, neutral_band: float = 0.25,
                    include_neutral: bool = True, max_chars: int = 300, sources: Sequence[str] = SOURCES,
                    seed: int = 0, archive: Path | None = None) -> Ontology:
    """Texts with mean rating >= threshold (positive), <= -threshold (negative), |mean| <= neutral_band (neutral)."""
    if not 0 <= neutral_band < threshold:
        raise SaelignError(f"neutral_band {neutral_band} must be in [0, threshold={threshold}) so the classes do not overlap")
    rows = read_ratings(archive or VADER.fetch() / VADER_ARCHIVE, sources)
    labelled: dict[str, str] = {}  # a text rated in two sources keeps its first label: one label per prompt
    for _, rating, text in rows:
        label = ("positive" if rating >= threshold else "negative" if rating <= -threshold
                 else "neutral" if abs(rating) <= neutral_band else None)
        if label is not None and len(text) <= max_chars:
            labelled.setdefault(text, label)
    labels = ["positive", "negative", *(["neutral"] if include_neutral else [])]
    rng = random.Random(seed)
    ranges = {"positive": f">= {threshold}", "negative": f"<= {-threshold}",
              "neutral": f"within ±{neutral_band}"}
    concepts = []
    for label in labels:
        texts = sorted(t for t, lab in labelled.items() if lab == label)
        rng.shuffle(texts)
        concepts.append(Concept(label, f"human mean rating {ranges[label]} on -4..+4",
                                examples=tuple(LabelledText(t) for t in texts[:max_per_concept])))
    source = {"builder": "sentiment", "data": f"{VADER.name} {VADER_ARCHIVE}",
              "sources": list(sources), "threshold": threshold, "neutral_band": neutral_band, "seed": seed}
    return Ontology("sentiment", tuple(concepts), description="sentiment of human-rated sentences (VADER ground truth)",
                    source=source).validate("sentiment ontology")

