"""Side experiment for the relations benchmark: the swap oracle alone, per layer, no SAE. On the benchmark's
swap cases (the relations ontology filtered to the facts the model states, unseen templates, --max-per-pair
cases per concept pair) the last prompt token's whole residual is replaced by that of the same entity's
target-concept first train prompt: a ceiling for any last-token edit at that layer, as `bench_align.py`
measures it beside the slots. It gives SmolLM2's ceilings at every sweep layer (its relations result
predates the oracle) at the cost of generation only. Writes results/align_oracle_<model>.json.
Run: cd bench && OMP_NUM_THREADS=1 ../.venv/bin/python oracle_swap.py [--model default] [--layers 6,12,22]"""

import argparse
import time

from bench_align import known_ontology
from common import peak_rss_mib, write_result
from saelign.align.activations import example_activations
from saelign.align.metrics_config import MetricsConfig
from saelign.align.ontology import load_ontology
from saelign.align.swap import oracle_swap_success, swap_cases
from saelign.models import ModelConfig, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="'default' or a packaged model's name")
    parser.add_argument("--layers", default="6,12,15,18,22,26")
    parser.add_argument("--max-entities", type=int, default=24)
    parser.add_argument("--max-per-pair", type=int, default=6, help="as bench_align.py's main layer")
    args = parser.parse_args()
    began = time.perf_counter()
    path, _ = known_ontology(args)
    ontology = load_ontology(path)
    model, tokenizer = load_model(ModelConfig(model=args.model))
    train, test = ontology.examples("train"), ontology.examples("test")
    cfg = MetricsConfig(max_per_pair=args.max_per_pair, max_rest=0)  # max_rest does not change the cases
    cases = swap_cases(model, tokenizer, test, len(ontology.concepts), cfg)
    layers = {}
    for layer in (int(x) for x in args.layers.split(",")):
        hookpoint = f"model.layers.{layer}"
        acts = example_activations(model, tokenizer, hookpoint, train, cfg.batch_size)
        donors = {}
        for ex, row in zip(train, acts, strict=True):  # the first train template's, as alignment_report
            donors.setdefault((ex.entity, ex.concept_index), row)
        oracle = oracle_swap_success(
            model, tokenizer, hookpoint, cases, donors, ontology.concept_names, cfg.batch_size
        )
        layers[layer] = {k: oracle[k] for k in ("success", "success_lenient", "n")}
    name = "smollm2" if args.model == "default" else args.model
    write_result(
        f"align_oracle_{name}",
        {
            "model": args.model,
            "ontology": str(path),
            "settings": vars(args),
            "layers": layers,
            "n_layers": model.config.num_hidden_layers,
            "peak_rss_mib": round(peak_rss_mib()),
            "wall_s": round(time.perf_counter() - began),
        },
    )


if __name__ == "__main__":
    main()
