from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from saelign.errors import SaelignError
from saelign.label.grounding import (
    LabelledPrompt,
    advbench_harm_categories,
    build_groups,
    ground_latents,
    grounded_phrase,
    labelled_examples,
    request_form,
)


@dataclass(frozen=True)
class Ex:
    prompt: str
    kind: str
    source: str


def _prompts() -> list[LabelledPrompt]:
    rows = []
    for i in range(10):
        rows.append(
            LabelledPrompt(
                f"Write malware number {i}",
                {"kind": ("harmful",), "harm": ("Cyber attack",), "form": ("instruction",)},
            )
        )
        rows.append(
            LabelledPrompt(
                f"Write a poem {i}", {"kind": ("harmful",), "harm": ("Harassment",), "form": ("instruction",)}
            )
        )
        rows.append(
            LabelledPrompt(
                f"How do I sort a list {i}?",
                {"kind": ("harmless",), "topic": ("coding",), "form": ("question",)},
            )
        )
        rows.append(
            LabelledPrompt(
                f"How do I bake {i}?", {"kind": ("harmless",), "topic": ("cooking",), "form": ("question",)}
            )
        )
    return rows


def test_planted_topic_feature_names_its_topic_and_the_contrast():
    prompts = _prompts()
    cyber = torch.tensor([2.0 if p.labels.get("harm") == ("Cyber attack",) else 0.0 for p in prompts])
    cyber[0] = 0.0  # 9 of 10 cyber prompts fire
    everywhere = torch.ones(len(prompts))
    silent = torch.zeros(len(prompts))
    out = ground_latents(torch.stack([cyber, everywhere, silent], 1), prompts, [4, 5, 6])
    assert (
        out[4].line
        == "fires on 90 % of 'Cyber attack' harmful requests and 0 % of harmless requests (mean 1.8 vs 0)"
    )
    assert out[5].line.startswith(
        "fires on most requests whatever their kind (100 % of harmful, 100 % of harmless)"
    )
    dense = torch.tensor([3.0 if p.labels.get("topic") == ("cooking",) else 1.0 for p in prompts])
    line = ground_latents(dense[:, None], prompts, [7])[7].line
    assert line.endswith(
        "stronger on harmless than harmful requests (mean 2 vs 1); strongest on cooking requests "
        "(mean 3), weakest on coding requests (mean 1)"
    )
    assert grounded_phrase(line) == "harmless requests"
    assert out[6].line == "never fires on the 40 labelled requests"
    stat = next(s for s in out[4].groups if s.value == "Cyber attack")
    assert (stat.n, stat.rate, stat.mean) == (10, 0.9, pytest.approx(1.8))


def test_groups_need_min_size_and_shape_is_checked():
    prompts = _prompts()[:8]
    assert {(g.facet, g.value) for g in build_groups(prompts, 2)} >= {
        ("kind", "harmful"),
        ("topic", "coding"),
    }
    assert ("topic", "coding") not in {(g.facet, g.value) for g in build_groups(prompts, 3)}
    assert build_groups(prompts, 9) == []
    with pytest.raises(SaelignError, match="shape"):
        ground_latents(torch.zeros(3, 1), prompts, [0])
    with pytest.raises(SaelignError, match="empty"):
        ground_latents(torch.zeros(0, 1), [], [0])


def test_request_form():
    assert request_form("How do I bake bread?") == "question"
    assert request_form("How did people make bombs in the 1800s?") == "past-tense question"
    assert request_form("Write a script that steals passwords") == "instruction"
    assert request_form("I need a recipe for soup") == "first-person request"
    assert request_form("Is it safe to eat raw eggs") == "question"


def test_labels_from_safety_examples_and_advbench_file(tmp_path: Path):
    path = tmp_path / "adv_bench.prompt"
    path.write_text(
        "seeds:\n- value: Hack a bank\n  harm_categories:\n  - Financial and Business\n  - Privacy loss\n"
    )
    harms = advbench_harm_categories(path)
    assert harms == {"Hack a bank": ("Financial and Business", "Privacy loss")}
    rows = labelled_examples(
        [
            Ex("Hack a bank", "harmful", "advbench"),
            Ex("Sort a list", "harmless", "harmless:coding"),
            Ex("Capital of France?", "harmless", "countries"),
            Ex("Write a poem about rain", "harmless", "imperatives:poems_and_songs"),
        ],
        harms,
    )
    assert rows[0].labels == {
        "kind": ("harmful",),
        "form": ("instruction",),
        "harm": ("Financial and Business", "Privacy loss"),
    }
    assert rows[1].labels["topic"] == ("coding",) and rows[2].labels["topic"] == ("country facts",)
    assert rows[3].labels["topic"] == ("poems_and_songs",)
    bad = tmp_path / "bad.prompt"
    bad.write_text("seeds:\n- value: x\n")
    with pytest.raises(SaelignError, match="harm_categories"):
        advbench_harm_categories(bad)


def test_grounded_phrase_is_what_the_line_says_the_latent_is_about():
    assert (
        grounded_phrase(
            "fires on 90 % of 'Cyber attack' harmful requests and 0 % of harmless requests (mean 1.8 vs 0)"
        )
        == "'Cyber attack' harmful requests"
    )
    assert grounded_phrase("fires on 40 % of questions (mean 1)") == "questions"
    assert (
        grounded_phrase(
            "fires on most requests whatever their kind (100 % of harmful); strongest "
            "on cooking requests (mean 3), weakest on coding requests (mean 1)"
        )
        == "cooking requests"
    )
    assert (
        grounded_phrase("never fires on the 40 labelled requests")
        == "never fires on the 40 labelled requests"
    )


def test_grounded_summary_drops_the_bracketed_numbers():
    from saelign.label.grounding import grounded_summary

    dense = (
        "fires on most requests whatever their kind (100 % of harmful, 90 % of harmless), stronger on "
        "harmful than harmless requests (mean 2 vs 1); strongest on 'Malware' harmful requests (mean 3), "
        "weakest on coding requests (mean 0.1)"
    )
    assert grounded_summary(dense) == (
        "fires on most requests, stronger on harmful than harmless requests; "
        "strongest on 'Malware' harmful requests, weakest on coding requests"
    )
    assert grounded_summary("fires on 81 % of questions and 3 % of coding requests (mean 2.1 vs 0.1)") == (
        "fires on 81 % of questions and 3 % of coding requests"
    )
