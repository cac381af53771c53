"""AlignSAE benchmark on the default model: relations ontology (known facts only), vanilla TopK SAE, post-training,
every metric against the AlignSAE targets, and a layer sweep. Writes bench/results/align_relations.json (a swap
variant, e.g. --swap-during all, writes align_relations_during-all.json instead).

Steps: build the relations ontology and keep the facts SmolLM2-135M-Instruct states itself; capture State of the
Union activations at all benchmark layers in one pass (first 32k tokens: SAE training and post-training generic
batches; the next 4k: held-out FVU); train a TopK SAE per layer (or take --sae for the main layer); `train_aligned`;
`evaluate_aligned`. The main layer (22 of 30) gets the full post-training, the full swap α sweep and CE splicing; the
other sweep layers get shorter post-training and a small swap check. Small settings, sized for 2 shared CPU cores;
all recorded in the JSON.
Run: cd bench && OMP_NUM_THREADS=1 ../.venv/bin/python bench_align.py [--layer 22] [--layers 6,12,15,18,26] [--sae DIR]
(one thread: on a shared, overloaded CPU two threads made post-training ~10x slower.)

The biographies setting (issue 16): a model fine-tuned on the synthetic biographies by `saelign align learn-facts`
and the ontology it learnt, every layer with the full α sweep, strict and lenient success and the oracle ceiling:
  OMP_NUM_THREADS=1 ../.venv/bin/python bench_align.py --name align_biographies --model runs/bench_facts/model \
      --ontology runs/bench_facts/biographies.yaml --layer 15 --layers 10,20 --alphas 0.5,1,2,5,10,20 --sweep-full
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformers import AutoConfig

from common import RESULTS, peak_rss_mib, write_result
from saelign.align.builtin import build_ontology, filter_known_facts
from saelign.align.metrics_config import DEFAULT_ALPHAS
from saelign.align.ontology import load_ontology, save_ontology
from saelign.align.pipeline import AlignEvalConfig, AlignTrainConfig, evaluate_aligned, train_aligned
from saelign.align.posttrain import PostTrainConfig
from saelign.align.report import headline, target_checks
from saelign.models import ModelConfig, load_model
from saelign.models.loading import cache_dir, resolve_model_path
from saelign.models.packaged import PACKAGED_MODELS
from saelign.sae import SAEConfig
from saelign.sae.train import SAETrainConfig, train_saes
from saelign.store import ActivationStore, CaptureConfig, capture

RELATIONS = ["capital", "currency", "nationality", "continent", "language", "city_in_state", "plural"]
SHARD = 16384
TRAIN_SHARDS = 2  # SAE training and post-training generic batches: the first 32k tokens
TRAIN_TOKENS = SHARD * TRAIN_SHARDS
HELD_OUT = 4096  # FVU / entanglement rows, never seen in training
SAE_BATCH = 1024  # more, smaller steps: the training shard is small
WORK = cache_dir() / "bench" / "align"
MAIN_LAYER = 22
SWEEP_ALPHAS = (1.0, 2.0, 3.0)  # the small swap check at the non-main sweep layers
NOTES = [
    "Vanilla SAEs: TopK k=32, d_sae=2304, 32k SOTU tokens x 8 epochs (262k token-steps, batch 1024) per layer; the "
    "previous result used 16k x 8 and its vanilla SAE was undertrained (held-out FVU 0.39 at layer 15), which made "
    "post-training look like it lowered FVU by 31 %.",
    "Main layer 22: a side experiment with the untrained slot initialisation (linear probe encoder, concept-mean "
    "offsets as decoder rows) gave unseen-template binding 0.65 / 0.65 / 0.73 / 1.0 / 0.98 at layers 12 / 15 / 18 / "
    "22 / 26 (on raw activations) and swap success (best alpha, 98 swaps) 0.14 / 0.32 / 0.26 at layers 18 / 22 / 26: "
    "layer 22 is best for both.",
    "Unseen-template binding at layer 22 over post-training (side experiment, same data and defaults): 0.93 at the "
    "probe initialisation, 0.74 after stage 1 (reconstruction also moves the slot encoders), 0.95 after 200 stage-2 "
    "steps, then 0.93 / 0.91 / 0.86 / 0.84 at 400 / 600 / 800 / 1000 stage-2 steps: MSE binding on 4 train templates "
    "per concept overfits them. Added the `anchor_coeff` term (relative squared distance of each slot encoder from "
    "its probe initialisation, weight 1.0, now the default; the only value tried): in the same side experiment "
    "unseen binding stayed at 0.98-0.99 from 200 to 1000 stage-2 steps (train 1.0). The overfitting was seen on "
    "the test templates; the weight was not tuned on them.",
    "Previous full run of this script without the anchor (same SAEs and settings, sweep with 2 swaps per pair at "
    "alpha 1/2/3): layer 22 unseen binding 0.844, swap 0.306 (alpha 1.5 and 2, 98 swaps), vanilla swap 0, FVU "
    "0.224 -> 0.218; layer 6 unseen binding 0.806, swap 0.056; layer 12 unseen binding 0.756, swap 0.111. The "
    "sweep here measures binding and FVU only (--sweep-per-pair 0) to fit the time budget.",
    "The anchor is not a free win: at the early sweep layers (shorter post-training, weaker probe initialisation) "
    "it held unseen binding at 0.66 / 0.65 (layers 6 / 12) where the run without it reached 0.81 / 0.76, and train "
    "binding there stays below 1 (0.94-0.99). It helps where the probe initialisation already generalises (layer 22).",
    "Swap: source slot -> 0, target slot -> alpha x the target slot's mean activation on its own prompts, at the "
    "prompt's last token, while the prompt is read; alpha grid refined to 0.5-8 (1.5 and 3 added).",
    "Why swap success stays near 0.3 (side experiments at layer 22): (1) even on the train templates the probe-"
    "initialised swap reaches only 0.43 (alpha 1.5, 108 swaps); (2) an oracle that replaces the whole last-token "
    "residual at layer 22 with that of the same entity's target-concept train prompt succeeds in only 0.51 of 72 "
    "unseen-template cases, a ceiling for any single-position edit at this layer; (3) editing every prompt position "
    "where the source slot is the active concept did worse (0.29 vs 0.32). Failure mode in the continuations: unseen "
    "templates keep their own syntax ('The government of Germany sits in the city of' swapped to nationality gives "
    "'a German-speaking country'), or the entity is lost ('Latgady').",
    "The vanilla baseline (best single latent per concept by AUC) swapped none of its cases at any alpha, so the "
    "swap ratio is unbounded; the target row reports the lower bound aligned / (1/n).",
]
BIOGRAPHY_NOTES = [
    "Model: SmolLM2-135M-Instruct fully fine-tuned on the biographies ontology by `saelign align learn-facts` (see "
    "biographies_facts.json); the ontology is the one it learnt. Vanilla SAEs are trained on its SOTU activations.",
    "Swap protocol: source slot -> 0, target slot -> alpha x its scale (~1 for MSE-bound slots, the authors' "
    "units) at the last prompt token while the prompt is read, keeping the SAE's error (the authors' hook variant; "
    "--swap-write decoded writes decode(z') itself, not run here). Success strict (answer_matches) and lenient "
    "(authors': gold in generation or generation in gold, lower-cased) side by side.",
    "Oracle: the last prompt token's whole hookpoint state replaced by that of the same entity's target-concept "
    "first train prompt; a ceiling for any last-token edit at that layer. In align_biographies.json (Q/A-only train "
    "templates) it is 0.01 / 0.09 / 0.30 / 0.84 at layers 10 / 15 / 20 / 25: the relation reaches the last token late "
    "in this model.",
    "Side experiment (probe_binding.py, the Q/A-only model): a logistic probe on raw last-token activations, train -> "
    "unseen templates, binds 0.42 / 0.55 / 0.78 / 0.89 / 0.90 at layers 10 / 15 / 20 / 25 / 28, the ceiling the slots "
    "face.",
    "settings.ontology_train_styles: the phrasing styles of the train templates the model was fact-learned on (None: "
    "an ontology from before train styles were recorded, the Q/A-only one).",
]
FAMILY_NOTES = [
    "A second model family (issue 16): the same relations benchmark on a model a package registry ships, with the "
    "ontology filtered to the facts that model states, its own vanilla SAEs (d_sae 4 x d_model) and layers chosen "
    "in proportion to depth (SmolLM2's 22 of 30 -> 13 of 18). Every sweep layer runs the small swap check and the "
    "oracle on the same swap cases as the main layer (--sweep-per-pair = --max-per-pair).",
    "Oracle: the last prompt token's whole hookpoint state replaced by that of the same entity's target-concept "
    "first train prompt; a ceiling for any last-token edit at that layer.",
]


def result_name(args: argparse.Namespace) -> str:
    """`align_relations` under the authors' swap protocol; a swap variant gets its own result file and report folder
    (e.g. `align_relations_during-all`, `align_relations_layer26_during-all`), so the headline result is never overwritten by a side protocol."""
    variant = [f"layer{args.layer}"] if args.layer != MAIN_LAYER and args.name == "align_relations" else []
    variant += [f"span-{args.swap_span}"] if args.swap_span != "concept" else []
    variant += [f"during-{args.swap_during}"] if args.swap_during != "prompt" else []
    variant += ["gated"] if args.swap_when_active else []
    variant += ["decoded"] if args.swap_write == "decoded" else []
    return "_".join([args.name, *variant])


def report_dir(args: argparse.Namespace) -> Path:
    return RESULTS / "tmp" / result_name(args)  # report.md/.html + PNGs


def work_dir(args: argparse.Namespace) -> Path:
    """The default model's files stay where earlier runs left them; another model gets its own folder."""
    if args.model == "default":
        return WORK
    if args.model in PACKAGED_MODELS:
        return WORK / args.model
    return WORK / f"{Path(args.model).resolve().parent.name}_{Path(args.model).name}"


