"""bench/update_readme.py names the gate's threshold rule: a safety level, or an over-refusal budget."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from update_readme import gate_phrase  # noqa: E402


def test_the_gate_phrase_names_the_level_or_the_harmless_budget():
    level = {"hookpoint": "model.layers.27", "pooling": "last", "val_safety": 0.98}
    assert gate_phrase(level) == "the gate's probe at model.layers.27, level 0.98"
    budget = {"hookpoint": "model.layers.6", "pooling": "mean", "val_safety": 0.95, "harmless_budget": 0.1}
    assert gate_phrase(budget) == ("the gate's probe at model.layers.6 (mean over the request's tokens), "
                                   "flagging at most 10 % of the val harmless prompts")
    assert gate_phrase({**budget, "harmless_budget": 0.0}).endswith("level 0.95")
