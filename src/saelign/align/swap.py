"""Concept-swap success: the swap cases of an ontology, the α sweep through an SAE's slots, and the oracle
ceiling that replaces the edited position's whole activation.

A swap case is a prompt of concept s about an entity and the same entity's fact under concept t (pairs with
equal answers, or where the model already says the target, are skipped; with `known_only` the model must state
the target fact under some prompt). Success is read on the greedy continuation two ways side by side:
strict (`saelign.text.answer_matches`: the answer opens the continuation, case, accents, punctuation and a
leading article ignored) and lenient (`saelign.text.lenient_match`, the AlignSAE authors' rule: the gold in
the generation or the generation in the gold, lower-cased)."""

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.align.activations import concept_offsets
from saelign.align.interventions import EditPositions, concept_swap, replace_positions
from saelign.align.metrics_config import MetricsConfig
from saelign.align.slots import SlotMap
from saelign.errors import require
from saelign.progress import logger
from saelign.sae.model import SAE
from saelign.text import answer_matches, greedy_decode, lenient_match, pad_token_id, token_ids

SAMPLES_PER_ALPHA = (
    6  # continuations kept per α (first case of the first pairs) so a reader sees the failure mode
)


# Builds the context of one batch: (the batch's row indices into the texts, the positions to edit).
RowContext = Callable[[Sequence[int], EditPositions], AbstractContextManager]


def _continue_rows(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    offsets: Sequence[int],
    context_for: RowContext | None,
    n_tokens: int,
    batch_size: int,
    span: str = "concept",
    during: str = "prompt",
    desc: str = "swap continuations",
) -> list[tuple[int, ...]]:
    """Greedy continuations, editing each prompt while it is read, with an edit that may differ per row
    (prompts are grouped by offset; `context_for(rows, positions)` builds the context of one batch whose
    forward rows are `texts[rows]` in that order): span="concept" edits the concept offset only;
    span="prompt" edits every prompt position from the offset on (pass -len(prompt) as the offset for the
    whole prompt; left padding stays untouched). during="all" also edits each generated token as it is
    read."""
    ids = token_ids(tokenizer, texts)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, off in enumerate(offsets):
        groups[off].append(i)
    out: list[tuple[int, ...]] = [()] * len(texts)
    for off, idx in groups.items():
        where: EditPositions = off if span == "concept" else slice(off, None)
        idx.sort(key=lambda i: -len(ids[i]))  # greedy_decode's own order: forward row k is rows[k]
        for start in range(0, len(idx), batch_size):
            rows = idx[start : start + batch_size]
            context = partial(context_for, rows, where) if context_for else None
            generating = partial(context_for, rows, "last") if context_for and during == "all" else None
            tokens = greedy_decode(
                model,
                [ids[i] for i in rows],
                n_tokens,
                pad_token_id(tokenizer),
                batch_size=len(rows),
                prompt_context=context,
                token_context=generating,
                desc=desc,
            )
            for i, row in zip(rows, tokens, strict=True):
                out[i] = tuple(row)
    return out


def _continue(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    offsets: Sequence[int],
    intervention: Callable[..., AbstractContextManager] | None,
    n_tokens: int,
    batch_size: int,
    span: str = "concept",
    during: str = "prompt",
) -> list[tuple[int, ...]]:
    """`_continue_rows` with one edit for every row: `intervention(positions=...)` builds its context."""
    context_for = (lambda _rows, where: intervention(positions=where)) if intervention else None
    return _continue_rows(model, tokenizer, texts, offsets, context_for, n_tokens, batch_size, span, during)


def _says(
    tokenizer: PreTrainedTokenizerBase, tokens: tuple[int, ...], example: Any, lenient: bool = False
) -> bool:
    said = tokenizer.decode(list(tokens), skip_special_tokens=True)
    match = lenient_match if lenient else answer_matches
    return match(said, example.answer, getattr(example, "aliases", ()))


@dataclass
class SwapCases:
    """What every swap measurement of one example set shares: the cases per (source, target) concept pair, the
    unedited continuations and where each prompt is edited."""

    pairs: dict[tuple[int, int], list[tuple[str, Any]]]  # (s, t) -> [(source prompt, target-concept example)]
    base: dict[str, tuple[int, ...]]
    offsets: dict[str, int]  # each prompt's concept token, counted from its end
    edit_from: dict[str, int]  # where the swap's edit starts (the concept token, or the prompt's first token)
    n_tokens: int
    baseline_accuracy: float | None
    skipped_same_answer: int
    skipped_unknown_target: int


