"""The SAILS pipeline stages: one function and one `Stage` declaration each, in pipeline order in `STAGES`.

To add a stage, write its function (run, name) -> facts for run.json and declare it in `STAGES`: the pipeline,
its resumption and the CLI subcommand come from the declaration."""

import dataclasses
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saelign import distributed
from saelign.dashboard import DashboardConfig, build_dashboard
from saelign.dashboard.build import SAILS_READINGS
from saelign.datasets.corpus import iter_texts, open_corpus
from saelign.errors import require
from saelign.io import read_json, write_json_atomic, write_text_atomic
from saelign.label import label_latents, save_labels
from saelign.label.describe import attach_readings, describe_latents, load_explainer, load_labelled_prompts
from saelign.label.examples import prompt_activations
from saelign.label.reading import sae_meta, save_readings
from saelign.models.loading import model_identity
from saelign.progress import logger
from saelign.sae import load_sae
from saelign.sae.formats import check_sae_matches
from saelign.sae.train import LOG_FILE, train_saes
from saelign.sails import sources
from saelign.sails.adapters import merged_for_inference
from saelign.sails.aligned import advbench_categories, align_safety_slots, save_aligned_subspace
from saelign.sails.consistency import twins_of
from saelign.sails.data import Example, SafetyData, build_safety_data, save_safety_data
from saelign.sails.effect import adapter_effect
from saelign.sails.evaluate import (
    SafetyEvalConfig,
    ValidationConfig,
    evaluate_model,
    make_judge,
    quick_safety,
)
from saelign.sails.gate import SUFFIX as GATED
from saelign.sails.gate import (
    compose_evaluation,
    fit_gate_on,
    gate_summary,
    request_features,
    residual_features,
)
from saelign.sails.generate import chat_text
from saelign.sails.judge import OfflineJudge, PrefixJudge, judge_agreement
from saelign.sails.methods import ALIGNED, MethodConfig, run_method, starts_as_base
from saelign.sails.ood import evaluate_splits
from saelign.sails.presets import SailsConfig
from saelign.sails.registers import classify
from saelign.sails.report import write_run_report
from saelign.sails.response import response_effect
from saelign.sails.rundir import RunDir, Stage
from saelign.sails.select import select_safety_features, selection_directions
from saelign.sails.sft import (
    AVERAGE_FIELDS,
    CONSISTENCY_FIELDS,
    RETAIN_FIELDS,
    UNLIKELIHOOD_FIELDS,
    SFTConfig,
)
from saelign.sails.subspace import basis_hash, build_subspace, explained_share
from saelign.sails.targets import add_targets, refusal_contrasts
from saelign.store import stream_activations


def data_stage(run: RunDir, _: str) -> dict[str, Any]:
    data = build_safety_data(run.cfg.data, run.tokenizer)
    save_safety_data(data, run.path("data"))
    return {"counts": data.counts(), "near_duplicates_removed": data.stats.get("near_duplicates_removed")}


def _capture(run: RunDir, **changes: Any) -> torch.Tensor:
    """Activations at the hookpoint of a corpus, kept in memory as fp16 (half the memory, ample precision)."""
    hookpoint = run.cfg.hookpoint
    capture_cfg = dataclasses.replace(run.cfg.capture, hookpoints=[hookpoint], **changes)
    stream = stream_activations(run.model, run.tokenizer, capture_cfg)
    return torch.cat([acts[hookpoint].to("cpu", torch.float16) for acts in stream])


def _shuffled_batches(acts: torch.Tensor, batch_size: int, epochs: int, seed: int) -> Iterator[torch.Tensor]:
    for epoch in range(epochs):
        order = torch.randperm(len(acts), generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, len(acts), batch_size):
            yield acts[order[start:start + batch_size]].float()


