"""AlignSAE metrics: binding, AUC, reconstruction, entanglement, fragmentation and concept-swap success, each
for the aligned SAE and for a vanilla baseline (the SAE before post-training, read through its best single
latent per concept, chosen by AUC on the training prompts).

Definitions:
- binding accuracy: argmax over the concept slots == the prompt's concept (train and held-out templates);
- AUC: each slot's activation separating its concept's prompts from the other concepts' prompts;
- entanglement: |Pearson r| between concept slots, and each slot's max |r| with any free latent;
- generic firing rate: share of ordinary-text tokens on which a slot exceeds half its scale (SlotGuard's
  default threshold), i.e. its false-alarm rate;
- fragmentation: per concept, d_j = |mean z_j on the concept − mean z_j on the rest| · ‖W_dec_j‖ (the latent's
  share of the concept's activation difference), p = d / Σd over all latents; effective latents =
  exp(entropy(p)) (1 = one latent carries it), plus the top-1 and slot shares. Unlike the authors' version
  (slots only) it spans the free bank, so concept information left there counts against the aligned SAE;
- swap success: with source slot → 0 and target slot → α·scale at the concept token while the prompt is read,
  the greedy continuation states the same entity's answer for the target concept (pairs with equal answers, or
  where the model already said it, are skipped); "rest unchanged": with the same swap gated on the source slot
  being the active concept, prompts of other concepts and unrelated texts keep their exact continuation."""

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from scipy.stats import rankdata
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.align.activations import concept_offsets, example_activations
from saelign.align.interventions import concept_swap
from saelign.align.slots import SlotMap
from saelign.configs import help_field
from saelign.errors import SaelignError, require
from saelign.progress import logger
from saelign.sae.evaluate import reconstruction_metrics, splice_metrics
from saelign.sae.model import SAE
from saelign.text import answer_matches, greedy_decode, pad_token_id, token_ids

DEFAULT_ALPHAS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0)


@dataclass
class MetricsConfig:
    """What `alignment_report` measures and how `swap_success` runs its swaps (`align eval` flags)."""

    alphas: list[float] = help_field(list(DEFAULT_ALPHAS), "swap amplitudes (in target slot scales)")
    swaps: bool = help_field(True, "measure concept swaps (entities with answers under several concepts)")
    max_per_pair: int = help_field(10, "swaps per (source, target) concept pair and α")
    max_rest: int = help_field(10, "prompts of other concepts checked for 'rest unchanged' per pair")
    known_only: bool = help_field(True, "only swap to facts the model states itself")
    swap_span: Literal["concept", "prompt"] = help_field(
        "concept", "tokens a swap edits: concept (the slots' training token) or prompt (every token)")
    swap_when_active: bool = help_field(
        False, "with swap_span=prompt, edit only the tokens where the source slot is the active concept")
    swap_during: Literal["prompt", "all"] = help_field(
        "prompt", "when a swap edits: prompt (while read; the authors' protocol) or all (answer tokens too)")
    n_tokens: int = help_field(0, "tokens generated per continuation (0: the longest answer + 2, at most 12)")
    batch_size: int = help_field(16, "prompts per forward pass")

    def __post_init__(self) -> None:
        for name, choices in (("swap_span", ("concept", "prompt")), ("swap_during", ("prompt", "all"))):
            if getattr(self, name) not in choices:
                raise SaelignError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if not self.alphas or min(self.max_per_pair, self.max_rest, self.n_tokens) < 0 or self.batch_size < 1:
            raise SaelignError("metrics options: give at least one alpha, batch_size >= 1 and max_per_pair, "
                               "max_rest, n_tokens >= 0")


