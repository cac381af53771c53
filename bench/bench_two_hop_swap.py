"""Bridge swaps on two-hop questions (issue 16, deliverable 4): on "Where is the employer of X located?" (the
two-hop templates of bench_two_hop.py, over the biographies the model learnt), edit the last prompt token at
one layer and read the answer, AlignSAE against the vanilla SAE it came from, with the oracle ceiling; only
questions the model answers right before the edit are swapped.

Two swaps, because the biographies ontology binds one AlignSAE slot per relation and none per value:
- `value` (the bridge entity): X's employer A -> another company B; success = B's city
  (`saelign.align.two_hop`: each SAE's latent for a company is the one that best separates its two-hop
  questions, where company and answer city go together); `value_bridge`: the same swap with the latents
  chosen on the one-hop "which company" train prompts, where the company is the answer;
- `relation` (the relation asked through the bridge): the two-hop question's employer_city slot -> another
  relation's slot (employer: stop at the bridge; birth_city, ...); success = X's fact of that relation. The
  aligned slots are the AlignSAE's own; the vanilla SAE's are its best latents per relation on the ontology's
  train prompts, as in bench_align.py; the oracle writes X's first train prompt state of that relation.
Run (the layer-25 SAEs of bench_align.py's biographies run):
  OMP_NUM_THREADS=1 ../.venv/bin/python bench_two_hop_swap.py --model runs/bench_facts/model \\
      --ontology runs/bench_facts/biographies.yaml --layers 25,28
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from bench_two_hop import TWO_HOP
from common import peak_rss_mib, write_result
from saelign.align.activations import example_activations
from saelign.align.metrics import best_latents, encode
from saelign.align.metrics_config import MetricsConfig
from saelign.align.ontology import Ontology, load_ontology
from saelign.align.pipeline import load_aligned
from saelign.align.swap import oracle_swap_success, swap_cases, swap_success
from saelign.align.two_hop import BridgeExample, bridge_examples, bridge_swap
from saelign.models import ModelConfig, load_model
from saelign.models.loading import cache_dir
from saelign.sae import SAE, load_sae

# where bench_align.py's biographies run left its SAEs
RUNS = cache_dir() / "bench" / "align" / "bench_facts_model"
ALIGNED = str(RUNS / "aligned/biographies/model.layers.{layer}/topk32_2304_b1024_t32k_e4_s200+600_anchor1")
VANILLA = str(RUNS / "sae/model.layers.{layer}/topk32_2304_b1024_t32k_e4")
BRIDGE, ANSWER = "employer", "employer_city"


def relation_swap(
    model,
    tokenizer,
    aligned: SAE,
    slot_map,
    vanilla: SAE,
    ontology: Ontology,
    two_hop: list[BridgeExample],
    cfg: MetricsConfig,
) -> dict:
    """The two-hop questions swapped from employer_city to each other relation of the same person. The
    ontology's train prompts hold the target facts (known_only: the model states them on one of them); only
    the pairs whose source is a two-hop question are kept."""
    train = ontology.examples("train")
    asked = slot_map.index(ANSWER)
    questions = [replace(ex, concept_index=asked, entity=ex.subject) for ex in two_hop]
    # train prompts of employer_city would let a case's target be the question's own relation: left out
    holders = [ex for ex in train if ex.concept_index != asked]
    cases = swap_cases(
        model, tokenizer, [*questions, *holders], len(slot_map.concepts), cfg, correct_sources=True
    )
    cases = replace(cases, pairs={k: v for k, v in cases.pairs.items() if k[0] == asked})
    acts = example_activations(model, tokenizer, slot_map.hookpoint, train, cfg.batch_size)
    vanilla_map = best_latents(
        vanilla, acts, torch.tensor([ex.concept_index for ex in train]), slot_map.concepts
    )
    out: dict = {"n": sum(len(v) for v in cases.pairs.values()), "vanilla_latents": vanilla_map.slots}
    for name, sae, smap in (("aligned", aligned, slot_map), ("vanilla", vanilla, vanilla_map)):
        out[name] = swap_success(model, tokenizer, sae, smap, [*questions, *holders], cfg, cases=cases)
    donors: dict = {}
    for ex, row in zip(train, acts, strict=True):
        donors.setdefault((ex.entity, ex.concept_index), row)  # the first train template's, as bench_align
    out["oracle"] = oracle_swap_success(
        model, tokenizer, slot_map.hookpoint, cases, donors, slot_map.concepts, cfg.batch_size
    )
    return out


def bridge_value_prompts(model, tokenizer, ontology: Ontology, hookpoint: str, companies: list[str]):
    """Last-token activations of the ontology's one-hop employer train prompts and each one's company index:
    latents chosen there name the company, not the city it leads to."""
    asked = [ex for ex in ontology.examples("train") if ex.concept == BRIDGE and ex.answer in companies]
    acts = example_activations(model, tokenizer, hookpoint, asked)
    return acts, torch.tensor([companies.index(str(ex.answer)) for ex in asked])


def slot_reading(model, tokenizer, aligned: SAE, slot_map, two_hop: list[BridgeExample]) -> dict:
    """Which relation slot is strongest at the two-hop questions' last token (the swap's source slot is
    employer_city; a question read as 'employer' would be swapped from the wrong slot)."""
    acts = example_activations(model, tokenizer, slot_map.hookpoint, two_hop)
    strongest = encode(aligned, acts)[:, slot_map.slots].argmax(-1).tolist()
    return dict(Counter(slot_map.concepts[i] for i in strongest).most_common())


def summary(result: dict) -> dict:
    """Best α (strict and lenient) per SAE, and the oracle."""
    row = {"n": result["n"]}
    for name in ("aligned", "vanilla"):
        swap = result[name]
        row[name] = {
            "best_alpha": swap["best_alpha"],
            "best_strict": round(swap["best_success"], 3),
            "best_alpha_lenient": swap["best_alpha_lenient"],
            "best_lenient": round(swap["best_success_lenient"], 3),
            "curve_strict_lenient": {
                a: [round(v["success"], 3), round(v["success_lenient"], 3)] for a, v in swap["alphas"].items()
            },
            "rest_unchanged_at_best": swap["alphas"][str(swap["best_alpha"])]["rest_unchanged"],
        }
    row["oracle"] = [round(result["oracle"]["success"], 3), round(result["oracle"]["success_lenient"], 3)]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the fact-learned model folder")
    parser.add_argument("--ontology", required=True, help="the biographies ontology it learnt")
    parser.add_argument("--layers", default="25", help="layers with an aligned and a vanilla SAE")
    parser.add_argument("--aligned", default=ALIGNED, help="aligned SAE folder, {layer} filled in")
    parser.add_argument("--vanilla", default=VANILLA, help="vanilla SAE folder, {layer} filled in")
    parser.add_argument("--alphas", default="0.5,1,2,5,10,20")
    parser.add_argument("--max-rest", type=int, default=1, help="other questions checked unchanged per pair")
    parser.add_argument("--name", default="two_hop_swap")
    args = parser.parse_args()
    began = time.perf_counter()
    cfg = MetricsConfig(
        alphas=[float(a) for a in args.alphas.split(",")],
        max_per_pair=30,
        max_rest=args.max_rest,
        batch_size=32,
    )
    model, tokenizer = load_model(ModelConfig(model=args.model))
    ontology = load_ontology(args.ontology)
    two_hop, companies = bridge_examples(
        ontology, [t.replace("{person}", "{entity}") for t in TWO_HOP], BRIDGE, ANSWER
    )
    result: dict = {
        "model": args.model,
        "ontology": args.ontology,
        "templates": list(TWO_HOP),
        "settings": {
            **vars(args),
            "max_per_pair": cfg.max_per_pair,
            "batch_size": cfg.batch_size,
            "swap": "source latent -> 0, target latent -> alpha x its scale at the last "
            "prompt token while the prompt is read, SAE error kept",
        },
        "layers": {},
        "timings": {},
    }
    for layer in [int(x) for x in args.layers.split(",")]:
        t = time.perf_counter()
        aligned, slot_map = load_aligned(args.aligned.format(layer=layer))
        vanilla = load_sae(Path(args.vanilla.format(layer=layer)))
        saes = {"aligned": aligned, "vanilla": vanilla}
        value = bridge_swap(model, tokenizer, saes, two_hop, companies, cfg)
        chosen_on = bridge_value_prompts(model, tokenizer, ontology, slot_map.hookpoint, companies)
        value_bridge = bridge_swap(
            model, tokenizer, saes, two_hop, companies, replace(cfg, oracle=False), chosen_on
        )
        value_bridge["oracle"] = value["oracle"]  # the same cases: the same ceiling
        relation = relation_swap(model, tokenizer, aligned, slot_map, vanilla, ontology, two_hop, cfg)
        result["layers"][str(layer)] = {
            "summary": {
                "value": summary(value),
                "value_bridge": summary(value_bridge),
                "relation": summary(relation),
            },
            "accuracy_before": value["accuracy_before"],
            "questions_right": value["sources"],
            "aligned_slot_on_two_hop": slot_reading(model, tokenizer, aligned, slot_map, two_hop),
            "value": value,
            "value_bridge": value_bridge,
            "relation": relation,
        }
        result["timings"][f"layer{layer}_s"] = round(time.perf_counter() - t)
        write_result(
            args.name,
            {**result, "wall_s": round(time.perf_counter() - began), "peak_rss_mib": round(peak_rss_mib())},
        )


if __name__ == "__main__":
    main()
