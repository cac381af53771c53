"""Subspace construction: orthonormal, exact span at tau=1, rank monotone in tau, baselines and hashing."""

from __future__ import annotations

import pytest
import torch

from saelign.errors import SaelignError
from saelign.sails.subspace import (
    activation_diff_subspace,
    basis_hash,
    build_subspace,
    explained_share,
    random_subspace,
)


def assert_orthonormal(basis: torch.Tensor) -> None:
    torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-5, rtol=0)


def clustered_directions(seed: int = 0) -> torch.Tensor:
    """30 directions near 3 axes with decreasing weight (15, 10, 5 rows) plus small noise."""
    gen = torch.Generator().manual_seed(seed)
    axes = torch.linalg.qr(torch.randn(32, 3, generator=gen))[0].T
    rows = torch.cat([axes[0].repeat(15, 1), axes[1].repeat(10, 1), axes[2].repeat(5, 1)])
    return rows + 0.02 * torch.randn(rows.shape, generator=gen)


def test_tau_one_spans_the_input_directions_exactly():
    directions = torch.randn(5, 32, generator=torch.Generator().manual_seed(1)) * 3.0
    basis = build_subspace(directions, tau=1.0)
    assert basis.shape == (32, 5)
    assert_orthonormal(basis)
    projected = directions @ basis @ basis.T
    torch.testing.assert_close(projected, directions, atol=1e-4, rtol=1e-4)
    assert explained_share(directions, basis) == pytest.approx(1.0, abs=1e-5)


def test_rank_shrinks_with_tau_and_keeps_the_dominant_direction():
    directions = clustered_directions()
    ranks = [build_subspace(directions, tau=t).shape[1] for t in (0.3, 0.6, 0.9, 0.99)]
    assert ranks == sorted(ranks) and ranks[0] == 1 and ranks[2] == 3
    top = build_subspace(directions, tau=0.3)[:, 0]
    assert abs(float(top @ directions[0] / directions[0].norm())) > 0.99
    assert build_subspace(directions, tau=0.99, max_rank=2).shape[1] == 2
    assert explained_share(directions, build_subspace(directions, tau=0.8)) >= 0.8


def test_duplicate_directions_do_not_inflate_the_rank_and_sign_is_fixed():
    base = torch.randn(2, 32, generator=torch.Generator().manual_seed(2))
    basis = build_subspace(torch.cat([base.repeat(5, 1), -base[:1]]), tau=1.0)
    assert basis.shape[1] == 2
    assert float((base.sum(0) @ basis).min()) > 0  # oriented along the inputs, so the hash is reproducible


def test_random_subspace_is_orthonormal_and_seeded():
    a, b, c = random_subspace(32, 4, seed=0), random_subspace(32, 4, seed=0), random_subspace(32, 4, seed=1)
    assert_orthonormal(a)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(SaelignError, match="r=40"):
        random_subspace(32, 40)


def test_activation_diff_subspace_finds_the_planted_offset():
    gen = torch.Generator().manual_seed(3)
    harmless = torch.randn(50, 32, generator=gen)
    harmful = torch.randn(40, 32, generator=gen)
    harmful[:, 7] += 6.0
    basis = activation_diff_subspace(harmful, harmless, r=3)
    assert_orthonormal(basis)
    assert float(basis[7, 0]) > 0.95  # first component = mean difference, pointing harmful-ward
    with pytest.raises(SaelignError, match="rank r=200"):
        activation_diff_subspace(harmful, harmless, r=200)


def test_basis_hash_is_stable_and_sensitive():
    basis = random_subspace(32, 4)
    assert basis_hash(basis) == basis_hash(basis.clone()) and len(basis_hash(basis)) == 64
    nudged = basis.clone()
    nudged[0, 0] += 1e-6
    assert basis_hash(nudged) != basis_hash(basis)


@pytest.mark.parametrize("bad", [0.0, 1.5])
def test_bad_tau_is_refused(bad):
    with pytest.raises(SaelignError, match="tau"):
        build_subspace(torch.randn(3, 8), tau=bad)
