"""The safety subspace: an orthonormal basis U [d_model, r] of the directions SAILS adapts in.

SAILS stacks the unit decoder rows of the selected latents and keeps the principal components that explain a
share tau of their energy. The PCA is *uncentred* (an SVD of the stacked rows): the direction the selected
features share is the safety signal itself, and centring would subtract exactly that. Uncentred PCA is also
blind to the sign of each row, so latents that fire on harmless prompts contribute their direction alike.
Baselines build U of the same rank from random directions or from raw activation differences."""

import hashlib

import torch

from saelign.errors import SaelignError, require
from saelign.progress import logger

_RELATIVE_RANK_TOL = 1e-6


def _orient(basis: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """QR-orthonormalise and fix each column's sign (SVD leaves it arbitrary) so the basis, and its hash, are
    reproducible: columns point along the summed reference vectors, or their largest entry is positive."""
    q, _ = torch.linalg.qr(basis)
    along = reference.sum(0) @ q
    fallback = q.gather(0, q.abs().argmax(0, keepdim=True)).squeeze(0)
    sign = torch.where(along.abs() > 1e-6, along.sign(), fallback.sign())
    return (q * sign).contiguous()


def _check_rows(rows: torch.Tensor, what: str) -> torch.Tensor:
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise SaelignError(f"{what} must be a non-empty [n, d_model] matrix, got shape {tuple(rows.shape)}")
    rows = rows.detach().float().cpu()
    require(torch.isfinite(rows).all(), f"{what} contains NaN or inf values; recompute them")
    return rows


def build_subspace(directions: torch.Tensor, tau: float = 0.8, max_rank: int | None = None) -> torch.Tensor:
    """Orthonormal U [d, r]: top uncentred principal components of the unit directions explaining >= tau."""
    require(0 < tau <= 1, f"tau={tau} must be in (0, 1]: the share of variance the subspace keeps")
    rows = _check_rows(directions, "subspace directions")
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)  # each latent counts once, whatever its norm
    _, singular, vh = torch.linalg.svd(rows, full_matrices=False)
    numerical_rank = int((singular > singular[0] * _RELATIVE_RANK_TOL).sum())
    explained = torch.cumsum(singular**2, 0) / (singular**2).sum()
    rank = int((explained < tau - 1e-6).sum()) + 1
    rank = min(rank, numerical_rank, max_rank or numerical_rank)
    require(rank >= 1, f"max_rank={max_rank} must be at least 1")
    logger.info(f"safety subspace: rank {rank} of {len(rows)} directions, explaining {float(explained[rank - 1]):.1%}")
    return _orient(vh[:rank].T, rows)


def explained_share(directions: torch.Tensor, basis: torch.Tensor) -> float:
    """Share of the unit directions' energy that lies in span(basis) (1.0 = fully inside)."""
    rows = _check_rows(directions, "directions")
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((rows @ basis.float().cpu()).pow(2).sum() / rows.pow(2).sum())


def random_subspace(d: int, r: int, seed: int = 0) -> torch.Tensor:
    """Orthonormal U [d, r] spanning a uniformly random r-dimensional subspace (the random-subspace baseline)."""
    require(1 <= r <= d, f"random subspace rank r={r} must be in 1..d={d}")
    gaussian = torch.randn(d, r, generator=torch.Generator().manual_seed(seed))
    return _orient(gaussian, gaussian.T)


def activation_diff_subspace(harmful_resid: torch.Tensor, harmless_resid: torch.Tensor, r: int) -> torch.Tensor:
    """Orthonormal U [d, r] from raw residual activations, without an SAE ("direct identification" baseline).
    The sets are unpaired, so each example is differenced against the other set's mean (harmful - mean harmless,
    mean harmful - harmless); the uncentred PCA of these differences puts the mean-difference ("refusal")
    direction first and the directions along which the two sets vary apart after it."""
    harmful = _check_rows(harmful_resid, "harmful activations")
    harmless = _check_rows(harmless_resid, "harmless activations")
    if harmful.shape[1] != harmless.shape[1]:
        raise SaelignError(f"harmful and harmless activations differ in width ({harmful.shape[1]} vs {harmless.shape[1]})")
    diffs = torch.cat([harmful - harmless.mean(0), harmful.mean(0) - harmless])
    _, singular, vh = torch.linalg.svd(diffs, full_matrices=False)
    numerical_rank = int((singular > singular[0] * _RELATIVE_RANK_TOL).sum())
    if not 1 <= r <= numerical_rank:
        raise SaelignError(f"activation-difference subspace rank r={r} must be in 1..{numerical_rank} "
                           f"(the rank of {len(diffs)} differences); give more prompts or a smaller rank")
    return _orient(vh[:r].T, (harmful.mean(0) - harmless.mean(0)).unsqueeze(0))


def basis_hash(basis: torch.Tensor) -> str:
    """sha256 of the basis as contiguous float32 bytes: names the exact subspace in provenance files."""
    return hashlib.sha256(basis.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
