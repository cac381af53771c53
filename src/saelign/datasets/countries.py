"""countryinfo's country records: SAILS's country prompts and capital facts, AlignSAE's relations ontology."""

import json
from pathlib import Path
from typing import Any

from saelign.datasets.registry import fetch_countryinfo
from saelign.errors import SaelignError, require


def load_countries(folder: Path | None = None) -> list[dict[str, Any]]:
    """The records (with a `name`) of a countryinfo data folder, by file name; default: the pinned release."""
    folder = folder or fetch_countryinfo()
    files = sorted(folder.glob("*.json"))
    require(files, f"{folder} has no countryinfo *.json files; delete it so it is fetched again")
    countries = []
    for path in files:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SaelignError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); delete {folder}") from exc
        if not isinstance(record, dict) or not isinstance(record.get("name"), str):
            raise SaelignError(f"{path}: expected a country record with a `name`")
        countries.append(record)
    return countries
