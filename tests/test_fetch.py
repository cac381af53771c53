"""Registry fetching: hash pinning and selective, atomic extraction on archives built here (no network)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from saelign.datasets import fetch
from saelign.errors import SaelignError

FILES = {
    "pkg/data/a.txt": b"alpha",
    "pkg/data/b.txt": b"beta",
    "pkg/data/c.json": b"{}",
    "pkg/code.py": b"print(1)",
}


def make_wheel(path: Path, files: dict[str, bytes] = FILES) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def make_tgz(path: Path, files: dict[str, bytes] = FILES) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def extracted_files(target: Path) -> dict[str, bytes]:
    return {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*")
            if p.is_file() and p.name != fetch.MARKER}


@pytest.mark.parametrize("maker", [make_wheel, make_tgz])
def test_extract_only_matching_members(tmp_path, maker):
    archive = maker(tmp_path / ("x.whl" if maker is make_wheel else "x.tgz"))
    target = fetch.extract_members(archive, ["pkg/data/*.txt"], tmp_path / "out")
    assert extracted_files(target) == {"pkg/data/a.txt": b"alpha", "pkg/data/b.txt": b"beta"}
    assert fetch.extracted_patterns(target) == {"pkg/data/*.txt"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging dir left behind


def test_pattern_without_match_is_an_error_and_leaves_no_folder(tmp_path):
    archive = make_wheel(tmp_path / "x.whl")
    with pytest.raises(SaelignError, match="no member matching pkg/missing/\\*"):
        fetch.extract_members(archive, ["pkg/data/*.txt", "pkg/missing/*"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["x.whl"]


def test_unsafe_member_path_is_refused(tmp_path):
    archive = make_tgz(tmp_path / "evil.tgz", {"../escape.txt": b"x"})
    with pytest.raises(SaelignError, match="unsafe member path"):
        fetch.extract_members(archive, ["*.txt"], tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_not_an_archive(tmp_path):
    bogus = tmp_path / "x.whl"
    bogus.write_bytes(b"not an archive")
    with pytest.raises(SaelignError, match="neither a zip/wheel nor a tar"):
        fetch.extract_members(bogus, ["*"], tmp_path / "out")


def test_verify_sha256(tmp_path):
    archive = make_wheel(tmp_path / "x.whl")
    good = hashlib.sha256(archive.read_bytes()).hexdigest()
    fetch.verify_sha256(archive, good.upper(), "pkg 1.0")
    with pytest.raises(SaelignError, match=f"pkg 1.0: downloaded x.whl has sha256 {good}, expected the pinned 0+"):
        fetch.verify_sha256(archive, "0" * 64, "pkg 1.0")


def test_fetch_uses_cache_and_widens_to_union(tmp_path, monkeypatch):
    monkeypatch.setenv("SAELIGN_CACHE", str(tmp_path / "cache"))
    source = make_tgz(tmp_path / "src.tgz")
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    downloads: list[Path] = []

    def download(dest: Path) -> Path:
        downloads.append(dest)
        (dest / "src.tgz").write_bytes(source.read_bytes())
        return dest / "src.tgz"

    first = fetch._fetch("@scope/pkg", "1.0", ["pkg/data/*.txt"], sha, download)
    assert first == tmp_path / "cache" / "data" / "scope-pkg-1.0"
    again = fetch._fetch("@scope/pkg", "1.0", ["pkg/data/*.txt"], sha, download)
    assert again == first and len(downloads) == 1  # covered patterns: no second download
    fetch._fetch("@scope/pkg", "1.0", ["pkg/data/*.json"], sha, download)
    assert len(downloads) == 2
    assert set(extracted_files(first)) == {"pkg/data/a.txt", "pkg/data/b.txt", "pkg/data/c.json"}
    assert json.loads((first / fetch.MARKER).read_text())["patterns"] == ["pkg/data/*.json", "pkg/data/*.txt"]


def test_fetch_with_wrong_hash_extracts_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SAELIGN_CACHE", str(tmp_path / "cache"))
    source = make_wheel(tmp_path / "src.whl")

    def download(dest: Path) -> Path:
        (dest / "src.whl").write_bytes(source.read_bytes())
        return dest / "src.whl"

    with pytest.raises(SaelignError, match="pkg 2.0: downloaded src.whl has sha256"):
        fetch._fetch("pkg", "2.0", ["pkg/data/*"], "f" * 64, download)
    assert not fetch.data_dir("pkg", "2.0").exists()


def test_missing_client_is_a_clear_error(tmp_path):
    with pytest.raises(SaelignError, match="`no-such-client-xyz` is not installed"):
        fetch._run_client(["no-such-client-xyz", "pack"], tmp_path, "npm thing@1", "install it")


def test_failing_client_says_network_is_needed(tmp_path):
    with pytest.raises(SaelignError, match="needs network access to the registry once"):
        fetch._run_client(["false"], tmp_path, "PyPI thing==1", "retry")

