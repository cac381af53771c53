"""Slot interventions as context managers over a live model: encode at the SAE's hookpoint, edit latents, decode,
write back. They compose by nesting (each adds one hook; inner ones see the outer ones' output).

With `keep_error=True` (default) the written activation is x + decode(z') − decode(z): the SAE's reconstruction
error is kept, so positions and latents an intervention does not touch come out exactly as they went in.
`positions="last"` edits the last position of every forward: with left-padded batches that is each prompt's
last token, and during cached generation each new token (see `generate_with(during=...)`); an int edits that
one index (negative: counted from the end; forwards too short for it pass through); "all" edits every position;
a slice edits that contiguous range (`slice(-5, None)`: the last five positions; an empty range passes through).

Amplitudes are in slot units: concept swap writes α·scale into the target slot (see `slots.SlotMap`)."""

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Self

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.align.slots import SlotMap
from saelign.errors import SaelignError, require
from saelign.models import patch_output
from saelign.sae.model import SAE
from saelign.text import greedy_decode, pad_token_id, stop_ids, token_ids

EditPositions = Literal["last", "all"] | int | slice
# An edit maps latents z [..., d_sae] to (edited latents, optional bool mask [...] of the rows to write back).
Edit = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def _hookpoint(sae: SAE, slot_map: SlotMap | None, hookpoint: str | None) -> str:
    hp = hookpoint or sae.cfg.hookpoint or (slot_map.hookpoint if slot_map else "")
    require(hp, "the SAE has no hookpoint in its cfg.json; pass hookpoint='model.layers.N' explicitly")
    return hp


def _slot_ids(slot: int | str | Sequence[int | str], slot_map: SlotMap | None, sae: SAE) -> list[int]:
    items = [slot] if isinstance(slot, int | str) else list(slot)
    ids = []
    for item in items:
        if isinstance(item, str):
            if slot_map is None:
                raise SaelignError(f"slot {item!r} is a concept name; pass slot_map= to look it up, or give a latent index")
            item = slot_map.slot(item)
        require(0 <= item < sae.cfg.d_sae, f"slot {item} outside 0..{sae.cfg.d_sae - 1} for this SAE")
        ids.append(item)
    return ids


def position_range(positions: EditPositions, seq: int) -> tuple[int, int] | None:
    """The [start, stop) range `positions` selects in a forward of `seq` tokens; None when it selects none."""
    if isinstance(positions, slice):
        if positions.step not in (None, 1):
            raise SaelignError(f"a positions slice must be contiguous (step 1), got {positions!r}")
        start, stop, _ = positions.indices(seq)
        return (start, stop) if start < stop else None
    if positions == "all":
        return 0, seq
    if positions == "last" or isinstance(positions, int):
        start = seq - 1 if positions == "last" else int(positions) % seq if -seq <= int(positions) < seq else -1
        return (start, start + 1) if start >= 0 else None
    raise SaelignError(f"positions must be 'last', 'all', a token index or a slice, got {positions!r}")


def apply_edit(sae: SAE, hidden: torch.Tensor, edit: Edit, positions: EditPositions = "all",
               keep_error: bool = True) -> torch.Tensor:
    """The activation [..., seq, d] after encoding the chosen positions, editing their latents and decoding."""
    selected = position_range(positions, hidden.shape[-2])
    if selected is None:
        return hidden
    start, stop = selected
    part = hidden[..., start:stop, :]
    x = part.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype)
    z = sae.encode(x)
    z_new, rows = edit(z)
    # The difference form is exact: untouched latents contribute exactly zero change.
    new = x + (z_new - z) @ sae.W_dec / sae.norm_scale if keep_error else sae.decode(z_new)
    if rows is not None:
        new = torch.where(rows[..., None], new, x)
    new = new.to(device=hidden.device, dtype=hidden.dtype)
    return new if stop - start == hidden.shape[-2] else torch.cat([hidden[..., :start, :], new, hidden[..., stop:, :]], dim=-2)


@contextlib.contextmanager
def sae_edit(model: nn.Module, sae: SAE, edit: Edit, positions: EditPositions = "all",
             keep_error: bool = True, hookpoint: str | None = None,
             slot_map: SlotMap | None = None) -> Iterator[None]:
    """The general intervention every other one is built on."""
    if slot_map is not None:
        slot_map.validate(sae)
    with patch_output(model, _hookpoint(sae, slot_map, hookpoint), lambda h: apply_edit(sae, h, edit, positions, keep_error)):
        yield


def sae_splice(model: nn.Module, sae: SAE, keep_error: bool = True, positions: EditPositions = "all",
               hookpoint: str | None = None) -> contextlib.AbstractContextManager[None]:
    """Route the hookpoint through the SAE; keep_error=False replaces the activation by its reconstruction."""
    return sae_edit(model, sae, lambda z: (z, None), positions, keep_error, hookpoint)


