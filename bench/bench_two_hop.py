"""Two-hop questions over the biographies a model learnt (issue 16, deliverable 4): does the fact-learned
model answer "Where is the employer of X located?" without further training?

Three question sets, each answered greedily and scored strict (`answer_matches`) and lenient (the AlignSAE
authors' containment rule):
- `two_hop`: person -> employer -> city, phrased through the bridge entity (the employer). In this ontology
  the composed fact (`employer_city`) was itself trained per person, so these are new phrasings of a
  learnt fact;
- `bridge`: company -> city asked about the company alone, a fact the model never saw stated on its own
  (only inside people's employer_city answers);
- `one_hop`: the two hops asked apart (the person's employer; the person's employer city on a train template),
  for reference.
Run: OMP_NUM_THREADS=1 ../.venv/bin/python bench_two_hop.py --model runs/bench_facts/model \\
         --ontology runs/bench_facts/biographies.yaml
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

from common import peak_rss_mib, write_result
from saelign.align.ontology import load_ontology
from saelign.models import ModelConfig, load_model
from saelign.text import answer_matches, greedy_decode, lenient_match, pad_token_id, stop_ids, token_ids

TWO_HOP = (
    "Q: Where is the employer of {person} located?\nA:",
    "Q: In which city is the company that {person} works for based?\nA:",
    "Q: {person} works for a company. In which city is that company?\nA:",
    "The employer of {person} is located in the city of",
)
BRIDGE = (
    "Q: In which city is {company} based?\nA:",
    "Q: Where is {company} located?\nA:",
    "{company} is based in the city of",
)
ONE_HOP = ("Q: Which company does {person} work for?\nA:", "Q: In which city does {person} work?\nA:")


def questions(ontology_path: str) -> list[dict]:
    ontology = load_ontology(ontology_path)
    facts: dict[str, dict[str, str]] = defaultdict(dict)
    for concept in ontology.concepts:
        for entity in concept.entities:
            facts[entity.entity][concept.name] = str(entity.answer)
    rows = []
    for person, fact in facts.items():
        city, company = fact["employer_city"], fact["employer"]
        rows += [
            {"set": "two_hop", "template": t, "text": t.format(person=person), "answer": city}
            for t in TWO_HOP
        ]
        rows.append(
            {
                "set": "one_hop",
                "template": ONE_HOP[0],
                "text": ONE_HOP[0].format(person=person),
                "answer": company,
            }
        )
        rows.append(
            {
                "set": "one_hop",
                "template": ONE_HOP[1],
                "text": ONE_HOP[1].format(person=person),
                "answer": city,
            }
        )
    companies = {fact["employer"]: fact["employer_city"] for fact in facts.values()}
    for company, city in companies.items():
        rows += [
            {"set": "bridge", "template": t, "text": t.format(company=company), "answer": city}
            for t in BRIDGE
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the fact-learned model folder")
    parser.add_argument("--ontology", required=True, help="the biographies ontology it learnt")
    parser.add_argument("--name", default="align_biographies_two_hop")
    args = parser.parse_args()
    began = time.perf_counter()
    model, tokenizer = load_model(ModelConfig(model=args.model))
    rows = questions(args.ontology)
    longest = max(len(tokenizer(" " + r["answer"], add_special_tokens=False)["input_ids"]) for r in rows)
    said = greedy_decode(
        model,
        token_ids(tokenizer, [r["text"] for r in rows]),
        longest + 4,
        pad_token_id(tokenizer),
        stop_ids(model, tokenizer),
        batch_size=32,
        desc="two-hop questions",
    )
    for row, tokens in zip(rows, said, strict=True):
        row["said"] = tokenizer.decode(tokens, skip_special_tokens=True)
        row["strict"] = answer_matches(row["said"], row["answer"])
        row["lenient"] = lenient_match(row["said"], row["answer"])
    summary: dict = {}
    for key in ("set", "template"):
        groups: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            groups[row[key] if key == "set" else f"{row['set']}: {row['template']!r}"].append(row)
        summary[f"by_{key}"] = {
            name: {
                "strict": round(sum(r["strict"] for r in g) / len(g), 4),
                "lenient": round(sum(r["lenient"] for r in g) / len(g), 4),
                "n": len(g),
            }
            for name, g in groups.items()
        }
    write_result(
        args.name,
        {
            "model": args.model,
            "ontology": args.ontology,
            "torch_threads": torch.get_num_threads(),
            **summary,
            "rows": rows,
            "wall_s": round(time.perf_counter() - began),
            "peak_rss_mib": round(peak_rss_mib()),
        },
    )


if __name__ == "__main__":
    main()
