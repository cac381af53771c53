"""The biographies ontology: made-up people with six attributes, asked about in `"Q: ...\\nA:"` prompts.

AlignSAE's concept-swap claim was measured on a model fine-tuned on synthetic biographies (one concept per
relation, every relation asked about the same people), so no fact is known before fine-tuning and every
relation is learnt alike. People's names come from the US Census name lists of the pinned PyPI `names`
package, cities from countryinfo's capitals (most populous countries first), universities, majors and
employers from the short lists in `saelign/data/biographies.json`. An employer sits in one city, so
`employer_city` follows `employer`.

Train and unseen (test) templates come in three phrasing styles, named in `train_styles` / `test_styles`,
so binding and fact accuracy can be read per style: `qa` (`Q: ...\nA:`), `fill_in` (a sentence the answer
completes) and `instruction` (an order, then `Answer:`). A model fine-tuned on the train prompts has seen
every style but no unseen wording: no unseen template is contained in a train one, and the unseen orders
have their own verbs ("Give ...", "State ..."), so the unseen split still measures new phrasings.
`train_styles=["qa"]` gives the first, Q/A-only train set (4 Q/A templates per attribute). Everything is a
function of `seed`."""

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from saelign.align.ontology import Concept, Entity, Ontology, styled_templates
from saelign.datasets.countries import load_countries
from saelign.datasets.registry import COUNTRYINFO, NAMES, NAMES_FILES
from saelign.errors import SaelignError, require

STYLES = ("qa", "fill_in", "instruction")
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


@dataclass(frozen=True)
class Attribute:
    description: str
    train: dict[str, tuple[str, ...]]  # style -> templates
    test: dict[str, tuple[str, ...]]  # style -> templates, none of them a train template


def _qa(*questions: str) -> tuple[str, ...]:
    return tuple(f"Q: {q}\nA:" for q in questions)


def _instruction(*orders: str) -> tuple[str, ...]:
    return tuple(f"{o}\nAnswer:" for o in orders)