def _slot_edit(model: nn.Module, sae: SAE, slot: int | str | Sequence[int | str],
               update: Callable[[torch.Tensor], torch.Tensor], slot_map: SlotMap | None,
               positions: EditPositions, keep_error: bool,
               hookpoint: str | None) -> contextlib.AbstractContextManager[None]:
    ids = _slot_ids(slot, slot_map, sae)

    def edit(z: torch.Tensor) -> tuple[torch.Tensor, None]:
        z = z.clone()
        z[..., ids] = update(z[..., ids])
        return z, None

    return sae_edit(model, sae, edit, positions, keep_error, hookpoint, slot_map)


def slot_clamp(model: nn.Module, sae: SAE, slot: int | str | Sequence[int | str], value: float, *,
               slot_map: SlotMap | None = None, positions: EditPositions = "all", keep_error: bool = True,
               hookpoint: str | None = None) -> contextlib.AbstractContextManager[None]:
    """Set the slot(s) to `value` (raw latent units)."""
    return _slot_edit(model, sae, slot, lambda v: torch.full_like(v, value), slot_map, positions, keep_error,
                      hookpoint)


def slot_zero(model: nn.Module, sae: SAE, slot: int | str | Sequence[int | str], **kwargs) -> contextlib.AbstractContextManager[None]:
    """Remove the slot(s)' contribution."""
    return slot_clamp(model, sae, slot, 0.0, **kwargs)


def slot_amplify(model: nn.Module, sae: SAE, slot: int | str | Sequence[int | str], factor: float, *,
                 slot_map: SlotMap | None = None, positions: EditPositions = "all", keep_error: bool = True,
                 hookpoint: str | None = None) -> contextlib.AbstractContextManager[None]:
    """Multiply the slot(s)' activation by `factor`."""
    return _slot_edit(model, sae, slot, lambda v: v * factor, slot_map, positions, keep_error, hookpoint)


