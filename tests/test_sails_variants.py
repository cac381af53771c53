"""Register variants: levelled register counts, user prompts kept as written, the imbalance rule and table."""

from __future__ import annotations

from collections import Counter

from saelign.sails import variants
from saelign.sails.data import KINDS, Example, identify

TRAIN = ["question", "imperative", "indirect", "need"]


def group(prompt: str, source: str = "advbench") -> list[Example]:
    return [identify(Example(prompt, "harmful", source))]


def test_expand_levels_the_registers_even_when_some_prompts_fit_only_their_own():
    fixed = [group(f"Why does thing {i} float on water?") for i in range(12)]  # no template: question only
    free = [group(f"Write a poem about topic {i}.") for i in range(24)]        # fits every register
    out = variants.expand(fixed + free, TRAIN, 2)
    counts = Counter(e.register for e in out)
    assert len(out) == 12 + 2 * 24
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    per_behaviour = Counter(e.behaviour for e in out)
    assert all(per_behaviour[g[0].behaviour] == 2 for g in free)
    assert all(len({e.register for e in out if e.behaviour == g[0].behaviour}) == 2 for g in free)
    assert variants.expand(fixed + free, TRAIN, 2) == out  # deterministic


def test_sizes_match_expand_and_zero_variants_keep_prompts_as_written():
    groups = [group("Write a poem about rain."), group("Why is the sky blue?"), group("How did Rome fall?")]
    for n in (0, 1, 2, 4):
        out = variants.expand(groups, TRAIN, n)
        assert len(out) == sum(variants.size(g, TRAIN, n) for g in groups)
    assert [e.prompt for e in variants.expand(groups, TRAIN, 0)] == ["Write a poem about rain.",
                                                                     "Why is the sky blue?"]
    assert variants.expand([group("How did Rome fall?")], ["tense"], 1)[0].prompt == "How did Rome fall?"


def test_user_prompts_are_kept_as_written_in_every_allowed_register():
    mine = [identify(Example("Write a poem about rain.", "harmless", "user:a.jsonl", behaviour="b1")),
            identify(Example("I need a poem about rain.", "harmless", "user:a.jsonl", behaviour="b1")),
            identify(Example("rain poem", "harmless", "user:a.jsonl", behaviour="b1"))]
    out = variants.expand([mine], TRAIN, 1)
    assert [e.prompt for e in out] == ["Write a poem about rain.", "I need a poem about rain."]
    assert variants.size(mine, TRAIN, 1) == 2


def test_imbalances_and_table():
    examples = ([Example("x", "harmful", "s", register="imperative")] * 7
                + [Example("x", "harmful", "s", register="question")] * 3
                + [Example("x", "harmless", "s", register="question")] * 9
                + [Example("x", "harmless", "s", register="imperative")] * 1)
    table = variants.register_table(examples, KINDS)
    assert table["imperative"] == {"harmful": 7, "harmless": 1, "borderline": 0}
    # imperative: 70 % of harmful, 10 % of harmless; question: 90 % of harmless, 30 % (not < 20 %) of harmful
    expected = ["train: imperative is 70% of harmful but 10% of harmless"]
    assert variants.imbalances({"train": table}) == expected
    assert variants.imbalances({"train": variants.register_table(examples[:3] + examples[7:8], KINDS)}) == []
    text = variants.format_table({"train": table}, KINDS)
    assert "train  imperative" in text and "tense" not in text
