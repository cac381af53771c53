"""The relations ontology: one concept per factual or grammatical relation, from real data.

Facts come from gensim's analogy file `questions-words.txt` and countryinfo's country JSON files (`RELATIONS`
says which). Each relation has completion-style prompt templates whose next words are the answer; its unseen
(test) templates come in three phrasing styles (fill_in, qa, instruction), so binding is read per style.
Country entities are shared across relations on purpose (France: capital, currency, language...), so a concept
slot must encode the relation being asked, not the entity."""

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saelign.align.ontology import Concept, Entity, Ontology, styled_templates
from saelign.datasets.countries import load_countries
from saelign.datasets.registry import COUNTRYINFO, GENSIM, QUESTIONS_WORDS
from saelign.errors import SaelignError, require


@dataclass(frozen=True)
class Relation:
    description: str
    train: tuple[str, ...]
    test: dict[str, tuple[str, ...]]  # phrasing style -> unseen templates
    section: str | None = None  # questions-words section; None: derived from countryinfo


RELATIONS: dict[str, Relation] = {
    "capital": Relation(
        "the capital city of a country",
        ("The capital of {entity} is", "The capital city of {entity} is", "The capital of {entity} is the city of",
         "The capital and seat of government of {entity} is"),
        {"fill_in": ("I flew to {entity} and spent a week in its capital,",
                     "The government of {entity} sits in the city of"),
         "qa": ("Q: Which city is the capital of {entity}?\nA:",),
         "instruction": ("Name the capital city of {entity}.\nAnswer:",)},
        "capital-*"),
    "currency": Relation(
        "the currency of a country",
        ("The currency of {entity} is the", "The official currency of {entity} is called the",
         "In {entity}, people pay with the local currency, the", "The money used in {entity} is called the"),
        {"fill_in": ("To buy bread in {entity} you need the local currency, the",),
         "qa": ("Q: What currency is used in {entity}?\nA: The",),
         "instruction": ("Name the currency of {entity}.\nAnswer: The",)},
        "currency"),
    "nationality": Relation(
        "the nationality adjective (demonym) of a country",
        ("A person from {entity} is", "Someone born in {entity} is", "A citizen of {entity} is",
         "My neighbour comes from {entity}; he is"),
        {"fill_in": ("My friend grew up in {entity}, so she is",),
         "qa": ("Q: What do you call a person from {entity}?\nA:",),
         "instruction": ("Give the word for a person from {entity}.\nAnswer:",)},
        "gram6-nationality-adjective"),
    "city_in_state": Relation(
        "the US state a city is in",
        ("{entity} is a city in the state of", "The city of {entity} is located in the state of",
         "{entity} is in the US state of", "{entity} is one of the largest cities in the state of"),
        {"fill_in": ("I live in {entity}, in the state of",),
         "qa": ("Q: In which US state is {entity}?\nA: It is in",),
         "instruction": ("Name the US state that the city of {entity} is in.\nAnswer:",)},
        "city-in-state"),
    "continent": Relation(
        "the continent a country is on",
        ("{entity} is a country in", "{entity} is located on the continent of", "{entity} is part of the continent of",
         "{entity} is a country on the continent of"),
        {"fill_in": ("My trip to {entity} was my first time in", "{entity} is a country located in"),
         "qa": ("Q: On which continent is {entity}?\nA:",),
         "instruction": ("Name the continent that {entity} is on.\nAnswer:",)}),
    "language": Relation(
        "the main official language of a country",
        ("The official language of {entity} is", "The main language spoken in {entity} is",
         "In {entity}, the national language is", "People in {entity} speak"),
        {"fill_in": ("When I moved to {entity}, I learned to speak", "Children in {entity} grow up speaking"),
         "qa": ("Q: What language do most people speak in {entity}?\nA:",),
         "instruction": ("Name the main language of {entity}.\nAnswer:",)}),
    "plural": Relation(
        "the plural of a noun",
        ("One {entity}, two", "I have one {entity} and you have three", "Singular: {entity}. Plural:",
         "There was one {entity}, then there were two"),
        {"fill_in": ("Not just one {entity}: we saw many",),
         "qa": ("Q: What is the plural of \"{entity}\"?\nA:",),
         "instruction": ("Write the plural of the noun \"{entity}\".\nAnswer:",)},
        "gram8-plural"),
    "present_participle": Relation(
        "the -ing form of a verb",
        ("She wants to {entity}, so now she is", "They wanted to {entity}, so now they are",
         "He wants to {entity}, so now he is", "They love to {entity}; they spend all day"),
        {"fill_in": ("You wanted to {entity}, so now you are", "Do you want to {entity}? We are already"),
         "qa": ("Q: What is the -ing form of the verb \"{entity}\"?\nA:",),
         "instruction": ("Write the -ing form of the verb \"{entity}\".\nAnswer:",)},
        "gram5-present-participle"),
    "comparative": Relation(
        "the comparative form of an adjective",
        ("This one is {entity}, but that one is even", "Today is {entity}, but tomorrow will be even",
         "My room is {entity}, but yours is even", "It was {entity} yesterday and it will be even"),
        {"fill_in": ("Our old house was {entity}; the new one is even",
                     "The first box is {entity}, and the second box is even"),
         "qa": ("Q: What is the comparative form of \"{entity}\"?\nA:",),
         "instruction": ("Write the comparative form of the adjective \"{entity}\".\nAnswer:",)},
        "gram3-comparative"),
    "opposite": Relation(
        "the negated (un-/in-/im-) opposite of an adjective",
        ("The opposite of {entity} is", "The antonym of {entity} is", "Is it {entity} or",
         "Some things are {entity}, and others are"),
        {"fill_in": ("It is either {entity} or", "Something that is not {entity} is"),
         "qa": ("Q: What is the opposite of the word \"{entity}\"?\nA:",),
         "instruction": ("Write the negated opposite of the adjective \"{entity}\".\nAnswer:",)},
        "gram2-opposite"),
}

