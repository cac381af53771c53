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
    register_contrast,
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
    cfg = FeatureSelectConfig(top_k=4, score="mean_diff")
    sel = select_features(harmful, harmless, cfg, hookpoint="h", labels={"9": "cooking", 5: "x"})
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
        select_features(same, same.clone(), FeatureSelectConfig(score="mean_diff"))


def confounded(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """Harmful requests are 80 % imperatives, harmless ones 80 % questions (the AdvBench pattern). Latent 0
    tracks the form (3.0 on imperatives), latent 1 the harm (1.0 on harmful requests); the rest is noise."""
    gen = torch.Generator().manual_seed(seed)
    kinds = {"harmful": ["imperative"] * (4 * n // 5) + ["question"] * (n // 5),
             "harmless": ["question"] * (4 * n // 5) + ["imperative"] * (n // 5)}
    acts = {}
    for kind, registers in kinds.items():
        x = torch.rand(n, 16, generator=gen) * 0.2
        x[:, 0] += 3.0 * torch.tensor([r == "imperative" for r in registers]).float()
        x[:, 1] += 1.0 if kind == "harmful" else 0.0
        acts[kind] = x
    return acts["harmful"], acts["harmless"], kinds["harmful"], kinds["harmless"]


def test_register_matched_ranks_the_harm_latent_above_the_form_latent():
    harmful, harmless, h_reg, l_reg = confounded()
    pooled = select_features(harmful, harmless, FeatureSelectConfig(top_k=2, score="mean_diff"),
                             registers=(h_reg, l_reg))
    assert pooled.latent_ids == [0, 1]  # the pooled difference favours the form: 3.0 * (0.8 - 0.2) > 1.0
    matched = select_features(harmful, harmless, FeatureSelectConfig(top_k=16), registers=(h_reg, l_reg))
    assert matched.score == "register_matched" and matched.latent_ids[0] == 1
    scores = dict(zip(matched.latent_ids, matched.scores, strict=True))
    assert scores[1] == pytest.approx(1.0, abs=0.05) and scores.get(0, 0.0) < 0.1
    # Whatever the scorer, the record says how much of each difference holds within one form.
    survival = dict(zip(pooled.latent_ids, pooled.survival, strict=True))
    assert abs(survival[0]) < 0.05 and survival[1] == pytest.approx(1.0, abs=0.1)
    per_register = dict(zip(pooled.latent_ids, pooled.register_survival, strict=True))
    assert set(per_register[1]) == {"imperative", "question"}
    assert all(abs(v) < 0.05 for v in per_register[0].values())
    assert pooled.registers == {"imperative": {"harmful": 160, "harmless": 40},
                                "question": {"harmful": 40, "harmless": 160}}


def test_register_weights_follow_the_smaller_side():
    harmful, harmless, h_reg, l_reg = confounded(n=10)
    # One harmless keyword prompt: its register counts, but with the weight 1 * n / (1 + n), not a full share.
    harmful = torch.cat([harmful, torch.full((3, 16), 9.0)])
    harmless = torch.cat([harmless, torch.zeros(1, 16)])
    contrast = register_contrast(harmful, harmless, [*h_reg, "keyword", "keyword", "keyword"], [*l_reg, "keyword"])
    assert contrast.weights["keyword"] == pytest.approx(3 / 4) and contrast.weights["question"] == pytest.approx(16 / 10)
    expected = sum(contrast.weights[r] * contrast.diffs[r] for r in contrast.diffs) / sum(contrast.weights.values())
    torch.testing.assert_close(contrast.matched(), expected)


def test_register_matched_needs_a_register_both_sides_use():
    harmful, harmless, _, _ = confounded(n=10)
    with pytest.raises(SaelignError, match="no registers given"):
        select_features(harmful, harmless, FeatureSelectConfig())
    with pytest.raises(SaelignError, match="--select-score mean_diff"):
        select_features(harmful, harmless, FeatureSelectConfig(), registers=(["imperative"] * 10, ["question"] * 10))
    with pytest.raises(SaelignError, match="one register per prompt"):
        select_features(harmful, harmless, FeatureSelectConfig(), registers=(["question"], ["question"] * 10))


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
    # Registers come from the prompts' form: only questions are on both sides here.
    assert selections[0].registers["question"] == {"harmful": 1, "harmless": 2}
    assert all(set(r) == {"question"} for r in selections[0].register_survival)
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