def model_id(args: argparse.Namespace) -> str:
    return "SmolLM2-135M-Instruct" if args.model == "default" else args.model


def model_name(args: argparse.Namespace) -> str:
    """The model as the result file describes it."""
    if args.model == "default":
        return model_id(args)
    about = PACKAGED_MODELS[args.model].about if args.model in PACKAGED_MODELS else "fine-tuned SmolLM2-135M-Instruct"
    return f"{args.model} ({about})"


def known_ontology(args: argparse.Namespace) -> tuple[Path, dict]:
    """The relations ontology filtered to the facts the benchmarked model itself states."""
    path = work_dir(args) / f"relations_known_{args.max_entities}.yaml"
    report_path = path.with_suffix(".filter.json")
    if path.is_file() and report_path.is_file():
        return path, json.loads(report_path.read_text())
    max_entities = args.max_entities
    model, tokenizer = load_model(ModelConfig(model=args.model))
    ontology, report = filter_known_facts(model, tokenizer, build_ontology("relations", relations=RELATIONS,
                                                                           max_entities=max_entities))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_ontology(ontology, path)
    report_path.write_text(json.dumps(report))
    return path, report


def activation_stores(args: argparse.Namespace, hookpoints: list[str]) -> dict[str, Path]:
    """One forward pass over the corpus for all hookpoints (it stops after the deepest); another model's store is
    named by its layers, so a new layer set never meets a store captured for another."""
    folder = "acts_36k" if args.model == "default" else "acts_36k_" + "-".join(h.rsplit(".", 1)[-1] for h in sorted(hookpoints))
    return capture(ModelConfig(model=args.model), CaptureConfig(hookpoints=hookpoints, corpus="sotu", token_budget=TRAIN_TOKENS + HELD_OUT,
                                                                shard_tokens=SHARD, out=str(work_dir(args) / folder)))


