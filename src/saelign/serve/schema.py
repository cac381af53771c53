"""What a client may ask for, and the checks that need the loaded session (token counts, known ids).

Static ranges are pydantic fields (FastAPI answers 422 naming the field); the checks against the server's
limits and the session raise `RequestError`, which the app answers the same way. No field names a file.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from saelign.sails.generate import encode_chat
from saelign.serve.config import Limits
from saelign.serve.session import Session
from saelign.text import context_length

ALPHA = 100.0  # the widest slider value any edit accepts, in slot/feature units or as a factor
MAX_EDITS = 64
MAX_PROMPT_CHARS = 100_000  # a hard cap whatever the limits say; `Limits.max_prompt_chars` is checked after


class RequestError(Exception):
    """A request the session cannot serve: answered 422 with `field` as its location."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SlotEdit(Strict):
    """amplify: slot × α; clamp: slot = α·scale; swap: slot → 0, target = α·scale; zero: the slot guard."""

    concept: str = Field(max_length=200)
    mode: Literal["amplify", "clamp", "swap", "zero"]
    alpha: float = Field(1.0, ge=-ALPHA, le=ALPHA)
    target: str | None = Field(None, max_length=200)


class FeatureEdit(Strict):
    """add: α·scale along the latent's decoder direction; clamp: the latent = α·scale."""

    id: int
    mode: Literal["add", "clamp"]
    alpha: float = Field(0.0, ge=-ALPHA, le=ALPHA)


class GenerateRequest(Strict):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_new_tokens: int = Field(32, ge=1, le=4096)
    sampling: bool = False
    temperature: float = Field(1.0, gt=0.0, le=5.0)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    adapter: bool = False
    during: Literal["prompt", "all"] = (
        "all"  # edits while the prompt is read, or on every generated token too
    )
    slots: list[SlotEdit] = Field(default_factory=list, max_length=MAX_EDITS)
    features: list[FeatureEdit] = Field(default_factory=list, max_length=MAX_EDITS)


def check_request(session: Session, request: GenerateRequest, limits: Limits) -> list[int]:
    """The chat-formatted prompt ids, once every field fits the limits and names something the session has."""
    if len(request.prompt) > limits.max_prompt_chars:
        raise RequestError(
            "prompt",
            f"the prompt has {len(request.prompt)} characters; at most "
            f"{limits.max_prompt_chars} are accepted",
        )
    if request.max_new_tokens > limits.max_new_tokens:
        raise RequestError(
            "max_new_tokens",
            f"max_new_tokens is {request.max_new_tokens}; this server allows at most {limits.max_new_tokens}",
        )
    (ids,) = encode_chat(session.tokenizer, [request.prompt])
    room = context_length(session.model)
    if len(ids) > limits.max_prompt_tokens or (room and len(ids) + request.max_new_tokens > room):
        raise RequestError(
            "prompt",
            f"the prompt is {len(ids)} tokens; at most {limits.max_prompt_tokens} are "
            f"accepted, and with max_new_tokens it must fit the model context of {room}",
        )
    if request.adapter and session.peft is None:
        raise RequestError("adapter", "this server has no adapter to switch on")
    concepts = session.slot_map.concepts if session.slot_map else []
    for i, edit in enumerate(request.slots):
        if edit.concept not in concepts:
            raise RequestError(f"slots.{i}.concept", f"unknown concept slot {edit.concept!r}")
        if edit.mode == "swap" and edit.target not in concepts:
            raise RequestError(
                f"slots.{i}.target", f"a swap needs a known target concept, got {edit.target!r}"
            )
    known = {f.id for f in session.features}
    for i, edit in enumerate(request.features):
        if edit.id not in known:
            raise RequestError(
                f"features.{i}.id",
                f"unknown feature {edit.id}; the page steers only the selected SAILS features",
            )
    return ids
