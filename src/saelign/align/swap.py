"""Concept-swap success: the swap cases of an ontology, the α sweep through an SAE's slots, and the oracle
ceiling that replaces the edited position's whole activation.

A swap case is a prompt of concept s about an entity and the same entity's fact under concept t (pairs with
equal answers, or where the model already says the target, are skipped; with `known_only` the model must state
the target fact under some prompt). Success is read on the greedy continuation two ways side by side:
strict (`saelign.text.answer_matches`: the answer opens the continuation, case, accents, punctuation and a
leading article ignored) and lenient (`saelign.text.lenient_match`, the AlignSAE authors' rule: the gold in
the generation or the generation in the gold, lower-cased)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.align.activations import concept_offsets
from saelign.align.interventions import concept_swap, replace_positions
from saelign.align.slots import SlotMap
from saelign.errors import require
from saelign.progress import logger
from saelign.sae.model import SAE
from saelign.text import answer_matches, greedy_decode, lenient_match, pad_token_id, token_ids

if TYPE_CHECKING:
    from saelign.align.metrics import MetricsConfig

SAMPLES_PER_ALPHA = (
    6  # continuations kept per α (first case of the first pairs) so a reader sees the failure mode
)


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
    """Greedy continuations, editing each prompt while it is read (prompts are grouped by offset;
    `intervention(positions=...)` builds the context for one group): span="concept" edits the concept offset
    only; span="prompt" edits every prompt position from the offset on (pass -len(prompt) as the offset for
    the whole prompt; left padding stays untouched). during="all" also edits each generated token as it is
    read."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, off in enumerate(offsets):
        groups[off].append(i)
    out: list[tuple[int, ...]] = [()] * len(texts)
    for off, idx in groups.items():
        where = off if span == "concept" else slice(off, None)
        context = partial(intervention, positions=where) if intervention else None
        generating = partial(intervention, positions="last") if intervention and during == "all" else None
        prompts = token_ids(tokenizer, [texts[i] for i in idx])
        tokens = greedy_decode(
            model,
            prompts,
            n_tokens,
            pad_token_id(tokenizer),
            batch_size=batch_size,
            prompt_context=context,
            token_context=generating,
            desc="swap continuations",
        )
        for i, row in zip(idx, tokens, strict=True):
            out[i] = tuple(row)
    return out


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
) -> SwapCases:
    """The swap cases of `examples` (ontology ConceptExamples: text, concept_index, entity, answer, aliases),
    at most `cfg.max_per_pair` per concept pair, shuffled with a fixed seed."""
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


