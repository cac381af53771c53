"""The ontology format: parsing, validation errors, expansion into prompts, concept positions, round trips."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from saelign.align.ontology import (
    Ontology,
    concept_token_index,
    load_ontology,
    ontology_from_dict,
    save_ontology,
)
from saelign.errors import SaelignError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "ontologies"


def relations_dict() -> dict:
    return {
        "name": "facts",
        "require_answers": True,
        "source": {"note": "hand-made", "numbers": [1, 2]},
        "concepts": [
            {"name": "capital",
             "templates": {"train": ["The capital of {entity} is", "{entity}'s capital city is"],
                           "test": ["Q: capital of {entity}?\nA:"]},
             "entities": [{"entity": "France", "answer": "Paris"}, {"entity": "Japan", "answer": "Tokyo"},
                          {"entity": "Egypt", "answer": "Cairo", "aliases": ["Al-Qahira"]}]},
            {"name": "language",
             "templates": {"train": ["People in {entity} speak", "The language of {entity} is"], "test": []},
             "entities": [{"entity": "France", "answer": "French"}, {"entity": "Japan", "answer": "Japanese"}]},
            {"name": "mood", "examples": [{"text": "I am so happy", "answer": "yes", "split": "test"},
                                         {"text": "Great news today", "answer": "yes"}]},
        ],
    }


def write_yaml(tmp_path: Path, data: object, name: str = "onto.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_expansion_counts_and_fields():
    onto = ontology_from_dict(relations_dict())
    train, test = onto.examples("train"), onto.examples("test")
    # capital: 3 entities x 2 train templates; language: 2 x 2; mood: the one example without a split lands in
    # train or test by its text hash (test_fraction 0.2), the explicit test one in test.
    assert sum(e.concept == "capital" for e in train) == 6 and sum(e.concept == "capital" for e in test) == 3
    assert sum(e.concept == "language" for e in train) == 4 and sum(e.concept == "language" for e in test) == 0
    assert len(onto.examples(None)) == len(train) + len(test) == 6 + 3 + 4 + 2
    egypt = next(e for e in test if e.entity == "Egypt")
    assert egypt.text == "Q: capital of Egypt?\nA:" and egypt.answer == "Cairo" and egypt.aliases == ("Al-Qahira",)
    assert egypt.concept_index == 0 and egypt.template_id == "capital/test/0" and egypt.split == "test"
    assert {e.concept_index for e in train if e.concept == "language"} == {1}
    assert next(e for e in test if e.concept == "mood").text == "I am so happy"


def test_styles_label_train_and_unseen_prompts_and_round_trip(tmp_path):
    data = relations_dict()
    templates = data["concepts"][0]["templates"]
    templates.update(test=["Q: capital of {entity}?\nA:", "{entity} has its capital in"], test_styles=["qa", "fill_in"])
    onto = ontology_from_dict(data)
    styles = {(e.entity, e.style) for e in onto.examples("test") if e.concept == "capital"}
    assert styles == {(c, s) for c in ("France", "Japan", "Egypt") for s in ("qa", "fill_in")}
    assert all(e.style is None for e in onto.examples("train"))  # no train_styles: train prompts have none
    assert load_ontology(save_ontology(onto, tmp_path / "o.yaml")) == onto
    templates.update(train_styles=["fill_in", "qa"])
    onto = ontology_from_dict(data)
    train = {(e.text, e.style) for e in onto.examples("train") if e.concept == "capital"}
    assert ("The capital of Japan is", "fill_in") in train and ("Japan's capital city is", "qa") in train
    assert next(e for e in onto.examples("test") if e.entity == "Japan").style == "qa"  # test styles unchanged
    assert load_ontology(save_ontology(onto, tmp_path / "o2.yaml")) == onto


def test_template_split_is_disjoint_and_ids_distinct():
    onto = ontology_from_dict(relations_dict())
    train = [e for e in onto.examples("train") if e.template_id]
    test = [e for e in onto.examples("test") if e.template_id]
    assert {e.text for e in train}.isdisjoint({e.text for e in test})
    assert {e.template_id for e in train}.isdisjoint({e.template_id for e in test})
    # within a split, the same template id always means the same template text
    by_id: dict[str, set[str]] = {}
    for e in train:
        by_id.setdefault(e.template_id, set()).add(e.text.replace(e.entity, "{entity}"))
    assert all(len(v) == 1 for v in by_id.values()) and len(by_id) == 4


def test_hashed_split_is_stable_and_follows_test_fraction():
    data = {"name": "s", "test_fraction": 0.5, "concepts": [
        {"name": "a", "examples": [{"text": f"alpha sentence {i}"} for i in range(200)]},
        {"name": "b", "examples": [{"text": f"beta sentence {i}"} for i in range(200)]}]}
    onto = ontology_from_dict(data)
    test = onto.examples("test")
    assert 150 < len(test) < 250  # ~half of 400
    assert [e.text for e in test] == [e.text for e in ontology_from_dict(data).examples("test")]
    data["test_fraction"] = 0.0
    assert ontology_from_dict(data).examples("test") == []


@pytest.mark.parametrize("position, template, expected_span", [
    ("last_prompt_token", "The capital of {entity} is ", "The capital of Côte d'Ivoire is"),
    ("entity_last_token", "Is {entity} in {entity} nice?", "Is Côte d'Ivoire in Côte d'Ivoire"),
    ("marker", "We saw {entity}[[*]] from the plane", "We saw Côte d'Ivoire"),
])
def test_char_index_per_position(position, template, expected_span):
    data = {"name": "p", "position": position, "templates": {"train": [template]}, "concepts": [
        {"name": "a", "entities": [{"entity": "Côte d'Ivoire"}]}, {"name": "b", "entities": [{"entity": "Mali"}]}]}
    ex = ontology_from_dict(data).examples("train")[0]
    assert ex.text[: ex.char_index + 1] == expected_span
    assert "[[*]]" not in ex.text and "{entity}" not in ex.text


def test_concept_token_index_maps_character_to_token(tokenizer):
    text = "Paris is the capital of France and Berlin"
    for word in ("Paris", "capital", "France", "Berlin"):
        char = text.index(word) + len(word) - 1
        idx = concept_token_index(tokenizer, text, char)
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids[: idx + 1]) == text[: char + 1]


def test_yaml_and_json_round_trip(tmp_path):
    onto = ontology_from_dict(relations_dict())
    for name in ("o.yaml", "o.json"):
        path = save_ontology(onto, tmp_path / name)
        assert load_ontology(path) == onto
    assert json.loads((tmp_path / "o.json").read_text())["concepts"][0]["entities"][2]["aliases"] == ["Al-Qahira"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json", "o.yaml"]  # no temp files left behind


def test_save_with_unknown_suffix_writes_nothing(tmp_path):
    with pytest.raises(SaelignError, match=r"\.yaml, \.yml or \.json"):
        save_ontology(ontology_from_dict(relations_dict()), tmp_path / "o.txt")
    assert list(tmp_path.iterdir()) == []


def _mutate(fn):
    data = relations_dict()
    fn(data)
    return data


BAD_CASES = {
    "unknown top-level field": (lambda d: d.update(concpets=[]), ["unknown field(s) concpets", "valid fields:", "concepts"]),
    "unknown entity field": (lambda d: d["concepts"][0]["entities"][1].update(anwser="Tokyo"),
                             ["concepts[0] ('capital').entities[1]", "anwser", "valid fields: aliases, answer, entity"]),
    "empty concept": (lambda d: d["concepts"][2].update(examples=[]), ["concepts[2] ('mood')", "concept is empty"]),
    "duplicate names": (lambda d: d["concepts"][1].update(name="capital"), ["concepts[1] ('capital')", "duplicate concept name"]),
    "template without placeholder": (lambda d: d["concepts"][0]["templates"]["train"].append("The capital is"),
                                     ["templates.train[2]", "lacks the {entity} placeholder"]),
    "missing answer": (lambda d: d["concepts"][1]["entities"][0].pop("answer"),
                       ["entities[0] ('France')", "missing `answer`", "require_answers"]),
    "missing example answer": (lambda d: d["concepts"][2]["examples"][1].pop("answer"), ["examples[1]", "missing `answer`"]),
    "one concept": (lambda d: d.update(concepts=d["concepts"][:1]), ["at least 2 concepts"]),
    "train/test overlap": (lambda d: d["concepts"][0]["templates"]["test"].append("The capital of {entity} is"),
                           ["both train and test", "unseen"]),
    "no train templates": (lambda d: d["concepts"][0]["templates"].update(train=[]), ["no train templates"]),
    "entities without templates": (lambda d: d["concepts"][1].pop("templates"), ["has entities but no templates"]),
    "examples and entities": (lambda d: d["concepts"][2].update(entities=[{"entity": "x", "answer": "y"}]),
                              ["both `examples` and `entities`"]),
    "duplicate entity": (lambda d: d["concepts"][1]["entities"].append({"entity": "France", "answer": "x"}),
                         ["duplicate entity 'France'"]),
    "bad position": (lambda d: d.update(position="first_token"), ["position 'first_token'", "entity_last_token"]),
    "marker missing": (lambda d: d.update(position="marker"), ["exactly one '[[*]]'"]),
    "conflicting labels": (lambda d: d["concepts"][1]["templates"].update(train=["The capital of {entity} is"]),
                           ["'The capital of France is' is labelled both 'capital' and 'language'"]),
    "bad split": (lambda d: d["concepts"][2]["examples"][0].update(split="dev"), ["split: 'dev' is not train or test"]),
    "wrong type": (lambda d: d["concepts"][0].update(entities={"France": "Paris"}), ["entities: expected a list"]),
    "missing name": (lambda d: d.pop("name"), ["missing required field(s) name"]),
    "test_fraction": (lambda d: d.update(test_fraction=1.5), ["test_fraction 1.5 must be in [0, 1)"]),
    "styles per test template": (
        lambda d: d["concepts"][0]["templates"].update(test_styles=["qa", "fill_in"]),
        ["templates.test_styles: 2 style(s) for 1 test template(s)", "one style per"]),
    "styles per train template": (
        lambda d: d["concepts"][0]["templates"].update(train_styles=["qa"]),
        ["templates.train_styles: 1 style(s) for 2 train template(s)", "one style per train template"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_gives_clear_error_naming_file_and_field(tmp_path, case):
    mutate, fragments = BAD_CASES[case]
    path = write_yaml(tmp_path, _mutate(mutate))
    before = path.read_bytes()
    with pytest.raises(SaelignError) as err:
        load_ontology(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert path.read_bytes() == before  # loading never touches the file


def test_unparseable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nconcepts: [\n  - oops: {", encoding="utf-8")
    with pytest.raises(SaelignError, match=r"bad.yaml: not valid YAML \(line \d+"):
        load_ontology(bad)
    (tmp_path / "bad.json").write_text("{\"name\": ", encoding="utf-8")
    with pytest.raises(SaelignError, match=r"not valid JSON \(line 1"):
        load_ontology(tmp_path / "bad.json")
    with pytest.raises(SaelignError, match="ontology file not found"):
        load_ontology(tmp_path / "nope.yaml")


def test_programmatic_ontology_is_validated_too():
    onto = ontology_from_dict(relations_dict())
    broken = dataclasses.replace(onto, concepts=onto.concepts[:1])
    with pytest.raises(SaelignError, match="at least 2 concepts"):
        broken.validate()
    assert isinstance(onto.validate(), Ontology)


@pytest.mark.parametrize("name", ["country_facts", "sentiment_examples", "word_classes"])
def test_example_files_load(name):
    onto = load_ontology(EXAMPLES / f"{name}.yaml")
    assert len(onto.concepts) >= 2 and onto.examples("train") and onto.examples("test")
