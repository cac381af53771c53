"""Load test of `saelign serve`: many concurrent clients, valid and invalid requests mixed.

Checks: every valid request completes with the answer a lone request gets (a 503 is retried after its
Retry-After), every invalid one gets a 4xx and never a 5xx, the server still answers afterwards. Reports
p50/p95 latency of the valid requests, their throughput and the server's peak RSS; writes
bench/results/serve_load.json.

Run (tiny random model, built in a temp folder): OMP_NUM_THREADS=1 .venv/bin/python bench/load_serve.py
Against a running server: .venv/bin/python bench/load_serve.py --url http://127.0.0.1:8000 --pid PID
(its valid requests name the tiny world's slots and features; use --valid-only-plain for any other run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

PROMPTS = ["The capital of France is", "How do I bake bread?", "Hello", "Tell me about Berlin."]
EDITS: list[dict[str, Any]] = [
    {},
    {"adapter": True},
    {"slots": [{"concept": "france", "mode": "clamp", "alpha": 1.5}]},
    {"features": [{"id": 5, "mode": "add", "alpha": 3}]},
    {"sampling": True, "temperature": 1.5, "seed": 11},
]
INVALID: list[tuple[str, bytes]] = [  # (what is wrong, body)
    ("empty prompt", json.dumps({"prompt": ""}).encode()),
    ("too many tokens", json.dumps({"prompt": "x", "max_new_tokens": 100_000}).encode()),
    ("negative temperature", json.dumps({"prompt": "x", "temperature": -1}).encode()),
    ("unknown slot", json.dumps({"prompt": "x", "slots": [{"concept": "nope", "mode": "zero"}]}).encode()),
    ("unknown feature", json.dumps({"prompt": "x", "features": [{"id": 999999, "mode": "add"}]}).encode()),
    ("a file path", json.dumps({"prompt": "x", "file": "/etc/passwd"}).encode()),
    ("not JSON", b"{prompt: "),
    ("huge body", json.dumps({"prompt": "x" * 200_000}).encode()),
]


def answer(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], int]:
    """(status, final text per side, 503 retries) of one request, retried while the server is busy."""
    retries = 0
    while (response := client.post(f"{url}/api/generate", json=body)).status_code == 503:
        retries += 1
        time.sleep(float(response.headers.get("retry-after", "1")))
    events = [json.loads(c[6:]) for c in response.text.split("\n\n") if c.startswith("data: ")]
    if any(e["event"] == "error" for e in events):
        raise AssertionError(f"request {body} ended with {events[-1]}")
    return response.status_code, {e["side"]: e["text"] for e in events if e["event"] == "token"}, retries


def valid_bodies(max_new_tokens: int, plain_only: bool) -> list[dict[str, Any]]:
    edits = EDITS[:1] if plain_only else EDITS
    return [
        {"prompt": p, "max_new_tokens": max_new_tokens, **e} for p, e in itertools.product(PROMPTS, edits)
    ]


def run_load(
    url: str,
    clients: int = 24,
    rounds: int = 3,
    max_new_tokens: int = 12,
    plain_only: bool = False,
    pid: int | None = None,
) -> dict[str, Any]:
    valid = valid_bodies(max_new_tokens, plain_only)
    timeout = httpx.Timeout(300.0)
    with httpx.Client(timeout=timeout) as client:
        reference = [answer(client, url, body)[1] for body in valid]
    failures: list[str] = []
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    retries = 0
    lock = threading.Lock()

    def one_client(k: int) -> None:
        nonlocal retries
        with httpx.Client(timeout=timeout) as client:
            for r in range(rounds):
                i = (k * rounds + r) % (len(valid) + len(INVALID))
                if i < len(valid):
                    start = time.perf_counter()
                    status, got, retried = answer(client, url, valid[i])
                    took = time.perf_counter() - start
                    with lock:
                        latencies.append(took)
                        retries += retried
                        if status != 200 or got != reference[i]:
                            failures.append(
                                f"valid request {valid[i]} gave {status} {got} not {reference[i]}"
                            )
                else:
                    what, body = INVALID[i - len(valid)]
                    status = client.post(
                        f"{url}/api/generate", content=body, headers={"content-type": "application/json"}
                    ).status_code
                    with lock:
                        statuses[str(status)] = statuses.get(str(status), 0) + 1
                        if not 400 <= status < 500 or status == 503:
                            failures.append(f"invalid request ({what}) gave {status}")

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one_client, range(clients)))
    wall = time.perf_counter() - start
    with httpx.Client(timeout=timeout) as client:
        alive = (
            client.get(f"{url}/api/info").status_code == 200
            and answer(client, url, valid[0])[1] == reference[0]
        )
    rss = None
    if pid is not None:
        status_file = Path(f"/proc/{pid}/status").read_text()
        rss = (
            int(next(line.split()[1] for line in status_file.splitlines() if line.startswith("VmHWM"))) / 1024
        )
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": clients * rounds,
        "valid": len(latencies),
        "invalid": sum(statuses.values()),
        "invalid_statuses": statuses,
        "busy_retries": retries,
        "max_new_tokens": max_new_tokens,
        "p50_s": round(statistics.median(ordered), 3) if ordered else None,
        "p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3) if ordered else None,
        "throughput_rps": round(len(latencies) / wall, 2),
        "wall_s": round(wall, 2),
        "server_peak_rss_mib": round(rss, 1) if rss else None,
        "alive_after": alive,
        "failures": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running saelign serve (default: start one on the tiny world)")
    parser.add_argument("--pid", type=int, help="the running server's process id, for its peak RSS")
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3, help="requests per client")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--valid-only-plain", action="store_true", help="valid requests without edits")
    args = parser.parse_args()
    server = None
    url, pid = args.url, args.pid
    if url is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from serve_world import build_world, start_server

        server, url = start_server(build_world(Path(tempfile.mkdtemp(prefix="saelign-load-"))))
        pid = server.pid
    try:
        result = run_load(url, args.clients, args.rounds, args.max_new_tokens, args.valid_only_plain, pid)
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
    print(json.dumps(result, indent=2))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import write_result

    write_result("serve_load", result)
    if result["failures"] or not result["alive_after"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
