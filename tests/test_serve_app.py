"""The HTTP API on the tiny world: the page and its assets, answers that match the project's decoder, every
edit changing the modified side only, 422 naming the field, 413 over the body limit, 503 with Retry-After when
the queue is full, the time limit, and a client that leaves freeing the model."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient

from saelign.sails.generate import generate_answers
from saelign.serve import Limits, ServeConfig, create_app, load_session
from serve_world import PROMPT, build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def session(world):
    return load_session(ServeConfig(run=str(world["run"]), aligned=str(world["aligned"]), device="cpu"))


@pytest.fixture(scope="module")
def client(session):
    with TestClient(create_app(session, Limits(max_new_tokens=40))) as client:
        yield client


def events(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [json.loads(chunk[6:]) for chunk in response.text.split("\n\n") if chunk.startswith("data: ")]


def answers(client: TestClient, **body) -> dict[str, str]:
    stream = events(client.post("/api/generate", json={"prompt": PROMPT, "max_new_tokens": 10, **body}))
    assert stream[0]["event"] == "inspect" and stream[-1]["event"] == "done"
    return {e["side"]: e["text"] for e in stream if e["event"] == "token"}  # the last text of each side


def test_page_assets_and_info(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/page.js">' in page.text and "http" not in page.text
    assert client.get("/page.js").headers["content-type"].startswith("text/javascript")
    assert "grid" in client.get("/page.css").text
    info = client.get("/api/info").json()
    assert [f["id"] for f in info["features"]] == [5, 9, 17] and info["features"][0][
        "label"
    ] == "capital cities #5"
    assert [s["concept"] for s in info["slots"]] == ["france", "germany", "bread"] and info["adapter"]
    assert info["dashboard"] and "latent cards" in client.get("/dashboard").text
    for path in (
        "/page.js/../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/dashboard/x",
        "/static/page.js",
    ):
        assert client.get(path).status_code == 404


def test_answers_stream_token_by_token_and_match_the_project_decoder(client, session):
    stream = events(client.post("/api/generate", json={"prompt": PROMPT, "max_new_tokens": 6}))
    tokens = [e for e in stream if e["event"] == "token"]
    assert [e["side"] for e in tokens] == ["base", "modified"] * 6 and tokens[-1]["done"]
    assert stream[-1] == {"event": "done", "tokens": {"base": 6, "modified": 6}, "guard": {}}
    with session.adapter(False):
        (want,) = generate_answers(session.model, session.tokenizer, [PROMPT], max_new_tokens=6)
    assert (
        tokens[-2]["text"].strip() == tokens[-1]["text"].strip() == want
    )  # no edit: both sides are the base


def test_every_edit_changes_only_the_modified_answer(client, session):
    plain = answers(client)
    assert plain["base"] == plain["modified"]
    edits = [
        {"adapter": True},
        {"slots": [{"concept": "france", "mode": "clamp", "alpha": 5}]},
        {"slots": [{"concept": "france", "mode": "swap", "target": "bread", "alpha": 3}]},
        {"slots": [{"concept": "france", "mode": "amplify", "alpha": 30}]},
        {"features": [{"id": 5, "mode": "add", "alpha": 5}]},
        {"features": [{"id": 9, "mode": "clamp", "alpha": 4}]},
        {"during": "prompt", "features": [{"id": 5, "mode": "add", "alpha": 8}]},
    ]
    seen = set()
    for body in edits:
        got = answers(client, **body)
        assert got["base"] == plain["base"] and got["modified"] != plain["base"], body
        seen.add(got["modified"])
    assert len(seen) > 3
    with torch.no_grad():  # the adapter side is the adapter model's own greedy answer
        (adapted,) = generate_answers(session.model, session.tokenizer, [PROMPT], max_new_tokens=10)
    assert answers(client, adapter=True)["modified"].strip() == adapted
    assert answers(client, slots=[{"concept": "germany", "mode": "amplify", "alpha": 1}]) == plain  # identity


def test_sampling_follows_the_seed(client):
    one = answers(client, sampling=True, temperature=2.0, seed=7)
    assert one == answers(client, sampling=True, temperature=2.0, seed=7) and one["base"] == one["modified"]
    assert one != answers(client, sampling=True, temperature=2.0, seed=8) and one != answers(client)


def test_inspect_lists_top_features_and_slot_values(client):
    (inspect,) = [
        e
        for e in events(client.post("/api/generate", json={"prompt": PROMPT, "max_new_tokens": 1}))
        if e["event"] == "inspect"
    ]
    values = [f["value"] for f in inspect["features"]]
    assert values == sorted(values, reverse=True) and 0 < len(values) <= 12
    assert [s["concept"] for s in inspect["slots"]] == ["france", "germany", "bread"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, ["prompt"]),
        ({"prompt": "x" * 4001}, ["prompt"]),
        ({"prompt": "hello " * 300}, ["prompt"]),  # under the character limit, over the model's context
        ({"max_new_tokens": 0}, ["max_new_tokens"]),
        ({"max_new_tokens": 41}, ["max_new_tokens"]),
        ({"temperature": 0}, ["temperature"]),
        ({"temperature": 9}, ["temperature"]),
        ({"seed": -1}, ["seed"]),
        ({"during": "forever"}, ["during"]),
        ({"slots": [{"concept": "paris", "mode": "zero"}]}, ["slots", 0, "concept"]),
        ({"slots": [{"concept": "france", "mode": "swap", "target": "x"}]}, ["slots", 0, "target"]),
        ({"slots": [{"concept": "france", "mode": "clamp", "alpha": 1e9}]}, ["slots", 0, "alpha"]),
        ({"slots": [{"concept": "france", "mode": "melt"}]}, ["slots", 0, "mode"]),
        ({"features": [{"id": 6, "mode": "add", "alpha": 1}]}, ["features", 0, "id"]),
        ({"features": [{"id": "../etc/passwd", "mode": "add"}]}, ["features", 0, "id"]),
        ({"path": "/etc/passwd"}, ["path"]),
    ],
)
def test_invalid_requests_get_422_naming_the_field(client, body, field):
    response = client.post("/api/generate", json={"prompt": PROMPT, **body})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", *field]


def test_bodies_over_the_limit_get_413(client):
    big = json.dumps({"prompt": PROMPT, "pad": "x" * 70_000})
    assert (
        client.post("/api/generate", content=big, headers={"content-type": "application/json"}).status_code
        == 413
    )
    chunked = client.post(
        "/api/generate",
        content=iter([big[:40_000].encode(), big[40_000:].encode()]),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 413
    assert (
        client.post(
            "/api/generate", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )


def test_a_full_queue_answers_503_with_retry_after(session):
    release, started = threading.Event(), threading.Event()

    def blocked():
        started.set()
        release.wait(120)  # released by the test; the bound only keeps a failing test from hanging
        yield {"event": "done"}

    with TestClient(create_app(session, Limits(queue_size=1))) as client:
        worker = client.app.state.worker
        worker.submit(blocked, lambda e: None)  # the worker takes this one and blocks
        assert started.wait(10)  # on a busy machine the worker may take a while to pick it up
        drained = threading.Event()  # the worker has taken and run the queued job: the queue has room again
        worker.submit(blocked, lambda e: e is not None and e["event"] == "done" and drained.set())  # fills it
        busy = client.post("/api/generate", json={"prompt": PROMPT})
        release.set()
        assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
        # Asked before the worker has taken the queued job, a busy machine would rightly answer 503 again.
        assert drained.wait(60)
        assert answers(client)  # and it serves again once the queue drains


def test_the_time_limit_ends_a_request_with_an_error_event(session):
    with TestClient(create_app(session, Limits(time_limit_s=0.01))) as client:
        stream = events(client.post("/api/generate", json={"prompt": PROMPT, "max_new_tokens": 40}))
    assert stream[-1]["event"] == "error" and "time limit" in stream[-1]["message"]
    assert sum(e["event"] == "token" for e in stream) < 80


def test_a_client_that_leaves_cancels_its_generation(session):
    forwards = []
    handle = session.model.model.layers[0].register_forward_hook(lambda *_: forwards.append(1))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(create_app(session, Limits(max_new_tokens=128)), log_level="error")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        while not server.started:
            time.sleep(0.05)
        body = {"prompt": PROMPT, "max_new_tokens": 128, "features": [{"id": 5, "mode": "add", "alpha": 1}]}
        with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=30) as response:
            next(response.iter_lines())  # the first event, then the client hangs up
        time.sleep(1.0)
        settled = len(forwards)
        time.sleep(0.5)
        assert len(forwards) == settled < 2 * 128  # stopped, long before both answers were done
        assert httpx.get(f"{url}/api/info").status_code == 200
    finally:
        handle.remove()
        server.should_exit = True
        thread.join(10)
