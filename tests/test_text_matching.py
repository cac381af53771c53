"""Normalised words and the answer matcher's two documented meanings."""

from __future__ import annotations

import pytest

from saelign.text import answer_matches, lenient_match, normalize


def test_normalize_drops_case_punctuation_and_spacing_and_folds_accents_on_request():
    assert normalize("The  Côte-d'Ivoire!", fold_accents=True) == "the cote d ivoire"
    assert normalize("The  Côte-d'Ivoire!") == "the c te d ivoire"  # split hashing has always done so
    assert normalize("Hello,   WORLD!! ２０２４") == "hello world 2024"  # NFKC: full-width digits are digits


@pytest.mark.parametrize("said, answer, aliases, ok", [
    (" Paris.\n\nThe", "Paris", (), True),
    (" the Croatian kuna, which", "kuna", (), True),
    (" an Albanian", "Albanian", (), True),
    (" São Tomé", "Sao Tome", (), True),
    (" New York, USA", "New Jersey", (), False),
    (" Buenos", "Buenos Aires", (), False),
    (" the capital of Poland", "Warsaw", (), False),
    (" Bonn", "Berlin", ("Bonn",), True),
    (" The Côte-d'Ivoire!", "Cote d Ivoire", (), True),
])
def test_opening_match(said, answer, aliases, ok):
    assert answer_matches(said, answer, aliases) is ok


@pytest.mark.parametrize("answer, expected, ok", [
    ("The capital of Colombia is Bogota.", "Bogotá", True),
    ("It is Washington, D.C.", "Washington D.C.", True),
    ("PARIS!", "Paris", True),
    ("Parisian food is great.", "Paris", False),
    ("I do not know.", "Rome", False),
    ("anything", "", False),
])
def test_match_anywhere_folds_accents_and_needs_whole_words(answer, expected, ok):
    assert answer_matches(answer, expected, anywhere=True) is ok


def test_the_two_meanings_differ_where_documented():
    said = "I think the answer is Warsaw, the capital."
    assert answer_matches(said, "Warsaw", anywhere=True) and not answer_matches(said, "Warsaw")
    assert answer_matches(said, "Poznan", ("Warsaw",), anywhere=True)


@pytest.mark.parametrize(
    ("said", "answer", "ok"),
    [
        (" Paris, the capital", "Paris", True),  # the gold anywhere in the generation
        ("Par", "Paris", True),  # the generation inside the gold: a fragment counts
        ("  PARIS\n", "paris", True),
        (" Lyon", "Paris", False),
        ("   ", "Paris", False),  # an empty generation is inside every gold but never a success
        (" Bogota", "Bogotá", False),  # no accent folding, unlike answer_matches
    ],
)
def test_lenient_match_is_the_authors_containment_rule(said, answer, ok):
    assert lenient_match(said, answer) is ok


def test_lenient_accepts_what_strict_refuses():
    said = "I think the answer is Warsaw"
    assert lenient_match(said, "Warsaw") and not answer_matches(said, "Warsaw")
    assert lenient_match("Wars", "Warsaw") and not answer_matches("Wars", "Warsaw")