@torch.no_grad()
def encode(sae: SAE, acts: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Latents [n, d_sae] on CPU, in chunks so a large SAE never holds all rows at once."""
    device = sae.W_dec.device
    return torch.cat([sae.encode(acts[i:i + batch_size].to(device).float()).cpu() for i in range(0, len(acts), batch_size)])


def binding_accuracy(slot_acts: torch.Tensor, labels: torch.Tensor) -> float:
    return float((slot_acts.argmax(-1) == labels).float().mean())


def auc(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """ROC AUC of every column of scores [n, m] for the boolean labels [n]; ties count one half."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise SaelignError("AUC needs both positive and negative examples; every concept needs prompts of other concepts too")
    ranks = torch.from_numpy(rankdata(scores.double().numpy(), axis=0))
    return (ranks[positive].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def confusion_matrix(slot_acts: torch.Tensor, labels: torch.Tensor) -> list[list[float]]:
    """Row c: how often prompts of concept c have each slot as their strongest (rows sum to 1)."""
    n = slot_acts.shape[1]
    counts = torch.zeros(n, n, dtype=torch.float64)
    counts.index_put_((labels, slot_acts.argmax(-1)), torch.ones(len(labels), dtype=torch.float64), accumulate=True)
    return (counts / counts.sum(1, keepdim=True).clamp_min(1)).tolist()


def per_concept_auc(slot_acts: torch.Tensor, labels: torch.Tensor) -> list[float]:
    return [float(auc(slot_acts[:, c:c + 1], labels == c)[0]) for c in range(slot_acts.shape[1])]


def _reconstruction(sae: SAE, x: torch.Tensor) -> dict[str, float]:
    stats = reconstruction_metrics(sae, x.split(4096))
    return {k: stats[k] for k in ("mse", "fvu", "l0")}


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson r between the columns of a [n, p] and b [n, q]; a constant column correlates 0 with everything."""
    a, b = a.double() - a.double().mean(0), b.double() - b.double().mean(0)
    norms = a.norm(dim=0)[:, None] * b.norm(dim=0)[None, :]
    return torch.where(norms > 0, a.T @ b / norms.clamp_min(1e-300), torch.zeros_like(norms))


def entanglement(z: torch.Tensor, slots: Sequence[int]) -> dict[str, Any]:
    slots = list(slots)
    free = torch.ones(z.shape[1], dtype=torch.bool)
    free[slots] = False
    between = correlation(z[:, slots], z[:, slots]).abs()
    off = between[~torch.eye(len(slots), dtype=torch.bool)]
    with_free = correlation(z[:, slots], z[:, free]).abs().max(1).values
    return {"slot_slot_mean_abs_corr": float(off.mean()) if off.numel() else 0.0,
            "slot_slot_max_abs_corr": float(off.max()) if off.numel() else 0.0,
            "slot_free_max_abs_corr": with_free.tolist(), "slot_free_max_abs_corr_mean": float(with_free.mean())}


def fragmentation(z: torch.Tensor, labels: torch.Tensor, slots: Sequence[int],
                  decoder_norms: torch.Tensor | None = None) -> dict[str, Any]:
    weight = torch.ones(z.shape[1], dtype=torch.float64) if decoder_norms is None else decoder_norms.detach().double().cpu()
    eff, top1, share = [], [], []
    for c, slot in enumerate(slots):
        d = (z[labels == c].mean(0) - z[labels != c].mean(0)).abs().double() * weight
        p = d / d.sum().clamp_min(1e-300)
        nz = p[p > 0]
        eff.append(float(torch.exp(-(nz * nz.log()).sum())))
        top1.append(float(p.max()))
        share.append(float(p[slot]))
    return {"effective_latents": eff, "effective_latents_mean": sum(eff) / len(eff), "top1_share": top1,
            "slot_share": share}


def best_latents(sae: SAE, acts: torch.Tensor, labels: torch.Tensor, concepts: Sequence[str], position: str = "last") -> SlotMap:
    """The vanilla baseline: for each concept, the single latent with the highest AUC (each latent used once)."""
    z = encode(sae, acts)
    scores = torch.stack([auc(z, labels == c) for c in range(len(concepts))])  # [C, d_sae]
    chosen: dict[int, int] = {}
    for flat in torch.argsort(scores.flatten(), descending=True).tolist():
        c, latent = divmod(flat, z.shape[1])
        if c not in chosen and latent not in chosen.values():
            chosen[c] = latent
            if len(chosen) == len(concepts):
                break
    slots = [chosen[c] for c in range(len(concepts))]
    scales = [max(float(z[labels == c, s].mean()), 1e-6) for c, s in enumerate(slots)]
    return SlotMap(list(concepts), slots, sae.cfg.hookpoint, sae.cfg.d_sae, position, scales)


def _continue(model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], offsets: Sequence[int],
              intervention: Callable[..., AbstractContextManager] | None, n_tokens: int, batch_size: int,
              span: str = "concept", during: str = "prompt") -> list[tuple[int, ...]]:
    """Greedy continuations, editing each prompt while it is read (prompts are grouped by offset;
    `intervention(positions=...)` builds the context for one group): span="concept" edits the concept offset
    only; span="prompt" edits every prompt position from the offset on (pass -len(prompt) as the offset for the
    whole prompt; left padding stays untouched). during="all" also edits each generated token as it is read."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, off in enumerate(offsets):
        groups[off].append(i)
    out: list[tuple[int, ...]] = [()] * len(texts)
    for off, idx in groups.items():
        where = off if span == "concept" else slice(off, None)
        context = partial(intervention, positions=where) if intervention else None
        generating = partial(intervention, positions="last") if intervention and during == "all" else None
        prompts = token_ids(tokenizer, [texts[i] for i in idx])
        tokens = greedy_decode(model, prompts, n_tokens, pad_token_id(tokenizer), batch_size=batch_size,
                               prompt_context=context, token_context=generating, desc="swap continuations")
        for i, row in zip(idx, tokens, strict=True):
            out[i] = tuple(row)
    return out


def _says(tokenizer: PreTrainedTokenizerBase, tokens: tuple[int, ...], example: Any) -> bool:
    return answer_matches(tokenizer.decode(list(tokens), skip_special_tokens=True), example.answer,
                          getattr(example, "aliases", ()))


def swap_success(model: nn.Module, tokenizer: PreTrainedTokenizerBase, sae: SAE, slot_map: SlotMap,
                 examples: Sequence[Any], cfg: MetricsConfig | None = None,
                 unrelated_texts: Sequence[str] = ()) -> dict[str, Any]:
    """Concept-swap success and "rest unchanged" over the α sweep `cfg.alphas`. `examples` need text,
    concept_index, entity, answer and optionally aliases (ontology ConceptExamples); facts of one entity
    under several concepts make the swap pairs. Answers are matched on the greedy continuation (a few tokens)
    with the ontology's rules (`saelign.text.answer_matches`: case, accents, punctuation and a leading
    article ignored).
    The swap options are `MetricsConfig`'s; "rest unchanged" always uses the gated swap over the same span."""
    cfg = cfg or MetricsConfig()
    span, when_active, during = cfg.swap_span, cfg.swap_when_active, cfg.swap_during
    batch_size = cfg.batch_size
    facts = {(ex.entity, ex.concept_index): ex for ex in examples if ex.entity is not None and ex.answer}
    n_concepts = len(slot_map.concepts)
    rng = random.Random(0)
    n_tokens = cfg.n_tokens or min(max((len(tokenizer(" " + ex.answer, add_special_tokens=False)["input_ids"])
                                       for ex in facts.values()), default=0) + 2, 12)
    offsets = dict(zip([ex.text for ex in examples], concept_offsets(tokenizer, examples), strict=True))
    texts = sorted({ex.text for ex in examples} | set(unrelated_texts))
    if span == "prompt":  # every prompt token: the edit starts at the first one
        edit_from = {t: -len(ids) for t, ids in zip(texts, tokenizer(texts, add_special_tokens=True)["input_ids"], strict=True)}
    else:
        edit_from = {t: offsets.get(t, -1) for t in texts}
    base = dict(zip(texts, _continue(model, tokenizer, texts, [offsets.get(t, -1) for t in texts], None, n_tokens,
                                     batch_size), strict=True))

    known = {(ex.entity, ex.concept_index) for ex in examples if (ex.entity, ex.concept_index) in facts
             and _says(tokenizer, base[ex.text], ex)}
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
                elif answer_matches(target.answer, ex.answer, getattr(ex, "aliases", ())) or _says(tokenizer, base[ex.text], target):
                    skipped += 1  # the same answer, or the model already says it: no change to detect
                else:
                    cases.append((ex.text, target))
            rng.shuffle(cases)
            if cases:
                pairs[(s, t)] = cases[:cfg.max_per_pair]
    require(pairs, "no swap pairs: swaps need entities with answers under at least two concepts "
                   "(an entity-template ontology with answers) that the model knows (see known_only)")

    per_alpha: dict[str, Any] = {}
    for alpha in cfg.alphas:
        hits = total = kept = n_rest = 0
        per_pair = {}
        for (s, t), cases in pairs.items():
            swap = partial(concept_swap, model, sae, slot_map, s, t, alpha)
            said = _continue(model, tokenizer, [c[0] for c in cases], [edit_from[c[0]] for c in cases],
                             partial(swap, when_active=when_active), n_tokens, batch_size, span, during)
            ok = sum(_says(tokenizer, tokens, target) for tokens, (_, target) in zip(said, cases, strict=True))
            per_pair[f"{slot_map.concepts[s]}->{slot_map.concepts[t]}"] = ok / len(cases)
            hits, total = hits + ok, total + len(cases)
            others = [ex.text for ex in examples if ex.concept_index not in (s, t)]
            rest = rng.sample(others, min(cfg.max_rest, len(others))) + list(unrelated_texts)[:cfg.max_rest]
            if rest:
                rest_said = _continue(model, tokenizer, rest, [edit_from[r] for r in rest],
                                      partial(swap, when_active=True), n_tokens, batch_size, span, during)
                kept += sum(tokens == base[r] for tokens, r in zip(rest_said, rest, strict=True))
                n_rest += len(rest)
        per_alpha[str(alpha)] = {"success": hits / total, "n": total, "rest_unchanged": kept / n_rest if n_rest else None,
                                 "n_rest": n_rest, "per_pair": per_pair}
        logger.info(f"swap α={alpha}: success {hits / total:.3f} over {total} swaps")
    best = max(per_alpha, key=lambda a: per_alpha[a]["success"])
    return {"alphas": per_alpha, "best_alpha": float(best), "best_success": per_alpha[best]["success"],
            "baseline_accuracy": sum(correct) / len(correct) if correct else None, "skipped_same_answer": skipped,
            "skipped_unknown_target": unknown, "span": span, "when_active": when_active, "during": during}


def binding_by_style(slot_acts: torch.Tensor, labels: torch.Tensor,
                     styles: Sequence[str | None]) -> dict[str, float]:
    """Binding accuracy of the rows of each named phrasing style (rows without a style are left out)."""
    out = {}
    for style in dict.fromkeys(s for s in styles if s is not None):
        rows = torch.tensor([s == style for s in styles])
        out[style] = binding_accuracy(slot_acts[rows], labels[rows])
    return out


def slot_metrics(sae: SAE, slot_map: SlotMap, splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 generic: torch.Tensor, test_styles: Sequence[str | None] = ()) -> dict[str, Any]:
    """Binding, AUC, entanglement and fragmentation of one SAE read through one slot map. `splits`: name ->
    (activations, labels); entanglement (with `generic` added) and fragmentation use the last (held out).
    `test_styles`: the phrasing style of each "test" row, for binding per style (when any row names one)."""
    slot_map.validate(sae)
    out: dict[str, Any] = {"slots": dict(zip(slot_map.concepts, slot_map.slots, strict=True))}
    z = labels = None
    for name, (acts, labels) in splits.items():
        z = encode(sae, acts)
        out[f"binding_accuracy_{name}"] = binding_accuracy(z[:, slot_map.slots], labels)
        out[f"auc_{name}"] = per_concept_auc(z[:, slot_map.slots], labels)
        out[f"confusion_{name}"] = confusion_matrix(z[:, slot_map.slots], labels)
        if name == "test" and any(s is not None for s in test_styles):
            by_style = binding_by_style(z[:, slot_map.slots], labels, test_styles)
            out["binding_accuracy_test_by_style"] = by_style
    assert z is not None and labels is not None
    zg = encode(sae, generic)
    # how often SlotGuard's default threshold (half the slot scale) would fire on ordinary text
    out["generic_firing_rate"] = (zg[:, slot_map.slots] > 0.5 * torch.tensor(slot_map.scales)).float().mean(0).tolist()
    out["entanglement"] = entanglement(torch.cat([z, zg]), slot_map.slots)
    out["fragmentation"] = fragmentation(z, labels, slot_map.slots, sae.W_dec.norm(dim=1))
    return out


def alignment_report(model: nn.Module, tokenizer: PreTrainedTokenizerBase, vanilla: SAE, aligned: SAE,
                     slot_map: SlotMap, train_examples: Sequence[Any], test_examples: Sequence[Any],
                     generic: torch.Tensor, cfg: MetricsConfig | None = None,
                     unrelated_texts: Sequence[str] = (),
                     token_batches: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> dict[str, Any]:
    """Every metric for the aligned SAE and the vanilla baseline (`vanilla` = the SAE before post-training).
    `generic`: activations of ordinary text at the same hookpoint. Swaps run on the held-out examples; with
    `token_batches` ((input_ids, keep) pairs, `sae.evaluate.context_batches`) CE recovered and KL too."""
    cfg = cfg or MetricsConfig()
    slot_map.validate(aligned)
    if vanilla.cfg.d_in != aligned.cfg.d_in:
        raise SaelignError(f"the vanilla SAE reads width {vanilla.cfg.d_in} but the aligned one {aligned.cfg.d_in}; "
                           "pass the SAE the aligned one was post-trained from")
    hookpoint = slot_map.hookpoint or aligned.cfg.hookpoint
    splits = {}
    for name, examples in (("train", train_examples), ("test", test_examples)):
        if examples:
            acts = example_activations(model, tokenizer, hookpoint, examples, cfg.batch_size)
            splits[name] = (acts, torch.tensor([e.concept_index for e in examples]))
    if "train" not in splits:
        raise SaelignError("alignment_report needs training examples (the vanilla baseline picks its latents on them)")
    vanilla_map = best_latents(vanilla, *splits["train"], slot_map.concepts, slot_map.position)
    concept_acts = torch.cat([a for a, _ in splits.values()])
    recon = {name: {"generic": _reconstruction(sae, generic), "concept": _reconstruction(sae, concept_acts)}
             for name, sae in (("vanilla", vanilla), ("aligned", aligned))}
    styles = [getattr(e, "style", None) for e in test_examples]
    report: dict[str, Any] = {
        "hookpoint": hookpoint, "concepts": list(slot_map.concepts),
        "aligned": slot_metrics(aligned, slot_map, splits, generic, styles),
        "vanilla": slot_metrics(vanilla, vanilla_map, splits, generic, styles), "reconstruction": recon,
        "fvu_increase": recon["aligned"]["generic"]["fvu"] / max(recon["vanilla"]["generic"]["fvu"], 1e-12) - 1,
    }
    if token_batches:
        report["splice"] = {name: splice_metrics(sae, model, hookpoint, token_batches)
                            for name, sae in (("vanilla", vanilla), ("aligned", aligned))}
    if cfg.swaps:
        swap_set = test_examples or train_examples
        for name, sae, smap in (("aligned", aligned, slot_map), ("vanilla", vanilla, vanilla_map)):
            report[name]["swap"] = swap_success(model, tokenizer, sae, smap, swap_set, cfg, unrelated_texts)
        vanilla_best = report["vanilla"]["swap"]["best_success"]
        report["swap_ratio_vs_vanilla"] = report["aligned"]["swap"]["best_success"] / vanilla_best if vanilla_best else None
    return report
