"""Read an activation store: validated shards, a streaming shuffled batch loader, and rows with their tokens.

Shuffling is two-level so memory stays bounded whatever the corpus size: the shard order is permuted, and rows
are permuted within windows of a few consecutive shards (`buffer_tokens`). Every row is yielded exactly once per
epoch."""

import hashlib
import mmap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from saelign.errors import SaelignError, require
from saelign.progress import logger
from saelign.store.store import read_manifest

COLUMNS = {"activations": None, "token_ids": torch.int32, "context_ids": torch.int64, "positions": torch.int32}


class ActivationStore:
    """One hookpoint's store on disk. `verify` checks each shard's sha256 as it is read."""

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = read_manifest(self.path)
        self.verify = verify
        self.shards: list[dict[str, Any]] = self.manifest["shards"]
        if not self.shards:
            raise SaelignError(f"activation store {self.path} has no shards yet; rerun the same `saelign capture` command")
        self.d_in, self.shard_tokens = int(self.manifest["d_in"]), int(self.manifest["shard_tokens"])
        self.num_tokens, self.hookpoint = int(self.manifest["num_tokens"]), str(self.manifest["hookpoint"])
        for shard in self.shards:
            file = self.path / shard["file"]
            if not file.is_file():
                raise SaelignError(f"shard {file} is missing; rerun the same `saelign capture` command to regenerate it")
            if file.stat().st_size != shard["bytes"]:
                raise SaelignError(f"shard {file} is truncated or altered ({file.stat().st_size} bytes, manifest says "
                                   f"{shard['bytes']}); rerun the same `saelign capture` command to recapture it")
        if not self.manifest.get("complete"):
            logger.warning(f"activation store {self.path} is incomplete ({self.num_tokens} tokens so far); "
                           "rerun the same `saelign capture` command to finish it")
        self.peak_buffer_rows = 0  # largest number of rows held by `batches`, for checking the memory bound

    def __len__(self) -> int:
        return self.num_tokens

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, hookpoint={self.hookpoint!r}, d_in={self.d_in}, tokens={self.num_tokens})"

    def load_shard(self, index: int) -> dict[str, torch.Tensor]:
        """All columns of one shard, checked against the manifest (activations in the store dtype)."""
        shard = self.shards[index]
        file = self.path / shard["file"]
        # Memory-mapped: hashing reads the page cache in place, no copy of the file into Python bytes.
        if self.verify:
            with file.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                if hashlib.sha256(mapped).hexdigest() != shard["sha256"]:
                    raise SaelignError(f"shard {file} is corrupt (sha256 differs from the manifest); "
                                       "delete it and rerun the same `saelign capture` command")
        try:
            tensors = load_file(file)
        except Exception as exc:  # safetensors raises several types on a damaged header
            raise SaelignError(f"shard {file} is corrupt ({exc}); delete it and rerun the same `saelign capture` command") from exc
        n = shard["num_tokens"]
        for name, dtype in COLUMNS.items():
            t = tensors.get(name)
            if t is None or t.shape[0] != n or (dtype is not None and t.dtype != dtype):
                raise SaelignError(f"shard {file}: column {name!r} is missing or has the wrong length/dtype; recapture the store")
        if tensors["activations"].shape != (n, self.d_in):
            raise SaelignError(f"shard {file} has activations of width {tensors['activations'].shape[-1]}, "
                               f"the manifest says d_in={self.d_in}; the folder mixes stores, recapture it")
        # Checked per shard, where the file can still be named (training batches mix shards).
        if not bool(torch.isfinite(tensors["activations"]).all()):
            row = int((~torch.isfinite(tensors["activations"])).any(1).nonzero()[0])
            raise SaelignError(f"shard {file} holds NaN or infinite activations (row {row}); recapture the store "
                               "into a new --out with --store-dtype float32 and the model in float32 (--dtype float32)")
        return tensors

    def batches(self, batch_size: int, shuffle: bool = True, seed: int = 0, epochs: int = 1,
                max_tokens: int | None = None, buffer_tokens: int = 131072, rank: int = 0,
                world_size: int = 1, shards: Sequence[int] | None = None) -> Iterator[torch.Tensor]:
        """Yield fp32 [batch_size, d_in] activation batches (the last of each epoch may be smaller).
        Memory holds at most max(buffer_tokens, one shard) + batch_size rows. With `world_size` > 1 each rank
        reads a disjoint subset of the shards (data parallelism). `shards` restricts reading to those shard
        indices (e.g. to hold the others out for evaluation)."""
        require(batch_size >= 1, f"batch_size must be positive, got {batch_size}")
        selected = list(range(len(self.shards))) if shards is None else list(shards)
        if not selected or any(not 0 <= i < len(self.shards) for i in selected):
            raise SaelignError(f"shards {selected} must be a non-empty subset of 0..{len(self.shards) - 1} for store {self.path}")
        require(world_size <= len(selected), f"store {self.path} has {len(self.shards)} shards, fewer than "
                                             f"{world_size} ranks; recapture with a smaller --shard-tokens")
        per_window = max(1, buffer_tokens // self.shard_tokens)
        remaining = max_tokens if max_tokens is not None else float("inf")
        for epoch in range(epochs):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(len(selected), generator=generator) if shuffle else torch.arange(len(selected))
            order = [selected[i] for i in order[rank::world_size].tolist()]
            carry = torch.empty(0, self.d_in)
            for start in range(0, len(order), per_window):
                rows = torch.cat([carry] + [self.load_shard(i)["activations"].float() for i in order[start:start + per_window]])
                self.peak_buffer_rows = max(self.peak_buffer_rows, rows.shape[0])
                perm = torch.randperm(rows.shape[0], generator=generator) if shuffle else torch.arange(rows.shape[0])
                full = rows.shape[0] // batch_size * batch_size
                for b in range(0, full, batch_size):
                    batch = rows[perm[b:b + batch_size]]
                    if remaining <= batch_size:
                        yield batch[: int(remaining)]
                        return
                    remaining -= batch_size
                    yield batch
                carry = rows[perm[full:]]
            if carry.shape[0]:
                if remaining <= carry.shape[0]:
                    yield carry[: int(remaining)]
                    return
                remaining -= carry.shape[0]
                yield carry

    def last_context(self) -> int:
        """The highest context id stored: in the last shard, or in each part's last for a capture of several
        processes (whose ranks took turns over the corpus)."""
        last = {shard["file"].rpartition("/")[0]: index for index, shard in enumerate(self.shards)}
        return max(int(self.load_shard(index)["context_ids"].max()) for index in last.values())

    def iter_rows_with_tokens(self, batch_size: int = 4096) -> Iterator[dict[str, torch.Tensor]]:
        """Rows in store order with their tokens: {"activations" fp32, "token_ids", "context_ids", "positions"}."""
        for index in range(len(self.shards)):
            shard = self.load_shard(index)
            for b in range(0, shard["token_ids"].shape[0], batch_size):
                chunk = {k: v[b:b + batch_size] for k, v in shard.items() if k in COLUMNS}
                chunk["activations"] = chunk["activations"].float()
                yield chunk
