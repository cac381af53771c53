"""The static dashboard: pages, escaping, bad input, a real headless-Chromium search (Debian chromium)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from saelign.cli import main
from saelign.dashboard import DashboardConfig, FeatureInfo, build_dashboard, write_site
from saelign.dashboard.site import histogram_svg
from saelign.errors import SaelignError
from saelign.label import ContextExample, LatentLabel, TokenScore, save_labels
from saelign.label.examples import PromptExample
from saelign.label.reading import Reading, sae_meta, save_readings
from saelign.sae import SAE, SAEConfig
from saelign.sae.formats import save_sae

ARTIFACTS = Path(os.environ.get("SAELIGN_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


def _labels() -> dict[int, LatentLabel]:
    malware = Reading(
        "prompt",
        "fires on 90 % of 'Malware' harmful requests and 2 % of coding requests (mean 2.1 vs 0.1)",
        [],
        [PromptExample("Write ransomware that encrypts a hospital's files", 3.2)],
        [PromptExample("How do I bake bread?", 0.0)],
        [0.0, 1.0, 2.0],
        [30, 5],
        "requests to write malicious software",
        {"model": 0.86, "grounded": 0.8, "tokens": 0.55},
    )
    token = LatentLabel(
        1,
        "' bread' → ' flour'",
        [" bread"],
        [ContextExample("How do I bake", " bread", "?", 1.5, 0, 4)],
        [TokenScore(" flour", 7, 0.5)],
        [TokenScore("<script>", 8, -0.5)],
        0.01,
    )
    return {1: token, 4: LatentLabel(4, "'\\n' → 'taxpay'", ["\n"], [], [], [], 0.2, malware)}


def test_site_pages_show_grain_escape_and_histogram(tmp_path):
    index = write_site(
        _labels(), tmp_path / "site", "demo", {4: FeatureInfo(["selected"], "harmful request")}
    )
    text = index.read_text()
    assert "requests to write malicious software" in text and "selected" in text
    assert (
        "<td>0.86</td>" in text and "<td>—</td>" in text
    )  # the shown (model) label's score; none for tokens
    assert text.index('href="features/4.html"') < text.index(
        'href="features/1.html"'
    )  # tagged features first
    page4 = (tmp_path / "site" / "features" / "4.html").read_text()
    assert "Write ransomware that encrypts a hospital&#x27;s files" in page4 and "<svg" in page4
    assert "AlignSAE concept: <b>harmful request</b>" in page4 and "0.86" in page4
    page1 = (tmp_path / "site" / "features" / "1.html").read_text()
    assert "Top activating tokens" in page1 and "&lt;script&gt;" in page1 and "<script>" not in page1
    assert not re.search(r"(src|href)=\"(https?:)?//", text + page4 + page1)  # nothing external


def test_histogram_svg_bars_scale_to_the_largest_count():
    svg = histogram_svg([0.0, 1.0, 2.0], [10, 5], height=100)
    assert svg.count("<rect") == 2 and 'height="100.0"' in svg and 'height="50.0"' in svg
    assert "no values" in histogram_svg([0, 0], [0])


def test_build_dashboard_checks_inputs_and_writes_nothing_on_error(tmp_path):
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=8, d_sae=6, activation="relu", hookpoint="model.layers.1"))
    save_sae(sae, tmp_path / "sae")
    labels_file = save_labels(tmp_path / "labels.json", _labels(), sae_meta(sae))
    out = tmp_path / "dash"
    assert build_dashboard(
        DashboardConfig(labels=str(labels_file), sae=str(tmp_path / "sae"), out=str(out))
    ).is_file()
    torch.manual_seed(1)
    other = SAE(SAEConfig(d_in=8, d_sae=6, activation="relu", hookpoint="model.layers.1"))
    save_sae(other, tmp_path / "other")
    with pytest.raises(SaelignError, match="labels.json was written for another SAE"):
        build_dashboard(
            DashboardConfig(labels=str(labels_file), sae=str(tmp_path / "other"), out=str(tmp_path / "x"))
        )
    small = SAE(SAEConfig(d_in=8, d_sae=3, activation="relu", hookpoint="model.layers.1"))
    save_sae(small, tmp_path / "small")
    unchecked = save_labels(tmp_path / "plain.json", _labels())
    with pytest.raises(SaelignError, match="out of range"):
        build_dashboard(
            DashboardConfig(labels=str(unchecked), sae=str(tmp_path / "small"), out=str(tmp_path / "x"))
        )
    assert not (tmp_path / "x").exists()
    assert main(["dashboard", "--labels", str(tmp_path / "missing.json")]) == 2
    run = tmp_path / "run"
    (run / "select").mkdir(parents=True)
    (run / "select" / "selection.json").write_text(json.dumps({"selection": {"latent_ids": [4]}}))
    (run / "effect").mkdir()
    (run / "effect" / "sails.json").write_text(json.dumps({"top": {"harmful": {"down": [{"latent": 1}]}}}))
    (run / "answers").mkdir()
    (run / "answers" / "sails.json").write_text(json.dumps({"top": {"harmless": {"up": [{"latent": 1}]}}}))
    reading = Reading(
        "prompt",
        "fires on 80 % of cooking requests and 0 % of harmful requests (mean 1 vs 0)",
        [],
        [],
        [],
        [0.0, 1.0],
        [3],
        "baking questions",
        {"model": 0.9},
    )
    save_readings(run / "describe" / "readings.json", {1: reading}, {})
    index = build_dashboard(DashboardConfig(labels=str(labels_file), sails_run=str(run), out=str(out)))
    text = index.read_text()
    assert "sails down on harmful" in text and "selected" in text and "sails answers up on harmless" in text
    assert "baking questions — fires on 80 % of cooking requests" in text  # the describe stage's reading
    assert "baking questions" in (out / "features" / "1.html").read_text()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(
    _chromium() is None, reason="Debian package chromium missing: apt-get install -y chromium chromium-driver"
)
def test_search_in_headless_chromium_finds_the_feature_and_screenshots_its_page(tmp_path):
    index = write_site(_labels(), tmp_path / "site", "demo", {4: FeatureInfo(["selected"])})
    dom = _browser(
        "--virtual-time-budget=3000", "--dump-dom", index.as_uri() + "#q=malicious%20software"
    ).stdout
    visible = re.findall(r'<tr data-search="[^"]*">.*?href="(features/\d+\.html)"', dom)
    hidden = re.findall(r'<tr data-search="[^"]*" hidden="">.*?href="(features/\d+\.html)"', dom)
    assert visible == ["features/4.html"] and hidden == ["features/1.html"]  # the script ran and filtered
    assert "1 of 2 features" in dom
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard_feature_4.png"
    shot.unlink(missing_ok=True)
    _browser(f"--screenshot={shot}", "--window-size=1100,900", (index.parent / visible[0]).as_uri())
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
