import pytest
import torch

from saelign.align.slots import SlotMap
from saelign.errors import SaelignError
from saelign.sae.model import SAE, SAEConfig
from saelign.sails.bridge import slots_to_subspace, subspace_provenance


@pytest.fixture()
def sae_and_map():
    sae = SAE(SAEConfig(d_in=12, d_sae=20, activation="relu", hookpoint="model.layers.2"))
    with torch.no_grad():
        sae.W_dec[17] = 3 * sae.W_dec[16] - 2 * sae.W_dec[15]  # a dependent row adds no rank
    return sae, SlotMap(["harmful", "refusal", "echo"], [15, 16, 17], "model.layers.2", 20)


def test_subspace_is_orthonormal_and_spans_the_slot_rows(sae_and_map):
    sae, slot_map = sae_and_map
    u = slots_to_subspace(sae, slot_map)
    assert u.shape == (12, 2)
    torch.testing.assert_close(u.T @ u, torch.eye(2), atol=1e-5, rtol=0)
    rows = sae.W_dec.detach()[[15, 16, 17]]
    torch.testing.assert_close(rows @ u @ u.T, rows, atol=1e-5, rtol=1e-5)  # every row lies in span(U)
    one = slots_to_subspace(sae, slot_map, ["harmful"])
    torch.testing.assert_close((one[:, 0] @ sae.W_dec[15]).abs(), sae.W_dec[15].norm())
    info = subspace_provenance(slot_map, ["harmful"], one)
    assert info["slots"] == [15] and info["concepts"] == ["harmful"] and info["rank"] == 1 and len(info["basis_sha256"]) == 64


def test_bad_requests_are_refused(sae_and_map):
    sae, slot_map = sae_and_map
    with pytest.raises(SaelignError, match="unknown concept 'nope'"):
        slots_to_subspace(sae, slot_map, ["nope"])
    with torch.no_grad():
        sae.W_dec[15] = 0
    with pytest.raises(SaelignError, match="all-zero decoder row"):
        slots_to_subspace(sae, slot_map, ["harmful"])
    with pytest.raises(SaelignError, match="d_sae=20, but this SAE has d_sae=8"):
        slots_to_subspace(SAE(SAEConfig(d_in=12, d_sae=8, activation="relu")), slot_map)