def _tally(
    tokenizer: PreTrainedTokenizerBase, said: Sequence[tuple[int, ...]], cases: Sequence[tuple[str, Any]]
) -> tuple[int, int]:
    """(strict hits, lenient hits) of continuations against their cases' target answers."""
    strict = sum(_says(tokenizer, tokens, target) for tokens, (_, target) in zip(said, cases, strict=True))
    lenient = sum(
        _says(tokenizer, tokens, target, True) for tokens, (_, target) in zip(said, cases, strict=True)
    )
    return strict, lenient


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
    from `swap_cases` (built here when not given) lets several SAEs share them. The swap options are
    `MetricsConfig`'s; "rest unchanged" always uses the gated swap over the same span."""
    from saelign.align.metrics import MetricsConfig

    cfg = cfg or MetricsConfig()
    span, when_active, during = cfg.swap_span, cfg.swap_when_active, cfg.swap_during
    cases = cases or swap_cases(model, tokenizer, examples, len(slot_map.concepts), cfg, unrelated_texts)
    rng = random.Random(1)
    per_alpha: dict[str, Any] = {}
    for alpha in cfg.alphas:
        hits = lenient = total = kept = n_rest = 0
        per_pair, samples = {}, []
        for (s, t), pair_cases in cases.pairs.items():
            swap = partial(concept_swap, model, sae, slot_map, s, t, alpha, keep_error=cfg.swap_keep_error)
            said = _continue(
                model,
                tokenizer,
                [c[0] for c in pair_cases],
                [cases.edit_from[c[0]] for c in pair_cases],
                partial(swap, when_active=when_active),
                cases.n_tokens,
                cfg.batch_size,
                span,
                during,
            )
            ok, ok_lenient = _tally(tokenizer, said, pair_cases)
            per_pair[f"{slot_map.concepts[s]}->{slot_map.concepts[t]}"] = ok / len(pair_cases)
            hits, lenient, total = hits + ok, lenient + ok_lenient, total + len(pair_cases)
            if len(samples) < SAMPLES_PER_ALPHA:
                samples.append(
                    {
                        "prompt": pair_cases[0][0],
                        "target": pair_cases[0][1].answer,
                        "said": tokenizer.decode(list(said[0]), skip_special_tokens=True),
                    }
                )
            others = [ex.text for ex in examples if ex.concept_index not in (s, t)]
            rest = rng.sample(others, min(cfg.max_rest, len(others))) + list(unrelated_texts)[: cfg.max_rest]
            if rest:
                rest_said = _continue(
                    model,
                    tokenizer,
                    rest,
                    [cases.edit_from[r] for r in rest],
                    partial(swap, when_active=True),
                    cases.n_tokens,
                    cfg.batch_size,
                    span,
                    during,
                )
                kept += sum(tokens == cases.base[r] for tokens, r in zip(rest_said, rest, strict=True))
                n_rest += len(rest)
        per_alpha[str(alpha)] = {
            "success": hits / total,
            "success_lenient": lenient / total,
            "n": total,
            "rest_unchanged": kept / n_rest if n_rest else None,
            "n_rest": n_rest,
            "per_pair": per_pair,
            "samples": samples,
        }
        logger.info(
            f"swap α={alpha}: success {hits / total:.3f} (lenient {lenient / total:.3f}) over {total} swaps"
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
    hits = lenient = total = 0
    per_pair, samples = {}, []
    for (s, t), pair_cases in cases.pairs.items():
        usable = [c for c in pair_cases if (c[1].entity, t) in donors]
        groups: dict[int, list[tuple[str, Any]]] = defaultdict(list)
        for case in usable:
            groups[cases.offsets.get(case[0], -1)].append(case)
        ok = ok_lenient = 0
        for offset, group in groups.items():
            # longest first, as greedy_decode orders a batch, so row i of the forward is group[i]
            group.sort(key=lambda c: -len(token_ids(tokenizer, [c[0]])[0]))
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                vectors = torch.stack([donors[(c[1].entity, t)] for c in chunk])
                said = greedy_decode(
                    model,
                    token_ids(tokenizer, [c[0] for c in chunk]),
                    cases.n_tokens,
                    pad_token_id(tokenizer),
                    batch_size=len(chunk),
                    prompt_context=partial(replace_positions, model, hookpoint, vectors, offset),
                    desc="oracle continuations",
                )
                said = [tuple(row) for row in said]
                strict_hits, lenient_hits = _tally(tokenizer, said, chunk)
                ok, ok_lenient = ok + strict_hits, ok_lenient + lenient_hits
                if len(samples) < SAMPLES_PER_ALPHA and start == 0:
                    samples.append(
                        {
                            "prompt": chunk[0][0],
                            "target": chunk[0][1].answer,
                            "said": tokenizer.decode(list(said[0]), skip_special_tokens=True),
                        }
                    )
        if usable:
            per_pair[f"{concepts[s]}->{concepts[t]}"] = ok / len(usable)
            hits, lenient, total = hits + ok, lenient + ok_lenient, total + len(usable)
    require(total, "the oracle found no donor prompt for any swap case; pass the train examples' activations")
    logger.info(f"swap oracle: success {hits / total:.3f} (lenient {lenient / total:.3f}) over {total} swaps")
    return {
        "success": hits / total,
        "success_lenient": lenient / total,
        "n": total,
        "per_pair": per_pair,
        "samples": samples,
    }