def swap_cases(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Any],
    n_concepts: int,
    cfg: MetricsConfig,
    unrelated_texts: Sequence[str] = (),
    correct_sources: bool = False,
) -> SwapCases:
    """The swap cases of `examples` (ontology ConceptExamples: text, concept_index, entity, answer, aliases),
    at most `cfg.max_per_pair` per concept pair, shuffled with a fixed seed. With `correct_sources` only
    prompts the model answers right are swapped (a swap of a question it gets wrong says nothing of the
    swap)."""
    facts = {(ex.entity, ex.concept_index): ex for ex in examples if ex.entity is not None and ex.answer}
    rng = random.Random(0)
    n_tokens = cfg.n_tokens or min(
        max(
            (len(tokenizer(" " + ex.answer, add_special_tokens=False)["input_ids"]) for ex in facts.values()),
            default=0,
        )
        + 2,
        12,
    )
    offsets = dict(zip([ex.text for ex in examples], concept_offsets(tokenizer, examples), strict=True))
    texts = sorted({ex.text for ex in examples} | set(unrelated_texts))
    if cfg.swap_span == "prompt":  # every prompt token: the edit starts at the first one
        ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
        edit_from = {t: -len(row) for t, row in zip(texts, ids, strict=True)}
    else:
        edit_from = {t: offsets.get(t, -1) for t in texts}
    base = dict(
        zip(
            texts,
            _continue(
                model, tokenizer, texts, [offsets.get(t, -1) for t in texts], None, n_tokens, cfg.batch_size
            ),
            strict=True,
        )
    )
    known = {
        (ex.entity, ex.concept_index)
        for ex in examples
        if (ex.entity, ex.concept_index) in facts and _says(tokenizer, base[ex.text], ex)
    }
    pairs: dict[tuple[int, int], list[tuple[str, Any]]] = {}
    correct, skipped, unknown = [], 0, 0
    for s in range(n_concepts):
        sources = [ex for ex in examples if ex.concept_index == s and (ex.entity, s) in facts]
        correct.extend(_says(tokenizer, base[ex.text], ex) for ex in sources)
        if correct_sources:
            sources = [ex for ex in sources if _says(tokenizer, base[ex.text], ex)]
        for t in range(n_concepts):
            if t == s:
                continue
            cases = []
            for ex in sources:
                target = facts.get((ex.entity, t))
                if target is None:
                    continue
                if cfg.known_only and (ex.entity, t) not in known:
                    unknown += 1
                elif answer_matches(target.answer, ex.answer, getattr(ex, "aliases", ())) or _says(
                    tokenizer, base[ex.text], target
                ):
                    skipped += 1  # the same answer, or the model already says it: no change to detect
                else:
                    cases.append((ex.text, target))
            rng.shuffle(cases)
            if cases:
                pairs[(s, t)] = cases[: cfg.max_per_pair]
    require(
        pairs,
        "no swap pairs: swaps need entities with answers under at least two concepts "
        "(an entity-template ontology with answers) that the model knows (see known_only)",
    )
    return SwapCases(
        pairs,
        base,
        offsets,
        edit_from,
        n_tokens,
        sum(correct) / len(correct) if correct else None,
        skipped,
        unknown,
    )


def _scored(
    tokenizer: PreTrainedTokenizerBase,
    said: Sequence[tuple[int, ...]],
    flat: Sequence[tuple],
    concepts: Sequence[str],
) -> tuple[list[bool], list[bool], dict[str, float]]:
    """Strict and lenient hits of continuations against their cases' target answers ((source, target,
    prompt, target example) rows), and the strict success per concept pair."""
    strict = [_says(tokenizer, tokens, row[3]) for tokens, row in zip(said, flat, strict=True)]
    lenient = [_says(tokenizer, tokens, row[3], True) for tokens, row in zip(said, flat, strict=True)]
    per_pair = {}
    for s, t in dict.fromkeys(row[:2] for row in flat):
        hits = [ok for ok, row in zip(strict, flat, strict=True) if row[:2] == (s, t)]
        per_pair[f"{concepts[s]}->{concepts[t]}"] = sum(hits) / len(hits)
    return strict, lenient, per_pair


def _summary(per_alpha: dict[str, Any], cases: SwapCases) -> dict[str, Any]:
    best = max(per_alpha, key=lambda a: per_alpha[a]["success"])
    lenient = max(per_alpha, key=lambda a: per_alpha[a]["success_lenient"])
    return {
        "alphas": per_alpha,
        "best_alpha": float(best),
        "best_success": per_alpha[best]["success"],
        "best_alpha_lenient": float(lenient),
        "best_success_lenient": per_alpha[lenient]["success_lenient"],
        "baseline_accuracy": cases.baseline_accuracy,
        "skipped_same_answer": cases.skipped_same_answer,
        "skipped_unknown_target": cases.skipped_unknown_target,
    }


