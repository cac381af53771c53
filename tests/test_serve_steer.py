"""Edits as the library's interventions: a feature push is exactly its decoder direction added at the
hookpoint, the prompt inspection is the naive encode, and the modified side follows `during`."""

from __future__ import annotations

import pytest
import torch

from saelign.models import forward_capture, patch_output
from saelign.serve import ServeConfig, load_session
from saelign.serve.config import Limits
from saelign.serve.schema import GenerateRequest, check_request
from saelign.serve.steer import answer_events, inspect_prompt, interventions
from saelign.text import greedy_decode, pad_token_id, stop_ids
from serve_world import HOOK, PROMPT, build_world


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    world = build_world(tmp_path_factory.mktemp("serve"))
    return load_session(ServeConfig(run=str(world["run"]), aligned=str(world["aligned"]), device="cpu"))


def final(session, **body) -> dict[str, str]:
    request = GenerateRequest(prompt=PROMPT, max_new_tokens=8, **body)
    ids = check_request(session, request, Limits())
    return {e["side"]: e["text"] for e in answer_events(session, request, ids) if e["event"] == "token"}


def test_a_feature_push_adds_its_decoder_direction_at_the_hookpoint(session):
    alpha, feature = 3.0, session.features[1]
    got = final(session, features=[{"id": feature.id, "mode": "add", "alpha": alpha}])
    direction = alpha * feature.scale * session.sae.W_dec[feature.id] / session.sae.norm_scale

    def push():
        return patch_output(session.model, HOOK, lambda h: h + direction)

    ids = check_request(session, GenerateRequest(prompt=PROMPT), Limits())
    with session.adapter(False):
        (naive,) = greedy_decode(
            session.model,
            [ids],
            8,
            pad_token_id(session.tokenizer),
            stop_ids(session.model, session.tokenizer),
            prompt_context=push,
            token_context=push,
        )
    assert got["modified"] == session.tokenizer.decode(naive, skip_special_tokens=True) != got["base"]


def test_edits_on_the_prompt_only_leave_the_answer_tokens_unedited(session):
    body = {"features": [{"id": 5, "mode": "add", "alpha": 6}]}
    assert final(session, during="prompt", **body) != final(session, during="all", **body)
    request = GenerateRequest(
        prompt=PROMPT,
        slots=[{"concept": "bread", "mode": "amplify", "alpha": 1}, {"concept": "bread", "mode": "zero"}],
    )
    assert len(interventions(session, request)) == 1  # amplify by 1 is no edit


def test_inspection_is_the_naive_encode_of_the_base_model(session):
    ids = check_request(session, GenerateRequest(prompt=PROMPT), Limits())
    event = inspect_prompt(session, ids)
    with session.adapter(False):
        acts = forward_capture(session.model, [HOOK], torch.tensor([ids]))[HOOK][0]
    peak = session.sae.encode(acts[1:]).amax(0)
    assert [f["id"] for f in event["features"]] == peak.topk(len(event["features"])).indices.tolist()
    z = session.aligned.encode(acts[-1]).detach()
    assert [s["value"] for s in event["slots"]] == [
        round(float(z[i]) / sc, 4) for i, sc in zip([0, 1, 2], [1.5, 1.0, 2.0], strict=True)
    ]


def test_a_zero_edit_is_the_slot_guard_and_reports_what_it_caught(session):
    clamp = {"concept": "bread", "mode": "clamp", "alpha": 2}
    guard = {"concept": "bread", "mode": "zero"}
    request = GenerateRequest(prompt=PROMPT, max_new_tokens=8, slots=[clamp, guard])
    ids = check_request(session, request, Limits())
    stream = list(answer_events(session, request, ids))
    assert stream[-1]["guard"]["bread"] >= len(ids)  # the clamp makes bread fire at every prompt position
    guarded = [e["text"] for e in stream if e["event"] == "token" and e["side"] == "modified"][-1]
    assert guarded != final(session, slots=[clamp])["modified"]  # the guard undid the clamp's push
    quiet = GenerateRequest(prompt=PROMPT, max_new_tokens=2, slots=[{"concept": "germany", "mode": "zero"}])
    assert list(answer_events(session, quiet, ids))[-1]["guard"] == {"germany": 0}
