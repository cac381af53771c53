"""Can a person read the labels of a SAILS run's top selected features? (issue 12's first target)

For the `--top` first selected features of a finished run (the order of select/selection.json), reads the
label each report row shows (`display_label`: model-written label, then the data-grounded line), and each
part on its own, and asks of each text: does it hold a word a person reads, or only chat-template tokens and
word fragments? A word counts when it has 3+ letters, is not a word of the chat template itself (its special
tokens, role names and default system prompt) and occurs as a whole word in the run's labelled requests — so
fragments such as 'taxpay' or 'illegit' do not. Also records whether every feature has a data-grounded line
and the describe stage's time and detection scores (from run.json); writes bench/results/<name>.json.

  .venv/bin/python bench/bench_top_labels.py --run runs/sails-full --name top_labels_full
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from typing import Any

from common import write_result
from saelign.io import read_json_object
from saelign.label.describe import load_labelled_prompts
from saelign.label.reading import display_label, load_readings
from saelign.progress import setup_logging
from saelign.sails.pipeline import stored_config
from saelign.sails.presets import resolve_config
from saelign.sails.rundir import RunDir
from saelign.sails.stages import STAGES

WORD = re.compile(r"[A-Za-z]{3,}")


def words(text: str) -> set[str]:
    return {w.lower() for w in WORD.findall(text)}


def template_words(tokenizer: Any) -> set[str]:
    """Words of the chat template around an empty request, and of the special tokens."""
    wrapped = tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False,
                                            add_generation_prompt=True)
    return words(wrapped) | words(" ".join(tokenizer.all_special_tokens))


def readable_words(label: str, vocabulary: set[str], template: set[str]) -> list[str]:
    """The words of `label` a person reads: whole words of the requests, not the template's."""
    return sorted(w for w in words(label) - template if w in vocabulary)


def vocabulary_of(texts: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for text in texts:
        found |= words(text)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished SAILS run folder (with describe/)")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--name", default="top_labels")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = resolve_config([stored_config(args.run) or {}])
    run = RunDir(args.run, cfg, STAGES)
    readings = load_readings(run.path("describe", "readings.json"))
    vocabulary = vocabulary_of(p.prompt for p in load_labelled_prompts(run.path("data")))
    template = template_words(run.tokenizer)
    rows = []
    for rank, latent in enumerate(run.selection["selection"]["latent_ids"][: args.top], start=1):
        label, reading = run.labels[latent], readings.get(latent)
        shown = display_label(label.short_label, reading)
        parts = {"shown": shown, "model": reading.explanation if reading else "",
                 "grounded": reading.grounded if reading else "", "tokens": label.short_label}
        rows.append({"rank": rank, "latent": latent, **parts,
                     "readable_words": {k: readable_words(v, vocabulary, template) for k, v in parts.items()},
                     "detection": reading.detection if reading else {}})
    stages = read_json_object(run.path("run.json"), "run.json")["stages"]
    describe = stages.get("describe", {})
    result = {
        "run": str(args.run), "top": args.top,
        "features": rows,
        "shown_readable": sum(bool(r["readable_words"]["shown"]) for r in rows),
        "model_readable": sum(bool(r["readable_words"]["model"]) for r in rows),
        "tokens_readable": sum(bool(r["readable_words"]["tokens"]) for r in rows),
        "with_grounded_line": sum(bool(r["grounded"]) for r in rows),
        "describe_stage": describe,
        "template_words": sorted(template),
    }
    path = write_result(args.name, result)
    for r in rows:
        readable = r["readable_words"]["shown"][:6]
        print(f"{r['rank']:>2} #{r['latent']:<6} readable {readable} | {r['shown'][:100]}")
    print(f"shown labels readable: {result['shown_readable']}/{len(rows)}, model-written alone "
          f"{result['model_readable']}, token lists {result['tokens_readable']}, grounded lines "
          f"{result['with_grounded_line']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
