"""Top activating contexts per latent in one streaming pass with bounded memory.

Texts are tokenised and cut into contexts of `context_length` tokens; each batch runs the model only up to the
hookpoint, is encoded by the SAE, and merged into a fixed-size buffer holding, for every latent, its n_top best
(activation, document, position, token window) so far: `topk` over the batch, concatenated with the buffer,
`topk` again. Memory is O(n_top · n_latents · window) whatever the corpus size. As in the activation store,
padding, special tokens and the first position of every context (an attention sink with an outsized residual
norm) are never candidates."""

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.errors import SaelignError, require
from saelign.models import forward_capture, resolve_hookpoints
from saelign.progress import progress
from saelign.sae import SAE
from saelign.text import pad, pad_token_id

TokenBatch = torch.Tensor | Mapping[str, torch.Tensor]
NO_TOKEN = -1  # window slots outside the context


@dataclass
class ContextExample:
    text_left: str
    token: str
    text_right: str
    activation: float
    doc_id: int
    position: int


@dataclass
class LatentScan:
    """Result of one pass: top contexts and firing frequency (share of scanned tokens where the latent is > 0)."""

    contexts: dict[int, list[ContextExample]]
    frequency: dict[int, float]
    n_tokens: int


@dataclass
class _Batch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T] bool
    doc_ids: torch.Tensor  # [B]
    offsets: torch.Tensor  # [B] position of column 0 inside its document


class TopActivationBuffer:
    """Running per-latent top-n; every tensor has a fixed shape [n_top, n_latents(, window)]."""

    def __init__(self, n_top: int, n_latents: int, window_len: int, device: torch.device | str = "cpu"):
        self.values = torch.full((n_top, n_latents), float("-inf"), device=device)
        self.doc_ids = torch.full((n_top, n_latents), -1, dtype=torch.long, device=device)
        self.positions = torch.full((n_top, n_latents), -1, dtype=torch.long, device=device)
        self.windows = torch.full((n_top, n_latents, window_len), NO_TOKEN, dtype=torch.long, device=device)

    def update(self, acts: torch.Tensor, doc_ids: torch.Tensor, positions: torch.Tensor, windows: torch.Tensor) -> None:
        """Merge N candidate rows: acts [N, n_latents], doc_ids/positions [N], windows [N, window]."""
        n_top = self.values.shape[0]
        if acts.shape[0] == 0:
            return
        batch_values, rows = acts.topk(min(n_top, acts.shape[0]), dim=0)  # [k, n_latents]
        values, pick = torch.cat([self.values, batch_values]).topk(n_top, dim=0)
        self.values = values
        self.doc_ids = torch.cat([self.doc_ids, doc_ids[rows]]).gather(0, pick)
        self.positions = torch.cat([self.positions, positions[rows]]).gather(0, pick)
        window_pick = pick.unsqueeze(-1).expand(-1, -1, self.windows.shape[-1])
        self.windows = torch.cat([self.windows, windows[rows]]).gather(0, window_pick)


def _chunk_texts(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], context_length: int,
                 batch_size: int) -> Iterator[_Batch]:
    pad_id = pad_token_id(tokenizer)
    pending: list[tuple[int, int, list[int]]] = []

    def flush() -> _Batch:
        ids, mask = pad([piece for _, _, piece in pending], pad_id)
        docs, offsets = torch.tensor([d for d, _, _ in pending]), torch.tensor([o for _, o, _ in pending])
        batch = _Batch(ids, mask.bool(), docs, offsets)
        pending.clear()
        return batch

    for doc_id, text in enumerate(texts):
        if not isinstance(text, str):
            raise SaelignError(f"input {doc_id} is a {type(text).__name__}; pass a list of strings or of token-id batches")
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # as capture tokenises
        for offset in range(0, len(ids), context_length):
            pending.append((doc_id, offset, ids[offset : offset + context_length]))
            if len(pending) == batch_size:
                yield flush()
    if pending:
        yield flush()


