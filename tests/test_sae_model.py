"""The SAE module: activations, input normalisation, decoder norms and input checks, on small random SAEs."""

from __future__ import annotations

import pytest
import torch

from saelign.errors import SaelignError
from saelign.sae import SAE, SAEConfig


def make(activation: str = "topk", d_in: int = 8, d_sae: int = 32, k: int = 3, seed: int = 0, **kw) -> SAE:
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, activation=activation, k=k, **kw))
    sae.reset_parameters(seed=seed)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed))
    return sae


def test_topk_keeps_exactly_the_k_largest_positive_preacts():
    sae = make("topk", k=5)
    x = torch.randn(50, 8) * 3
    pre = sae.pre_acts(x)
    z = sae.encode(x)
    assert ((z != 0).sum(-1) <= 5).all()
    kth = pre.topk(5, dim=-1).values[:, -1:]
    expected = torch.where(pre >= kth, torch.relu(pre), torch.zeros(()))
    torch.testing.assert_close(z, expected)
    assert ((z != 0).sum(-1) == (pre.topk(5, dim=-1).values > 0).sum(-1)).all()


def test_batchtopk_training_keeps_k_per_token_on_average_and_inference_uses_threshold():
    sae = make("batchtopk", k=4)
    x = torch.randn(64, 8)
    pre = sae.pre_acts(x)
    z = sae.activate(pre, training=True)
    assert (z != 0).sum() == min(4 * 64, int((pre > 0).sum()))
    assert torch.equal(z != 0, (pre >= pre.flatten().topk(4 * 64).values[-1]) & (pre > 0))
    with torch.no_grad():
        sae.threshold.fill_(0.5)
    z = sae.encode(x)
    torch.testing.assert_close(z, pre * (pre > 0.5))


def test_relu_and_jumprelu_activations():
    x = torch.randn(20, 8)
    relu = make("relu")
    torch.testing.assert_close(relu.encode(x), torch.relu(relu.pre_acts(x)))
    jump = make("jumprelu")
    with torch.no_grad():
        jump.threshold.copy_(torch.linspace(0, 1, 32))
    pre = jump.pre_acts(x)
    torch.testing.assert_close(jump.encode(x), pre * (pre > torch.linspace(0, 1, 32)))
    assert not jump.threshold.requires_grad  # trained by the trainer in log space, stored plainly


def test_norm_scale_makes_the_sae_work_in_raw_units():
    sae = make("relu")
    x = torch.randn(10, 8)
    with torch.no_grad():
        sae.b_dec.normal_()
    z1, y1 = sae.encode(x), sae(x)
    with torch.no_grad():
        sae.norm_scale.fill_(0.25)
    # Scaling the input by 4 is undone by norm_scale 1/4: same latents, reconstruction 4x in raw units.
    torch.testing.assert_close(sae.encode(4 * x), z1)
    torch.testing.assert_close(sae(4 * x), 4 * y1)


def test_decoder_rows_unit_norm_and_tied_seeded_init():
    a, b = make(seed=3), make(seed=3)
    assert torch.equal(a.W_dec, b.W_dec) and not torch.equal(a.W_dec, make(seed=4).W_dec)
    torch.testing.assert_close(a.W_dec.norm(dim=1), torch.ones(32))
    torch.testing.assert_close(a.W_enc, a.W_dec.T)
    with torch.no_grad():
        a.W_dec.mul_(torch.rand(32, 1) * 5 + 0.1)
    a.normalize_decoder()
    torch.testing.assert_close(a.W_dec.norm(dim=1), torch.ones(32))
    torch.testing.assert_close(a.decoder_directions([0, 5]), a.W_dec[[0, 5]])


def test_always_on_latents_bypass_topk():
    sae = make("topk", k=2, always_on_latents=[0, 1])
    x = torch.randn(30, 8)
    pre = sae.pre_acts(x)
    z = sae.encode(x)
    torch.testing.assert_close(z[:, :2], torch.relu(pre[:, :2]))
    assert ((z[:, 2:] != 0).sum(-1) <= 2).all()


def test_bad_inputs_and_configs_raise():
    sae = make()
    with pytest.raises(SaelignError, match="d_in=8"):
        sae.encode(torch.randn(3, 9))
    with pytest.raises(SaelignError, match="k=0"):
        SAE(SAEConfig(d_in=8, d_sae=16, activation="topk", k=0))
    with pytest.raises(SaelignError, match="positive"):
        SAE(SAEConfig(d_in=0, d_sae=16))
    with pytest.raises(SaelignError, match="always_on_latents"):
        SAE(SAEConfig(d_in=8, d_sae=16, k=4, always_on_latents=[16]))