def swap_edit(slot_map: SlotMap, sources: int | Sequence[int], targets: int | Sequence[int], alpha: float,
              when_active: bool = False) -> Edit:
    """The concept-swap edit of latents [batch, positions, d_sae]: per row, the source concept's slot → 0 and
    the target's → α·scale(target); a row whose source is its target is left alone. `sources`/`targets` are
    concept indices, one for every row or one per batch row (so one forward can swap different pairs)."""
    slots, scales = torch.tensor(slot_map.slots), torch.tensor(slot_map.scales)
    src, tgt = torch.as_tensor(sources), torch.as_tensor(targets)

    def edit(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        per_row = [len(t) for t in (src, tgt) if t.dim() == 1]
        require(all(n == z.shape[0] for n in per_row), f"a per-row swap got {per_row} concepts for a batch of "
                                                       f"{z.shape[0]}; give one source and target per row")
        # [batch, positions] concept indices, then their latents and the values written
        s = (src.view(-1, 1) if src.dim() else src).expand(z.shape[:-1]).to(z.device)
        t = (tgt.view(-1, 1) if tgt.dim() else tgt).expand(z.shape[:-1]).to(z.device)
        s_slot, t_slot = slots.to(z.device)[s], slots.to(z.device)[t]
        rows = None
        if when_active:
            strongest = z[..., slots.to(z.device)].argmax(-1)
            rows = (strongest == s) & (z.gather(-1, s_slot[..., None])[..., 0] > 0)
        swapped = z.scatter(-1, s_slot[..., None], 0.0)
        swapped = swapped.scatter(-1, t_slot[..., None], (alpha * scales.to(z)[t])[..., None])
        return torch.where((s == t)[..., None], z, swapped), rows

    return edit


def concept_swap(model: nn.Module, sae: SAE, slot_map: SlotMap, source: str | int | Sequence[int],
                 target: str | int | Sequence[int], alpha: float = 2.0, *, positions: EditPositions = "last",
                 keep_error: bool = True, when_active: bool = False,
                 hookpoint: str | None = None) -> contextlib.AbstractContextManager[None]:
    """Source slot → 0, target slot → α·scale(target); a concept swapped with itself is left alone.
    when_active=True edits only positions where the source is the strongest concept slot and is active, so
    prompts about other concepts and unrelated text pass through untouched. A sequence of concept indices as
    source and target swaps each batch row's own pair (every forward must then have that many rows)."""

    def index(concept: str | int | Sequence[int]) -> int | list[int]:
        return slot_map.index(concept) if isinstance(concept, str | int) else [slot_map.index(c) for c in concept]

    edit = swap_edit(slot_map, index(source), index(target), alpha, when_active)
    return sae_edit(model, sae, edit, positions, keep_error, hookpoint, slot_map)


@contextlib.contextmanager
def replace_positions(model: nn.Module, hookpoint: str, vectors: torch.Tensor, position: int = -1) -> Iterator[None]:
    """Overwrite token `position` of every row of a forward at `hookpoint` with that row's vector [batch, d]:
    the swap oracle (another prompt's whole activation), a ceiling for any edit of that one position."""

    def write(hidden: torch.Tensor) -> torch.Tensor:
        require(hidden.shape[0] == vectors.shape[0], f"replace_positions got {vectors.shape[0]} vectors for a "
                                                     f"batch of {hidden.shape[0]}; give one vector per row")
        out = hidden.clone()
        out[:, position] = vectors.to(device=out.device, dtype=out.dtype)
        return out

    with patch_output(model, hookpoint, write):
        yield


@dataclass
class GuardEvent:
    forward: int
    row: int
    position: int
    concept: str
    value: float


class SlotGuard:
    """Watches disallowed concept slots on every forward; records an event whenever one exceeds its threshold.
    mode="flag" only records (the model's computation is untouched); mode="zero" also zeroes the offending
    slot at that position (error term kept, so nothing else changes). The default threshold per concept is half
    its slot scale. Reusable: enter it as often as needed; `events` accumulates until `reset()`."""

    def __init__(self, model: nn.Module, sae: SAE, slot_map: SlotMap, disallowed: Sequence[str | int],
                 mode: Literal["zero", "flag"] = "zero", threshold: float | None = None,
                 positions: EditPositions = "all", hookpoint: str | None = None):
        require(mode in ("zero", "flag"), f"SlotGuard mode must be 'zero' or 'flag', got {mode!r}")
        require(disallowed, "SlotGuard needs at least one disallowed concept")
        slot_map.validate(sae)
        self.model, self.sae, self.slot_map, self.mode, self.positions = model, sae, slot_map, mode, positions
        self.hookpoint = _hookpoint(sae, slot_map, hookpoint)
        index = [slot_map.index(c) for c in disallowed]
        self.concepts = [slot_map.concepts[i] for i in index]
        self.slots = [slot_map.slots[i] for i in index]
        self.thresholds = torch.tensor([threshold if threshold is not None else 0.5 * slot_map.scales[i] for i in index])
        self.events: list[GuardEvent] = []
        self.forwards = 0
        self._stack: contextlib.ExitStack | None = None

    @property
    def triggered(self) -> bool:
        return bool(self.events)

    def reset(self) -> None:
        self.events.clear()
        self.forwards = 0

    def _check(self, z: torch.Tensor, offset: int) -> tuple[torch.Tensor, None]:
        values = z[..., self.slots]
        over = values > self.thresholds.to(values)
        flat = values.reshape(-1, values.shape[-2], len(self.slots))
        for row, pos, k in over.reshape(flat.shape).nonzero().tolist():
            self.events.append(GuardEvent(self.forwards, row, pos + offset, self.concepts[k], float(flat[row, pos, k])))
        if self.mode == "flag" or not over.any():
            return z, None
        z = z.clone()
        z[..., self.slots] = torch.where(over, torch.zeros_like(values), values)
        return z, None

    def _hook(self, hidden: torch.Tensor) -> torch.Tensor:
        selected = position_range(self.positions, hidden.shape[-2])
        offset = selected[0] if selected else 0  # no positions selected: apply_edit passes through, unchecked
        out = apply_edit(self.sae, hidden, lambda z: self._check(z, offset), self.positions, keep_error=True)
        self.forwards += 1
        return hidden if self.mode == "flag" else out

    def __enter__(self) -> Self:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(patch_output(self.model, self.hookpoint, self._hook))
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stack is not None
        self._stack.close()
        self._stack = None


def generate_with(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: str,
                  *interventions: contextlib.AbstractContextManager, max_new_tokens: int = 32,
                  during: Literal["prompt", "all"] = "prompt") -> str:
    """Greedy continuation of `prompt` under the given (not yet entered) interventions, until an end token.
    during="prompt" applies them only while the prompt is read (the edited prompt states stay in the KV cache,
    as in the authors' swap evaluation); during="all" keeps them on for every generated token too."""
    require(during in ("prompt", "all"), f"during must be 'prompt' or 'all', got {during!r}")

    def entered() -> contextlib.ExitStack:  # each intervention may be entered only once: all in one stack
        stack = contextlib.ExitStack()
        for cm in interventions:
            stack.enter_context(cm)
        return stack

    hook = entered if during == "prompt" else None
    with entered() if during == "all" else contextlib.nullcontext():
        (new,) = greedy_decode(model, token_ids(tokenizer, [prompt]), max_new_tokens, pad_token_id(tokenizer),
                               stop_ids(model, tokenizer), prompt_context=hook)
    return tokenizer.decode(new, skip_special_tokens=True)