def _token_batches(batches: Iterable[TokenBatch]) -> Iterator[_Batch]:
    next_doc = 0
    for batch in batches:
        if isinstance(batch, Mapping):
            ids, mask = batch["input_ids"], batch.get("attention_mask")
        else:
            ids, mask = batch, None
        require(ids.ndim == 2, f"token batches must be [batch, seq] id tensors, got shape {tuple(ids.shape)}")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        docs = torch.arange(next_doc, next_doc + ids.shape[0])
        next_doc += ids.shape[0]
        yield _Batch(ids.long(), mask, docs, torch.zeros_like(docs))


def _batches(tokenizer: PreTrainedTokenizerBase, inputs: Sequence[str] | Iterable[TokenBatch], context_length: int,
             batch_size: int) -> Iterator[_Batch]:
    require(not isinstance(inputs, str), "pass a list of texts, not a single string")
    iterator = iter(inputs)
    first = next(iterator, None)
    if first is None:
        return
    rest = itertools.chain([first], iterator)
    if isinstance(first, str):
        yield from _chunk_texts(tokenizer, rest, context_length, batch_size)  # type: ignore[arg-type]
    else:
        yield from _token_batches(rest)  # type: ignore[arg-type]


def candidate_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: Sequence[int]) -> torch.Tensor:
    """Positions that may be reported: real, non-special tokens after the first position of each context."""
    valid = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))
    valid[:, 0] = False
    return valid


