"""A request's edits as the library's interventions, the features and slots the prompt lights up, and the two
answers (base and modified) streamed step by step from the project's one decoder.

Edits write at every position of each forward they are active in (`during="prompt"`: the prompt only, whose
edited states stay in the KV cache; `"all"`: every generated token too). The adapter is model state, not an
edit: on the modified side it is on or off for the prompt and every token alike.
"""

import contextlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch

from saelign.align.interventions import SlotGuard, concept_swap, sae_edit, slot_amplify, slot_clamp
from saelign.models import forward_capture
from saelign.serve.schema import FeatureEdit, GenerateRequest, SlotEdit
from saelign.serve.session import Session, hookpoint
from saelign.text import decode_steps, pad, pad_token_id, sampler, stop_ids

Event = dict[str, Any]
TOP_FEATURES = 12


def _add(latent: int, amount: float, z: torch.Tensor) -> tuple[torch.Tensor, None]:
    """Add to one latent: with the error term kept this adds amount × its decoder direction, nothing else."""
    z = z.clone()
    z[..., latent] += amount
    return z, None


def _slot_edit(
    session: Session, edit: SlotEdit, guards: list[SlotGuard]
) -> Callable[[], contextlib.AbstractContextManager]:
    model, sae, slots = session.model, session.aligned, session.slot_map
    assert sae is not None and slots is not None  # check_request refused slot edits without them
    if edit.mode == "zero":
        guard = SlotGuard(model, sae, slots, [edit.concept], mode="zero")  # re-enterable: one per request
        guards.append(guard)
        return lambda: guard
    if edit.mode == "amplify":
        return partial(slot_amplify, model, sae, edit.concept, edit.alpha, slot_map=slots)
    if edit.mode == "clamp":
        return partial(
            slot_clamp, model, sae, edit.concept, edit.alpha * slots.scale(edit.concept), slot_map=slots
        )
    return partial(concept_swap, model, sae, slots, edit.concept, edit.target, edit.alpha, positions="all")


def _feature_edit(session: Session, edit: FeatureEdit) -> Callable[[], contextlib.AbstractContextManager]:
    sae = session.sae
    assert sae is not None
    value = edit.alpha * next(f.scale for f in session.features if f.id == edit.id)
    if edit.mode == "clamp":
        return partial(slot_clamp, session.model, sae, edit.id, value)
    return partial(sae_edit, session.model, sae, partial(_add, edit.id, value))


def interventions(
    session: Session, request: GenerateRequest, guards: list[SlotGuard] | None = None
) -> list[Callable[[], contextlib.AbstractContextManager]]:
    """One context factory per edit (an amplify by 1 changes nothing and is left out); the slot guards
    that "zero" edits create are appended to `guards`."""
    slots = [e for e in request.slots if not (e.mode == "amplify" and e.alpha == 1.0)]
    made = [_slot_edit(session, e, [] if guards is None else guards) for e in slots]
    return [*made, *(_feature_edit(session, e) for e in request.features)]


def _stacked(
    *factories: Callable[[], contextlib.AbstractContextManager],
) -> Callable[[], contextlib.ExitStack]:
    def enter() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        for make in factories:
            stack.enter_context(make())
        return stack

    return enter


@torch.inference_mode()
def inspect_prompt(session: Session, ids: list[int]) -> Event:
    """The prompt's strongest SAE features (by their peak over positions, the first position left out: an
    attention sink) and each concept slot's value at the last position in slot units, as the base model
    reads it."""
    saes = [s for s in (session.sae, session.aligned) if s is not None]
    if not saes:
        return {"event": "inspect", "features": [], "slots": []}
    device = session.model.device
    with session.adapter(False):
        acts = forward_capture(
            session.model, sorted({hookpoint(s) for s in saes}), torch.tensor([ids], device=device)
        )
    features, slots = [], []
    if session.sae is not None:
        x = acts[hookpoint(session.sae)][0, 1:] if len(ids) > 1 else acts[hookpoint(session.sae)][0]
        peak = session.sae.encode(x.to(session.sae.W_dec.dtype)).amax(0)
        values, latents = peak.topk(min(TOP_FEATURES, peak.numel()))
        selected = {f.id for f in session.features}
        features = [
            {"id": i, "value": round(v, 4), "label": session.labels.get(i, ""), "selected": i in selected}
            for v, i in zip(values.tolist(), latents.tolist(), strict=True)
            if v > 0
        ]
    if session.aligned is not None and session.slot_map is not None:
        z = session.aligned.encode(acts[hookpoint(session.aligned)][0, -1].to(session.aligned.W_dec.dtype))
        slots = [
            {"concept": c, "value": round(float(z[s]) / sc, 4)}
            for c, s, sc in zip(
                session.slot_map.concepts, session.slot_map.slots, session.slot_map.scales, strict=True
            )
        ]
    return {"event": "inspect", "features": features, "slots": slots}


def answer_events(session: Session, request: GenerateRequest, ids: list[int]) -> Iterator[Event]:
    """inspect, then the base and modified answers one token each in turn (the text so far), then done
    (with how often each slot guard fired)."""
    yield inspect_prompt(session, ids)
    tokenizer, device = session.tokenizer, session.model.device
    prompt, mask = pad([ids], pad_token_id(tokenizer), left=True)
    adapter = partial(session.adapter, request.adapter)
    guards: list[SlotGuard] = []
    edited = _stacked(adapter, *interventions(session, request, guards))
    base = partial(session.adapter, False)
    contexts = {"base": (base, base), "modified": (edited, edited if request.during == "all" else adapter)}
    ids_in, mask_in = prompt.to(device), mask.to(device)
    streams = {
        side: decode_steps(session.model, ids_in, mask_in, request.max_new_tokens, first, rest,
                           pick=sampler(request.temperature, request.seed) if request.sampling else None)
        for side, (first, rest) in contexts.items()
    }
    stops, tokens = set(stop_ids(session.model, tokenizer)), {side: [] for side in streams}
    session.model.eval()
    try:
        while streams:
            for side, stream in list(streams.items()):
                token = int(next(stream)[0])
                tokens[side].append(token)
                if token in stops or len(tokens[side]) == request.max_new_tokens:
                    streams.pop(side).close()
                yield {
                    "event": "token",
                    "side": side,
                    "text": tokenizer.decode(tokens[side], skip_special_tokens=True),
                    "done": side not in streams,
                }
    finally:
        for stream in streams.values():
            stream.close()
    # What the slot guards caught: positions where a guarded concept fired and was zeroed.
    caught = {g.concepts[0]: len(g.events) for g in guards}
    yield {"event": "done", "tokens": {side: len(t) for side, t in tokens.items()}, "guard": caught}
