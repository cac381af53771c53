from __future__ import annotations

import json

import pytest
import torch

from saelign.errors import SaelignError
from saelign.label import LatentLabel, load_labels, save_labels
from saelign.label.grounding import LabelledPrompt
from saelign.label.reading import (
    check_labels_file,
    check_labels_meta,
    display_label,
    feature_name,
    histogram,
    load_readings,
    readings_from_acts,
    sae_meta,
    save_readings,
    shown_score,
)
from saelign.sae import SAE, SAEConfig

PROMPTS = [
    LabelledPrompt(f"How do I bake bread number {i}?", {"kind": ("harmless",), "topic": ("cooking",)})
    for i in range(8)
] + [LabelledPrompt(f"Write a virus {i}", {"kind": ("harmful",)}) for i in range(8)]


def _sae(seed: int = 0) -> SAE:
    torch.manual_seed(seed)
    return SAE(SAEConfig(d_in=32, d_sae=16, activation="relu", hookpoint="model.layers.1"))


def test_reading_round_trips_through_the_labels_file(tmp_path):
    acts = torch.cat([torch.zeros(8, 1), torch.full((8, 1), 2.0)])
    readings = readings_from_acts(acts, PROMPTS, [3], {3: "prompt"}, n_examples=2)
    reading = readings[3]
    assert reading.grounded.startswith("fires on 100 % of harmful requests and 0 % of")
    assert [e.activation for e in reading.top_prompts] == [2.0, 2.0] and reading.bottom_prompts[
        0
    ].activation == 0
    assert sum(reading.hist_counts) == 16
    reading.explanation, reading.detection = "requests to write malware", {"model": 0.9}
    label = LatentLabel(3, "'x'", ["x"], [], [], [], 0.1, reading)
    path = save_labels(tmp_path / "labels.json", {3: label})
    loaded = load_labels(path)[3]
    assert loaded.reading == reading
    assert (
        display_label(loaded.short_label, loaded.reading) == f"requests to write malware — {reading.grounded}"
    )
    assert display_label("'x'", None) == "'x'"
    assert "reading" in json.loads(path.read_text())["latents"][0]


def test_labels_of_another_sae_are_refused(tmp_path):
    sae, other = _sae(0), _sae(1)
    check_labels_meta("labels.json", sae_meta(sae), sae)
    with pytest.raises(SaelignError, match="labels.json was written for another SAE"):
        check_labels_meta("labels.json", sae_meta(other), sae)
    path = save_labels(tmp_path / "labels.json", {}, sae_meta(other))
    with pytest.raises(SaelignError, match="another SAE"):
        check_labels_file(path, sae)
    with pytest.raises(SaelignError, match="d_sae=32"):
        check_labels_meta("labels.json", {"d_sae": 32}, sae)


def test_histogram_counts_every_value():
    edges, counts = histogram(torch.tensor([0.0, 0.0, 1.0, 3.0]), bins=3)
    assert edges == pytest.approx([0, 1, 2, 3]) and counts == [2, 1, 1]
    assert histogram(torch.zeros(5)) == ([0.0, 0.0], [5])


def test_readings_file_round_trips_and_refuses_other_files(tmp_path):
    acts = torch.cat([torch.zeros(8, 2), torch.full((8, 2), 2.0)])
    readings = readings_from_acts(acts, PROMPTS, [3, 7], {3: "prompt", 7: "token"}, n_examples=2)
    readings[7].detection = {"grounded": 0.75}
    path = save_readings(tmp_path / "describe" / "readings.json", readings, {"d_sae": 16})
    assert load_readings(path) == readings
    labels = save_labels(tmp_path / "labels.json", {})
    with pytest.raises(SaelignError, match="not a saelign readings file"):
        load_readings(labels)
    data = json.loads(path.read_text())
    del data["readings"][1]["grounded"]
    path.write_text(json.dumps(data))
    with pytest.raises(SaelignError, match=r"readings\[1\] is malformed"):
        load_readings(path)


def test_a_feature_is_named_by_its_better_scored_readable_label():
    acts = torch.cat([torch.zeros(8, 1), torch.full((8, 1), 2.0)])
    reading = readings_from_acts(acts, PROMPTS, [3], {3: "prompt"})[3]
    assert feature_name("'x'", None) == "'x'" and shown_score(None) is None
    assert feature_name("'x'", reading) == "fires on 100 % of harmful requests and 0 % of harmless requests"
    assert shown_score(reading) is None  # not scored yet
    reading.explanation, reading.detection = "virus writing", {"model": 0.6, "grounded": 0.9}
    assert feature_name("'x'", reading).startswith("fires on 100 %") and shown_score(reading) == 0.6
    reading.detection["model"] = 0.9  # a tie: the measured line stays
    assert feature_name("'x'", reading).startswith("fires on 100 %")
    reading.detection["model"] = 0.95
    assert feature_name("'x'", reading) == "virus writing"
    # read at ordinary text positions (answer tokens): the token label, not a line about ends of requests
    reading.grain, reading.explanation, reading.detection = "token", "", {"tokens": 0.7, "grounded": 0.5}
    assert feature_name("'not' 'no'", reading) == "'not' 'no'" and shown_score(reading) == 0.7
    assert display_label("'not' 'no'", reading) == f"'not' 'no' — {reading.grounded}"
