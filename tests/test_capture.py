"""Capture on tiny models: masking and values against a naive reference, one pass for many hookpoints, resume."""

from __future__ import annotations

import argparse
import importlib
import json

import pytest
import torch

from conftest import TRAINING_TEXT, make_tiny_model
from saelign.cli import capture as cli_capture
from saelign.datasets.corpus import iter_contexts, open_corpus
from saelign.errors import SaelignError
from saelign.models import ModelConfig, patch_output
from saelign.store import ActivationStore, CaptureConfig, capture, stream_activations

MODEL = ModelConfig(model="tiny")
capture_mod = importlib.import_module("saelign.store.capture")  # the package re-exports the function under this name


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(TRAINING_TEXT[:30]))
    return path


def config(corpus_file, out, **overrides) -> CaptureConfig:
    base = dict(hookpoints=["model.layers.1"], corpus=str(corpus_file), context_length=16, token_budget=0,
                batch_size=3, shard_tokens=64, out=str(out))
    return CaptureConfig(**{**base, **overrides})


def reference_rows(model, tokenizer, cfg: CaptureConfig, layer: int):
    """Naive reference: loop over every position, keep non-special ones after the first; hidden state from HF."""
    contexts = torch.stack(list(iter_contexts(open_corpus(cfg.corpus, seed=cfg.seed), tokenizer, cfg.context_length)))
    with torch.no_grad():
        hidden = model(input_ids=contexts, output_hidden_states=True).hidden_states[layer + 1]
    special = set(tokenizer.all_special_ids)
    kept = [(c, p) for c in range(contexts.shape[0]) for p in range(cfg.context_length)
            if p > 0 and int(contexts[c, p]) not in special]
    return {"token_ids": torch.tensor([int(contexts[c, p]) for c, p in kept]),
            "context_ids": torch.tensor([c for c, _ in kept]), "positions": torch.tensor([p for _, p in kept]),
            "activations": torch.stack([hidden[c, p] for c, p in kept])}


def read_all(path) -> dict[str, torch.Tensor]:
    chunks = list(ActivationStore(path).iter_rows_with_tokens())
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def count_forwards(model) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("arch, hookpoint, layer", [("llama", "model.layers.1", 1), ("gpt2", "transformer.h.2", 2)])
def test_matches_naive_reference(tmp_path, corpus_file, tokenizer, arch, hookpoint, layer):
    model = make_tiny_model(arch, len(tokenizer))
    cfg = config(corpus_file, tmp_path / "out", hookpoints=[hookpoint])
    stores = capture(MODEL, cfg, model, tokenizer)
    got, want = read_all(stores[hookpoint]), reference_rows(model, tokenizer, cfg, layer)
    for column in ("token_ids", "context_ids", "positions"):
        assert torch.equal(got[column].long(), want[column]), column
    assert torch.allclose(got["activations"], want["activations"], atol=1e-5)
    manifest = ActivationStore(stores[hookpoint]).manifest
    assert manifest["complete"] and manifest["exhausted"] and manifest["num_tokens"] == len(want["token_ids"])
    assert manifest["d_in"] == 32 and manifest["masking"]["first_position"]


def test_first_position_can_be_kept(tmp_path, corpus_file, tokenizer, tiny_llama):
    cfg = config(corpus_file, tmp_path / "out", mask_first_position=False)
    rows = read_all(capture(MODEL, cfg, tiny_llama, tokenizer)["model.layers.1"])
    first = rows["positions"] == 0
    assert first.sum() > 0
    assert not set(rows["token_ids"].tolist()) & set(tokenizer.all_special_ids)


