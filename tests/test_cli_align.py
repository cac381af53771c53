"""`saelign align ...` end to end on the tiny Llama: check, train (and resume), eval + report, swap, generate, and
every bad input ending in one clear line and exit code 2 with nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from conftest import TRAINING_TEXT
from saelign.cli import main
from saelign.sae import SAE, SAEConfig, save_sae

HOOKPOINT = "model.layers.2"
ONTOLOGY = {
    "name": "tiny",
    "require_answers": True,
    "concepts": [
        {"name": "capital", "templates": {"train": ["The capital of {entity} is", "{entity} has the capital city"],
                                          "test": ["Q: the capital of {entity}? A:"]},
         "entities": [{"entity": "France", "answer": "Paris"}, {"entity": "Germany", "answer": "Berlin"},
                      {"entity": "Spain", "answer": "Madrid"}]},
        {"name": "food", "templates": {"train": ["In {entity} people bake", "The bread of {entity} is"],
                                       "test": ["Q: the food of {entity}? A:"]},
         "entities": [{"entity": "France", "answer": "bread"}, {"entity": "Germany", "answer": "salt"},
                      {"entity": "Spain", "answer": "yeast"}]},
    ],
}
TRAIN_FLAGS = ["--generic-tokens", "400", "--context-length", "32", "--steps-stage1", "5", "--steps-stage2", "25",
               "--batch-size", "8", "--generic-batch-size", "16", "--device", "cpu"]


def write_yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def tiny_sae(folder, d_sae: int = 48, k: int = 4) -> str:
    sae = SAE(SAEConfig(d_in=32, d_sae=d_sae, activation="topk", k=k, hookpoint=HOOKPOINT))
    sae.reset_parameters(seed=0)
    save_sae(sae, folder)
    return str(folder)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_llama_dir):
    """A trained aligned SAE (via the CLI) next to its vanilla SAE, ontology and corpus."""
    root = tmp_path_factory.mktemp("align_cli")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(TRAINING_TEXT * 3))
    ws = {"root": root, "corpus": str(corpus), "model": str(tiny_llama_dir), "vanilla": tiny_sae(root / "vanilla"),
          "ontology": write_yaml(root / "tiny.yaml", ONTOLOGY), "aligned": str(root / "aligned")}
    code = main(["align", "train", "--model", ws["model"], "--sae", ws["vanilla"], "--ontology", ws["ontology"],
                 "--corpus", ws["corpus"], "--out", ws["aligned"], *TRAIN_FLAGS])
    assert code == 0
    return ws


def test_check_counts_examples_per_split(tmp_path, capsys):
    assert main(["align", "check", "--ontology", write_yaml(tmp_path / "o.yaml", ONTOLOGY)]) == 0
    out = capsys.readouterr().out
    assert "'tiny': 2 concepts" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert lines["capital"] == ["6", "3"] and lines["food"] == ["6", "3"] and lines["total"] == ["12", "6"]


@pytest.mark.parametrize("mutate, message", [
    (lambda o: o.update(colour="red"), "unknown field(s) colour"),
    (lambda o: o["concepts"].append(dict(o["concepts"][0])), "duplicate concept name"),
    (lambda o: o["concepts"][0]["templates"]["train"].append("The capital is"), "lacks the {entity} placeholder"),
    (lambda o: o["concepts"].append({"name": "empty"}), "concept is empty"),
])
def test_check_rejects_bad_ontologies(tmp_path, capsys, mutate, message):
    data = json.loads(json.dumps(ONTOLOGY))
    mutate(data)
    assert main(["align", "check", "--ontology", write_yaml(tmp_path / "bad.yaml", data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saelign: error: ontology ") and message in err and len(err.splitlines()) == 1


def test_train_writes_aligned_folder_and_resumes(workspace, capsys):
    aligned = workspace["root"] / "aligned"
    for name in ("cfg.json", "sae_weights.safetensors", "slot_map.json", "run.json", "ontology.yaml"):
        assert (aligned / name).is_file(), name
    slot_map = json.loads((aligned / "slot_map.json").read_text())
    assert sorted(e["concept"] for e in slot_map["slots"].values()) == ["capital", "food"]
    assert slot_map["d_sae"] == 50 and sorted(map(int, slot_map["slots"])) == [48, 49]  # slots appended
    run = json.loads((aligned / "run.json").read_text())["stages"]["align-train"]
    assert run["vanilla_sae"].endswith("vanilla") and run["examples"] == 12
    weights = (aligned / "sae_weights.safetensors").read_bytes()
    code = main(["align", "train", "--model", workspace["model"], "--sae", workspace["vanilla"], "--ontology",
                 workspace["ontology"], "--corpus", workspace["corpus"], "--out", workspace["aligned"], *TRAIN_FLAGS])
    assert code == 0 and (aligned / "sae_weights.safetensors").read_bytes() == weights  # finished run is reused
    assert "capital -> latent" in capsys.readouterr().out


def test_train_with_other_options_refuses_to_overwrite(workspace, capsys):
    flags = [("26" if prev == "--steps-stage2" else flag) for prev, flag in zip(["", *TRAIN_FLAGS[:-1]], TRAIN_FLAGS, strict=True)]
    code = main(["align", "train", "--model", workspace["model"], "--sae", workspace["vanilla"], "--ontology",
                 workspace["ontology"], "--corpus", workspace["corpus"], "--out", workspace["aligned"], *flags])
    assert code == 2 and "different options (steps_stage2);" in capsys.readouterr().err


def test_train_more_concepts_than_latents(workspace, tmp_path, capsys):
    small = tiny_sae(tmp_path / "small", d_sae=1, k=1)
    out = tmp_path / "aligned"
    code = main(["align", "train", "--model", workspace["model"], "--sae", small, "--ontology", workspace["ontology"],
                 "--corpus", workspace["corpus"], "--out", str(out), *TRAIN_FLAGS])
    err = capsys.readouterr().err
    assert code == 2 and "2 concepts but the SAE's free bank would keep only 1 latents" in err
    assert not (out / "slot_map.json").exists() and not (out / "cfg.json").exists()


def test_eval_writes_metrics_and_report(workspace, capsys):
    out = workspace["root"] / "eval"
    code = main(["align", "eval", "--model", workspace["model"], "--aligned", workspace["aligned"], "--out", str(out),
                 "--corpus", workspace["corpus"], "--generic-tokens", "200", "--context-length", "32", "--alphas", "1,4",
                 "--no-known-only", "--splice-contexts", "2", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "binding on unseen templates" in printed and "met:" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["concepts"] == ["capital", "food"] and metrics["ontology"]["test_examples"] == 6
    assert set(metrics["aligned"]["swap"]["alphas"]) == {"1.0", "4.0"}
    confusion = metrics["aligned"]["confusion_test"]
    assert all(abs(sum(row) - 1) < 1e-9 for row in confusion)
    assert metrics["aligned"]["binding_accuracy_test"] == pytest.approx(sum(confusion[i][i] for i in range(2)) / 2)
    assert metrics["splice"]["aligned"]["predictions"] > 0
    md = (out / "report.md").read_text()
    assert "| binding accuracy, unseen templates |" in md and "swap success at best α" in md
    assert "<table>" in (out / "report.html").read_text()
    for name in ("report_alpha_curve.png", "report_confusion_aligned_test.png", "report_confusion_vanilla_train.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name


def test_eval_config_file_has_model_and_eval_sections(workspace, tmp_path, capsys):
    options = {"aligned": workspace["aligned"], "out": str(tmp_path / "e"), "corpus": workspace["corpus"],
               "generic_tokens": 100, "context_length": 32, "swaps": False, "splice_contexts": 0}
    config = write_yaml(tmp_path / "eval.yaml", {"model": {"model": workspace["model"], "device": "cpu"},
                                                  "eval": options})
    assert main(["align", "eval", "--config", config]) == 0
    run = json.loads((tmp_path / "e" / "run.json").read_text())["stages"]["align-eval"]["config"]
    assert run["model"] == {"model": workspace["model"], "device": "cpu", "dtype": "auto", "quantize": "none"}
    assert not run["swaps"]
    flat = write_yaml(tmp_path / "flat.yaml", {"model": workspace["model"], **options})
    assert main(["align", "eval", "--config", flat]) == 2
    assert "this command reads the sections model, eval" in capsys.readouterr().err


def test_swap_and_generate_print_before_after(workspace, capsys):
    assert main(["align", "swap", "--model", workspace["model"], "--aligned", workspace["aligned"], "--prompt",
                 "The capital of France is", "--source", "capital", "--target", "food", "--alpha", "8",
                 "--max-new-tokens", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "before: " in out and "after (capital -> food, α=8): " in out
    assert main(["align", "generate", "--model", workspace["model"], "--aligned", workspace["aligned"], "--prompt",
                 "The capital of France is", "--guard", "capital", "--zero", "food", "--max-new-tokens", "3",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "plain: " in out and "edited: " in out and "guard: " in out


def test_unknown_concept_and_slot_map_mismatch(workspace, tmp_path, capsys):
    args = ["align", "swap", "--model", workspace["model"], "--prompt", "x", "--source", "capital", "--device", "cpu"]
    assert main([*args, "--aligned", workspace["aligned"], "--target", "weather"]) == 2
    assert "unknown concept 'weather'" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(workspace["aligned"], broken)
    data = json.loads((broken / "slot_map.json").read_text())
    data["d_sae"] = 64
    (broken / "slot_map.json").write_text(json.dumps(data))
    assert main([*args, "--aligned", str(broken), "--target", "food"]) == 2
    err = capsys.readouterr().err
    assert "was made for an SAE with d_sae=64, but this SAE has d_sae=50" in err and len(err.strip().splitlines()) == 1
    assert main(["align", "eval", "--model", workspace["model"], "--aligned", str(broken), "--out", str(tmp_path / "e")]) == 2
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_eval_rejects_other_ontology(workspace, tmp_path, capsys):
    other = json.loads(json.dumps(ONTOLOGY))
    other["concepts"][1]["name"] = "cuisine"
    code = main(["align", "eval", "--model", workspace["model"], "--aligned", workspace["aligned"], "--ontology",
                 write_yaml(tmp_path / "other.yaml", other), "--out", str(tmp_path / "e")])
    assert code == 2 and "differ from the slot map's" in capsys.readouterr().err


def test_build_rejects_unknown_options(tmp_path, capsys):
    assert main(["align", "build", "--name", "relations", "--out", str(tmp_path / "r.yaml"), "--set", "colour=red"]) == 2
    assert "unknown option(s) colour" in capsys.readouterr().err
    assert main(["align", "build", "--name", "nope", "--out", str(tmp_path / "r.yaml")]) == 2
    assert "unknown built-in ontology 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "r.yaml").exists()


def test_train_ontology_file_missing(workspace, tmp_path, capsys):
    code = main(["align", "train", "--model", workspace["model"], "--sae", workspace["vanilla"], "--ontology",
                 str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "a")])
    assert code == 2 and "ontology file not found" in capsys.readouterr().err


def test_build_biographies_then_learn_facts(tmp_path, tiny_llama_dir, capsys):
    from test_align_biographies import write_biography_data

    dirs = write_biography_data(tmp_path)
    out = tmp_path / "bio.yaml"
    assert main(["align", "build", "--name", "biographies", "--out", str(out), "--set", "people=2",
                 "--set", f"names_dir={dirs['names_dir']}",
                 "--set", f"countryinfo_dir={dirs['countryinfo_dir']}"]) == 0
    assert "biographies: 6 concepts" in capsys.readouterr().out
    code = main(["align", "learn-facts", "--model", str(tiny_llama_dir), "--device", "cpu",
                 "--ontology", str(out), "--out", str(tmp_path / "facts"), "--sft-steps", "2",
                 "--check-every", "1", "--check-prompts", "4", "--target-accuracy", "0"])
    printed = capsys.readouterr().out
    assert code == 0 and "2 steps" in printed and "accuracy, unseen templates" in printed
    for style in ("qa", "fill_in", "instruction"):
        assert f"    {style} " in printed
    assert (tmp_path / "facts" / "model" / "config.json").is_file()
    assert main(["align", "learn-facts", "--ontology", str(out), "--method", "lora"]) == 2
    assert "method lora needs --lora-rank" in capsys.readouterr().err