# ISO 639 codes used by countryinfo (including its non-standard "rs" and "cnr") -> English language names.
LANGUAGES = {
    "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "ay": "Aymara", "az": "Azerbaijani", "be": "Belarusian",
    "bg": "Bulgarian", "bi": "Bislama", "bn": "Bengali", "bs": "Bosnian", "ca": "Catalan", "ch": "Chamorro",
    "cnr": "Montenegrin", "cs": "Czech", "da": "Danish", "de": "German", "dv": "Dhivehi", "dz": "Dzongkha",
    "el": "Greek", "en": "English", "es": "Spanish", "et": "Estonian", "fa": "Persian", "ff": "Fula", "fi": "Finnish",
    "fj": "Fijian", "fo": "Faroese", "fr": "French", "ga": "Irish", "gn": "Guarani", "gv": "Manx", "he": "Hebrew",
    "hi": "Hindi", "hr": "Croatian", "ht": "Haitian Creole", "hu": "Hungarian", "hy": "Armenian", "id": "Indonesian",
    "is": "Icelandic", "it": "Italian", "ja": "Japanese", "ka": "Georgian", "kg": "Kongo", "kk": "Kazakh",
    "kl": "Greenlandic", "km": "Khmer", "ko": "Korean", "ku": "Kurdish", "ky": "Kyrgyz", "la": "Latin",
    "lb": "Luxembourgish", "ln": "Lingala", "lo": "Lao", "lt": "Lithuanian", "lu": "Luba-Katanga", "lv": "Latvian",
    "mg": "Malagasy", "mh": "Marshallese", "mi": "Maori", "mk": "Macedonian", "mn": "Mongolian", "ms": "Malay",
    "mt": "Maltese", "my": "Burmese", "na": "Nauruan", "nb": "Norwegian", "nd": "Ndebele", "ne": "Nepali",
    "nl": "Dutch", "nn": "Norwegian", "no": "Norwegian", "nr": "Ndebele", "ny": "Chichewa", "oc": "Occitan",
    "pa": "Punjabi", "pl": "Polish", "ps": "Pashto", "pt": "Portuguese", "qu": "Quechua", "rn": "Kirundi",
    "ro": "Romanian", "rs": "Serbian", "ru": "Russian", "rw": "Kinyarwanda", "sg": "Sango", "si": "Sinhala",
    "sk": "Slovak", "sl": "Slovenian", "sm": "Samoan", "sn": "Shona", "so": "Somali", "sq": "Albanian",
    "sr": "Serbian", "ss": "Swati", "st": "Sotho", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "tg": "Tajik",
    "th": "Thai", "ti": "Tigrinya", "tk": "Turkmen", "tn": "Tswana", "to": "Tongan", "tr": "Turkish", "ts": "Tsonga",
    "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek", "ve": "Venda", "vi": "Vietnamese", "xh": "Xhosa", "zh": "Chinese",
    "zu": "Zulu",
}


def parse_questions_words(path: Path) -> dict[str, dict[str, str]]:
    """Section name -> {word: related word}, from lines `a b c d` (a:b :: c:d) under `: section` headers."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith(":"):
            current = sections.setdefault(line[1:].strip(), {})
            continue
        words = line.split()
        if not words:
            continue
        if current is None or len(words) != 4:
            raise SaelignError(f"{path}:{lineno}: expected `: section` or four words `a b c d`, got {line!r}")
        current.setdefault(words[0], words[1])
        current.setdefault(words[2], words[3])
    require(sections, f"{path}: no `: section` headers; is this gensim's questions-words.txt?")
    return sections


def country_index(countries: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Lower-cased country name and alternative spellings -> the country's record."""
    index: dict[str, dict[str, Any]] = {}
    for record in countries:
        for key in [record["name"], *record.get("altSpellings", [])]:
            index.setdefault(str(key).lower(), record)
    return index