def test_several_hookpoints_in_one_stopped_pass(tmp_path, corpus_file, tokenizer):
    model = make_tiny_model("llama", len(tokenizer))
    calls = count_forwards(model)
    deepest_ran = [0]
    model.model.layers[3].register_forward_hook(lambda *_: deepest_ran.__setitem__(0, deepest_ran[0] + 1))
    cfg = config(corpus_file, tmp_path / "out", hookpoints=["model.layers.0", "model.layers.2"])
    stores = capture(MODEL, cfg, model, tokenizer)
    n_contexts = len(list(iter_contexts(open_corpus(cfg.corpus), tokenizer, cfg.context_length)))
    assert calls[0] == 1 + -(-n_contexts // cfg.batch_size)  # one width probe + one forward per batch
    assert deepest_ran[0] == 0  # the forward stopped after layer 2
    rows = {hp: read_all(path) for hp, path in stores.items()}
    assert torch.equal(rows["model.layers.0"]["token_ids"], rows["model.layers.2"]["token_ids"])
    for hp, layer in (("model.layers.0", 0), ("model.layers.2", 2)):
        want = reference_rows(model, tokenizer, cfg, layer)["activations"]
        assert torch.allclose(rows[hp]["activations"], want, atol=1e-5)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["stages"]["capture"]["tokens"] == len(rows["model.layers.0"]["token_ids"])


def test_stream_activations_equals_store(tmp_path, corpus_file, tokenizer, tiny_llama):
    cfg = config(corpus_file, tmp_path / "out", token_budget=100)
    streamed = torch.cat([b["model.layers.1"] for b in stream_activations(tiny_llama, tokenizer, cfg)])
    stored = read_all(capture(MODEL, cfg, tiny_llama, tokenizer)["model.layers.1"])["activations"]
    assert streamed.shape == (100, 32) and torch.equal(streamed, stored)


def test_resume_after_interruption_is_byte_identical(tmp_path, corpus_file, tokenizer, tiny_llama, monkeypatch):
    hookpoints = ["model.layers.1", "model.layers.2"]
    reference = capture(MODEL, config(corpus_file, tmp_path / "ref", hookpoints=hookpoints), tiny_llama, tokenizer)
    cfg = config(corpus_file, tmp_path / "out", hookpoints=hookpoints)
    real, calls, interrupt_at = capture_mod.forward_capture, [0], [7]

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == interrupt_at[0]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(capture_mod, "forward_capture", interrupted)
    with pytest.raises(KeyboardInterrupt):
        capture(MODEL, cfg, tiny_llama, tokenizer)
    interrupt_at[0] = -1
    partial = json.loads((tmp_path / "out" / "model.layers.1" / "manifest.json").read_text())
    assert not partial["complete"] and 0 < partial["num_tokens"]
    calls[0] = 0
    stores = capture(MODEL, cfg, tiny_llama, tokenizer)
    total_batches = -(-len(list(iter_contexts(open_corpus(cfg.corpus), tokenizer, 16))) // 3)
    assert calls[0] - 1 < total_batches  # the rerun skipped the batches already stored
    for hp in hookpoints:
        ref_manifest = json.loads((reference[hp] / "manifest.json").read_text())
        assert json.loads((stores[hp] / "manifest.json").read_text())["shards"] == ref_manifest["shards"]
        for shard in ref_manifest["shards"]:
            assert (stores[hp] / shard["file"]).read_bytes() == (reference[hp] / shard["file"]).read_bytes()
    calls[0] = 0
    capture(MODEL, cfg, tiny_llama, tokenizer)
    assert calls[0] == 1  # a finished store: only the width probe runs, nothing is rewritten


@pytest.mark.parametrize("damage", ["delete", "truncate", "corrupt"])
def test_capture_repairs_a_finished_store_with_a_damaged_shard(tmp_path, corpus_file, tokenizer, tiny_llama, damage):
    """The loader's advice (rerun the capture; for a corrupt shard, delete it first) ends in a usable store
    with the same bytes as before, instead of 'already complete' and the same error again."""
    cfg = config(corpus_file, tmp_path / "out")
    folder = capture(MODEL, cfg, tiny_llama, tokenizer)["model.layers.1"]
    shards = sorted(folder.glob("shard_*.safetensors"))
    assert len(shards) >= 3
    original = {p.name: p.read_bytes() for p in shards}
    broken = shards[1]
    if damage == "delete":
        broken.unlink()
    elif damage == "truncate":
        broken.write_bytes(original[broken.name][:100])
    else:  # same size, other bytes: only the sha256 check sees it, and its advice is to delete the file
        broken.write_bytes(bytes(b ^ 0xFF for b in original[broken.name]))
        with pytest.raises(SaelignError, match=r"sha256 differs from the manifest\); delete it and rerun"):
            list(ActivationStore(folder).batches(64))
        broken.unlink()
    if damage == "truncate":
        with pytest.raises(SaelignError, match="rerun the same `saelign capture` command to recapture it"):
            ActivationStore(folder)
    capture(MODEL, cfg, tiny_llama, tokenizer)
    assert {p.name: p.read_bytes() for p in sorted(folder.glob("shard_*.safetensors"))} == original
    assert sum(b.shape[0] for b in ActivationStore(folder).batches(64)) == ActivationStore(folder).num_tokens


def test_budget_and_float16(tmp_path, corpus_file, tokenizer, tiny_llama):
    cfg = config(corpus_file, tmp_path / "out", token_budget=150, store_dtype="float16")
    store = ActivationStore(capture(MODEL, cfg, tiny_llama, tokenizer)["model.layers.1"])
    assert store.num_tokens == 150 and not store.manifest["exhausted"]
    assert store.load_shard(0)["activations"].dtype == torch.float16
    want = reference_rows(tiny_llama, tokenizer, cfg, 1)["activations"][:150]
    assert torch.allclose(next(store.batches(150, shuffle=False)), want, atol=1e-2, rtol=1e-2)


def test_other_settings_are_refused(tmp_path, corpus_file, tokenizer, tiny_llama):
    capture(MODEL, config(corpus_file, tmp_path / "out", token_budget=50), tiny_llama, tokenizer)
    with pytest.raises(SaelignError, match="different settings \\(context_length: 16 -> 32\\)"):
        capture(MODEL, config(corpus_file, tmp_path / "out", token_budget=50, context_length=32), tiny_llama, tokenizer)


def test_nonfinite_activations_are_rejected(tmp_path, corpus_file, tokenizer, tiny_llama):
    cfg = config(corpus_file, tmp_path / "out")
    with patch_output(tiny_llama, "model.layers.0", lambda h: h * float("inf")):
        with pytest.raises(SaelignError, match="non-finite activations at model.layers.1 in contexts 0-2"):
            capture(MODEL, cfg, tiny_llama, tokenizer)


def test_chat_corpus_masks_template_specials(tmp_path, tokenizer, tiny_llama):
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p, "response": "I cannot help with that."}) for p in TRAINING_TEXT[:5]))
    cfg = CaptureConfig(hookpoints=["model.layers.1"], corpus=str(path), chat=True, context_length=32, token_budget=0,
                        batch_size=2, out=str(tmp_path / "out"))
    rows = read_all(capture(MODEL, cfg, tiny_llama, tokenizer)["model.layers.1"])
    assert not set(rows["token_ids"].tolist()) & set(tokenizer.all_special_ids)
    assert "assistant" in tokenizer.decode(rows["token_ids"].tolist())


