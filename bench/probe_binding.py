"""Side experiment for the biographies benchmark: binding of a plain logistic probe on raw last-token
activations, train templates -> unseen templates, per layer and style (the ceiling a slot read by one linear
map faces). Run: OMP_NUM_THREADS=1 ../.venv/bin/python probe_binding.py MODEL_DIR ONTOLOGY.yaml [NAME]
(NAME: the result file, default align_biographies_probe)."""

import json
import sys

import torch
from sklearn.linear_model import LogisticRegression

from common import RESULTS
from saelign.align.activations import example_activations
from saelign.align.ontology import load_ontology
from saelign.models import ModelConfig, load_model


def main() -> None:
    torch.set_num_threads(1)
    model, tok = load_model(ModelConfig(model=sys.argv[1]))
    onto = load_ontology(sys.argv[2])
    train, test = onto.examples("train"), onto.examples("test")
    out = {}
    for layer in [10, 15, 20, 25, 28]:
        hp = f"model.layers.{layer}"
        xa, xb = example_activations(model, tok, hp, train), example_activations(model, tok, hp, test)
        ya, yb = [e.concept_index for e in train], [e.concept_index for e in test]
        pred = LogisticRegression(max_iter=2000, C=1.0).fit(xa.numpy(), ya).predict(xb.numpy())
        hits = [int(p == y) for p, y in zip(pred, yb, strict=True)]
        by = {st: sum(h for h, e in zip(hits, test, strict=True) if e.style == st)
              / sum(e.style == st for e in test) for st in ("qa", "fill_in", "instruction")}
        out[layer] = {"unseen": sum(hits) / len(hits), "by_style": by}
    name = sys.argv[3] if len(sys.argv) > 3 else "align_biographies_probe"
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