ATTRIBUTES: dict[str, Attribute] = {
    "birth_date": Attribute(
        "the date a person was born",
        {
            "qa": _qa(
                "What is the birth date of {entity}?",
                "When was {entity} born?",
                "On what date was {entity} born?",
                "What is {entity}'s date of birth?",
            ),
            "fill_in": (
                "{entity}'s birthday falls on",
                "The birthday of {entity} is",
                "{entity} first saw the light of day on",
                "The day of {entity}'s birth was",
            ),
            "instruction": _instruction(
                "Tell me when {entity} was born.",
                "Write down {entity}'s birthday.",
                "Name the day, month and year {entity} was born.",
                "Provide {entity}'s full date of birth.",
            ),
        },
        {
            "qa": _qa("Which day was {entity} born on?", "What date is {entity}'s birthday?"),
            "fill_in": ("{entity} was born on", "The date of birth of {entity} is"),
            "instruction": _instruction(
                "Give the date on which {entity} was born.", "State the birth date of {entity}."
            ),
        },
    ),
    "birth_city": Attribute(
        "the city a person was born in",
        {
            "qa": _qa(
                "What is the birth city of {entity}?",
                "Where was {entity} born?",
                "In which city was {entity} born?",
                "Which city was {entity} born in?",
            ),
            "fill_in": (
                "{entity}'s place of birth is",
                "{entity} is a native of the city of",
                "{entity}'s hometown is",
                "The city {entity} hails from is",
            ),
            "instruction": _instruction(
                "Tell me where {entity} was born.",
                "Name {entity}'s place of birth.",
                "Write down the hometown of {entity}.",
                "Provide the name of {entity}'s native city.",
            ),
        },
        {
            "qa": _qa(
                "What city did {entity} come into the world in?",
                "What is the name of the city where {entity} was born?",
            ),
            "fill_in": ("{entity} was born in the city of", "The birthplace of {entity} is the city of"),
            "instruction": _instruction(
                "Give the city where {entity} was born.", "State the birth city of {entity}."
            ),
        },
    ),
    "university": Attribute(
        "the university a person attended",
        {
            "qa": _qa(
                "Which university did {entity} attend?",
                "Where did {entity} go to university?",
                "What university did {entity} graduate from?",
                "Which university did {entity} study at?",
            ),
            "fill_in": (
                "{entity} studied at",
                "{entity} attended",
                "{entity} is a graduate of",
                "The alma mater of {entity} is",
            ),
            "instruction": _instruction(
                "Tell me which university {entity} attended.",
                "Name {entity}'s alma mater.",
                "Write down where {entity} studied.",
                "Provide the name of {entity}'s university.",
            ),
        },
        {
            "qa": _qa(
                "What school did {entity} get a degree from?", "Which university is {entity} an alumnus of?"
            ),
            "fill_in": ("{entity} graduated from", "{entity} received a degree from"),
            "instruction": _instruction(
                "Give the university that {entity} attended.", "State where {entity} went to university."
            ),
        },
    ),
    "major": Attribute(
        "the field a person studied",
        {
            "qa": _qa(
                "What did {entity} study?",
                "What was {entity}'s major?",
                "What field did {entity} major in?",
                "Which subject did {entity} study at university?",
            ),
            "fill_in": (
                "{entity} earned a degree in",
                "{entity} studied the subject of",
                "{entity}'s major was",
                "As a student, {entity} focused on",
            ),
            "instruction": _instruction(
                "Tell me what {entity} studied.",
                "Name {entity}'s major.",
                "Write down {entity}'s subject at university.",
                "Provide the academic field of {entity}.",
            ),
        },
        {
            "qa": _qa("What was {entity}'s field of study?", "Which discipline did {entity} specialise in?"),
            "fill_in": ("At university, {entity} majored in", "The field of study of {entity} was"),
            "instruction": _instruction("Give the subject {entity} studied.", "State the major of {entity}."),
        },
    ),
    "employer": Attribute(
        "the company a person works for",
        {
            "qa": _qa(
                "Which company does {entity} work for?",
                "Who is {entity}'s employer?",
                "Where does {entity} work?",
                "What company employs {entity}?",
            ),
            "fill_in": (
                "{entity} has a job at",
                "{entity}'s employer is",
                "{entity} is on the payroll of",
                "{entity} earns a salary from",
            ),
            "instruction": _instruction(
                "Tell me which company {entity} works for.",
                "Name {entity}'s employer.",
                "Write down the firm where {entity} has a job.",
                "Provide the name of {entity}'s company.",
            ),
        },
        {
            "qa": _qa("Which firm is {entity} employed by?", "For which company does {entity} work?"),
            "fill_in": ("{entity} is employed by the company", "{entity} works for the company"),
            "instruction": _instruction(
                "Give the company that employs {entity}.", "State the employer of {entity}."
            ),
        },
    ),
    "employer_city": Attribute(
        "the city a person's employer is based in",
        {
            "qa": _qa(
                "In which city does {entity} work?",
                "Which city is {entity}'s company based in?",
                "What city does {entity} work in?",
                "In what city is {entity}'s employer located?",
            ),
            "fill_in": (
                "{entity}'s workplace is in",
                "{entity}'s employer has its headquarters in",
                "{entity} goes to work every day in",
                "{entity}'s office is located in",
            ),
            "instruction": _instruction(
                "Tell me which city {entity} works in.",
                "Name the location of {entity}'s workplace.",
                "Write down the city that hosts {entity}'s office.",
                "Provide the city of {entity}'s workplace.",
            ),
        },
        {
            "qa": _qa(
                "Where is the office of {entity}'s employer?", "Which city does {entity} commute to for work?"
            ),
            "fill_in": ("{entity} works in the city of", "The company of {entity} is based in the city of"),
            "instruction": _instruction(
                "Give the city where {entity} works.", "State the city of {entity}'s employer."
            ),
        },
    ),
}


