"""The load test (`-m load`): 24 concurrent clients against `saelign serve` on the tiny world, valid and
invalid requests mixed (bench/load_serve.py does the work and reports latency, throughput and peak RSS)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from serve_world import build_world, peak_rss_mib, start_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from load_serve import run_load  # noqa: E402

pytestmark = pytest.mark.load


def test_concurrent_clients_get_lone_answers_and_4xx_for_invalid_requests(tmp_path):
    proc, url = start_server(build_world(tmp_path))
    try:
        idle = peak_rss_mib(proc.pid)
        result = run_load(url, clients=24, rounds=3, pid=proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    print(result)
    assert result["failures"] == [] and result["alive_after"]
    assert result["valid"] > 40 and result["invalid"] > 10 and result["clients"] >= 20
    assert result["server_peak_rss_mib"] < idle + 300  # requests do not pile up memory
