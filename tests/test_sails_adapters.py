"""Saved adapters: stock PEFT reload reproduces outputs (SAILS, PiSSA, full), sidecar, no silent overwrite."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM

from conftest import make_tiny_model
from saelign.errors import SaelignError
from saelign.sails.adapters import (
    PROVENANCE_FILE,
    load_adapter,
    merged_for_inference,
    read_provenance,
    save_adapter,
)
from saelign.sails.lora_init import LoraInitConfig, make_peft_model, prepare_full_finetune
from saelign.sails.subspace import basis_hash, random_subspace


@pytest.fixture
def ids(tokenizer):
    return torch.tensor([tokenizer("How do I bake bread? Mix flour and water.")["input_ids"]])


@torch.no_grad()
def pretend_trained(model, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for param in (p for p in model.parameters() if p.requires_grad):
        param.add_(0.05 * torch.randn(param.shape, generator=gen))


@torch.no_grad()
def logits(model, ids):
    return model(ids).logits


@pytest.mark.parametrize("init", ["sails", "pissa"])
def test_stock_peft_reload_reproduces_outputs(tmp_path, tokenizer, ids, init):
    basis = random_subspace(32, 4, seed=3)
    model = make_peft_model(make_tiny_model("llama", len(tokenizer)), basis, LoraInitConfig(init=init, rank=4))
    pretend_trained(model)
    expected = logits(model, ids)
    provenance = {"init": init, "hookpoints": ["model.layers.1"], "latent_ids": [3, 9], "labels": {"3": "weapons"},
                  "tau": 0.8, "rank": 4, "basis_sha256": basis_hash(basis)}
    out = save_adapter(model, tmp_path / "adapter", provenance)
    reloaded = PeftModel.from_pretrained(make_tiny_model("llama", len(tokenizer)), str(out))
    assert not torch.allclose(logits(make_tiny_model("llama", len(tokenizer)), ids), expected, atol=1e-3)  # it matters
    torch.testing.assert_close(logits(reloaded, ids), expected, atol=1e-5, rtol=1e-4)
    sidecar = read_provenance(out)
    assert sidecar["basis_sha256"] == basis_hash(basis) and sidecar["kind"] == "peft" and sidecar["latent_ids"] == [3, 9]
    assert 0 < sidecar["share"] < 0.2 and "saelign_version" in sidecar
    if init == "pissa":  # re-expressed as a plain rank-2r LoRA on the unmodified base weights
        assert reloaded.peft_config["default"].r == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging leftovers


def test_existing_directory_is_not_overwritten_silently(tmp_path, tokenizer):
    model = make_peft_model(make_tiny_model("llama", len(tokenizer)), random_subspace(32, 2), LoraInitConfig())
    out = save_adapter(model, tmp_path / "adapter", {"run": 1})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SaelignError, match="already exists.*--overwrite"):
        save_adapter(model, out, {"run": 2})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    save_adapter(model, out, {"run": 2}, overwrite=True)
    assert read_provenance(out)["run"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_full_finetune_is_saved_as_a_model_folder(tmp_path, tokenizer, ids):
    model = prepare_full_finetune(make_tiny_model("llama", len(tokenizer)), ["down_proj"])
    pretend_trained(model)
    out = save_adapter(model, tmp_path / "full", {"init": "full"})
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids))
    assert read_provenance(out)["kind"] == "full" and (out / PROVENANCE_FILE).is_file()
    with pytest.raises(SaelignError, match="fully fine-tuned model"):
        load_adapter(make_tiny_model("llama", len(tokenizer)), out)


def test_load_adapter_gives_a_trainable_peft_model(tmp_path, tokenizer):
    model = make_peft_model(make_tiny_model("llama", len(tokenizer)), random_subspace(32, 2), LoraInitConfig())
    out = save_adapter(model, tmp_path / "a", {})
    loaded = load_adapter(make_tiny_model("llama", len(tokenizer)), out, is_trainable=True)
    assert any(isinstance(m, LoraLayer) for m in loaded.modules())
    assert any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(SaelignError, match="not an adapter folder"):
        load_adapter(make_tiny_model("llama", len(tokenizer)), tmp_path)


@pytest.mark.parametrize("init", ["sails", "pissa"])
def test_a_merged_adapter_gives_the_adapted_outputs_without_peft_layers(tokenizer, ids, init):
    model = make_peft_model(make_tiny_model("llama", len(tokenizer)), random_subspace(32, 4, seed=3),
                            LoraInitConfig(init=init, rank=4))
    pretend_trained(model)
    expected = logits(model, ids)
    merged = merged_for_inference(model)
    assert not isinstance(merged, PeftModel) and not any(isinstance(m, LoraLayer) for m in merged.modules())
    torch.testing.assert_close(logits(merged, ids), expected, atol=1e-5, rtol=1e-4)
    plain = make_tiny_model("llama", len(tokenizer))
    assert merged_for_inference(plain) is plain  # nothing to merge