def read_census_names(path: Path, limit: int) -> list[str]:
    """The `limit` most frequent names of a Census list (`NAME freq cumfreq rank` lines), title-cased."""
    names = []
    for lineno, line in enumerate(path.read_text(encoding="ascii").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4 or not fields[0].isalpha():
            raise SaelignError(
                f"{path}:{lineno}: expected `NAME frequency cumulative rank`, got {line!r}; delete "
                f"{path.parent} so the pinned {NAMES.name} is fetched again"
            )
        names.append(fields[0].title())
        if len(names) == limit:
            break
    return names


def value_lists() -> dict[str, list[str]]:
    """universities, majors and companies from saelign's own data file."""
    data = json.loads((resources.files("saelign") / "data" / "biographies.json").read_text(encoding="utf-8"))
    return {key: list(data[key]) for key in ("universities", "majors", "companies")}


def capital_cities(countryinfo_dir: Path | None, limit: int) -> list[str]:
    """Capitals of the `limit` most populous countries in countryinfo (ties by name)."""
    records = [
        r
        for r in load_countries(countryinfo_dir)
        if isinstance(r.get("capital"), str) and r["capital"] and isinstance(r.get("population"), int)
    ]
    records.sort(key=lambda r: (-r["population"], r["name"]))
    cities = list(dict.fromkeys(r["capital"] for r in records))[:limit]
    require(
        len(cities) >= 2,
        f"countryinfo data gave {len(cities)} capital(s); delete its cache folder to refetch it",
    )
    return cities


def _people(rng: random.Random, first: list[str], last: list[str], n: int) -> list[str]:
    require(
        n <= len(first) * len(last) // 2,
        f"people={n} is too many for {len(first)} first and {len(last)} last "
        "names; raise first_names / last_names or ask for fewer people",
    )
    chosen: dict[str, None] = {}
    while len(chosen) < n:
        chosen.setdefault(f"{rng.choice(first)} {rng.choice(last)}")
    return list(chosen)


def build_biographies(
    people: int = 50,
    seed: int = 0,
    attributes: Sequence[str] | None = None,
    cities: int = 40,
    first_names: int = 200,
    last_names: int = 500,
    names_dir: Path | None = None,
    countryinfo_dir: Path | None = None,
    train_styles: Sequence[str] = STYLES,
) -> Ontology:
    """The biographies ontology: `people` made-up people, one concept per attribute (all six by default).
    `cities`, `first_names`, `last_names`: how many of the most common values each list keeps. `names_dir`
    holds the Census files (default: the pinned `names` sdist); `countryinfo_dir` the country JSON files.
    `train_styles`: the phrasing styles whose train templates are used (the unseen ones always cover all)."""
    names = list(attributes or ATTRIBUTES)
    unknown = [n for n in names if n not in ATTRIBUTES]
    require(not unknown, f"unknown attribute(s) {', '.join(unknown)}; choose from {', '.join(ATTRIBUTES)}")
    require(people >= 1, f"people must be at least 1, got {people}")
    bad_styles = [s for s in train_styles if s not in STYLES]
    require(
        bool(train_styles) and not bad_styles,
        f"train_styles {list(train_styles)}: choose one or more of {', '.join(STYLES)}",
    )
    folder = Path(names_dir) if names_dir else NAMES.fetch()
    first = read_census_names(folder / NAMES_FILES["male"], first_names // 2)
    first += read_census_names(folder / NAMES_FILES["female"], first_names - len(first))
    last = read_census_names(folder / NAMES_FILES["last"], last_names)
    city_list = capital_cities(Path(countryinfo_dir) if countryinfo_dir else None, cities)
    values = value_lists()
    rng = random.Random(seed)
    # an employer is in one city, so employer_city is a fact about the company (what a 2-hop question needs)
    company_city = {company: rng.choice(city_list) for company in values["companies"]}
    facts: dict[str, list[Entity]] = {n: [] for n in names}
    for person in _people(rng, first, last, people):
        employer = rng.choice(values["companies"])
        record = {
            "birth_date": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(1950, 2000)}",
            "birth_city": rng.choice(city_list),
            "university": rng.choice(values["universities"]),
            "major": rng.choice(values["majors"]),
            "employer": employer,
            "employer_city": company_city[employer],
        }
        for n in names:
            facts[n].append(Entity(person, record[n]))
    concepts = tuple(
        Concept(
            n,
            ATTRIBUTES[n].description,
            entities=tuple(facts[n]),
            templates=styled_templates(
                {style: ATTRIBUTES[n].train[style] for style in STYLES if style in train_styles},
                ATTRIBUTES[n].test,
            ),
        )
        for n in names
    )
    source = {
        "builder": "biographies",
        "names": f"{NAMES.name} {', '.join(NAMES_FILES.values())}",
        "countryinfo": f"{COUNTRYINFO.name} {COUNTRYINFO.members[0]} (capitals)",
        "value_lists": "saelign/data/biographies.json",
        "people": people,
        "seed": seed,
        "train_styles": [style for style in STYLES if style in train_styles],
        "company_city": {c: company_city[c] for c in values["companies"]},
    }
    return Ontology(
        "biographies",
        concepts,
        description="synthetic biographies; one concept per attribute",
        require_answers=True,
        source=source,
    ).validate("biographies ontology")
