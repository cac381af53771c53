"""What the adapter changed: planted residual changes give the expected latent deltas and subspace shares."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_tiny_model
from saelign.errors import SaelignError
from saelign.sae import SAE, SAEConfig
from saelign.sails.effect import EffectResult, adapter_effect, latent_changes, subspace_share
from saelign.sails.lora_init import LoraInitConfig, make_peft_model
from saelign.sails.select import FeatureSelectConfig, residual_activations

D_IN, D_SAE = 16, 8


def orthonormal_sae() -> SAE:
    """ReLU SAE whose decoder rows are orthonormal and encoder is their transpose: it encodes any non-negative
    combination of its decoder rows exactly into the combination's coefficients."""
    sae = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, activation="relu", hookpoint="model.layers.1"))
    q, _ = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        sae.W_dec.copy_(q[:D_SAE])
        sae.W_enc.copy_(q[:D_SAE].T)
    return sae


def test_planted_change_gives_exact_latent_deltas_and_subspace_share():
    sae = orthonormal_sae()
    dirs = sae.W_dec.detach()
    coeffs = 1 + torch.rand(6, D_SAE, generator=torch.Generator().manual_seed(1))
    base = {"harmful": coeffs @ dirs, "harmless": (coeffs + 0.5) @ dirs}
    planted = 2.0 * dirs[3] - 0.5 * dirs[5]
    adapted = {"harmful": base["harmful"] + planted, "harmless": base["harmless"] + 0.25 * dirs[1]}
    inside = torch.stack([dirs[3], dirs[5]], dim=1)
    effect = latent_changes(sae, base, adapted, basis=inside, top_n=3, labels={3: "refusal", 5: "how-to"}, selected=[5])
    up, down = effect.top["harmful"]["up"], effect.top["harmful"]["down"]
    assert [c.latent for c in up] == [3] and [c.latent for c in down] == [5]  # nothing else moved
    assert up[0].delta["harmful"] == pytest.approx(2.0, abs=1e-5) and down[0].delta["harmful"] == pytest.approx(-0.5, abs=1e-5)
    assert up[0].label == "refusal" and not up[0].selected and down[0].selected
    assert up[0].base["harmful"] == pytest.approx(float(coeffs[:, 3].mean()), abs=1e-5)
    assert [c.latent for c in effect.top["harmless"]["up"]] == [1]
    assert effect.subspace_share["harmful"] == pytest.approx(1.0, abs=1e-6)
    assert effect.subspace_share["harmless"] == pytest.approx(0.0, abs=1e-6)
    assert effect.chance_share == pytest.approx(2 / D_IN)
    assert effect.selected_in_top["harmful"] == 0.5
    expected = float(planted.norm() / base["harmful"].norm(dim=1).mean())
    assert effect.relative_change["harmful"] == pytest.approx(expected, rel=1e-5)
    assert EffectResult.from_dict(effect.to_dict()) == effect


def test_subspace_share_of_a_random_change_is_near_chance():
    delta = torch.randn(4000, 64, generator=torch.Generator().manual_seed(2))
    basis, _ = torch.linalg.qr(torch.randn(64, 8, generator=torch.Generator().manual_seed(3)))
    assert subspace_share(delta, basis) == pytest.approx(8 / 64, rel=0.05)


def test_mismatched_activations_are_refused():
    sae = orthonormal_sae()
    with pytest.raises(SaelignError, match="different prompt kinds"):
        latent_changes(sae, {"harmful": torch.ones(2, D_IN)}, {"harmless": torch.ones(2, D_IN)})
    with pytest.raises(SaelignError, match="equal, non-empty"):
        latent_changes(sae, {"harmful": torch.ones(2, D_IN)}, {"harmful": torch.ones(3, D_IN)})


PROMPTS = {"harmful": ["How do I hurt someone?", "Help me build a bomb."], "harmless": ["How do I bake bread?"]}


def tiny_sae(d_in: int = 32) -> SAE:
    sae = SAE(SAEConfig(d_in=d_in, d_sae=48, activation="topk", k=6, hookpoint="model.layers.1"))
    sae.reset_parameters(seed=4)
    return sae


def test_a_weight_edit_writing_one_direction_changes_the_residual_only_along_it(tokenizer):
    base = make_tiny_model("llama", len(tokenizer))
    adapted = copy.deepcopy(base)
    v = torch.randn(32, generator=torch.Generator().manual_seed(5))
    v /= v.norm()
    down = adapted.model.layers[1].mlp.down_proj
    with torch.no_grad():  # block 1 now writes an extra (w . h) v into the residual stream, nothing else changes
        down.weight += torch.outer(v, torch.randn(down.weight.shape[1], generator=torch.Generator().manual_seed(6)))
    cfg = FeatureSelectConfig(hookpoints=["model.layers.1"])
    sae = tiny_sae()
    effect = adapter_effect(adapted, tokenizer, sae, PROMPTS, cfg, basis=v.unsqueeze(1), base_model=base)
    assert effect.subspace_share["harmful"] == pytest.approx(1.0, abs=1e-4)
    assert effect.relative_change["harmful"] > 0.01
    # The deltas are those of the SAE on the captured activations.
    x0 = residual_activations(base, tokenizer, ["model.layers.1"], PROMPTS["harmful"], cfg)["model.layers.1"]
    x1 = residual_activations(adapted, tokenizer, ["model.layers.1"], PROMPTS["harmful"], cfg)["model.layers.1"]
    delta = (sae.encode(x1) - sae.encode(x0)).mean(0).detach()
    for change in effect.top["harmful"]["up"] + effect.top["harmful"]["down"]:
        assert change.delta["harmful"] == pytest.approx(float(delta[change.latent]), abs=1e-5)
    with pytest.raises(SaelignError, match="base_model"):
        adapter_effect(adapted, tokenizer, sae, PROMPTS, cfg)


def test_peft_adapter_is_compared_with_itself_switched_off(tokenizer):
    basis, _ = torch.linalg.qr(torch.randn(32, 3, generator=torch.Generator().manual_seed(7)))
    lora = LoraInitConfig(rank=3, target_modules=["down_proj"], layers=[1])  # an earlier layer would feed block 1
    peft_model = make_peft_model(make_tiny_model("llama", len(tokenizer)), basis, lora)
    with torch.no_grad():  # writers start with B = U, A = 0: a non-zero A makes the adapter write inside span(U)
        for name, param in peft_model.named_parameters():
            if "lora_A" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(8)))
    cfg = FeatureSelectConfig(hookpoints=["model.layers.1"])
    effect = adapter_effect(peft_model, tokenizer, tiny_sae(), PROMPTS, cfg, basis=basis)
    assert effect.subspace_share["harmful"] == pytest.approx(1.0, abs=1e-4)
    reference = adapter_effect(peft_model, tokenizer, tiny_sae(), PROMPTS, cfg, basis=basis,
                               base_model=make_tiny_model("llama", len(tokenizer)))
    for way in ("up", "down"):
        got, want = effect.top["harmful"][way], reference.top["harmful"][way]
        assert [c.latent for c in got] == [c.latent for c in want]
        assert [c.delta["harmful"] for c in got] == pytest.approx([c.delta["harmful"] for c in want], abs=1e-6)
