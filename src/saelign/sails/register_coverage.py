"""Register coverage: does training on more registers carry over to a register that no run trained on?

Two groups of seed runs of one preset differ only in the training registers (`data.registers`): a *narrow*
group (the default: question, imperative, indirect, need) and a *wide* one (the same plus tense and keyword).
Both hold out a register neither trains on (`fiction`), so its prompts answer the question; the tense and
keyword prompts show what training on a register buys in that register. Prompts come from two origins:
held-out behaviours (the test split and the ood split's rewordings of it) and held-out sources (behaviours
from sources used for nothing else, asked in every register of the run).

`compare_groups` gives, per (origin, register, kind), each group's refusal rate with its 95 % interval
(bootstrap over seeds and prompts) and wide minus narrow: paired by seed and prompt where both groups were
asked the same prompts, else a difference of two independent prompt draws (seeds still paired by number).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from saelign.errors import SaelignError
from saelign.stats import crossed_bootstrap, crossed_bootstrap_difference

Outcomes = dict[tuple[str, str, str], dict[str, bool]]  # (origin, register, kind) -> prompt -> refused


def origin(part: str) -> str:
    """"sources" for the held-out sources' part, "behaviours" for the test split and its ood rewordings."""
    return "sources" if part == "ood_sources" else "behaviours"


def outcomes(rows: Sequence[Mapping[str, Any]]) -> Outcomes:
    """Judged rows (part, register, kind, prompt, refused; `seed_record.outcome_rows`' shape) -> refused per
    prompt, grouped by origin, register and kind. One prompt judged twice must agree."""
    out: Outcomes = {}
    for row in rows:
        key = (origin(row["part"]), row["register"], row["kind"])
        refused = bool(row["refused"])
        if out.setdefault(key, {}).setdefault(row["prompt"], refused) != refused:
            raise SaelignError(f"{row['prompt']!r} has two verdicts in one evaluation")
    return out


def _matrix(per_seed: Sequence[Outcomes], key: tuple[str, str, str]) -> tuple[list[str], np.ndarray]:
    prompts = sorted(per_seed[0].get(key, {}))
    if any(sorted(o.get(key, {})) != prompts for o in per_seed):
        raise SaelignError(f"the seeds of one group were asked different {'/'.join(key)} prompts; run them "
                           "over one data stage")
    return prompts, np.array([[o[key][p] for p in prompts] for o in per_seed], dtype=float)


def _interval(mean: float, lo: float, hi: float, **extra: Any) -> dict[str, Any]:
    return {"mean": mean, "lo": lo, "hi": hi, **extra}


def compare_groups(narrow: Sequence[Outcomes], wide: Sequence[Outcomes],
                   n_boot: int = 2000) -> list[dict[str, Any]]:
    """One row per (origin, register, kind) present in both groups (seeds in the same order in both)."""
    if len(narrow) != len(wide) or not narrow:
        raise SaelignError(f"compare_groups needs the same seeds in both groups, got {len(narrow)} and "
                           f"{len(wide)}")
    rows = []
    for key in sorted(set(narrow[0]) & set(wide[0])):
        (p_narrow, m_narrow), (p_wide, m_wide) = _matrix(narrow, key), _matrix(wide, key)
        paired = p_narrow == p_wide
        if paired:
            diff = crossed_bootstrap([m_wide - m_narrow], n_boot=n_boot)
        else:
            diff = crossed_bootstrap_difference(m_wide, m_narrow, n_boot=n_boot)
        rows.append({"origin": key[0], "register": key[1], "kind": key[2], "paired": paired,
                     "narrow": _interval(*crossed_bootstrap([m_narrow], n_boot=n_boot),
                                         n_prompts=len(p_narrow)),
                     "wide": _interval(*crossed_bootstrap([m_wide], n_boot=n_boot), n_prompts=len(p_wide)),
                     "wide_minus_narrow": _interval(*diff, excludes_zero=bool(diff[1] > 0 or diff[2] < 0))})
    return rows
