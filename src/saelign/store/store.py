"""On-disk activation store: `shard_NNNNN.safetensors` files plus a `manifest.json`, written shard by shard.

Each shard holds `activations [n, d]` (store dtype), `token_ids [n] int32`, `context_ids [n] int64` (index of the
context in the deterministic corpus stream) and `positions [n] int32`. Every shard but the last holds exactly
`shard_tokens` rows. The manifest is rewritten (atomically) after every shard, so an interrupted capture leaves a
valid prefix that a rerun continues from; `complete` is set only when the capture finished.

A capture of N processes writes one such store per rank in `part-RRR-of-NNN/` subfolders, then one manifest
over all of them (`merge_parts`): its shard entries name their part folder."""

import hashlib
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from saelign.errors import SaelignError
from saelign.io import atomic_path, ensure_writable_dir, read_json, write_json_atomic
from saelign.progress import logger

FORMAT = "saelign-activations"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_RE = re.compile(r"shard_\d{5}\.safetensors")
SHARD_ENTRY_RE = re.compile(r"(part-\d{3}-of-\d{3}/)?shard_\d{5}\.safetensors")  # a merged store names the part
TEMP_RE = re.compile(r"\.(shard_\d{5}\.safetensors|manifest\.json)\..+\.tmp")  # io.atomic_path's
# Manifest keys that identify what a store contains; a rerun with any of them changed must not reuse the store.
IDENTITY_KEYS = ("format", "version", "model", "model_dtype", "hookpoint", "d_in", "dtype", "tokenizer",
                 "context_length", "shard_tokens", "corpus", "masking")
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        hint = "a capture is still starting or failed before its first shard" if Path(path).is_dir() else "the folder does not exist"
        raise SaelignError(f"no activation store at {path}: {MANIFEST} is missing ({hint}); "
                           "run `saelign capture` to create it, or pass the folder of one hookpoint's store")
    manifest = read_json(manifest_path, "activation store manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SaelignError(f"{manifest_path} is not a saelign activation store manifest; recapture into a new folder")
    if manifest.get("version") != FORMAT_VERSION:
        raise SaelignError(f"{manifest_path} has store format version {manifest.get('version')}, this saelign reads "
                           f"version {FORMAT_VERSION}; recapture with this version")
    _check_fields(manifest, manifest_path)
    return manifest


def _count(value: Any, positive: bool = False) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= (1 if positive else 0)


def _check_fields(manifest: dict[str, Any], path: Path) -> None:
    """The fields readers use, with the types they assume: a hand-edited or damaged manifest is named here."""
    problems = [f"{key} must be a positive integer" for key in ("d_in", "shard_tokens")
                if not _count(manifest.get(key), positive=True)]
    problems += [] if _count(manifest.get("num_tokens")) else ["num_tokens must be an integer >= 0"]
    problems += [] if isinstance(manifest.get("hookpoint"), str) else ["hookpoint must be a string"]
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        problems.append("shards must be a list")
    else:
        for i, shard in enumerate(shards):
            if not (isinstance(shard, dict) and isinstance(shard.get("file"), str)
                    and SHARD_ENTRY_RE.fullmatch(shard["file"]) and _count(shard.get("num_tokens"))
                    and _count(shard.get("bytes")) and isinstance(shard.get("sha256"), str)):
                problems.append(f"shards[{i}] needs file (shard_NNNNN.safetensors), num_tokens, bytes and sha256")
                break
    if problems:
        raise SaelignError(f"{path} is damaged: {problems[0]}; recapture into a new folder (or restore the file)")


class StoreWriter:
    """Appends rows to one hookpoint's store, resuming after the rows already on disk.
    `header` holds the identity keys. On open, an existing store must have the same identity; its full shards
    are kept (their files checked by size) and anything after the first missing or short one is dropped."""

    def __init__(self, path: str | Path, header: dict[str, Any], token_budget: int | None) -> None:
        self.path = ensure_writable_dir(path)
        self.header = {k: header[k] for k in IDENTITY_KEYS}
        self.shard_tokens = int(header["shard_tokens"])
        self.dtype = STORE_DTYPES[header["dtype"]]
        self.token_budget = token_budget
        self.shards: list[dict[str, Any]] = []
        self.done = False
        self._pending: list[dict[str, torch.Tensor]] = []
        self._pending_rows = 0
        if (self.path / MANIFEST).is_file():
            self._resume(read_manifest(self.path))
        self._remove_unlisted_shards()

    @property
    def rows(self) -> int:
        """Rows on disk; the next row this writer accepts has this global index."""
        return sum(s["num_tokens"] for s in self.shards)

    def _resume(self, old: dict[str, Any]) -> None:
        _check_identity(self.path, old, self.header)
        target = self.token_budget
        if old.get("complete") and target is not None and old["num_tokens"] > target:
            raise SaelignError(f"{self.path} already holds {old['num_tokens']} tokens, more than --token-budget "
                               f"{target}; choose another --out or delete that folder")
        intact = [_intact(self.path, shard) for shard in old["shards"]]
        finished = old.get("complete") and (old.get("exhausted") or old["num_tokens"] == target)
        if finished and all(intact):
            self.shards, self.done = list(old["shards"]), True
            return
        if finished:  # a shard went missing or was damaged since: recapture from there (the order is fixed)
            logger.warning(f"{self.path}: shard {old['shards'][intact.index(False)]['file']} is missing or "
                           "damaged; recapturing from it")
        for shard, ok in zip(old["shards"], intact, strict=True):
            if shard["num_tokens"] != self.shard_tokens or not ok:
                break
            self.shards.append(shard)

    def _remove_unlisted_shards(self) -> None:
        _remove_unlisted_shards(self.path, self.shards)

    def add(self, first_row: int, rows: dict[str, torch.Tensor]) -> None:
        """Append rows whose first has global index `first_row`, skipping those already stored."""
        skip = self.rows + self._pending_rows - first_row
        n = rows["token_ids"].shape[0]
        if self.done or skip >= n:
            return
        if skip < 0:
            raise RuntimeError(f"row gap: store has {self.rows + self._pending_rows} rows, batch starts at {first_row}")
        chunk = {k: v[skip:].to("cpu", self.dtype if k == "activations" else v.dtype) for k, v in rows.items()}
        if not bool(torch.isfinite(chunk["activations"]).all()):  # float16 overflows above 65504
            raise SaelignError(f"activations for {self.path} overflow the store dtype {self.header['dtype']}; "
                               "capture with --store-dtype float32")
        self._pending.append(chunk)
        self._pending_rows += n - skip
        while self._pending_rows >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def _flush(self, n: int) -> None:
        merged = {k: torch.cat([p[k] for p in self._pending]) for k in self._pending[0]}
        shard = {k: v[:n].contiguous() for k, v in merged.items()}
        rest = {k: v[n:].clone() for k, v in merged.items()}  # a copy, so the merged buffer can be freed
        self._pending = [rest] if rest["token_ids"].numel() else []
        self._pending_rows -= n
        self._write_shard(shard)

    def _write_shard(self, tensors: dict[str, torch.Tensor]) -> None:
        data = save(tensors, metadata={"format": FORMAT})  # one key: safetensors orders several at random
        name = f"shard_{len(self.shards):05d}.safetensors"
        with atomic_path(self.path / name) as tmp:
            tmp.write_bytes(data)
        self.shards.append({"file": name, "num_tokens": int(tensors["token_ids"].shape[0]), "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})
        self._write_manifest(complete=False, exhausted=False)

    def finish(self, exhausted: bool, extra: dict[str, Any] | None = None) -> None:
        """Write the last (partial) shard and mark the store complete."""
        if self.done:
            return
        if self._pending_rows:
            self._flush(self._pending_rows)
        if not self.shards:
            raise SaelignError(f"capture produced no tokens for {self.path} (every position was masked); "
                               "use a longer --context-length or a corpus with more text")
        self._write_manifest(complete=True, exhausted=exhausted, extra=extra)
        self.done = True

    def _write_manifest(self, complete: bool, exhausted: bool, extra: dict[str, Any] | None = None) -> None:
        manifest = {**self.header, "num_tokens": self.rows, "token_budget": self.token_budget,
                    "complete": complete, "exhausted": exhausted, "shards": self.shards, **(extra or {})}
        write_json_atomic(self.path / MANIFEST, manifest)


def _intact(path: Path, shard: dict[str, Any]) -> bool:
    """The shard file is there with the manifest's size (a damaged one of the same size fails the loader's
    sha256 check, whose advice is to delete it, after which this sees it missing)."""
    file = path / shard["file"]
    return file.is_file() and file.stat().st_size == shard["bytes"]


def _check_identity(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in IDENTITY_KEYS if old.get(k) != new.get(k)]
    if diff:
        raise SaelignError(f"{path} holds a store made with different settings ({'; '.join(diff)}); "
                           "choose another --out or delete that folder")


def _remove_unlisted_shards(path: Path, shards: list[dict[str, Any]]) -> None:
    """Remove shards past the resume point, and temp files of writes a crash cut short (shard-sized)."""
    listed = {s["file"] for s in shards}
    for file in path.iterdir():
        if (SHARD_RE.fullmatch(file.name) and file.name not in listed) or TEMP_RE.fullmatch(file.name):
            file.unlink()


def finished_store(path: Path, header: dict[str, Any], token_budget: int | None) -> bool:
    """Whether `path` holds a finished store of this identity for this budget (another identity: an error)."""
    if not (path / MANIFEST).is_file():
        return False
    old = read_manifest(path)
    _check_identity(path, old, header)
    finished = bool(old.get("complete")) and (bool(old.get("exhausted")) or old["num_tokens"] == token_budget)
    return finished and all(_intact(path, shard) for shard in old["shards"])  # else the parts repair it


def part_folder(rank: int, world_size: int) -> str:
    return f"part-{rank:03d}-of-{world_size:03d}"


def merge_parts(path: Path, world_size: int, token_budget: int | None) -> int:
    """Write `path`'s manifest over the complete per-rank stores in its part folders; return its token count.
    Shard files of an earlier single-process capture into `path` are removed: the manifest no longer lists
    them."""
    parts = [path / part_folder(r, world_size) for r in range(world_size)]
    manifests = [read_manifest(p) for p in parts]
    unfinished = [str(p) for p, m in zip(parts, manifests, strict=True) if not m.get("complete")]
    if unfinished:
        raise SaelignError(f"the capture parts {', '.join(unfinished)} are unfinished; rerun the same "
                           "torchrun command to complete them")
    shards = [{**s, "file": f"{p.name}/{s['file']}"}
              for p, m in zip(parts, manifests, strict=True) for s in m["shards"]]
    tokens = sum(s["num_tokens"] for s in shards)
    write_json_atomic(path / MANIFEST, {**{k: manifests[0][k] for k in IDENTITY_KEYS}, "num_tokens": tokens,
                                        "token_budget": token_budget, "complete": True,
                                        "exhausted": token_budget is None or tokens < token_budget,
                                        "shards": shards, "parts": [p.name for p in parts]})
    _remove_unlisted_shards(path, shards)
    return tokens
