"""Atomic file writes: every artifact is written to a temp file in the same folder, then renamed.

A crash therefore never leaves a half-written file under its final name.
"""

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saelign.errors import SaelignError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600, and writers such as safetensors' save_file replace the file: set the mode last.
        share(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_temp_files(path: str | Path) -> None:
    """Delete the temp files `atomic_path` made for `path` and a killed process left behind."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)


def _umask() -> int:
    umask = os.umask(0)  # the only way to read it; set straight back
    os.umask(umask)
    return umask


def share(path: str | Path) -> None:
    """Give a file, or a folder and everything in it, the mode the user's umask gives a new file or folder
    (0644 / 0755 under umask 022). Temporary files and folders are private (mkstemp, mkdtemp: 0600, 0700) and
    safetensors writes 0600 files, so every artifact made that way passes through here before it is renamed
    into place: a shared model, SAE or adapter folder stays readable to others."""
    path = Path(path)
    umask = _umask()
    for item in [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else ())]:
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)


def ensure_writable_dir(directory: str | Path) -> Path:
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SaelignError(f"cannot create output directory {directory}: {exc.strerror}; choose a writable path") from exc
    if not os.access(directory, os.W_OK):
        raise SaelignError(f"output directory {directory} is not writable; choose a writable path")
    return directory


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise SaelignError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SaelignError(f"{what} {path} is not UTF-8 text (byte {exc.start}); fix or regenerate it") from exc
    except json.JSONDecodeError as exc:
        raise SaelignError(f"{what} {path} is not valid JSON (line {exc.lineno}: {exc.msg}); fix or regenerate it") from exc
    except RecursionError as exc:
        raise SaelignError(f"{what} {path} nests too deeply to be read; fix or regenerate it") from exc


def read_json_object(path: str | Path, what: str = "JSON file") -> dict[str, Any]:
    """`read_json` of a file whose top level must be an object (a record, a config, a manifest)."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise SaelignError(f"{what} {path} is not a JSON object (its top level is a {type(data).__name__}); "
                           "regenerate it")
    return data


def save_tensors_atomic(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata=metadata)


def load_tensors(path: str | Path, what: str = "safetensors file") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise SaelignError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for truncated/corrupt headers
        raise SaelignError(f"{what} {path} is corrupt or truncated ({exc}); delete it and regenerate") from exc


def iter_jsonl(path: str | Path, what: str = "JSONL file") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; bad lines are errors naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise SaelignError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SaelignError(f"{what} {path} is not UTF-8 text (byte {exc.start}); convert it to UTF-8") from exc
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SaelignError(f"{path}:{number}: not valid JSON ({exc.msg}); each line must be one JSON object") from exc
        if not isinstance(record, dict):
            raise SaelignError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
        yield number, record
