"""The Python API of `sae train` / `sae eval`: the same SAEs and metrics the CLI writes, without the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from saelign.cli import main
from saelign.errors import SaelignError
from saelign.models import ModelConfig
from saelign.sae import SAEConfig, load_sae, save_sae
from saelign.sae.evaluate import EVAL_FILE, EvalConfig
from saelign.sae.pipeline import evaluate_sae_files, rebatch, train_from_store, train_on_the_fly
from saelign.sae.train import SAETrainConfig
from saelign.store import CaptureConfig, capture
from test_evaluate import HOOK, identity_sae
from test_sae_train import D_IN, synthetic, write_store


def test_rebatch_cuts_exact_batches_in_order():
    chunks = [torch.rand(n, 2) for n in (3, 1, 5, 2)]
    out = list(rebatch(chunks, 4))
    assert [b.shape[0] for b in out] == [4, 4, 3]
    torch.testing.assert_close(torch.cat(out), torch.cat(chunks))


def test_train_from_store_matches_the_cli(tmp_path):
    write_store(tmp_path / "store", synthetic(2000, seed=3))
    assert (
        main(
            [
                "sae",
                "train",
                "--store",
                str(tmp_path / "store"),
                "--k",
                "2,4",
                "--d-sae",
                "32",
                "--batch-size",
                "500",
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    cfgs = [SAEConfig(d_sae=32, k=k) for k in (2, 4)]
    saes = train_from_store(
        tmp_path / "store", cfgs, SAETrainConfig(batch_size=500, out=str(tmp_path / "api"))
    )
    for name, sae in zip(("k2", "k4"), saes, strict=True):
        cli = load_sae(tmp_path / "cli" / name)
        assert (sae.d_in, sae.cfg.hookpoint, sae.cfg.model) == (D_IN, "model.layers.1", "m")
        torch.testing.assert_close(sae.W_dec.detach(), cli.W_dec)
        torch.testing.assert_close(load_sae(tmp_path / "api" / name).W_enc, cli.W_enc)


def write_corpus(path, n: int) -> str:
    path.write_text(
        "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog." for i in range(n))
    )
    return str(path)


def test_train_on_the_fly_fills_width_and_hookpoint(tmp_path, tiny_llama_dir):
    corpus = write_corpus(tmp_path / "corpus.txt", 30)
    model = ModelConfig(model=str(tiny_llama_dir), device="cpu")
    (sae,) = train_on_the_fly(
        model,
        HOOK,
        [SAEConfig(d_sae=16, k=2)],
        SAETrainConfig(total_tokens=200, batch_size=64),
        corpus=corpus,
        context_length=32,
    )
    assert (sae.d_in, sae.cfg.hookpoint, sae.cfg.model) == (32, HOOK, str(tiny_llama_dir.resolve()))
    with pytest.raises(SaelignError, match="needs --total-tokens"):
        train_on_the_fly(model, HOOK, [SAEConfig(d_sae=16, k=2)], SAETrainConfig(), corpus=corpus)


def test_evaluate_sae_files_matches_the_cli(tmp_path, tiny_llama_dir, tiny_llama, tokenizer):
    capture_cfg = CaptureConfig(
        hookpoints=[HOOK],
        corpus=write_corpus(tmp_path / "corpus.txt", 40),
        context_length=16,
        token_budget=150,
        shard_tokens=64,
        out=str(tmp_path / "acts"),
    )
    stores = capture(
        ModelConfig(model=str(tiny_llama_dir)), capture_cfg, model=tiny_llama, tokenizer=tokenizer
    )
    save_sae(identity_sae(), tmp_path / "sae")
    assert (
        main(
            [
                "sae",
                "eval",
                "--sae",
                str(tmp_path / "sae"),
                "--store",
                str(stores[HOOK]),
                "--n-contexts",
                "3",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )  # the store's model
    results = evaluate_sae_files(
        tmp_path / "sae",
        stores[HOOK],
        EvalConfig(n_contexts=3, out=str(tmp_path / "api")),
        ModelConfig(model="", device="cpu"),
    )
    cli = json.loads((tmp_path / "cli" / EVAL_FILE).read_text())
    assert json.loads((tmp_path / "api" / EVAL_FILE).read_text()) == cli
    assert results["splice"]["predictions"] == cli["splice"]["predictions"] > 0
    run = json.loads((tmp_path / "api" / "run.json").read_text())["stages"]["sae_eval"]
    assert run["config"]["model"]["model"] == str(tiny_llama_dir.resolve())  # the store's model was used
    again = ["sae", "eval", "--sae", str(tmp_path / "sae"), "--store", str(stores[HOOK]), "--n-contexts", "0",
             "--out", str(tmp_path / "cli")]
    before = (tmp_path / "cli" / EVAL_FILE).read_bytes()
    assert main(again) == 2 and (tmp_path / "cli" / EVAL_FILE).read_bytes() == before  # the earlier one stays
    assert main([*again, "--overwrite"]) == 0
    replaced = json.loads((tmp_path / "cli" / EVAL_FILE).read_text())
    assert "splice" not in replaced  # no splice this time: the file was rewritten
