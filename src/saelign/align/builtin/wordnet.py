"""The WordNet ontology: lexical classes (noun.animal, noun.food, verb.motion ...) as concepts over words.

Reads the sense index of Princeton WordNet 3.0 as Debian installs it; a sense key names its lexicographer file
(the class). A word joins the class that holds at least `purity` of its senses' weight (SemCor tag count + 0.5
per sense, so rare senses still count a little); the most frequent such words come first. Each word is shown in
a few neutral templates and the concept is read at the word's last token."""

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from saelign.align.ontology import Concept, Entity, Ontology, Templates
from saelign.errors import SaelignError, require

WORDNET_DIR = Path("/usr/share/wordnet")
INSTALL_HINT = "install WordNet with `apt-get update && apt-get install -y wordnet-base wordnet-sense-index`"

# Lexicographer file numbers 0..44 -> names, as fixed by WordNet 3.0 (lexnames(5WN)); Debian ships no lexnames.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl"
).split()
DEFAULT_CLASSES = ("noun.animal", "noun.food", "noun.artifact", "noun.person", "noun.plant", "noun.body", "noun.time",
                   "verb.motion", "verb.communication", "verb.cognition")
TEMPLATES = Templates(
    train=("The word \"{entity}\"", "Here is a word: {entity}", "Consider the word {entity}", "Word: {entity}"),
    test=("Think about the word '{entity}'", "Next word in the list: {entity}"),
)


def read_sense_index(path: Path) -> dict[str, Counter[str]]:
    """lemma -> {lexicographer class: weight}, from an index.sense file (weight = tag count + 0.5 per sense)."""
    require(path.is_file(), f"WordNet sense index {path} not found; {INSTALL_HINT}, or pass wordnet_dir")
    weights: dict[str, Counter[str]] = defaultdict(Counter)
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                lemma, rest = fields[0].split("%", 1)
                lexfile = LEXNAMES[int(rest.split(":")[1])]
                weight = int(fields[3]) + 0.5
            except (ValueError, IndexError):
                raise SaelignError(f"{path}:{lineno}: expected `lemma%type:lexfile:... offset sense_number tag_count`, "
                                   f"got {line.strip()[:80]!r}") from None
            weights[lemma][lexfile] += weight
    return weights


def class_words(weights: dict[str, Counter[str]], classes: Sequence[str], purity: float,
                max_per_class: int) -> dict[str, list[str]]:
    """The most frequent plain words (letters only) whose dominant class is one of `classes`."""
    ranked: dict[str, list[tuple[float, str]]] = {c: [] for c in classes}
    for lemma, counts in weights.items():
        if not lemma.isalpha():
            continue
        lexfile, weight = counts.most_common(1)[0]
        if lexfile in ranked and weight >= purity * sum(counts.values()):
            ranked[lexfile].append((-sum(counts.values()), lemma))
    return {c: [w for _, w in sorted(words)[:max_per_class]] for c, words in ranked.items()}


def build_wordnet(classes: Sequence[str] = DEFAULT_CLASSES, max_per_concept: int = 50, purity: float = 0.8,
                  wordnet_dir: Path = WORDNET_DIR) -> Ontology:
    """One concept per lexicographer class, each with its most frequent unambiguous words as entities."""
    unknown = [c for c in classes if c not in LEXNAMES]
    require(not unknown, f"unknown WordNet class(es) {', '.join(unknown)}; choose from {', '.join(LEXNAMES)}")
    require(0.5 < purity <= 1, f"purity {purity} must be in (0.5, 1] so each word belongs to one class")
    words = class_words(read_sense_index(Path(wordnet_dir) / "index.sense"), classes, purity, max_per_concept)
    concepts = []
    for name in classes:
        if not words[name]:
            raise SaelignError(f"WordNet class {name} has no word of purity >= {purity}; lower purity or drop the class")
        concepts.append(Concept(name, f"words of WordNet's {name} lexicographer file",
                                entities=tuple(Entity(w) for w in words[name])))
    source = {"builder": "wordnet", "data": f"WordNet 3.0 {Path(wordnet_dir) / 'index.sense'} (Debian wordnet-sense-index)",
              "purity": purity}
    return Ontology("wordnet", tuple(concepts), description="WordNet lexical classes of single words",
                    position="entity_last_token", templates=TEMPLATES, source=source).validate("wordnet ontology")
