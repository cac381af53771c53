"""The pin table: every registry file in one place, each pin complete, and `Pin.fetch` handing the client its
pin (no network: the download is replaced by a local archive)."""

from __future__ import annotations

import zipfile

from saelign.datasets import fetch
from saelign.datasets.registry import PINS, QUESTIONS_WORDS, Pin


def test_registry_pins_are_complete_and_distinct():
    assert len({(p.package, p.version) for p in PINS}) == len(PINS)
    for pin in PINS:
        assert len(pin.sha256) == 64 and set(pin.sha256) <= set("0123456789abcdef")
        assert pin.members and pin.version
        assert pin.name.startswith(("PyPI ", "npm ")) and pin.version in pin.name
    gensim = next(p for p in PINS if p.package == "gensim")
    assert gensim.members == (QUESTIONS_WORDS,) and "--platform" in gensim.pip_args  # one sha everywhere


def test_pin_fetch_passes_its_pin_to_the_client(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(fetch, "download_pypi", lambda *a: calls.append(("pypi", *a)) or archive)
    monkeypatch.setattr(fetch, "download_npm", lambda *a: calls.append(("npm", *a)) or archive)
    monkeypatch.setenv("SAELIGN_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pkg/data/x.txt", "hello")
    sha = fetch.sha256_file(archive)
    folder = Pin("pkg", "1.0", sha, ("pkg/data/*.txt",), sdist=True, pip_args=("--abi", "x")).fetch()
    assert (folder / "pkg/data/x.txt").read_text() == "hello"
    assert calls[0][:3] == ("pypi", "pkg", "1.0") and calls[0][4:] == (True, ("--abi", "x"))
    Pin("@s/pkg", "2.0", sha, ("pkg/data/*.txt",), npm=True).fetch()
    assert calls[1][:3] == ("npm", "@s/pkg", "2.0")
