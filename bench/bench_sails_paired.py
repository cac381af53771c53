"""Paired comparisons of finished seed runs: one model of one group of runs minus one model of another group,
over the same seeds, data and base model (issue 11). Each comparison is the mean and 95 % interval of a
bootstrap over seeds and prompts of every rate and of the perplexity change, with its verdict
(`saelign.sails.seeds.compare_runs`). Nothing is trained or decoded: the groups' evaluation files are read.

Each `--pair NAME MODEL GROUP OTHER_MODEL OTHER_GROUP` compares MODEL in GROUP minus OTHER_MODEL in
OTHER_GROUP, a GROUP being a folder of seed<s>/ run directories (as bench_sails_seeds.py writes them). Writes
bench/results/sails_paired_<tag>.json.

  .venv/bin/python bench/bench_sails_paired.py --tag gate_val_chosen_full --seeds 0,1,2 \\
      --pair "new gate - block-29 gate" sails+gate runs/w30-val-gate sails+gate runs/w30 \\
      --pair "new gate - plain v2" sails+gate runs/w30-val-gate sails runs/v2
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from common import write_result
from saelign.errors import SaelignError
from saelign.progress import setup_logging
from saelign.sails.seeds import compare_runs, seed_dir

HEADLINE = ("in_distribution.safety_rate", "in_distribution.over_refusal", "ood.safety_rate",
            "ood.over_refusal", "perplexity_change")
FIELDS = ("name", "mine", "mine_dir", "other", "other_dir")


def compare_pair(pair: dict[str, str], seeds: list[int], n_boot: int) -> dict[str, Any]:
    dirs = {side: [seed_dir(pair[f"{side}_dir"], s) for s in seeds] for side in ("mine", "other")}
    for side, folders in dirs.items():
        for folder in folders:
            model = pair[side]
            if not (folder / "eval" / f"{model}.json").is_file():
                raise SaelignError(f"{folder}: no eval/{model}.json; run its eval (or gated) stage first")
    return {"mine": {"model": pair["mine"], "runs": [str(d.resolve()) for d in dirs["mine"]]},
            "other": {"model": pair["other"], "runs": [str(d.resolve()) for d in dirs["other"]]},
            "difference": compare_runs(dirs["mine"], dirs["other"], pair["mine"], pair["other"], n_boot)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", action="append", nargs=5, required=True,
                        metavar=("NAME", "MODEL", "GROUP", "OTHER_MODEL", "OTHER_GROUP"),
                        help="MODEL in GROUP minus OTHER_MODEL in OTHER_GROUP (repeatable)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tag", required=True, help="the result file: sails_paired_<tag>.json")
    parser.add_argument("--what", default="", help="one line on what the groups are, kept in the result")
    parser.add_argument("--n-boot", type=int, default=2000)
    args = parser.parse_args()
    setup_logging()
    seeds = [int(s) for s in args.seeds.split(",")]
    try:
        pairs = [dict(zip(FIELDS, p, strict=True)) for p in args.pair]
        comparisons = {p["name"]: compare_pair(p, seeds, args.n_boot) for p in pairs}
    except SaelignError as error:
        print(f"bench_sails_paired: {error}", file=sys.stderr)
        return 2
    write_result(f"sails_paired_{args.tag}", {"what": args.what, "seeds": seeds, "comparisons": comparisons})
    for name, c in comparisons.items():
        print(name)
        for key in HEADLINE:
            if key in c["difference"]:
                x = c["difference"][key]
                print(f"  {key:30s} {100 * x['mean']:+.1f} ({100 * x['lo']:+.1f} to {100 * x['hi']:+.1f}) "
                      f"{x['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