def test_bad_config_values():
    with pytest.raises(SaelignError, match="context_length must be positive"):
        CaptureConfig(context_length=0)
    with pytest.raises(SaelignError, match="token_budget must be 0"):
        CaptureConfig(token_budget=-1)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli_capture.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_capture(tmp_path, corpus_file, tiny_llama_dir, capsys):
    out = tmp_path / "out"
    code = run_cli(["capture", "--model", str(tiny_llama_dir), "--corpus", str(corpus_file), "--hookpoints",
                    "model.layers.1", "--context-length", "16", "--token-budget", "40", "--out", str(out)])
    assert code == 0
    assert f"model.layers.1: 40 tokens x 32 -> {out / 'model.layers.1'}" in capsys.readouterr().out
    assert ActivationStore(out / "model.layers.1").manifest["model"] == str(tiny_llama_dir.resolve())
    with pytest.raises(SaelignError, match="missing.txt' not found"):
        run_cli(["capture", "--model", str(tiny_llama_dir), "--corpus", str(tmp_path / "missing.txt")])
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(f"model:\n  model: {tiny_llama_dir}\ncapture:\n  corpus: {corpus_file}\n"
                           f"  hookpoints: [model.layers.2]\n  token_budget: 30\n  out: {out}\n")
    assert run_cli(["capture", "--config", str(config_file)]) == 0
    assert ActivationStore(out / "model.layers.2").num_tokens == 30


@pytest.mark.slow
def test_default_model_first_position_is_an_attention_sink(tmp_path, corpus_file):
    """On SmolLM2 the first position's residual norm dwarfs the rest: why it is masked by default."""
    cfg = config(corpus_file, tmp_path / "out", hookpoints=["model.layers.15"], context_length=64, batch_size=4,
                 token_budget=500, mask_first_position=False)
    rows = read_all(capture(ModelConfig(), cfg)["model.layers.15"])
    norms = rows["activations"].norm(dim=1)
    first = rows["positions"] == 0
    assert rows["activations"].shape[1] == 576
    assert norms[first].mean() > 20 * norms[~first].mean()
