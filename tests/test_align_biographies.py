"""The biographies ontology: deterministic from its seed, train and unseen templates disjoint and each
covering every style, employer city a function of the employer, and the Census name files parsed or
refused."""

from __future__ import annotations

import json

import pytest

from saelign.align.builtin import build_ontology
from saelign.align.builtin.biographies import ATTRIBUTES, STYLES, build_biographies, read_census_names
from saelign.align.ontology import load_ontology, save_ontology
from saelign.datasets.registry import NAMES_FILES
from saelign.errors import SaelignError

FIRST_MALE = ["JAMES", "JOHN", "ROBERT", "MICHAEL", "WILLIAM", "DAVID"]
FIRST_FEMALE = ["MARY", "PATRICIA", "LINDA", "BARBARA", "ELIZABETH", "JENNIFER"]
LAST = ["SMITH", "JOHNSON", "WILLIAMS", "JONES", "BROWN", "DAVIS", "MILLER", "WILSON"]
COUNTRIES = {
    "france": ("France", "Paris", 67),
    "japan": ("Japan", "Tokyo", 126),
    "peru": ("Peru", "Lima", 33),
    "kenya": ("Kenya", "Nairobi", 53),
    "chile": ("Chile", "Santiago", 19),
}


def _census(names: list[str]) -> str:
    return "".join(f"{n:15s}{1.0:6.3f}{1.0:7.3f}{i:7d}\n" for i, n in enumerate(names, 1))


def write_biography_data(tmp_path) -> dict:
    """Small Census name files and countryinfo records, as the builder's `names_dir` / `countryinfo_dir`."""
    names = tmp_path / "names"
    for key, values in (("male", FIRST_MALE), ("female", FIRST_FEMALE), ("last", LAST)):
        path = names / NAMES_FILES[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_census(values), encoding="ascii")
    countries = tmp_path / "countryinfo"
    countries.mkdir()
    for stem, (name, capital, millions) in COUNTRIES.items():
        (countries / f"{stem}.json").write_text(
            json.dumps({"name": name, "capital": capital, "population": millions * 10**6})
        )
    return {"names_dir": names, "countryinfo_dir": countries}


@pytest.fixture
def data_dirs(tmp_path):
    return write_biography_data(tmp_path)


def _facts(onto):
    return {(c.name, e.entity): e.answer for c in onto.concepts for e in c.entities}


def test_same_seed_same_ontology_other_seed_other_people(data_dirs, tmp_path):
    first = build_biographies(people=12, seed=3, **data_dirs)
    again = build_biographies(people=12, seed=3, **data_dirs)
    assert first == again
    assert (
        save_ontology(first, tmp_path / "a.yaml").read_text()
        == save_ontology(again, tmp_path / "b.yaml").read_text()
    )
    assert load_ontology(tmp_path / "a.yaml").examples(None) == first.examples(None)  # the file round-trips
    other = build_biographies(people=12, seed=4, **data_dirs)
    assert _facts(other) != _facts(first)


def test_people_attributes_and_value_sources(data_dirs):
    onto = build_biographies(people=10, cities=4, first_names=4, last_names=5, **data_dirs)
    assert onto.concept_names == list(ATTRIBUTES) and onto.require_answers
    people = [e.entity for e in onto.concepts[0].entities]
    assert len(set(people)) == 10
    for concept in onto.concepts:  # every attribute is asked about the same people
        assert [e.entity for e in concept.entities] == people
    for person in people:
        given, family = person.split(" ")
        assert given.upper() in FIRST_MALE[:2] + FIRST_FEMALE[:2] and family.upper() in LAST[:5]
    facts = _facts(onto)
    largest = {
        "Tokyo",
        "Paris",
        "Nairobi",
        "Lima",
    }  # the 4 most populous countries' capitals; Santiago is left out
    assert {facts[("birth_city", p)] for p in people} <= largest
    company_city = onto.source["company_city"]
    for person in people:
        assert facts[("employer_city", person)] == company_city[facts[("employer", person)]]
        month, day, year = facts[("birth_date", person)].replace(",", "").split(" ")
        assert month.istitle() and 1 <= int(day) <= 28 and 1950 <= int(year) <= 2000


