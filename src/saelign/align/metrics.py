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

from collections.abc import Sequence
from typing import Any

import torch
from scipy.stats import rankdata
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.align.activations import example_activations
from saelign.align.metrics_config import MetricsConfig
from saelign.align.slots import SlotMap
from saelign.align.swap import oracle_swap_success, swap_cases, swap_success
from saelign.errors import SaelignError
from saelign.sae.evaluate import reconstruction_metrics, splice_metrics
from saelign.sae.model import SAE


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
        cases = swap_cases(model, tokenizer, swap_set, len(slot_map.concepts), cfg, unrelated_texts)
        for name, sae, smap in (("aligned", aligned, slot_map), ("vanilla", vanilla, vanilla_map)):
            report[name]["swap"] = swap_success(model, tokenizer, sae, smap, swap_set, cfg, unrelated_texts, cases)
        if cfg.oracle:
            donors: dict[tuple[str, int], torch.Tensor] = {}
            for ex, row in zip(train_examples, splits["train"][0], strict=True):
                donors.setdefault((ex.entity, ex.concept_index), row)  # the first train template's
            report["swap_oracle"] = oracle_swap_success(model, tokenizer, hookpoint, cases, donors, slot_map.concepts,
                                                        cfg.batch_size)
        vanilla_best = report["vanilla"]["swap"]["best_success"]
        report["swap_ratio_vs_vanilla"] = report["aligned"]["swap"]["best_success"] / vanilla_best if vanilla_best else None
    return report