def swap_success(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    sae: SAE,
    slot_map: SlotMap,
    examples: Sequence[Any],
    cfg: MetricsConfig | None = None,
    unrelated_texts: Sequence[str] = (),
    cases: SwapCases | None = None,
) -> dict[str, Any]:
    """Concept-swap success (strict and lenient) and "rest unchanged" over the α sweep `cfg.alphas`; `cases`
    from `swap_cases` (built here when not given) lets several SAEs share them. Each α runs all pairs' cases
    in shared batches (every row swaps its own pair). The swap options are `MetricsConfig`'s; "rest
    unchanged" always uses the gated swap over the same span."""
    cfg = cfg or MetricsConfig()
    span, when_active, during = cfg.swap_span, cfg.swap_when_active, cfg.swap_during
    cases = cases or swap_cases(model, tokenizer, examples, len(slot_map.concepts), cfg, unrelated_texts)
    flat = [(s, t, text, target) for (s, t), pair in cases.pairs.items() for text, target in pair]
    rng = random.Random(1)
    rest = []  # (source, target, text): prompts of other concepts and unrelated text, per pair
    for s, t in cases.pairs:
        others = [ex.text for ex in examples if ex.concept_index not in (s, t)]
        picked = rng.sample(others, min(cfg.max_rest, len(others))) + list(unrelated_texts)[: cfg.max_rest]
        rest.extend((s, t, text) for text in picked)

    def run(rows: Sequence[tuple], alpha: float, gated: bool) -> list[tuple[int, ...]]:
        def context_for(batch: Sequence[int], where: EditPositions) -> AbstractContextManager:
            pairs = [rows[i][:2] for i in batch]
            return concept_swap(
                model,
                sae,
                slot_map,
                [p[0] for p in pairs],
                [p[1] for p in pairs],
                alpha,
                positions=where,
                keep_error=cfg.swap_keep_error,
                when_active=gated,
            )

        texts = [row[2] for row in rows]
        return _continue_rows(
            model,
            tokenizer,
            texts,
            [cases.edit_from[x] for x in texts],
            context_for,
            cases.n_tokens,
            cfg.batch_size,
            span,
            during,
        )

    per_alpha: dict[str, Any] = {}
    for alpha in cfg.alphas:
        said = run(flat, alpha, when_active)
        strict, lenient, per_pair = _scored(tokenizer, said, flat, slot_map.concepts)
        first = [next(i for i, row in enumerate(flat) if row[:2] == pair) for pair in cases.pairs]
        samples = [
            {
                "prompt": flat[i][2],
                "target": flat[i][3].answer,
                "said": tokenizer.decode(list(said[i]), skip_special_tokens=True),
            }
            for i in first[:SAMPLES_PER_ALPHA]
        ]
        kept = (
            sum(
                tokens == cases.base[row[2]] for tokens, row in zip(run(rest, alpha, True), rest, strict=True)
            )
            if rest
            else 0
        )
        n = len(flat)
        per_alpha[str(alpha)] = {
            "success": sum(strict) / n,
            "success_lenient": sum(lenient) / n,
            "n": n,
            "rest_unchanged": kept / len(rest) if rest else None,
            "n_rest": len(rest),
            "per_pair": per_pair,
            "samples": samples,
        }
        logger.info(
            f"swap α={alpha}: success {sum(strict) / n:.3f} (lenient {sum(lenient) / n:.3f}) over {n} swaps"
        )
    return {
        **_summary(per_alpha, cases),
        "span": span,
        "when_active": when_active,
        "during": during,
        "keep_error": cfg.swap_keep_error,
    }


def oracle_swap_success(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    hookpoint: str,
    cases: SwapCases,
    donors: dict[tuple[str, int], torch.Tensor],
    concepts: Sequence[str],
    batch_size: int = 16,
) -> dict[str, Any]:
    """The ceiling for any edit of one position at `hookpoint`: each source prompt's concept-token activation
    is replaced by the whole activation of the same entity's target-concept prompt
    (`donors[(entity, concept)]`, e.g. its first train template), while the prompt is read. Cases without a
    donor are left out."""
    flat = [
        (s, t, text, target)
        for (s, t), pair in cases.pairs.items()
        for text, target in pair
        if (target.entity, t) in donors
    ]
    require(flat, "the oracle found no donor prompt for any swap case; pass the train examples' activations")

    def context_for(batch: Sequence[int], where: EditPositions) -> AbstractContextManager:
        vectors = torch.stack([donors[(flat[i][3].entity, flat[i][1])] for i in batch])
        return replace_positions(model, hookpoint, vectors, int(where))  # type: ignore[arg-type]

    texts = [row[2] for row in flat]
    said = _continue_rows(
        model,
        tokenizer,
        texts,
        [cases.offsets.get(x, -1) for x in texts],
        context_for,
        cases.n_tokens,
        batch_size,
        desc="oracle continuations",
    )
    strict, lenient, per_pair = _scored(tokenizer, said, flat, concepts)
    samples = [
        {
            "prompt": row[2],
            "target": row[3].answer,
            "said": tokenizer.decode(list(tokens), skip_special_tokens=True),
        }
        for tokens, row in list(zip(said, flat, strict=True))[:: max(1, len(flat) // SAMPLES_PER_ALPHA)]
    ]
    n = len(flat)
    logger.info(f"swap oracle: success {sum(strict) / n:.3f} (lenient {sum(lenient) / n:.3f}) over {n} swaps")
    return {
        "success": sum(strict) / n,
        "success_lenient": sum(lenient) / n,
        "n": n,
        "per_pair": per_pair,
        "samples": samples[:SAMPLES_PER_ALPHA],
    }