def sae_stage(run: RunDir, _: str) -> dict[str, Any]:
    cfg = run.cfg
    if cfg.sae_path:
        sae = load_sae(cfg.sae_path, device=run.model.device)
        check_sae_matches(sae, run.model, cfg.hookpoint)
        write_json_atomic(run.path("sae.json"), {"path": str(Path(cfg.sae_path).resolve())})
        return {"sae": cfg.sae_path, "d_sae": sae.d_sae}
    prompts_file = run.path("sae", "prompts.jsonl")
    write_text_atomic(prompts_file, "".join(json.dumps({"prompt": e.prompt}) + "\n" for e in run.data.train))
    text = _capture(run)
    prompts = _capture(run, corpus=str(prompts_file), chat=True, token_budget=0)
    acts = torch.cat([text, prompts])
    sae_cfg = dataclasses.replace(cfg.sae, d_in=acts.shape[1], hookpoint=cfg.hookpoint,
                                  model=model_identity(cfg.model))
    total, batch_size, seed = cfg.sae_epochs * len(acts), cfg.sae_train.batch_size, cfg.sae_train.seed
    # A latent silent for an eighth of this short training counts as dead, so AuxK can revive it in time.
    train_cfg = dataclasses.replace(cfg.sae_train, total_tokens=total, out=str(run.path("sae")),
                                    device=cfg.model.device,
                                    dead_window_tokens=min(1_000_000, max(4 * batch_size, total // 8)))
    train_saes(_shuffled_batches(acts, batch_size, cfg.sae_epochs, seed), [sae_cfg], train_cfg)
    write_json_atomic(run.path("sae.json"), {"path": "sae"})  # inside the run directory
    final = read_json(run.path("sae", LOG_FILE), "SAE training log")["entries"][-1]
    logger.info(f"SAE: {len(text)} corpus + {len(prompts)} prompt tokens, fvu {final['fvu']:.3f}, "
                f"l0 {final['l0']:.1f}")
    return {"text_tokens": len(text), "prompt_tokens": len(prompts), "final": final}


def labels_stage(run: RunDir, _: str) -> dict[str, Any]:
    cfg, label, capture = run.cfg, run.cfg.label, run.cfg.capture
    prompts = [chat_text(run.tokenizer, e.prompt) for e in run.data.train]
    corpus = iter_texts(open_corpus(capture.corpus, capture.text_field, seed=capture.seed), run.tokenizer)
    labels = label_latents(run.model, run.tokenizer, run.sae, itertools.chain(prompts, corpus),
                           label.latents or None, label.top_by_frequency, label.n_contexts,
                           (label.window_left, label.window_right), label.logit_k, cfg.hookpoint,
                           label.context_length, label.batch_size, label.token_budget or None)
    meta = {"hookpoint": cfg.hookpoint, "sources": ["training prompts", capture.corpus],
            "max_tokens": label.token_budget}
    save_labels(run.path("labels.json"), labels, meta)
    return {"labelled": len(labels), "never_fired": sum(not label.top_contexts for label in labels.values())}


def short_labels(run: RunDir) -> dict[int, str]:
    return {i: label.short_label for i, label in run.labels.items()}


def contrast_examples(run: RunDir, split: str) -> tuple[list[Example], list[Example]]:
    """The harmful examples of a split, and those of the kinds contrasted with them."""
    examples = run.data.split(split)
    return [e for e in examples if e.kind == "harmful"], [e for e in examples if e.kind in run.cfg.contrast]


def contrast_prompts(run: RunDir, split: str) -> tuple[list[str], list[str]]:
    harmful, contrast = contrast_examples(run, split)
    return [e.prompt for e in harmful], [e.prompt for e in contrast]


def select_stage(run: RunDir, _: str) -> dict[str, Any]:
    cfg = run.cfg
    harmful_set, contrast_set = contrast_examples(run, "train")
    harmful, contrast = [e.prompt for e in harmful_set], [e.prompt for e in contrast_set]
    registers = ([e.register or classify(e.prompt) for e in harmful_set],
                 [e.register or classify(e.prompt) for e in contrast_set])
    saes = {cfg.hookpoint: run.sae}
    (selection,) = select_safety_features(run.model, run.tokenizer, saes, harmful, contrast, cfg.select,
                                          labels={cfg.hookpoint: short_labels(run)}, registers=registers)
    directions = selection_directions([selection], saes)
    basis = build_subspace(directions, cfg.subspace.tau, cfg.subspace.max_rank or None)
    info = {"selection": selection.to_dict(), "rank": basis.shape[1], "explained": explained_share(directions, basis),
            "tau": cfg.subspace.tau, "basis_sha256": basis_hash(basis), "n_harmful": len(harmful),
            "n_contrast": len(contrast)}
    run.save_basis(basis)
    write_json_atomic(run.path("select", "selection.json"), info)
    return {"rank": info["rank"], "explained": info["explained"], "latents": selection.latent_ids}


def align_stage(run: RunDir, _: str) -> dict[str, Any]:
    cfg = run.cfg
    kinds = ("harmful", *cfg.contrast)
    train, val = ([e for e in run.data.split(split) if e.kind in kinds] for split in ("train", "val"))
    # Rewordings of AdvBench behaviours find their harm categories by behaviour id.
    categories = advbench_categories() if "advbench" in cfg.data.sources else {}
    generic = _capture(run, token_budget=cfg.ontology.generic_tokens).float()
    post = dataclasses.replace(cfg.align, out=str(run.path("align")))
    result = align_safety_slots(run.model, run.tokenizer, run.sae, train, val, generic, categories, cfg.ontology,
                                post, cfg.select, cfg.subspace.tau, run.selection["rank"], run.basis)
    save_aligned_subspace(result, run.path("align"))
    return {"concepts": result.slot_map.concepts, "rank": result.info["rank"],
            "in_sails_span": result.info["in_sails_span"]}


def targets_stage(run: RunDir, _: str) -> dict[str, Any]:
    data = run.data
    cfg = run.cfg.targets
    train = add_targets(data.train, run.model, run.tokenizer, cfg.max_new_tokens, cfg.batch_size)
    save_safety_data(SafetyData(train, data.val, data.test, data.stats), run.path("targets"))
    return {"pairs": dict(Counter(e.kind for e in train)), "dropped": len(data.train) - len(train)}


def train_stage(run: RunDir, method: str) -> dict[str, Any]:
    cfg = run.cfg
    train = [e for e in run.targets.train if e.target]
    pairs = [(e.prompt, e.target) for e in train]
    weights = [1.0 if e.kind == "harmful" else cfg.harmless_weight for e in train]
    judge = make_judge(cfg.eval)

    val_text = (run.heldout("validation", cfg.validation.ppl_contexts, cfg.eval.ppl_context_length)
                if cfg.validation.ppl_contexts else None)
    retain = (run.heldout("retain", cfg.sft.retain_contexts, cfg.sft.retain_context_length)
              if cfg.sft.retain_weight > 0 else None)
    contrasts = refusal_contrasts(train, cfg.refusal_contrasts) if cfg.sft.unlikelihood_weight > 0 else None
    twins = twins_of(train) if cfg.sft.consistency_weight > 0 else None

    def eval_fn(model: torch.nn.Module, step: int) -> dict[str, Any]:
        if step > 0 or not starts_as_base(method):
            return quick_safety(model, run.tokenizer, run.data.val, judge, cfg.validation, val_text)
        if run.check_at_start is None:  # still the base model: one check serves every such method
            run.check_at_start = quick_safety(model, run.tokenizer, run.data.val, judge, cfg.validation, val_text)
        return dict(run.check_at_start)

    selection = run.selection["selection"]
    provenance = {"model": model_identity(cfg.model), "sae": cfg.sae_path or str(run.path("sae")),
                  "hookpoints": [cfg.hookpoint], "latent_ids": selection["latent_ids"], "labels": selection["labels"],
                  "tau": cfg.subspace.tau, "subspace_rank": run.selection["rank"],
                  "sails_basis_sha256": run.selection["basis_sha256"]}
    aligned = run.aligned if method == ALIGNED else None
    if aligned is not None:  # its latents are the concept slots of the aligned SAE, labelled by concept
        provenance.update(aligned.provenance(), sae=str(run.path("align")))
    result = run_method(method, run.fresh_model, run.tokenizer, pairs, run.basis,
                        MethodConfig(cfg.lora, cfg.sft, cfg.full_lr, cfg.select), run.path("methods", method),
                        eval_fn=eval_fn if cfg.sft.eval_every else None,
                        act_pca_prompts=contrast_prompts(run, "train"), provenance=provenance,
                        overwrite=run.overwrite or f"train:{method}" in run.resuming,  # a crash left its own
                        given_basis=aligned.basis if aligned is not None else None, weights=weights,
                        retain=retain, contrasts=contrasts, twins=twins)
    if distributed.is_main():
        write_json_atomic(run.path("methods", method, "result.json"), result.to_dict())
    return {"train_seconds": result.train_seconds, "share": result.trainable["share"], "steps_to": result.steps_to}


def eval_stage(run: RunDir, name: str) -> dict[str, Any]:
    cfg = run.cfg
    model = run.model if name == "base" else merged_for_inference(run.trained_model(name))
    judge = make_judge(cfg.eval)
    metrics = evaluate_model(model, run.tokenizer, run.data.test, judge, cfg.eval, run.capability)
    if run.data.ood:  # in- and out-of-distribution apart: held-out registers and held-out sources
        parts_cfg = dataclasses.replace(cfg.eval, max_per_kind=cfg.eval.ood_per_kind)
        answered = {r["prompt"]: r["response"] for r in metrics["responses"]}  # same model, same max_new_tokens
        metrics["splits"] = evaluate_splits(model, run.tokenizer, run.data, judge, parts_cfg, answered=answered)
    if name == "base" and cfg.eval.judge_agreement:
        labelled = sources.parse_refusal_csv(sources.pyrit_dir() / sources.REFUSAL_CSV)
        metrics["judge_agreement"] = {"source": sources.REFUSAL_CSV,
                                      "offline": judge_agreement(OfflineJudge(), labelled),
                                      "prefix": judge_agreement(PrefixJudge(), labelled)}
    write_json_atomic(run.path("eval", f"{name}.json"), metrics)
    ood = metrics.get("splits", {}).get("ood", {})
    return {"safety_rate": metrics["safety_rate"], "over_refusal": metrics["over_refusal"],
            "ood_safety_rate": ood.get("safety_rate"), "ood_over_refusal": ood.get("over_refusal"),
            "perplexity": metrics.get("perplexity")}


def gate_stage(run: RunDir, _: str) -> dict[str, Any]:
    """Fit the refusal gate on the base model, and record which test, ood and perplexity inputs it opens for."""
    cfg, data = run.cfg, run.data
    hookpoint = cfg.gate.hookpoint or cfg.hookpoint
    splits = {name: data.split(name) for name in ("train", "val", "test", "ood") if data.split(name)}
    require("train" in splits and "val" in splits, "the gate is fitted on the train split and thresholded on the "
                                                   "val split: give data.val_fraction > 0 (--data-val-fraction)")
    every = request_features(run.model, run.tokenizer, [e.prompt for s in splits.values() for e in s],
                             [hookpoint], cfg.gate.batch_size, cfg.gate.max_length, cfg.gate.pooling)[hookpoint]
    ends = list(itertools.accumulate(len(s) for s in splits.values()))
    x = dict(zip(splits, np.split(every, ends[:-1]), strict=True))
    gate = fit_gate_on(x["train"], splits["train"], x["val"], splits["val"], hookpoint, cfg.gate)
    flags = {name: gate.flags(features) for name, features in x.items()}
    contexts = run.capability.contexts
    context_open = (gate.flags(residual_features(run.model, contexts.tolist(), [hookpoint], cfg.gate.batch_size,
                                                 cfg.gate.pooling)[hookpoint]).tolist()
                    if contexts.numel() else [])
    gate.save(run.path("gate"))
    opened = {e.prompt: bool(f) for name in ("test", "ood") if name in flags
              for e, f in zip(splits[name], flags[name], strict=True)}
    write_json_atomic(run.path("gate", "flags.json"), {"prompts": opened, "contexts": context_open})
    summary = gate_summary(gate, flags, splits)
    write_json_atomic(run.path("gate", "summary.json"), summary)
    return {"threshold": gate.probe.threshold, "val_auroc": gate.probe.val_auroc, "flagged": summary["flagged"]}


def gated_stage(run: RunDir, method: str) -> dict[str, Any]:
    """`method` behind the gate: its answers where the gate opens, the base model's elsewhere (eval/M+gate)."""
    flags = read_json(run.path("gate", "flags.json"), "gate decisions")
    files = {name: run.path("eval", f"{name}.json") for name in ("base", method)}
    base, adapted = (read_json(path, "evaluation file") for path in files.values())
    examples = {e.prompt: e for e in (*run.data.test, *run.data.ood)}
    result = compose_evaluation(base, adapted, flags["prompts"], flags["contexts"], examples,
                                names=(str(files["base"]), str(files[method])))
    write_json_atomic(run.path("eval", f"{method}{GATED}.json"), result)
    ood = result.get("splits", {}).get("ood", {})
    return {"safety_rate": result["safety_rate"], "over_refusal": result["over_refusal"],
            "ood_safety_rate": ood.get("safety_rate"), "ood_over_refusal": ood.get("over_refusal"),
            "perplexity": result.get("perplexity")}


def _test_prompts(run: RunDir) -> dict[str, list[str]]:
    test = run.data.test
    return {kind: [e.prompt for e in test if e.kind == kind]
            for kind in ("harmful", "harmless", "borderline")}


def effect_stage(run: RunDir, method: str) -> dict[str, Any]:
    cfg = run.cfg
    sae, basis, labels, selected = run.sae, run.basis, short_labels(run), run.selection["selection"]["latent_ids"]
    if method == ALIGNED:  # read through the aligned SAE: its concept slots, named, beside the free bank
        aligned = run.aligned
        sae, basis, labels, selected = aligned.sae, aligned.basis, {**labels, **aligned.labels}, aligned.slot_map.slots
    result = adapter_effect(run.trained_model(method), run.tokenizer, sae, _test_prompts(run), cfg.select, basis,
                            cfg.effect_top, labels, selected, base_model=run.model if method == "full" else None)
    write_json_atomic(run.path("effect", f"{method}.json"), result.to_dict())
    return {"subspace_share": result.subspace_share}


def answers_stage(run: RunDir, method: str) -> dict[str, Any]:
    cfg = run.cfg
    result = response_effect(run.trained_model(method), run.tokenizer, run.sae, _test_prompts(run),
                             cfg.answer_tokens, cfg.eval.batch_size, cfg.effect_top, short_labels(run),
                             run.selection["selection"]["latent_ids"],
                             base_model=run.model if method == "full" else None,
                             known={"base": _eval_answers(run, "base"), "adapted": _eval_answers(run, method)})
    write_json_atomic(run.path("answers", f"{method}.json"), result.to_dict())
    return {"listed": {kind: len(ways["up"]) + len(ways["down"]) for kind, ways in result.top.items()}}


def _eval_answers(run: RunDir, name: str) -> dict[str, str]:
    """prompt -> the greedy answer the eval stage judged for `name` (the base model or a method), cut to
    answer_tokens tokens: the answers stage decodes only the prompts missing there. {} when that evaluation is
    not done under the current options or decoded fewer tokens."""
    cfg = run.cfg
    if not run.complete(f"eval:{name}") or cfg.eval.max_new_tokens < cfg.answer_tokens:
        return {}
    records = read_json(run.path("eval", f"{name}.json"), "evaluation file")["responses"]
    if cfg.eval.max_new_tokens == cfg.answer_tokens:
        return {r["prompt"]: r["response"] for r in records}
    tokenizer = run.tokenizer  # a longer greedy answer begins with the shorter one
    return {r["prompt"]: tokenizer.decode(tokenizer(r["response"], add_special_tokens=False)["input_ids"]
                                          [:cfg.answer_tokens], skip_special_tokens=True).strip() for r in records}


def _moved(run: RunDir, folder: str) -> list[int]:
    """Latents the adapters moved (effect/ or answers/ files), the largest changes first, harmful first."""
    listed: list[list[int]] = []
    for method in run.cfg.methods:
        path = run.path(folder, f"{method}.json")
        if path.is_file():
            top = read_json(path, f"{folder} file")["top"]
            kinds = sorted(top, key=lambda k: k != "harmful")
            listed += [[row["latent"] for row in top[kind][way]] for kind in kinds for way in ("down", "up")]
    return [column[rank] for rank in range(max(map(len, listed), default=0)) for column in listed
            if rank < len(column)]


def describe_stage(run: RunDir, _: str) -> dict[str, Any]:
    cfg, labels = run.cfg.describe, run.labels
    # Selected features and those moved on the prompts are read at the assistant header: whole requests, and
    # the explainer sees those. Those moved only in the answers are read on answer tokens: their grain comes
    # from their top token contexts, and requests ranked at the header would mislead an explainer.
    at_header = list(dict.fromkeys([*run.selection["selection"]["latent_ids"], *_moved(run, "effect")]))
    in_answers = [i for i in dict.fromkeys(_moved(run, "answers")) if i not in at_header]
    at_header, in_answers = ([i for i in ids if i in labels] for ids in (at_header, in_answers))  # with pages
    explainer = None
    if cfg.explainer:  # the run's own model is not loaded twice
        explainer = (run.base_model if cfg.explainer == run.cfg.model.model
                     else load_explainer(cfg.explainer, "--describe-explainer"))
    prompts = load_labelled_prompts(run.path("data"))
    # one read of every prompt for both groups: the same forward, other columns
    columns = [*at_header, *in_answers]
    acts = prompt_activations(run.model, run.tokenizer, run.sae, run.cfg.hookpoint, [p.prompt for p in prompts],
                              columns, run.cfg.label.batch_size) if columns else None
    readings = {}
    for latents, pair, by_contexts in ((at_header, explainer, False), (in_answers, None, True)):
        if latents:
            readings |= describe_latents(run.model, run.tokenizer, run.sae, run.cfg.hookpoint, prompts,
                                         latents, cfg, {i: labels[i].short_label for i in latents},
                                         {i: labels[i].top_contexts for i in latents}, pair,
                                         run.cfg.label.batch_size, grain_from_contexts=by_contexts,
                                         acts=acts[:, [columns.index(i) for i in latents]])
    save_readings(run.path(SAILS_READINGS), readings,
                  {"hookpoint": run.cfg.hookpoint, "explainer": cfg.explainer, "detector": cfg.detector,
                   "n_prompts": len(prompts), **sae_meta(run.sae)})
    attach_readings(labels, readings)  # the report of this same run reads them from run.labels
    scores: dict[str, list[float]] = {}
    for reading in readings.values():
        for kind, value in reading.detection.items():
            scores.setdefault(kind, []).append(value)
    return {"described": len(readings), "explained": sum(bool(r.explanation) for r in readings.values()),
            "mean_detection": {kind: sum(v) / len(v) for kind, v in scores.items()}}


def report_stage(run: RunDir, _: str) -> dict[str, Any]:
    if run.path("labels.json").is_file() and run.path("select", "selection.json").is_file():
        build_dashboard(DashboardConfig(labels=str(run.path("labels.json")), sails_run=str(run.dir),
                                        out=str(run.path("dashboard")), title=f"SAE features at {run.cfg.hookpoint}"))
    write_run_report(run)
    return {}


# The retain term, the validation perplexity and the held-out corpus they read came after run folders that the
# train stage's key must keep.
TRAIN_ADDED = {**{f"sft.{name}": getattr(SFTConfig, name)
                  for name in RETAIN_FIELDS + UNLIKELIHOOD_FIELDS + AVERAGE_FIELDS + CONSISTENCY_FIELDS},
               "refusal_contrasts": SailsConfig.refusal_contrasts,
               "validation.ppl_contexts": ValidationConfig.ppl_contexts,
               "eval.ppl_corpus": SafetyEvalConfig.ppl_corpus, "eval.seed": SafetyEvalConfig.seed}
STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("data", "build the harmful/harmless/borderline splits (data/)", data_stage,
          outputs=("data/train.jsonl", "data/val.jsonl", "data/test.jsonl"), keys=("model.model", "data"),
          folder="data"),
    Stage("sae", "check --sae, or capture activations and train an SAE (sae/)", sae_stage,
          outputs=("sae.json",), keys=("hookpoint", "sae_path", "capture", "sae", "sae_train", "sae_epochs"),
          upstream=("data",), folder="sae"),
    Stage("labels", "label the SAE's latents from top contexts and the logit lens (labels.json)",
          labels_stage, outputs=("labels.json",), keys=("label",), upstream=("sae",)),
    Stage("select", "select the safety features and build the subspace U (select/)", select_stage,
          outputs=("select/selection.json", "select/subspace.safetensors"),
          keys=("select", "contrast", "subspace"), upstream=("sae",), folder="select"),
    Stage("align", f"AlignSAE post-training of the SAE on the training data's safety concepts, and the "
          f"subspace of their slots, for {ALIGNED} (align/)", align_stage,
          outputs=("align/aligned.json", "align/subspace.safetensors"), keys=("ontology", "align", "capture"),
          upstream=("data", "sae", "select"), folder="align",
          per=lambda cfg: [m for m in cfg.methods if m == ALIGNED]),
    Stage("targets", "refusals for harmful prompts, the base model's answers for the others (targets/)",
          targets_stage, outputs=("targets/train.jsonl",), keys=("targets",), upstream=("data",),
          folder="targets"),
    Stage("train", "fine-tune every method in the same harness and save its adapter (methods/)", train_stage,
          outputs=("methods/{name}/result.json",), upstream=("select", "align", "targets"), folder="methods/{name}",
          # the last two keys: where the validation and retain text come from
          keys=("lora", "sft", "validation", "eval.judge", "eval.judge_model", "full_lr", "harmless_weight",
                "refusal_contrasts", "eval.ppl_corpus", "eval.seed"),
          per=lambda cfg: cfg.methods, added=TRAIN_ADDED),
    Stage("eval", "safety, over-refusal, perplexity and factual accuracy of the base model and each method "
          "(eval/)", eval_stage, outputs=("eval/{name}.json",), keys=("eval",), upstream=("data", "train"),
          per=lambda cfg: ["base", *cfg.methods]),
    Stage("gate", "a refusal gate: a probe on the base model's activations that decides when the adapter "
          "answers (gate/)", gate_stage, outputs=("gate/summary.json",), keys=("gate", "hookpoint", "eval"),
          upstream=("data",), folder="gate", per=lambda cfg: ["gate"] if cfg.gate.enabled else []),
    Stage("gated", f"each method behind the gate: its answers where the gate opens, the base model's "
          f"elsewhere (eval/METHOD{GATED}.json)", gated_stage, outputs=(f"eval/{{name}}{GATED}.json",),
          upstream=("eval",), reads=("gate:gate", "eval:base"),
          per=lambda cfg: cfg.methods if cfg.gate.enabled else []),
    Stage("effect", "which labelled SAE latents each adapter pushed up or down (effect/)", effect_stage,
          outputs=("effect/{name}.json",), keys=("effect_top",), upstream=("train", "labels"),
          per=lambda cfg: cfg.methods),
    Stage("answers", "which labelled SAE latents each adapter changed in its answers (answers/)",
          answers_stage, outputs=("answers/{name}.json",), keys=("effect_top", "answer_tokens"),
          upstream=("train", "labels"), per=lambda cfg: cfg.methods),
    Stage("describe", "requests that drive each selected and moved feature, its data-grounded line, model-"
          "written label and detection scores (describe/)", describe_stage, outputs=(SAILS_READINGS,),
          keys=("describe",), upstream=("data", "labels", "select", "effect", "answers"), folder="describe"),
    Stage("report", "write report.md and report.html from the run directory (rebuilt on every run)",
          report_stage),
)}