def _words(template: str) -> str:
    return " ".join("".join(c if c.isalnum() else " " for c in template.lower()).split())


def test_train_and_unseen_templates_are_disjoint_and_both_cover_every_style(data_dirs):
    onto = build_biographies(people=4, **data_dirs)
    train, test = onto.examples("train"), onto.examples("test")
    assert {ex.text for ex in train}.isdisjoint(ex.text for ex in test)
    for split, per_style in ((train, 4), (test, 2)):  # templates per style and attribute
        for concept in onto.concepts:
            styles = [ex.style for ex in split if ex.concept == concept.name]
            assert all(styles.count(s) == per_style * 4 for s in STYLES)  # four people
            assert len(styles) == per_style * len(STYLES) * 4
    for examples in (train, test):
        styled = {s: [ex.text for ex in examples if ex.style == s] for s in STYLES}
        assert all(t.startswith("Q: ") and t.endswith("\nA:") for t in styled["qa"])
        assert not any("Q:" in t or "Answer:" in t for t in styled["fill_in"])
        assert all(t.endswith("\nAnswer:") and not t.startswith("Q:") for t in styled["instruction"])
    # no unseen wording is trained, not even up to case and punctuation, nor contained in a train template
    trained = [_words(t) for a in ATTRIBUTES.values() for ts in a.train.values() for t in ts]
    unseen = [_words(t) for a in ATTRIBUTES.values() for ts in a.test.values() for t in ts]
    assert not any(u in t for u in unseen for t in trained)
    assert len(set(trained)) == len(trained) and len(set(unseen)) == len(unseen)


def test_qa_only_train_styles_give_the_first_train_set(data_dirs):
    full = build_biographies(people=3, **data_dirs)
    qa = build_biographies(people=3, train_styles=["qa"], **data_dirs)
    assert qa.examples("test") == full.examples("test")  # the unseen split does not move
    assert qa.source["train_styles"] == ["qa"] and full.source["train_styles"] == list(STYLES)
    assert [ex for ex in full.examples("train") if ex.style == "qa"] != []
    assert {ex.text for ex in qa.examples("train")} == {
        ex.text for ex in full.examples("train") if ex.style == "qa"
    }
    assert len(qa.examples("train")) == 4 * 6 * 3  # 4 Q/A templates, 6 attributes, 3 people
    with pytest.raises(SaelignError, match="train_styles.*choose one or more of qa, fill_in, instruction"):
        build_biographies(people=3, train_styles=["essay"], **data_dirs)


def test_options_and_errors(data_dirs, tmp_path):
    onto = build_ontology("biographies", people=3, attributes=["major", "employer"], **data_dirs)
    assert onto.concept_names == ["major", "employer"]
    with pytest.raises(SaelignError, match="unknown attribute.*hometown"):
        build_biographies(attributes=["hometown", "major"], **data_dirs)
    with pytest.raises(SaelignError, match="people=100 is too many"):
        build_biographies(people=100, first_names=4, last_names=4, **data_dirs)
    bad = tmp_path / "bad.first"
    bad.write_text("JAMES 3.3\n", encoding="ascii")
    with pytest.raises(SaelignError, match=r"bad.first:1: expected `NAME frequency cumulative rank`"):
        read_census_names(bad, 10)
    assert read_census_names(data_dirs["names_dir"] / NAMES_FILES["last"], 3) == [
        "Smith",
        "Johnson",
        "Williams",
    ]


@pytest.mark.slow
def test_biographies_from_the_pinned_lists():
    onto = build_biographies(people=200)
    people = [e.entity for e in onto.concepts[0].entities]
    assert len(set(people)) == 200 and all(p.replace(" ", "").isalpha() for p in people)
    assert (
        len({e.answer for e in onto.concepts[1].entities}) >= 20
    )  # birth cities spread over the 40 capitals
