"""Register coverage: rows grouped by origin and register, each group's rate, and wide minus narrow paired
where both groups were asked the same prompts."""

import pytest

from saelign.errors import SaelignError
from saelign.sails.register_coverage import compare_groups, outcomes


def _rows(part: str, register: str, kind: str, refused: list[bool], stem: str = "p") -> list[dict]:
    return [{"part": part, "register": register, "kind": kind, "prompt": f"{stem}{i}", "refused": r}
            for i, r in enumerate(refused)]


def test_outcomes_group_by_origin_register_and_kind():
    rows = (_rows("in_distribution", "question", "harmful", [True, False])
            + _rows("ood_registers", "tense", "harmful", [False])
            + _rows("ood_sources", "tense", "harmful", [True], stem="s"))
    got = outcomes(rows)
    assert got == {("behaviours", "question", "harmful"): {"p0": True, "p1": False},
                   ("behaviours", "tense", "harmful"): {"p0": False},
                   ("sources", "tense", "harmful"): {"s0": True}}
    with pytest.raises(SaelignError, match="two verdicts"):
        outcomes(rows + _rows("in_distribution", "question", "harmful", [False]))


def test_compare_groups_pairs_the_same_prompts_and_reads_the_gap():
    # fiction: the same 40 prompts in both groups, the wide group refusing 10 more on every seed
    narrow = [outcomes(_rows("ood_sources", "fiction", "harmful", [i < 20 for i in range(40)]))] * 3
    wide = [outcomes(_rows("ood_sources", "fiction", "harmful", [i < 30 for i in range(40)]))] * 3
    (row,) = compare_groups(narrow, wide, n_boot=300)
    assert row["paired"] and row["narrow"]["mean"] == 0.5 and row["wide"]["mean"] == 0.75
    gap = row["wide_minus_narrow"]
    assert gap["mean"] == pytest.approx(0.25) and gap["excludes_zero"]
    # other wordings in the wide group: unpaired, same means, a wider interval
    reworded = _rows("ood_sources", "fiction", "harmful", [i < 30 for i in range(40)], stem="w")
    (unpaired,) = compare_groups(narrow, [outcomes(reworded)] * 3, n_boot=300)
    other_gap = unpaired["wide_minus_narrow"]
    assert not unpaired["paired"] and other_gap["mean"] == pytest.approx(0.25)
    assert other_gap["hi"] - other_gap["lo"] > gap["hi"] - gap["lo"]


def test_compare_groups_refuses_mismatched_seeds_or_prompts():
    one = outcomes(_rows("ood_sources", "fiction", "harmful", [True, False]))
    other = outcomes(_rows("ood_sources", "fiction", "harmful", [True, False], stem="q"))
    with pytest.raises(SaelignError, match="same seeds"):
        compare_groups([one, one], [one])
    with pytest.raises(SaelignError, match="different"):
        compare_groups([one, other], [one, one])


def test_bench_compare_names_the_record_that_lacks_a_method(tmp_path):
    """bench_sails_register_coverage.py compare: a record without one of --methods' answers is refused with
    its path, flag and the models it does hold (not a KeyError deep in the comparison)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / "bench_sails_register_coverage.py"
    files = {}
    for group, models in (("narrow", ["base", "sails", "act_pca"]), ("held", ["base", "sails", "act_pca"]),
                          ("wide", ["base", "sails"])):
        files[group] = tmp_path / f"{group}.json"
        files[group].write_text(json.dumps({"seed": 0, "models": {m: {} for m in models}}))
    run = subprocess.run([sys.executable, str(bench), "compare", "--methods", "sails,act_pca",
                          "--narrow", str(files["narrow"]), "--narrow-heldout", str(files["held"]),
                          "--wide", str(files["wide"])], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert f"{files['wide']} (--wide) has no answers of act_pca" in run.stderr
    assert "it holds base, sails" in run.stderr
