"""The one countryinfo reader: records in file-name order, malformed files named with their line."""

from __future__ import annotations

import json

import pytest

from saelign.datasets.countries import load_countries
from saelign.errors import SaelignError


def test_records_come_in_file_name_order_with_every_field(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps({"name": "France", "altSpellings": ["FR"], "capital": "Paris"}))
    (tmp_path / "a.json").write_text(json.dumps({"name": "Japan"}))
    (tmp_path / "notes.txt").write_text("not a record")
    assert load_countries(tmp_path) == [{"name": "Japan"}, {"name": "France", "altSpellings": ["FR"], "capital": "Paris"}]


@pytest.mark.parametrize("content, message", [("{\n  x", r"bad\.json:2: not valid JSON"),
                                              ('{"capital": "Paris"}', r"bad\.json: expected a country record"),
                                              ('["France"]', r"bad\.json: expected a country record")])
def test_malformed_records_are_named(tmp_path, content, message):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(SaelignError, match=message):
        load_countries(tmp_path)


def test_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(SaelignError, match="no countryinfo"):
        load_countries(tmp_path)
