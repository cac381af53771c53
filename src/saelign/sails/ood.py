"""In-distribution and out-of-distribution safety, with over-refusal per register.

The test split holds held-out behaviours in the training registers (in-distribution). The ood split holds the
same behaviours asked in the held-out registers, and whole held-out sources (`data.OOD_SOURCES`) in every
register: what a model that learned "refuse imperatives" rather than "refuse harm" gets wrong. Each figure is
reported on its own, never folded into one number, and over-refusal is given per register (harmless
imperatives against harmless questions ...), since a form-keyed adapter refuses harmless requests of the
trained form.
"""

import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.errors import SaelignError
from saelign.progress import logger
from saelign.sails.data import KINDS, OOD_SOURCES, Example, SafetyData
from saelign.sails.evaluate import SafetyEvalConfig, kind_rates, take_per_kind
from saelign.sails.generate import generate_answers
from saelign.sails.judge import Judge, Verdict
from saelign.sails.registers import REGISTERS

# Parts of the evaluation: name -> (split, which examples of it).
PARTS = {
    "in_distribution": ("test", lambda e: True),
    "ood_registers": ("ood", lambda e: e.source.split(":")[0] not in OOD_SOURCES),
    "ood_sources": ("ood", lambda e: e.source.split(":")[0] in OOD_SOURCES),
}
_SHOWN = ("safety_rate", "over_refusal", "borderline_over_refusal", "harmful_degenerate",
          "harmless_degenerate")


def _spread(examples: Sequence[Example]) -> list[Example]:
    """The examples in a fixed hash order of (behaviour, register), so that a capped part samples every source
    file and register rather than the first ones the split lists."""
    def rank(e: Example) -> str:
        return hashlib.sha256(f"{e.behaviour}\x00{e.register}\x00{e.prompt}".encode()).hexdigest()

    return sorted(examples, key=rank)


def in_part(part: str, name: str) -> bool:
    """Whether a row of evaluation part `part` counts in `name`: its own part, or "ood", which pools the ood
    parts."""
    return part == name or (name == "ood" and part.startswith("ood_"))


def _subset(pairs: Sequence[tuple[Example, Verdict]]) -> dict[str, Any]:
    examples, verdicts = [p[0] for p in pairs], [p[1] for p in pairs]
    return kind_rates(examples, verdicts)


def by_register(pairs: Sequence[tuple[Example, Verdict]]) -> dict[str, dict[str, Any]]:
    """Rates per register (registers with no example left out)."""
    return {r: _subset([p for p in pairs if p[0].register == r]) for r in REGISTERS
            if any(p[0].register == r for p in pairs)}


def evaluate_splits(model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: SafetyData, judge: Judge,
                    cfg: SafetyEvalConfig, parts: Sequence[str] = tuple(PARTS),
                    answered: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Greedy answers to the test and ood prompts, judged; the rates of each part of `PARTS` and of the whole
    ood split, each also per register, and every response with its verdict.

    `cfg.max_per_kind` caps each part separately (0 = all), so a capped run still has every part; a capped
    part is a fixed hash-ordered sample of its prompts. `answered`: prompt -> the same model's greedy answer
    at the same cfg.max_new_tokens (the test split's, from `evaluate_model`), taken instead of decoding the
    prompt again.
    """
    began = time.perf_counter()
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SaelignError(f"unknown part(s) {', '.join(unknown)}; use {', '.join(PARTS)}")
    examples = [(name, e) for name, (split, keep) in PARTS.items() if name in parts
                for e in take_per_kind(_spread([x for x in data.split(split) if keep(x)]), cfg.max_per_kind)]
    answered = answered or {}
    todo = list(dict.fromkeys(e.prompt for _, e in examples if e.prompt not in answered))
    fresh = dict(zip(todo, generate_answers(model, tokenizer, todo, cfg.max_new_tokens, cfg.batch_size),
                     strict=True))
    responses = [answered[e.prompt] if e.prompt in answered else fresh[e.prompt] for _, e in examples]
    verdicts = judge.judge([e.prompt for _, e in examples], responses)
    result: dict[str, Any] = {}
    for name in [*PARTS, "ood"]:
        pairs = [(e, v) for (part, e), v in zip(examples, verdicts, strict=True)
                 if in_part(part, name)]
        result[name] = {**_subset(pairs), "by_register": by_register(pairs)} if pairs else {}
    result["responses"] = [{"part": part, "prompt": e.prompt, "kind": e.kind, "register": e.register,
                            "source": e.source, "behaviour": e.behaviour, "response": r, "verdict": v.label}
                           for (part, e), r, v in zip(examples, responses, verdicts, strict=True)]
    result["seconds"] = round(time.perf_counter() - began, 2)
    result["answers_reused"] = len(examples) - len(todo)
    for name in [*PARTS, "ood"]:
        if result[name]:
            logger.info(f"{name}: safety {result[name]['safety_rate']:.1%}, "
                        f"over-refusal {result[name]['over_refusal']:.1%} (n={result[name]['n']})")
    return result


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per part and register for a report table: part, register ('all' for the whole part), the n of
    each kind and the rates of `_SHOWN`."""
    rows = []
    for name in [*PARTS, "ood"]:
        metrics = result.get(name) or {}
        parts = [("all", metrics), *metrics.get("by_register", {}).items()] if metrics else []
        for register, values in parts:
            rows.append({"part": name, "register": register, **{f"n_{k}": values["n"][k] for k in KINDS},
                         **{k: values[k] for k in _SHOWN}})
    return rows