def vanilla_sae(args: argparse.Namespace, store: Path, hookpoint: str) -> Path:
    d_sae, k, epochs = args.d_sae, args.k, args.sae_epochs
    out = work_dir(args) / "sae" / hookpoint / f"topk{k}_{d_sae}_b{SAE_BATCH}_t{TRAIN_TOKENS // 1024}k_e{epochs}"
    if (out / "cfg.json").is_file():
        return out
    st = ActivationStore(store)
    batches = st.batches(SAE_BATCH, shuffle=True, seed=0, epochs=epochs, shards=list(range(TRAIN_SHARDS)))
    tcfg = SAETrainConfig(total_tokens=TRAIN_TOKENS * epochs, batch_size=SAE_BATCH, out=str(out), checkpoint_every_tokens=10**9)
    train_saes(batches, [SAEConfig(d_in=st.d_in, d_sae=d_sae, k=k, hookpoint=hookpoint, model=model_id(args))], tcfg)
    return out


def run_layer(hookpoint: str, sae: Path, ontology: Path, store: Path, args: argparse.Namespace, main: bool) -> dict:
    """Post-train and evaluate one layer: the main layer in full, a sweep layer with fewer steps and a small swap
    check (SWEEP_ALPHAS, --sweep-per-pair swaps per concept pair, no splicing)."""
    steps1, steps2 = (args.steps1, args.steps2) if main else (args.sweep_steps1, args.sweep_steps2)
    post = PostTrainConfig(steps_stage1=steps1, steps_stage2=steps2)
    aligned = work_dir(args) / "aligned" / Path(ontology).stem / hookpoint / f"{sae.name}_s{steps1}+{steps2}_anchor{post.anchor_coeff:g}"
    post.out = str(aligned)
    timings = {}
    start = time.perf_counter()
    train_aligned(ModelConfig(model=args.model), AlignTrainConfig(sae=str(sae), ontology=str(ontology), store=str(store),
                                                  generic_tokens=TRAIN_TOKENS), post)
    timings["post_train_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    out = report_dir(args) if main else report_dir(args) / "sweep" / hookpoint
    full = main or args.sweep_full
    swap_settings = (dict(alphas=args.alphas, max_per_pair=args.max_per_pair, max_rest=args.max_rest, splice_contexts=args.splice_contexts if main else 0)
                     if full else dict(alphas=list(SWEEP_ALPHAS), max_per_pair=args.sweep_per_pair, max_rest=0, splice_contexts=0))
    swap_settings.update(batch_size=args.swap_batch_size, swap_span=args.swap_span, swap_when_active=args.swap_when_active, swap_during=args.swap_during,
                         swap_keep_error=args.swap_write == "delta")
    cfg = AlignEvalConfig(aligned=str(aligned), vanilla=str(sae), out=str(out), store=str(store),
                          generic_tokens=HELD_OUT, swaps=full or args.sweep_per_pair > 0, **swap_settings)
    metrics = evaluate_aligned(ModelConfig(model=args.model), cfg)
    timings["eval_s"] = round(time.perf_counter() - start, 1)
    return {"metrics": metrics, "timings": timings}


def sweep_row(layer: int, metrics: dict, steps: tuple[int, int]) -> dict:
    return {"layer": layer, "binding_train": metrics["aligned"]["binding_accuracy_train"],
            "binding_test": metrics["aligned"]["binding_accuracy_test"],
            "vanilla_binding_train": metrics["vanilla"]["binding_accuracy_train"],
            "vanilla_binding_test": metrics["vanilla"]["binding_accuracy_test"],
            **({"binding_test_by_style": metrics["aligned"]["binding_accuracy_test_by_style"]}
               if "binding_accuracy_test_by_style" in metrics["aligned"] else {}),
            "auc_test_mean": sum(metrics["aligned"]["auc_test"]) / len(metrics["aligned"]["auc_test"]),
            "fvu_vanilla": metrics["reconstruction"]["vanilla"]["generic"]["fvu"],
            "fvu_aligned": metrics["reconstruction"]["aligned"]["generic"]["fvu"],
            "fvu_increase": metrics["fvu_increase"], "post_train_steps": list(steps),
            **({"vanilla_binding_test_by_style": metrics["vanilla"]["binding_accuracy_test_by_style"]}
               if "binding_accuracy_test_by_style" in metrics["vanilla"] else {}),
            **(swap_columns(metrics) if "swap" in metrics["aligned"] else {})}


def swap_columns(metrics: dict) -> dict:
    """Strict and lenient swap success per α for both SAEs, the best of each, and the oracle ceiling."""
    aligned, vanilla = metrics["aligned"]["swap"], metrics["vanilla"]["swap"]
    curve = {side: {a: [round(row["success"], 3), round(row.get("success_lenient", float("nan")), 3)] for a, row in swap["alphas"].items()}
             for side, swap in (("aligned", aligned), ("vanilla", vanilla))}
    oracle = metrics.get("swap_oracle") or {}
    return {"swap_best": aligned["best_success"], "swap_best_alpha": aligned["best_alpha"],
            "swap_best_lenient": aligned.get("best_success_lenient"), "swap_best_alpha_lenient": aligned.get("best_alpha_lenient"),
            "vanilla_swap_best": vanilla["best_success"], "vanilla_swap_best_lenient": vanilla.get("best_success_lenient"),
            "swap_n": aligned["alphas"][str(aligned["best_alpha"])]["n"],
            "oracle_success": oracle.get("success"), "oracle_success_lenient": oracle.get("success_lenient"),
            "rest_unchanged_at_best": aligned["alphas"][str(aligned["best_alpha"])]["rest_unchanged"],
            "swap_curve_strict_lenient": curve}


def biography_targets(sweep: list[dict]) -> list[dict]:
    """Issue 16's targets per layer: unseen binding >= 0.95, lenient swap >= 0.8 at the best α (strict beside
    it), swap >= 2x the vanilla SAE's (lenient; unbounded when vanilla swapped nothing)."""
    rows = []
    for row in sweep:
        if "swap_best" not in row:
            continue
        vanilla = row["vanilla_swap_best_lenient"]
        ratio = row["swap_best_lenient"] / vanilla if vanilla else None
        rows.append({"layer": row["layer"], "binding_unseen": row["binding_test"], "binding_met": row["binding_test"] >= 0.95,
                     "swap_lenient": row["swap_best_lenient"], "swap_strict": row["swap_best"],
                     "swap_met": row["swap_best_lenient"] >= 0.8, "ratio_vs_vanilla_lenient": ratio,
                     "ratio_met": ratio >= 2 if ratio is not None else row["swap_best_lenient"] > 0,
                     "oracle_lenient": row.get("oracle_success_lenient")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="align_relations", help="result name (bench/results/NAME.json)")
    parser.add_argument("--model", default="default", help="model: 'default', a packaged model's name (e.g. "
                                                            "gemma-3-270m) or a local HF folder (e.g. the "
                                                            "fact-learned model of `saelign align learn-facts`)")
    parser.add_argument("--ontology", help="ontology file (default: the relations ontology filtered to the facts "
                                           "the default model knows)")
    parser.add_argument("--alphas", default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS), help="swap α grid")
    parser.add_argument("--sweep-full", action="store_true", help="every sweep layer gets the main layer's swap "
                                                                  "settings (α grid, swaps per pair, rest check)")
    parser.add_argument("--swap-batch-size", type=int, default=16, help="prompts per generation batch")
    parser.add_argument("--swap-write", choices=["delta", "decoded"], default="delta",
                        help="write x + decode(z') - decode(z) (the authors' hook variant) or decode(z') itself")
    parser.add_argument("--layer", type=int, default=MAIN_LAYER, help="main layer (swaps, report); 22 of 30 is where binding "
                                                              "on unseen templates emerges (see the sweep)")
    parser.add_argument("--layers", default="6,12,15,18,26", help="other sweep layers ('' = none)")
    parser.add_argument("--sae", help="vanilla SAE for the main layer (default: train one)")
    parser.add_argument("--d-sae", type=int, default=2304)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--sae-epochs", type=int, default=8, help="passes over the 32k-token training shards")
    parser.add_argument("--max-entities", type=int, default=24)
    parser.add_argument("--steps1", type=int, default=200)
    parser.add_argument("--steps2", type=int, default=1000)
    parser.add_argument("--sweep-steps1", type=int, default=100, help="post-training steps at the other sweep layers")
    parser.add_argument("--sweep-steps2", type=int, default=400)
    parser.add_argument("--sweep-per-pair", type=int, default=0, help="swaps per concept pair and α at the other sweep "
                                                                       "layers (0: binding and FVU only)")
    parser.add_argument("--max-per-pair", type=int, default=6)
    parser.add_argument("--max-rest", type=int, default=4)
    parser.add_argument("--splice-contexts", type=int, default=8)
    parser.add_argument("--swap-span", choices=["concept", "prompt"], default="concept",
                        help="tokens a swap edits: the concept token (default) or every prompt token")
    parser.add_argument("--swap-during", choices=["prompt", "all"], default="prompt",
                        help="edit while the prompt is read (the authors' protocol) or each generated token too")
    parser.add_argument("--swap-when-active", action="store_true",
                        help="with --swap-span prompt, edit only tokens where the source slot is the active concept")
    args = parser.parse_args()
    args.alphas = [float(a) for a in args.alphas.split(",")]
    began = time.perf_counter()
    sweep_layers = [int(x) for x in args.layers.split(",") if x and int(x) != args.layer]
    hookpoints = {layer: f"model.layers.{layer}" for layer in [args.layer, *sweep_layers]}

    t = time.perf_counter()
    train_styles = None
    if args.ontology:  # a fact-learned model's ontology: its facts were trained in, no filter
        ontology, fact_report = Path(args.ontology), None
        train_styles = load_ontology(ontology).source.get("train_styles")  # a broken file fails here, before any capture
    else:
        ontology, fact_report = known_ontology(args)
    ontology_s = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    main_hp = hookpoints[args.layer]
    stores = activation_stores(args, list(hookpoints.values()))
    capture_s = round(time.perf_counter() - t, 1)

    settings = {**vars(args), **({"ontology_train_styles": train_styles} if args.ontology else {"relations": RELATIONS}),
                "generic_train_tokens": TRAIN_TOKENS,
                "held_out_tokens": HELD_OUT, "corpus": "sotu", "context_length": 128, "sae_activation": "topk",
                "sae_batch_size": SAE_BATCH, "sae_train_tokens": TRAIN_TOKENS * args.sae_epochs,
                **({} if args.sweep_full else {"sweep_alphas": list(SWEEP_ALPHAS)}),
                "post_train": "PostTrainConfig defaults except steps",
                "n_layers": AutoConfig.from_pretrained(resolve_model_path(args.model)).num_hidden_layers}
    notes = BIOGRAPHY_NOTES if args.ontology else NOTES if args.model == "default" else FAMILY_NOTES
    result: dict = {"model": model_name(args), "notes": notes, "settings": settings,
                    **({"fact_filter": fact_report} if fact_report else {}),
                    "timings": {"ontology_s": ontology_s, "capture_s": capture_s}}
    t = time.perf_counter()
    sae = Path(args.sae) if args.sae else vanilla_sae(args, stores[main_hp], main_hp)
    result["timings"]["sae_train_s"] = round(time.perf_counter() - t, 1)
    main_run = run_layer(main_hp, sae, ontology, stores[main_hp], args, main=True)
    metrics = main_run["metrics"]
    result.update(hookpoint=main_hp, headline=headline(metrics), targets=target_checks(metrics), metrics=metrics)
    result["timings"].update(main_run["timings"])
    result["sweep"] = [sweep_row(args.layer, metrics, (args.steps1, args.steps2))]
    if args.ontology:
        result["targets_issue16"] = biography_targets(result["sweep"])
    write_result(result_name(args), {**result, "peak_rss_mib": round(peak_rss_mib()), "wall_s": round(time.perf_counter() - began)})
    for layer in sweep_layers:
        hp = hookpoints[layer]
        t = time.perf_counter()
        run = run_layer(hp, vanilla_sae(args, stores[hp], hp), ontology, stores[hp], args, main=False)
        result["sweep"].append(sweep_row(layer, run["metrics"], (args.sweep_steps1, args.sweep_steps2)))
        result["sweep"].sort(key=lambda r: r["layer"])
        if args.ontology:
            result["targets_issue16"] = biography_targets(result["sweep"])
        result["timings"][f"layer{layer}_s"] = round(time.perf_counter() - t, 1)
        write_result(result_name(args), {**result, "peak_rss_mib": round(peak_rss_mib()), "wall_s": round(time.perf_counter() - began)})
    if len(result["sweep"]) > 1:  # the main report gains the layer-sweep plot
        from saelign.align.report import write_report

        write_report({**metrics, "layer_sweep": result["sweep"]}, report_dir(args))


if __name__ == "__main__":
    main()
