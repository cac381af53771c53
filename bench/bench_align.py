"""AlignSAE benchmark on the default model: relations ontology (known facts only), vanilla TopK SAE, post-training,
every metric against the AlignSAE targets, and a small layer sweep. Writes bench/results/align_relations.json.

Steps: build the relations ontology and keep the facts SmolLM2-135M-Instruct states itself; capture State of the
Union activations at the benchmark layers (first shard: SAE training and post-training generic batches; the rest:
held-out FVU); train a TopK SAE per layer (or take --sae for the main layer); `train_aligned`; `evaluate_aligned`
(swap α sweep at the main layer only). Small settings, sized for 2 shared CPU cores; all recorded in the JSON.
Run: cd bench && OMP_NUM_THREADS=1 ../.venv/bin/python bench_align.py [--layers 6,12,18,24] [--sae DIR]
(one thread: on a shared, overloaded CPU two threads made post-training ~10x slower.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import peak_rss_mib, write_result
from saelign.align.builtin import build_ontology, filter_known_facts
from saelign.align.ontology import save_ontology
from saelign.align.pipeline import AlignEvalConfig, AlignTrainConfig, evaluate_aligned, train_aligned
from saelign.align.posttrain import PostTrainConfig
from saelign.align.report import headline, target_checks
from saelign.models import ModelConfig, load_model
from saelign.models.loading import cache_dir
from saelign.sae import SAEConfig
from saelign.sae.train import SAETrainConfig, train_saes
from saelign.store import ActivationStore, CaptureConfig, capture

RELATIONS = ["capital", "currency", "nationality", "continent", "language", "city_in_state", "plural"]
SHARD = 16384
HELD_OUT = 4096
SAE_BATCH = 1024  # more, smaller steps: the training shard is small
WORK = cache_dir() / "bench" / "align"
RESULT_DIR = Path(__file__).resolve().parent / "results" / "tmp" / "align_relations"  # report.md/.html + PNGs


def known_ontology(max_entities: int) -> tuple[Path, dict]:
    path = WORK / f"relations_known_{max_entities}.yaml"
    report_path = path.with_suffix(".filter.json")
    if path.is_file() and report_path.is_file():
        return path, json.loads(report_path.read_text())
    model, tokenizer = load_model(ModelConfig())
    ontology, report = filter_known_facts(model, tokenizer, build_ontology("relations", relations=RELATIONS,
                                                                           max_entities=max_entities))
    save_ontology(ontology, path)
    report_path.write_text(json.dumps(report))
    return path, report


def activation_stores(hookpoints: list[str], folder: str) -> dict[str, Path]:
    """One forward pass over the corpus for all hookpoints (it stops after the deepest)."""
    return capture(ModelConfig(), CaptureConfig(hookpoints=hookpoints, corpus="sotu", token_budget=SHARD + HELD_OUT,
                                                shard_tokens=SHARD, out=str(WORK / folder)))


def vanilla_sae(store: Path, hookpoint: str, d_sae: int, k: int, epochs: int) -> Path:
    out = WORK / "sae" / hookpoint / f"topk{k}_{d_sae}_b{SAE_BATCH}"
    if (out / "cfg.json").is_file():
        return out
    st = ActivationStore(store)
    batches = st.batches(SAE_BATCH, shuffle=True, seed=0, epochs=epochs, shards=[0])
    tcfg = SAETrainConfig(total_tokens=SHARD * epochs, batch_size=SAE_BATCH, out=str(out), checkpoint_every_tokens=10**9)
    train_saes(batches, [SAEConfig(d_in=st.d_in, d_sae=d_sae, k=k, hookpoint=hookpoint, model="SmolLM2-135M-Instruct")], tcfg)
    return out


def run_layer(hookpoint: str, sae: Path, ontology: Path, store: Path, args: argparse.Namespace, swaps: bool) -> dict:
    aligned = WORK / "aligned" / hookpoint / sae.name
    timings = {}
    start = time.perf_counter()
    train_aligned(AlignTrainConfig(sae=str(sae), ontology=str(ontology), store=str(store), generic_tokens=SHARD),
                  PostTrainConfig(steps_stage1=args.steps1, steps_stage2=args.steps2, out=str(aligned)))
    timings["post_train_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    out = RESULT_DIR if swaps else RESULT_DIR / "sweep" / hookpoint
    metrics = evaluate_aligned(AlignEvalConfig(aligned=str(aligned), vanilla=str(sae), out=str(out), store=str(store),
                                               generic_tokens=HELD_OUT, swaps=swaps, max_per_pair=args.max_per_pair,
                                               max_rest=args.max_rest, splice_contexts=args.splice_contexts if swaps else 0))
    timings["eval_s"] = round(time.perf_counter() - start, 1)
    return {"metrics": metrics, "timings": timings}


def sweep_row(layer: int, metrics: dict) -> dict:
    return {"layer": layer, "binding_train": metrics["aligned"]["binding_accuracy_train"],
            "binding_test": metrics["aligned"]["binding_accuracy_test"],
            "vanilla_binding_test": metrics["vanilla"]["binding_accuracy_test"],
            "fvu_vanilla": metrics["reconstruction"]["vanilla"]["generic"]["fvu"],
            "fvu_increase": metrics["fvu_increase"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=15, help="main layer (swaps, report)")
    parser.add_argument("--layers", default="", help="sweep layers, e.g. 6,12,18,24 (binding and FVU only; '' = none)")
    parser.add_argument("--sae", help="vanilla SAE for the main layer (default: train one)")
    parser.add_argument("--d-sae", type=int, default=2304)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--sae-epochs", type=int, default=8, help="passes over the 16k-token training shard")
    parser.add_argument("--max-entities", type=int, default=24)
    parser.add_argument("--steps1", type=int, default=200)
    parser.add_argument("--steps2", type=int, default=1000)
    parser.add_argument("--max-per-pair", type=int, default=6)
    parser.add_argument("--max-rest", type=int, default=4)
    parser.add_argument("--splice-contexts", type=int, default=8)
    args = parser.parse_args()
    began = time.perf_counter()
    sweep_layers = [int(x) for x in args.layers.split(",") if x]
    layers = [args.layer, *[x for x in sweep_layers if x != args.layer]]
    hookpoints = {layer: f"model.layers.{layer}" for layer in layers}

    t = time.perf_counter()
    ontology, fact_report = known_ontology(args.max_entities)
    ontology_s = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    main_hp = hookpoints[args.layer]
    stores = activation_stores([main_hp], "acts")
    capture_s = round(time.perf_counter() - t, 1)

    settings = {**vars(args), "relations": RELATIONS, "generic_train_tokens": SHARD,
                "held_out_tokens": HELD_OUT, "corpus": "sotu", "context_length": 128, "sae_activation": "topk", "sae_batch_size": SAE_BATCH,
                "alphas": list(AlignEvalConfig().alphas), "post_train": "PostTrainConfig defaults except steps"}
    result: dict = {"model": "SmolLM2-135M-Instruct", "settings": settings, "fact_filter": fact_report,
                    "timings": {"ontology_s": ontology_s, "capture_s": capture_s}}
    t = time.perf_counter()
    sae = Path(args.sae) if args.sae else vanilla_sae(stores[main_hp], main_hp, args.d_sae, args.k, args.sae_epochs)
    result["timings"]["sae_train_s"] = round(time.perf_counter() - t, 1)
    main_run = run_layer(main_hp, sae, ontology, stores[main_hp], args, swaps=True)
    metrics = main_run["metrics"]
    result.update(hookpoint=main_hp, headline=headline(metrics), targets=target_checks(metrics), metrics=metrics)
    result["timings"].update(main_run["timings"])
    result["sweep"] = [sweep_row(args.layer, metrics)]
    write_result("align_relations", {**result, "peak_rss_mib": round(peak_rss_mib()), "wall_s": round(time.perf_counter() - began)})
    others = [hookpoints[layer] for layer in sweep_layers if layer != args.layer]
    t = time.perf_counter()
    stores.update(activation_stores(others, "acts_sweep") if others else {})
    result["timings"]["sweep_capture_s"] = round(time.perf_counter() - t, 1)
    for layer in sweep_layers:
        if layer == args.layer:
            continue
        hp = hookpoints[layer]
        run = run_layer(hp, vanilla_sae(stores[hp], hp, args.d_sae, args.k, args.sae_epochs), ontology, stores[hp], args, swaps=False)
        result["sweep"].append(sweep_row(layer, run["metrics"]))
        result["sweep"].sort(key=lambda r: r["layer"])
        result["timings"][f"layer{layer}_s"] = sum(run["timings"].values())
        write_result("align_relations", {**result, "peak_rss_mib": round(peak_rss_mib()), "wall_s": round(time.perf_counter() - began)})
    if len(result["sweep"]) > 1:  # the main report gains the layer-sweep plot
        from saelign.align.report import write_report

        write_report({**metrics, "layer_sweep": result["sweep"]}, RESULT_DIR)


if __name__ == "__main__":
    main()