def continent(record: dict[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    """(continent, other accepted answers) from countryinfo's UN regions, splitting the Americas in two."""
    region, middle = record.get("region") or "", record.get("intermediateregion") or ""
    if region in ("Africa", "Asia", "Europe"):
        return region, ()
    if region == "Oceania":
        return "Oceania", ("Australia",)
    if region == "Americas":
        if middle == "South America":
            return "South America", ()
        return "North America", tuple(a for a in (middle,) if a in ("Central America", "Caribbean"))
    return None


def _section(sections: dict[str, dict[str, str]], pattern: str) -> dict[str, str]:
    """The pairs of one questions-words section; `capital-*` merges the two capital sections."""
    if pattern.endswith("*"):
        names = [n for n in sections if n.startswith(pattern[:-1])]
    else:
        names = [pattern] if pattern in sections else []
    require(names, f"questions-words.txt has no `: {pattern}` section; is it {GENSIM.name}'s file?")
    return {a: b for name in names for a, b in sections[name].items()}


def relation_facts(sections: dict[str, dict[str, str]], info: dict[str, dict[str, Any]],
                   names: Sequence[str]) -> dict[str, list[Entity]]:
    """Entities with answers for the relations `names` (countryinfo's differing spellings become aliases).
    Continent and language cover the countries of the capital, currency and nationality sections, so country
    entities recur across relations."""
    facts: dict[str, list[Entity]] = {}
    for name in names:
        section = RELATIONS[name].section
        if section is None:
            continue
        pairs = _section(sections, section)
        if name == "capital":  # the file lists `city country`
            capitals: dict[str, str] = {}
            for city, country in pairs.items():
                capitals.setdefault(country, city)
            facts[name] = [Entity(country, city, _alias(info, country, "capital", city)) for country, city in capitals.items()]
        else:
            alias_key = "demonym" if name == "nationality" else None
            facts[name] = [Entity(a, b, _alias(info, a, alias_key, b)) for a, b in pairs.items()]
    if {"continent", "language"} & set(names):
        countries = [*_section(sections, "capital-*").values(), *_section(sections, "currency"),
                     *_section(sections, "gram6-nationality-adjective")]
        records = [(c, info[c.lower()]) for c in dict.fromkeys(countries) if c.lower() in info]
        if "continent" in names:
            facts["continent"] = [Entity(c, *place) for c, r in records if (place := continent(r)) is not None]
        if "language" in names:
            facts["language"] = [Entity(c, langs[0], tuple(langs[1:])) for c, r in records if (langs := _languages(r))]
    return facts


def _languages(record: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(LANGUAGES[c] for c in record.get("languages") or [] if c in LANGUAGES))


def _alias(info: dict[str, dict[str, Any]], country: str, key: str | None, answer: str) -> tuple[str, ...]:
    value = (info.get(country.lower()) or {}).get(key) if key else None
    return (value,) if isinstance(value, str) and value and value.lower() != answer.lower() else ()


def select_entities(facts: dict[str, list[Entity]], max_entities: int, seed: int) -> dict[str, list[Entity]]:
    """Up to `max_entities` per relation, preferring entities that several relations share (seeded tie-break)."""
    shared: dict[str, int] = {}
    for entities in facts.values():
        for e in entities:
            shared[e.entity] = shared.get(e.entity, 0) + 1
    rng = random.Random(seed)
    out = {}
    for name, entities in facts.items():
        keyed = [(-shared[e.entity], rng.random(), e) for e in entities]
        out[name] = [e for *_, e in sorted(keyed, key=lambda k: k[:2])[:max_entities]]
    return out


def build_relations(relations: Sequence[str] | None = None, max_entities: int = 40, seed: int = 0,
                    questions_words: Path | None = None, countryinfo_dir: Path | None = None) -> Ontology:
    """The relations ontology (fetching the pinned data files once unless paths are given)."""
    names = list(relations or RELATIONS)
    unknown = [n for n in names if n not in RELATIONS]
    require(not unknown, f"unknown relation(s) {', '.join(unknown)}; choose from {', '.join(RELATIONS)}")
    qw_path = questions_words or GENSIM.fetch() / QUESTIONS_WORDS
    countries = country_index(load_countries(countryinfo_dir))
    facts = relation_facts(parse_questions_words(qw_path), countries, names)
    chosen = select_entities(facts, max_entities, seed)
    concepts = tuple(Concept(n, RELATIONS[n].description, entities=tuple(chosen[n]),
                             templates=styled_templates(RELATIONS[n].train, RELATIONS[n].test))
                     for n in names)
    source = {"builder": "relations", "questions_words": f"{GENSIM.name} {QUESTIONS_WORDS}",
              "countryinfo": f"{COUNTRYINFO.name} {COUNTRYINFO.members[0]}",
              "max_entities": max_entities, "seed": seed}
    return Ontology("relations", concepts, description="factual and grammatical relations; one concept per relation",
                    require_answers=True, source=source).validate("relations ontology")
