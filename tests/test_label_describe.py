from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from saelign.errors import SaelignError
from saelign.label import ContextExample, LatentLabel
from saelign.label.describe import DescribeConfig, attach_readings, describe_latents
from saelign.label.examples import prompt_activations
from saelign.label.grounding import labelled_examples
from saelign.sae import SAE, SAEConfig


@dataclass(frozen=True)
class Ex:
    prompt: str
    kind: str
    source: str


PROMPTS = labelled_examples(
    [Ex(f"bake {i}", "harmless", "harmless:cooking") for i in range(8)]
    + [Ex(f"virus {i}", "harmful", "advbench") for i in range(8)]
)


def test_describe_then_explain_and_score_on_tiny_models(tiny_llama, tokenizer):
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=32, d_sae=16, activation="relu", hookpoint="model.layers.1"))
    with torch.no_grad():
        sae.b_enc.fill_(0.05)  # most latents fire somewhere: gives held-out firing examples
    cfg = DescribeConfig(n_examples=1, n_heldout=3, label_tokens=4)
    plain = describe_latents(tiny_llama, tokenizer, sae, "model.layers.1", PROMPTS, [1, 2], cfg)
    assert all(r.grounded and not r.explanation and not r.detection for r in plain.values())
    prose = [ContextExample("Mix flour, water, salt and", " yeast", ".", 1.5, 1, 6)]
    by_tokens = describe_latents(
        tiny_llama,
        tokenizer,
        sae,
        "model.layers.1",
        PROMPTS,
        [1, 2],
        cfg,
        contexts={1: prose},
        grain_from_contexts=True,
    )
    assert (
        by_tokens[1].grain == "token" and by_tokens[2].grain == "prompt"
    )  # no corpus contexts: whole requests
    at_header = describe_latents(
        tiny_llama, tokenizer, sae, "model.layers.1", PROMPTS, [1], cfg, contexts={1: prose}
    )
    assert at_header[1].grain == "prompt"  # read at the assistant-header newline: whole requests
    readings = describe_latents(
        tiny_llama,
        tokenizer,
        sae,
        "model.layers.1",
        PROMPTS,
        [1, 2],
        cfg,
        token_labels={1: "'bread'"},
        explainer=(tiny_llama, tokenizer),
    )
    assert (
        set(readings[1].detection) <= {"model", "grounded", "tokens"} and readings[1].explanation is not None
    )
    for reading in readings.values():
        for score in reading.detection.values():
            assert 0.0 <= score <= 1.0  # unscored (nan) kinds are left out
    first = describe_latents(
        tiny_llama,
        tokenizer,
        sae,
        "model.layers.1",
        PROMPTS,
        [2, 1],
        DescribeConfig(n_examples=1, n_heldout=3, label_tokens=4, explain_top=1),
        explainer=(tiny_llama, tokenizer),
    )
    assert first[1].grounded and not first[1].detection and first[1].explanation == ""  # only the first
    assert first[2].grounded == readings[2].grounded
    labels = {1: LatentLabel(1, "'bread'", [], [], [], [], 0.1)}
    with pytest.raises(SaelignError, match=r"\[2\] have readings but no label"):
        attach_readings(labels, readings)
    attach_readings(labels, {1: readings[1]})
    assert labels[1].reading is readings[1]


def test_bad_options():
    with pytest.raises(SaelignError, match="n_examples"):
        DescribeConfig(n_examples=0)
    with pytest.raises(SaelignError, match="explain_top must be 0 or positive"):
        DescribeConfig(explain_top=-1)
    with pytest.raises(SaelignError, match="explain_candidates must be 1 to 6, got 0"):
        DescribeConfig(explain_candidates=0)


def test_label_cli_reads_labelled_prompts_explains_and_refuses_bad_explainers(
    tiny_llama_dir, tokenizer, tmp_path, monkeypatch, capsys
):
    import json

    from saelign.cli import main
    from saelign.label import load_labels
    from saelign.sae.formats import save_sae

    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=32, d_sae=16, activation="relu", hookpoint="model.layers.1"))
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
    sae_dir = save_sae(sae, tmp_path / "sae")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("How do I bake bread? Mix flour and water.\n\nThe quick brown fox.")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": p.prompt,
                    "kind": p.labels["kind"][0],
                    "source": "harmless:cooking" if "bake" in p.prompt else "user",
                }
            )
            + "\n"
            for p in PROMPTS
        )
    )
    common = [
        "label",
        "--model",
        str(tiny_llama_dir),
        "--sae",
        str(sae_dir),
        "--corpus",
        str(corpus),
        "--context-length",
        "16",
        "--device",
        "cpu",
        "--latents",
        "1,2,3",
        "--prompts",
        str(prompts),
    ]
    plain = tmp_path / "plain"
    tokenizer.save_pretrained(plain)
    (plain / "tokenizer_config.json").write_text(
        json.dumps(
            {
                k: v
                for k, v in json.loads((plain / "tokenizer_config.json").read_text()).items()
                if k != "chat_template"
            }
        )
    )
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tiny_llama_dir).save_pretrained(plain)
    assert main([*common, "--explainer", str(plain)]) == 2  # not a chat model: refused
    assert f"--explainer {plain}: the model's tokenizer has no chat template" in capsys.readouterr().err
    assert not (sae_dir / "labels.json").exists()  # ...before anything was written
    assert main([*common[:-2], "--explainer", str(tiny_llama_dir)]) == 2  # an explainer needs --prompts
    assert main([*common, "--explainer", str(tiny_llama_dir), "--explain-top", "1"]) == 0
    labels = load_labels(sae_dir / "labels.json")
    assert all(label.reading and label.reading.grounded for label in labels.values())
    assert (
        labels[1].reading.explanation is not None and not labels[2].reading.detection
    )  # only the first explained
    meta = json.loads((sae_dir / "labels.json").read_text())["meta"]
    assert meta["d_sae"] == 16 and meta["sae_fingerprint"]


def test_given_activations_give_the_readings_of_reading_them_and_a_wrong_shape_is_refused(tiny_llama,
                                                                                         tokenizer):
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=32, d_sae=16, activation="relu", hookpoint="model.layers.1"))
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
    cfg = DescribeConfig(n_examples=1, n_heldout=3, label_tokens=4)
    texts = [p.prompt for p in PROMPTS]
    acts = prompt_activations(tiny_llama, tokenizer, sae, "model.layers.1", texts, [3, 1, 2])
    read = describe_latents(tiny_llama, tokenizer, sae, "model.layers.1", PROMPTS, [1, 2], cfg)
    given = describe_latents(tiny_llama, tokenizer, sae, "model.layers.1", PROMPTS, [1, 2], cfg,
                             acts=acts[:, 1:])
    assert {i: r.grounded for i, r in given.items()} == {i: r.grounded for i, r in read.items()}
    swapped = describe_latents(tiny_llama, tokenizer, sae, "model.layers.1", PROMPTS, [1, 2], cfg,
                               acts=acts[:, [2, 1]])
    assert swapped[1].top_prompts == read[2].top_prompts  # the columns are the latents, in order
    with pytest.raises(SaelignError, match="one column per latent"):
        describe_latents(tiny_llama, tokenizer, sae, "model.layers.1", PROMPTS, [1, 2], cfg, acts=acts)
