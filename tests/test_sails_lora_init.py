"""LoRA init: ΔW = 0 at step 0, subspace structure of the factors and of the first update, baselines, errors."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer

from conftest import make_tiny_model
from saelign.errors import SaelignError
from saelign.sails.lora_init import LoraInitConfig, make_peft_model, prepare_full_finetune, trainable_share
from saelign.sails.subspace import random_subspace

WRITERS = ("o_proj", "down_proj")


@pytest.fixture
def fresh(tokenizer):
    return lambda arch="llama": make_tiny_model(arch, len(tokenizer))


@pytest.fixture
def batch(tokenizer):
    ids = torch.tensor([tokenizer("Paris is the capital of France. How do I bake bread?")["input_ids"]])
    return ids


def lora_layers(model):
    return [(name.rsplit(".", 1)[-1], m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def delta_w(module) -> torch.Tensor:
    return module.scaling["default"] * module.lora_B["default"].weight @ module.lora_A["default"].weight


@pytest.mark.parametrize("init", ["sails", "lora", "pissa", "random_subspace", "act_pca"])
def test_outputs_equal_the_base_model_at_step_zero(fresh, batch, init):
    base = fresh()
    with torch.no_grad():
        expected = base(batch).logits
    peft_model = make_peft_model(fresh(), random_subspace(32, 4, seed=5), LoraInitConfig(init=init, rank=4))
    with torch.no_grad():
        got = peft_model(batch).logits
    if init == "pissa":  # the base weights are rewritten as W_res + B·A: equal up to rounding
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    else:
        assert torch.equal(got, expected)


def test_factors_lie_in_the_subspace(fresh):
    basis = random_subspace(32, 3, seed=1)
    cfg = LoraInitConfig(rank=5)  # wider than the subspace: extra rows are mixtures inside it
    layers = lora_layers(make_peft_model(fresh(), basis, cfg))
    assert len(layers) == 4 * 7
    projector = basis @ basis.T
    for leaf, module in layers:
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        factor = b if leaf in WRITERS else a.T  # [d_model, r]
        zero = a if leaf in WRITERS else b
        assert not zero.any()
        torch.testing.assert_close(projector @ factor, factor, atol=1e-6, rtol=0)
        torch.testing.assert_close(factor.norm(dim=0), torch.full((5,), cfg.init_scale), atol=1e-6, rtol=0)
        assert torch.linalg.matrix_rank(factor) == 3 and not torch.allclose(factor[:, 3], factor[:, 4])


def one_step(model, ids):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(ids, labels=ids).loss.backward()
    optimizer.step()


@pytest.mark.parametrize("init", ["sails", "lora"])
def test_first_update_stays_in_the_subspace(fresh, batch, init):
    basis = random_subspace(32, 4, seed=2)
    model = make_peft_model(fresh(), basis, LoraInitConfig(init=init, rank=4))
    one_step(model, batch)
    outside = torch.eye(32) - basis @ basis.T
    leaks = []
    for leaf, module in lora_layers(model):
        delta = delta_w(module).detach()
        assert delta.abs().max() > 1e-6  # the step did move ΔW
        # writers: ΔW writes only into span(U); readers: ΔW only reads the input's span(U) component
        leak = outside @ delta if leaf in WRITERS else delta @ outside
        leaks.append(float(leak.abs().max() / delta.abs().max()))
    if init == "sails":
        assert max(leaks) < 1e-5
    else:  # plain LoRA has no such structure: the check has teeth
        assert min(leaks) > 0.1


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_subspace_factor_keeps_every_update_in_the_subspace(fresh, batch, freeze):
    basis = random_subspace(32, 4, seed=3)
    model = make_peft_model(fresh(), basis, LoraInitConfig(rank=4, freeze_subspace=freeze))
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(4):  # from the second step on, an unfrozen subspace factor moves out of span(U)
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    outside = torch.eye(32) - basis @ basis.T
    leaks = []
    for leaf, module in lora_layers(model):
        delta = delta_w(module).detach()
        assert delta.abs().max() > 1e-6
        leak = outside @ delta if leaf in WRITERS else delta @ outside
        leaks.append(float(leak.abs().max() / delta.abs().max()))
    moved = {n for n, p in model.named_parameters() if "lora_" in n and not torch.equal(p, initial[n])}
    frozen = {n for n, p in model.named_parameters() if "lora_" in n and not p.requires_grad}
    if freeze:
        assert max(leaks) < 1e-5
        # exactly one factor per adapted module is frozen, and it never moved
        assert len(frozen) == len(lora_layers(model)) and not moved & frozen
        share = trainable_share(model)["trainable"]
        assert share == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) - sum(
            p.numel() for n, p in model.named_parameters() if n in frozen)
    else:
        assert max(leaks) > 1e-3 and not frozen


def test_layers_and_shares(fresh):
    model = make_peft_model(fresh(), random_subspace(32, 2), LoraInitConfig(layers=[1, 3]))
    names = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert names and all(".layers.1." in n or ".layers.3." in n for n in names)
    share = trainable_share(model)
    # rank 2 on q(32->32) k,v(32->16) o(32->32) gate,up(32->64) down(64->32), two layers
    per_layer = 2 * ((32 + 32) + 2 * (32 + 16) + (32 + 32) + 2 * (32 + 64) + (64 + 32))
    assert share["trainable"] == 2 * per_layer
    assert share["total"] == sum(p.numel() for p in fresh().parameters())


def test_full_finetune_baseline_unfreezes_the_requested_weights(fresh):
    model = prepare_full_finetune(fresh(), ["q_proj", "down_proj"], layers=[0])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"}
    everything = prepare_full_finetune(fresh())
    assert trainable_share(everything)["share"] == 1.0


def test_gpt2_conv1d_modules_are_supported(fresh, tokenizer):
    basis = random_subspace(32, 2)
    model = make_peft_model(fresh("gpt2"), basis, LoraInitConfig(target_modules=["c_attn", "c_fc", "c_proj"]))
    ids = torch.tensor([tokenizer("hello world")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, fresh("gpt2")(ids).logits)


def test_bad_inputs_are_refused_with_the_field_named(fresh):
    with pytest.raises(SaelignError, match=r"target_modules: qkv_proj not found.*q_proj"):
        make_peft_model(fresh(), random_subspace(32, 2), LoraInitConfig(target_modules=["q_proj", "qkv_proj"]))
    with pytest.raises(SaelignError, match=r"d_model=32"):
        make_peft_model(fresh(), random_subspace(16, 2), LoraInitConfig())
    with pytest.raises(SaelignError, match="rank"):
        make_peft_model(fresh(), None, LoraInitConfig(init="lora"))
    with pytest.raises(SaelignError, match="layers"):
        make_peft_model(fresh(), random_subspace(32, 2), LoraInitConfig(layers=[7]))
    with pytest.raises(SaelignError, match="writer_modules"):
        make_peft_model(fresh(), random_subspace(32, 2), LoraInitConfig(target_modules=["down_proj"], writer_modules=[]))


@pytest.mark.slow
def test_sails_init_on_the_default_model_keeps_its_outputs():
    from saelign.models import ModelConfig, load_model

    model, tokenizer = load_model(ModelConfig(device="cpu"))
    ids = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        expected = model(ids).logits
    peft_model = make_peft_model(model, random_subspace(576, 8), LoraInitConfig())
    with torch.no_grad():
        assert torch.equal(peft_model(ids).logits, expected)
    share = trainable_share(peft_model)
    # rank 8 on q,k,v,o,gate,up,down of 30 blocks (d 576, kv 192, mlp 1536)
    assert share["trainable"] == 30 * 8 * ((576 * 2) * 2 + (576 + 192) * 2 + (576 + 1536) * 3)
