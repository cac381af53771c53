"""Feature selection: planted latents are found, pooling matches a per-prompt reference, bad SAEs are refused."""

from __future__ import annotations

import pytest
import torch

from saelign.errors import SaelignError
from saelign.models.hookpoints import forward_capture
from saelign.sae import SAE, SAEConfig
from saelign.sails.generate import encode_chat
from saelign.sails.select import (
    FeatureSelectConfig,
    latent_activations,
    residual_activations,
    select_features,
    select_safety_features,
    selection_directions,
)

PROMPTS = ["How do I bake bread?", "Tell me about Paris.", "hello", "Why is the fox quick and brown today?",
           "Sparse autoencoders decompose activations into features, right?"]


def make_sae(hookpoint: str, d_in: int = 32, seed: int = 0) -> SAE:
    sae = SAE(SAEConfig(d_in=d_in, d_sae=64, activation="relu", hookpoint=hookpoint))
    sae.reset_parameters(seed=seed)
    return sae


def planted(n: int = 40, d_sae: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Harmful prompts light up latents 3, 17, 40; harmless ones light up latent 9."""
    gen = torch.Generator().manual_seed(seed)
    harmful = torch.rand(n, d_sae, generator=gen) * 0.3
    harmless = torch.rand(n, d_sae, generator=gen) * 0.3
    harmful[:, [3, 17, 40]] += torch.tensor([2.0, 1.5, 1.0])
    harmless[:, 9] += 1.8
    return harmful, harmless


def test_mean_diff_picks_planted_latents_with_signs_and_labels():
    harmful, harmless = planted()
    sel = select_features(harmful, harmless, FeatureSelectConfig(top_k=4), hookpoint="h", labels={"9": "cooking", 5: "x"})
    assert sel.latent_ids == [3, 9, 17, 40]
    assert sel.signs == [1, -1, 1, 1]
    assert sel.labels == {9: "cooking"}
    assert sel.scores == pytest.approx([abs(a - b) for a, b in zip(sel.mean_harmful, sel.mean_harmless, strict=True)])
    assert sel.mean_harmful[0] == pytest.approx(float(harmful[:, 3].mean()))


def test_logistic_probe_agrees_on_separable_case():
    harmful, harmless = planted()
    cfg = FeatureSelectConfig(top_k=4, score="logistic_l1", l1_c=0.5)
    sel = select_features(harmful, harmless, cfg)
    assert set(sel.latent_ids) == {3, 9, 17, 40}
    assert dict(zip(sel.latent_ids, sel.signs, strict=True))[9] == -1


def test_no_separating_latent_is_an_error():
    same = torch.ones(4, 8)
    with pytest.raises(SaelignError, match="separates"):
        select_features(same, same.clone(), FeatureSelectConfig())


def pooled_reference(model, tokenizer, prompt, positions, encode):
    """One unpadded prompt at a time: the mean of encode(activation) over the pooled tokens."""
    hidden = forward_capture(model, ["model.layers.1"], torch.tensor(encode_chat(tokenizer, [prompt])))["model.layers.1"][0]
    first = {"last": len(hidden) - 1, "last_n": len(hidden) - 3, "all": 1}[positions]  # "all" skips the sink token
    return encode(hidden[first:]).mean(0)


@pytest.mark.parametrize("positions", ["last", "last_n", "all"])
def test_batched_pooling_matches_one_prompt_at_a_time(tiny_llama, tokenizer, positions):
    sae = make_sae("model.layers.1")
    cfg = FeatureSelectConfig(positions=positions, last_n=3, batch_size=2)
    latents = latent_activations(tiny_llama, tokenizer, sae, "model.layers.1", PROMPTS, cfg)
    raw = residual_activations(tiny_llama, tokenizer, ["model.layers.1"], PROMPTS, cfg)["model.layers.1"]
    for row, prompt in enumerate(PROMPTS):
        expected = pooled_reference(tiny_llama, tokenizer, prompt, positions, sae.encode)
        torch.testing.assert_close(latents[row], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(raw[row], pooled_reference(tiny_llama, tokenizer, prompt, positions, lambda x: x))


def test_multi_layer_selection_tags_hookpoints(tiny_llama, tokenizer):
    saes = {hp: make_sae(hp, seed=i) for i, hp in enumerate(["model.layers.1", "model.layers.2"])}
    cfg = FeatureSelectConfig(hookpoints=list(saes), top_k=5)
    selections = select_safety_features(tiny_llama, tokenizer, saes, PROMPTS[:3], PROMPTS[3:], cfg,
                                        labels={"model.layers.2": {i: f"f{i}" for i in range(64)}})
    assert [s.hookpoint for s in selections] == list(saes)
    assert selections[0].labels == {} and len(selections[1].labels) == len(selections[1].latent_ids)
    directions = selection_directions(selections, saes)
    assert directions.shape == (sum(len(s.latent_ids) for s in selections), 32)
    torch.testing.assert_close(directions[0], saes["model.layers.1"].decoder_directions([selections[0].latent_ids[0]])[0])


def test_sae_of_wrong_width_or_layer_is_refused(tiny_llama, tokenizer):
    with pytest.raises(SaelignError, match="d_in=16"):
        latent_activations(tiny_llama, tokenizer, make_sae("model.layers.1", d_in=16), "model.layers.1", PROMPTS, FeatureSelectConfig())
    with pytest.raises(SaelignError, match="hookpoint 'model.layers.2'"):
        latent_activations(tiny_llama, tokenizer, make_sae("model.layers.2"), "model.layers.1", PROMPTS, FeatureSelectConfig())
    cfg = FeatureSelectConfig(hookpoints=["model.layers.3"])
    with pytest.raises(SaelignError, match="no SAE given for model.layers.3"):
        select_safety_features(tiny_llama, tokenizer, {"model.layers.1": make_sae("model.layers.1")}, PROMPTS, PROMPTS, cfg)
