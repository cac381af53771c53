"""Text normalisation and answer matching, one meaning each, shared by SAILS and AlignSAE."""

import re
import unicodedata
from collections.abc import Sequence

_WORD = re.compile(r"[a-z0-9]+")
_ARTICLES = {"the", "a", "an"}


def normalize(text: str, fold_accents: bool = False) -> str:
    """The lower-case ASCII words of the NFKC-normalised text, joined by single spaces: punctuation, case and
    spacing never count.
    fold_accents strips accents first ('Bogotá' -> 'bogota'); without it an accented letter splits a word,
    as prompt de-duplication and split hashing have always used (changing it would move examples)."""
    if fold_accents:
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).lower()))


def _without_article(found: list[str]) -> list[str]:
    return found[1:] if found[:1] and found[0] in _ARTICLES else found


def answer_matches(said: str, answer: str, aliases: Sequence[str] = (), *, anywhere: bool = False) -> bool:
    """Whether the text `said` gives `answer` (or one of its `aliases`), on accent-folded `normalize` words.
    Default, for continuations of a completion prompt ("The capital of France is"): the answer's words must
    open `said`, after at most one qualifying word, one leading article on either side ignored; so " the
    Croatian kuna" gives "kuna" but " New York" does not give "New Jersey". anywhere=True, for free-form chat
    answers: the answer's words appear in order, as whole words, anywhere in `said`."""
    if anywhere:
        text = f" {normalize(said, True)} "
        return any(want and f" {want} " in text for want in (normalize(c, True) for c in (answer, *aliases)))
    opening = _without_article(normalize(said, True).split())
    wanted = (_without_article(normalize(c, True).split()) for c in (answer, *aliases))
    return any(want and want in (opening[: len(want)], opening[1: len(want) + 1]) for want in wanted)


def lenient_match(said: str, answer: str, aliases: Sequence[str] = ()) -> bool:
    """The AlignSAE authors' lenient success: the lower-cased, stripped gold is contained in the generation or
    the generation in the gold. Kept apart from `answer_matches` so benchmarks can report both: it accepts
    a fragment ('par' for 'Paris') and an answer anywhere in a long continuation. An empty generation never
    matches (it is contained in every gold)."""
    text = said.strip().lower()
    golds = (c.strip().lower() for c in (answer, *aliases))
    return bool(text) and any(gold and (gold in text or text in gold) for gold in golds)
