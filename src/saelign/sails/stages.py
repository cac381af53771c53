"""The work of each SAILS pipeline stage; `pipeline.Run` supplies the run directory, config and shared inputs.

Each function takes (run, name) — name is the method or model for per-method stages — writes its files into the
run directory and returns extra facts for run.json.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saelign.datasets.corpus import iter_texts, open_corpus
from saelign.io import read_json, write_json_atomic, write_text_atomic
from saelign.label import label_latents, load_labels, save_labels
from saelign.models.loading import model_identity
from saelign.progress import logger
from saelign.sae import SAEConfig, load_sae
from saelign.sae.formats import check_sae_matches
from saelign.sae.train import LOG_FILE, SAETrainConfig, train_saes
from saelign.sails.data import SafetyData, build_safety_data, save_safety_data
from saelign.sails.effect import adapter_effect
from saelign.sails.evaluate import evaluate_model, make_judge, quick_safety
from saelign.sails.generate import chat_text
from saelign.sails.judge import OfflineJudge, PrefixJudge, judge_agreement
from saelign.sails.methods import run_method
from saelign.sails.select import select_safety_features, selection_directions
from saelign.sails.subspace import basis_hash, build_subspace, explained_share
from saelign.sails.targets import add_targets
from saelign.store import CaptureConfig, stream_activations

if TYPE_CHECKING:
    from saelign.sails.pipeline import Run


def data_stage(run: Run, _: str) -> dict[str, Any]:
    data = build_safety_data(run.cfg.data, run.tokenizer)
    save_safety_data(data, run.path("data"))
    return {"counts": data.counts(), "near_duplicates_removed": data.stats.get("near_duplicates_removed")}


def _capture(run: Run, corpus: str, chat: bool, budget: int) -> torch.Tensor:
    """Activations at the hookpoint of a corpus, kept in memory as fp16 (half the memory, ample precision)."""
    cfg = run.cfg
    capture_cfg = CaptureConfig(hookpoints=[cfg.hookpoint], corpus=corpus, chat=chat, token_budget=budget,
                                context_length=cfg.sae.context_length, batch_size=cfg.sae.capture_batch_size,
                                seed=cfg.sae.seed)
    stream = stream_activations(run.model, run.tokenizer, capture_cfg)
    return torch.cat([acts[cfg.hookpoint].to("cpu", torch.float16) for acts in stream])


def _shuffled_batches(acts: torch.Tensor, batch_size: int, epochs: int, seed: int) -> Iterator[torch.Tensor]:
    for epoch in range(epochs):
        order = torch.randperm(len(acts), generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, len(acts), batch_size):
            yield acts[order[start:start + batch_size]].float()


def sae_stage(run: Run, _: str) -> dict[str, Any]:
    cfg = run.cfg
    if cfg.sae_path:
        sae = load_sae(cfg.sae_path, device=run.model.device)
        check_sae_matches(sae, run.model, cfg.hookpoint)
        write_json_atomic(run.path("sae.json"), {"path": str(Path(cfg.sae_path).resolve())})
        return {"sae": cfg.sae_path, "d_sae": sae.d_sae}
    # The SAE must see chat-formatted requests (the selection reads the assistant header), not only prose.
    prompts_file = run.path("sae", "prompts.jsonl")
    write_text_atomic(prompts_file, "".join(json.dumps({"prompt": e.prompt}) + "\n" for e in run.data.train))
    text = _capture(run, cfg.sae.corpus, False, cfg.sae.text_tokens)
    prompts = _capture(run, str(prompts_file), True, 0)
    acts = torch.cat([text, prompts])
    sae_cfg = SAEConfig(d_in=acts.shape[1], d_sae=cfg.sae.d_sae, activation="topk", k=cfg.sae.k, hookpoint=cfg.hookpoint,
                        model=model_identity(cfg.model))
    total = cfg.sae.epochs * len(acts)
    # A latent silent for an eighth of this short training counts as dead, so AuxK can revive it in time.
    train_cfg = SAETrainConfig(total_tokens=total, batch_size=cfg.sae.batch_size, lr=cfg.sae.lr, seed=cfg.sae.seed,
                               dead_window_tokens=min(1_000_000, max(4 * cfg.sae.batch_size, total // 8)),
                               out=str(run.path("sae")), device=cfg.model.device)
    train_saes(_shuffled_batches(acts, cfg.sae.batch_size, cfg.sae.epochs, cfg.sae.seed), [sae_cfg], train_cfg)
    final = read_json(run.path("sae", LOG_FILE), "SAE training log")["entries"][-1]
    logger.info(f"SAE: {len(text)} corpus + {len(prompts)} prompt tokens, fvu {final['fvu']:.3f}, l0 {final['l0']:.1f}")
    return {"text_tokens": len(text), "prompt_tokens": len(prompts), "final": final}


def labels_stage(run: Run, _: str) -> dict[str, Any]:
    cfg = run.cfg
    prompts = [chat_text(run.tokenizer, e.prompt) for e in run.data.train]
    corpus = iter_texts(open_corpus(cfg.sae.corpus, seed=cfg.sae.seed), run.tokenizer)
    labels = label_latents(run.model, run.tokenizer, run.sae, itertools.chain(prompts, corpus),
                           n_contexts=cfg.sae.label_contexts, hookpoint=cfg.hookpoint,
                           context_length=cfg.sae.context_length, batch_size=cfg.sae.capture_batch_size,
                           max_tokens=cfg.sae.label_tokens)
    meta = {"hookpoint": cfg.hookpoint, "sources": ["training prompts", cfg.sae.corpus], "max_tokens": cfg.sae.label_tokens}
    save_labels(run.path("labels.json"), labels, meta)
    return {"labelled": len(labels), "never_fired": sum(not label.top_contexts for label in labels.values())}


def short_labels(run: Run) -> dict[int, str]:
    path = run.path("labels.json")
    return {i: label.short_label for i, label in load_labels(path).items()} if path.is_file() else {}


def contrast_prompts(run: Run, split: str) -> tuple[list[str], list[str]]:
    data = run.data
    return data.prompts(split, "harmful"), [p for kind in run.cfg.contrast for p in data.prompts(split, kind)]


def select_stage(run: Run, _: str) -> dict[str, Any]:
    cfg = run.cfg
    harmful, contrast = contrast_prompts(run, "train")
    saes = {cfg.hookpoint: run.sae}
    (selection,) = select_safety_features(run.model, run.tokenizer, saes, harmful, contrast, cfg.select,
                                          labels={cfg.hookpoint: short_labels(run)})
    directions = selection_directions([selection], saes)
    basis = build_subspace(directions, cfg.subspace.tau, cfg.subspace.max_rank or None)
    info = {"selection": selection.to_dict(), "rank": basis.shape[1], "explained": explained_share(directions, basis),
            "tau": cfg.subspace.tau, "basis_sha256": basis_hash(basis), "n_harmful": len(harmful),
            "n_contrast": len(contrast)}
    run.save_basis(basis)
    write_json_atomic(run.path("select", "selection.json"), info)
    return {"rank": info["rank"], "explained": info["explained"], "latents": selection.latent_ids}


def targets_stage(run: Run, _: str) -> dict[str, Any]:
    data = run.data
    cfg = run.cfg.targets
    train = add_targets(data.train, run.model, run.tokenizer, cfg.max_new_tokens, cfg.batch_size)
    save_safety_data(SafetyData(train, data.val, data.test, data.stats), run.path("targets"))
    return {"pairs": dict(Counter(e.kind for e in train)), "dropped": len(data.train) - len(train)}


def train_stage(run: Run, method: str) -> dict[str, Any]:
    cfg = run.cfg
    pairs = [(e.prompt, e.target) for e in run.targets.train if e.target]
    judge = make_judge(cfg.eval.judge)

    def eval_fn(model: torch.nn.Module, _step: int) -> dict[str, Any]:
        return quick_safety(model, run.tokenizer, run.data.val, judge, cfg.eval)

    selection = run.selection["selection"]
    provenance = {"model": model_identity(cfg.model), "sae": cfg.sae_path or str(run.path("sae")),
                  "hookpoints": [cfg.hookpoint], "latent_ids": selection["latent_ids"], "labels": selection["labels"],
                  "tau": cfg.subspace.tau, "subspace_rank": run.selection["rank"],
                  "sails_basis_sha256": run.selection["basis_sha256"]}
    result = run_method(method, run.fresh_model, run.tokenizer, pairs, run.basis, cfg.lora, cfg.sft,
                        run.path("methods", method), eval_fn=eval_fn if cfg.sft.eval_every else None,
                        full_lr=cfg.full_lr, act_pca_prompts=contrast_prompts(run, "train"), select_cfg=cfg.select,
                        provenance=provenance, overwrite=run.overwrite)
    write_json_atomic(run.path("methods", method, "result.json"), result.to_dict())
    return {"train_seconds": result.train_seconds, "share": result.trainable["share"], "steps_to": result.steps_to}


def eval_stage(run: Run, name: str) -> dict[str, Any]:
    cfg = run.cfg
    model = run.model if name == "base" else run.trained_model(name)
    metrics = evaluate_model(model, run.tokenizer, run.data.test, make_judge(cfg.eval.judge), cfg.eval, run.capability)
    if name == "base" and cfg.eval.judge_agreement:
        from saelign.sails import sources

        labelled = sources.parse_refusal_csv(sources.pyrit_dir() / sources.REFUSAL_CSV)
        metrics["judge_agreement"] = {"source": sources.REFUSAL_CSV,
                                      "offline": judge_agreement(OfflineJudge(), labelled),
                                      "prefix": judge_agreement(PrefixJudge(), labelled)}
    write_json_atomic(run.path("eval", f"{name}.json"), metrics)
    return {"safety_rate": metrics["safety_rate"], "over_refusal": metrics["over_refusal"],
            "perplexity": metrics.get("perplexity")}


def effect_stage(run: Run, method: str) -> dict[str, Any]:
    cfg = run.cfg
    test = run.data.test
    prompts = {kind: [e.prompt for e in test if e.kind == kind] for kind in ("harmful", "harmless", "borderline")}
    result = adapter_effect(run.trained_model(method), run.tokenizer, run.sae, prompts, cfg.select, run.basis,
                            cfg.effect_top, short_labels(run), run.selection["selection"]["latent_ids"],
                            base_model=run.model if method == "full" else None)
    write_json_atomic(run.path("effect", f"{method}.json"), result.to_dict())
    return {"subspace_share": result.subspace_share}