def token_windows(input_ids: torch.Tensor, attention_mask: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """[B, T, left + 1 + right] token ids around each position, NO_TOKEN outside the context."""
    ids = input_ids.masked_fill(~attention_mask.bool(), NO_TOKEN)
    padded = torch.nn.functional.pad(ids, (left, right), value=NO_TOKEN)
    return padded.unfold(1, left + 1 + right, 1)


def scan_latents(model: nn.Module, tokenizer: PreTrainedTokenizerBase, sae: SAE, hookpoint: str | None,
                 inputs: Sequence[str] | Iterable[TokenBatch], latents: Sequence[int] | None = None, n_top: int = 10,
                 window: tuple[int, int] = (8, 2), context_length: int = 128, batch_size: int = 8,
                 max_tokens: int | None = None) -> LatentScan:
    """One pass over `inputs` (texts, or [B, T] id tensors / dicts with input_ids and attention_mask)."""
    hookpoint = hookpoint or sae.cfg.hookpoint
    require(hookpoint, "no hookpoint given and the SAE's cfg.json names none; pass --hookpoint")
    resolved = resolve_hookpoints(model, hookpoint)
    if len(resolved) != 1:
        raise SaelignError(f"hookpoint {hookpoint!r} matches {len(resolved)} modules; an SAE reads exactly one")
    hookpoint = resolved[0]
    left, right = window
    if n_top < 1 or context_length < 2 or batch_size < 1 or left < 0 or right < 0:
        raise SaelignError(f"need n_top >= 1, context_length >= 2, batch_size >= 1 and a window of non-negative widths "
                           f"(got {n_top}, {context_length}, {batch_size}, {window})")
    columns = torch.arange(sae.d_sae) if latents is None else torch.as_tensor(list(dict.fromkeys(latents)), dtype=torch.long)
    if columns.numel() and not (0 <= int(columns.min()) and int(columns.max()) < sae.d_sae):
        raise SaelignError(f"latent ids must be in 0..{sae.d_sae - 1}; got {columns.tolist()[:10]}")
    device = sae.W_enc.device
    buffer = TopActivationBuffer(n_top, columns.numel(), left + 1 + right, device=device)
    fired = torch.zeros(columns.numel(), dtype=torch.long, device=device)
    columns = columns.to(device)
    model_device = next(model.parameters()).device
    n_tokens = 0
    bar = progress(desc="top contexts", unit="tok", total=max_tokens)
    for batch in _batches(tokenizer, inputs, context_length, batch_size):
        valid = candidate_mask(batch.input_ids, batch.attention_mask, tokenizer.all_special_ids)
        acts = forward_capture(model, [hookpoint], batch.input_ids.to(model_device),
                               batch.attention_mask.long().to(model_device))[hookpoint]
        with torch.inference_mode():
            latent_acts = sae.encode(acts.to(device=device, dtype=sae.W_enc.dtype))[..., columns]
        flat_valid = valid.reshape(-1).to(device)
        candidates = latent_acts.reshape(-1, columns.numel())[flat_valid].float()
        positions = (batch.offsets[:, None] + torch.arange(batch.input_ids.shape[1])).reshape(-1)
        doc_ids = batch.doc_ids[:, None].expand_as(batch.input_ids).reshape(-1)
        windows = token_windows(batch.input_ids, batch.attention_mask, left, right).reshape(-1, left + 1 + right)
        keep = flat_valid.cpu()
        doc_ids, positions, windows = doc_ids[keep], positions[keep], windows[keep]
        if max_tokens is not None and n_tokens + candidates.shape[0] > max_tokens:  # the budget is exact
            room = max_tokens - n_tokens
            candidates, doc_ids, positions, windows = candidates[:room], doc_ids[:room], positions[:room], windows[:room]
        buffer.update(candidates, doc_ids.to(device), positions.to(device), windows.to(device))
        fired += (candidates > 0).sum(0)
        n_tokens += candidates.shape[0]
        bar.update(candidates.shape[0])
        if max_tokens is not None and n_tokens >= max_tokens:
            break
    bar.close()
    ids = columns.tolist()
    frequency = {latent: (int(count) / n_tokens if n_tokens else 0.0) for latent, count in zip(ids, fired.tolist(), strict=True)}
    return LatentScan(_examples(buffer, ids, tokenizer, left), frequency, n_tokens)


def _examples(buffer: TopActivationBuffer, latents: list[int], tokenizer: PreTrainedTokenizerBase,
              left: int) -> dict[int, list[ContextExample]]:
    """Decode the buffer into per-latent lists, best first, keeping only positive activations."""
    values, docs, positions, windows = (t.cpu() for t in (buffer.values, buffer.doc_ids, buffer.positions, buffer.windows))
    # transposed so that nonzero lists each latent's hits together, best rank first
    cols, ranks = torch.nonzero(values.T > 0, as_tuple=True)
    pieces = [[row[:left], row[left : left + 1], row[left + 1 :]] for row in windows[ranks, cols].tolist()]
    parts = [[t for t in part if t != NO_TOKEN] for piece in pieces for part in piece]
    decoded = tokenizer.batch_decode(parts, clean_up_tokenization_spaces=False) if parts else []
    out: dict[int, list[ContextExample]] = {latent: [] for latent in latents}
    for i, (c, r) in enumerate(zip(cols.tolist(), ranks.tolist(), strict=True)):
        out[latents[c]].append(ContextExample(decoded[3 * i], decoded[3 * i + 1], decoded[3 * i + 2],
                                              float(values[r, c]), int(docs[r, c]), int(positions[r, c])))
    return out


def top_contexts(model: nn.Module, tokenizer: PreTrainedTokenizerBase, sae: SAE, hookpoint: str | None,
                 inputs: Sequence[str] | Iterable[TokenBatch], latents: Sequence[int] | None = None, n_top: int = 10,
                 window: tuple[int, int] = (8, 2), context_length: int = 128, batch_size: int = 8,
                 max_tokens: int | None = None) -> dict[int, list[ContextExample]]:
    """{latent: up to n_top ContextExamples with activation > 0, highest first} (see `scan_latents`)."""
    return scan_latents(model, tokenizer, sae, hookpoint, inputs, latents, n_top, window, context_length, batch_size,
                        max_tokens).contexts
