"""Sparse SAE products: TopK/BatchTopK training touches only the selected (token, latent) pairs.

With k of d_sae latents active, the decoder product, its weight gradient and the encoder weight gradient are all
"sum of k rows" operations. Each is one `F.embedding_bag` call (a fused gather + weighted sum that PyTorch has
well optimised on CPU and GPU), so only the dense encoder product x @ W_enc remains. An `ActiveLatents`
holds the pairs twice: grouped by token (decode: one bag per token) and grouped by latent (weight gradients:
one bag per latent row of W_dec / column of W_enc)."""

from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F
from torch.autograd import Function

_MODE_SUM = 0  # embedding_bag mode id, as used by aten's backward ops


@dataclass(frozen=True)
class ActiveLatents:
    """Active (token, latent) pairs of a [n_rows, n_cols] latent matrix, pairs grouped by token."""

    rows: torch.Tensor  # [N] token of each pair, non-decreasing
    cols: torch.Tensor  # [N] latent of each pair
    offsets: torch.Tensor  # [n_rows] index of each token's first pair
    by_col: torch.Tensor  # [N] permutation that groups pairs by latent
    col_offsets: torch.Tensor  # [n_cols] index (in by_col order) of each latent's first pair
    n_rows: int
    n_cols: int

    @classmethod
    def from_rows(cls, rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_cols: int,
                  offsets: torch.Tensor | None = None) -> Self:
        """Pairs already sorted by row (topk rows, or a row-major nonzero scan)."""
        if offsets is None:
            offsets = torch.searchsorted(rows, torch.arange(n_rows, device=rows.device))
        # An unstable int32 sort is ~2x faster than int64 and >100x faster than a stable int32 sort on CPU;
        # order within a latent's group does not matter and the sort is still deterministic.
        sorted_cols, by_col = torch.sort(cols.int())
        col_offsets = torch.searchsorted(sorted_cols, torch.arange(n_cols, device=cols.device, dtype=torch.int32))
        return cls(rows, cols, offsets, by_col, col_offsets.long(), n_rows, n_cols)

    @classmethod
    def from_topk(cls, indices: torch.Tensor, n_cols: int) -> Self:
        """The k latents of each token, from `topk(...).indices` of shape [n_rows, k]."""
        n_rows, k = indices.shape
        rows = torch.arange(n_rows, device=indices.device).repeat_interleave(k)
        offsets = torch.arange(0, n_rows * k, k, device=indices.device)
        return cls.from_rows(rows, indices.reshape(-1), n_rows, n_cols, offsets)

    def col_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Per-latent sum of pair values [n_cols]."""
        return torch.zeros(self.n_cols, dtype=values.dtype, device=values.device).index_add_(0, self.cols, values)

    def rows_times(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """S^T @ dense for the sparse [n_rows, n_cols] matrix S holding `values`: [n_cols, dense.shape[1]]."""
        return F.embedding_bag(self.rows[self.by_col], dense, self.col_offsets, mode="sum",
                               per_sample_weights=values[self.by_col])


class _SelectedPreActs(Function):
    """Identity on the pre-activations gathered at a selection, with sparse gradients for the encoder.
    pre = (x - b_dec) @ W_enc + b_enc is computed densely without autograd; this function gives gradients
    only through the selected entries: dW_enc = x_c^T S, db_enc = column sums of S, db_dec = -W_enc db_enc."""

    @staticmethod
    def forward(ctx, values, x_c, b_dec, W_enc, b_enc, sel):  # type: ignore[override]
        ctx.save_for_backward(x_c, W_enc)
        ctx.sel = sel
        return values.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x_c, W_enc = ctx.saved_tensors
        sel: ActiveLatents = ctx.sel
        grad = grad.contiguous()
        d_b_enc = sel.col_sum(grad)
        d_W_enc = sel.rows_times(grad, x_c).t() if ctx.needs_input_grad[3] else None
        d_b_dec = -(W_enc @ d_b_enc) if ctx.needs_input_grad[2] else None
        return None, None, d_b_dec, d_W_enc, d_b_enc if ctx.needs_input_grad[4] else None, None


class _SparseDecode(Function):
    """sum_j values_j * W_dec[col_j] per token; gradients touch only the selected decoder rows."""

    @staticmethod
    def forward(ctx, values, W_dec, sel):  # type: ignore[override]
        ctx.save_for_backward(values, W_dec)
        ctx.sel = sel
        return F.embedding_bag(sel.cols, W_dec, sel.offsets, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        values, W_dec = ctx.saved_tensors
        sel: ActiveLatents = ctx.sel
        grad = grad.contiguous()
        d_values = d_W_dec = None
        if ctx.needs_input_grad[0]:
            # Per pair: <grad[row], W_dec[col]>, the sampled product that embedding_bag's own autograd uses.
            d_values = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad, W_dec, sel.cols, sel.offsets, sel.rows, _MODE_SUM)
        if ctx.needs_input_grad[1]:
            d_W_dec = sel.rows_times(values, grad)
        return d_values, d_W_dec, None


def selected_pre_acts(pre: torch.Tensor, x_c: torch.Tensor, b_dec: torch.Tensor, W_enc: torch.Tensor,
                      b_enc: torch.Tensor, sel: ActiveLatents,
                      values: torch.Tensor | None = None) -> torch.Tensor:
    """Pre-activations at `sel` [N] (from `values` if already gathered), differentiable w.r.t. the encoder.
    `pre` must be (x_c @ W_enc + b_enc) with x_c = x - b_dec, computed from the current parameters."""
    if values is None:
        values = pre[sel.rows, sel.cols]
    return _SelectedPreActs.apply(values.float(), x_c, b_dec, W_enc, b_enc, sel)


def sparse_decode(values: torch.Tensor, W_dec: torch.Tensor, sel: ActiveLatents) -> torch.Tensor:
    """Latents given as pair values at `sel`, times W_dec: [n_rows, d_in] (no decoder bias)."""
    return _SparseDecode.apply(values, W_dec, sel)


def decode_active(z: torch.Tensor, W_dec: torch.Tensor, max_density: float = 1 / 16) -> torch.Tensor:
    """z @ W_dec for latents `z` [n, d_sae] that came out of an SAE activation, reading only z's nonzero entries
    when at most `max_density` of them are nonzero (else the dense product). The gradient reaches z only at its
    nonzero entries: exact for an activation whose derivative is zero wherever its output is (top-k, ReLU,
    JumpReLU without its straight-through threshold), not for an arbitrary z."""
    rows, cols = z.detach().nonzero(as_tuple=True)  # row-major: grouped by token
    if rows.numel() > max_density * z.numel():
        return z @ W_dec
    sel = ActiveLatents.from_rows(rows, cols, z.shape[0], z.shape[1])
    return sparse_decode(z[rows, cols], W_dec, sel)


class _PreActsSparseGrad(Function):
    """pre = (x - b_dec) @ W_enc + b_enc, whose encoder-weight gradient x_c^T @ grad reads only the nonzero
    entries of `grad` when they are few (after a sparse activation most are zero): one embedding_bag instead of
    a dense [d_in, d_sae] product. Exact for any gradient; only the summation order differs."""

    @staticmethod
    def forward(ctx, x, b_dec, W_enc, b_enc, max_density):  # type: ignore[override]
        x_c = x - b_dec
        ctx.save_for_backward(x_c, W_enc)
        ctx.max_density = max_density
        return torch.addmm(b_enc, x_c, W_enc)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x_c, W_enc = ctx.saved_tensors
        d_b_enc = grad.sum(0)
        d_W_enc = None
        if ctx.needs_input_grad[2]:
            rows, cols = grad.nonzero(as_tuple=True)
            if rows.numel() > ctx.max_density * grad.numel():
                d_W_enc = (grad.t() @ x_c).t()  # W_enc's latent-major layout
            else:
                sel = ActiveLatents.from_rows(rows, cols, grad.shape[0], grad.shape[1])
                d_W_enc = sel.rows_times(grad[rows, cols], x_c).t()
        d_x = grad @ W_enc.t() if ctx.needs_input_grad[0] else None
        d_b_dec = -(W_enc @ d_b_enc) if ctx.needs_input_grad[1] else None
        return d_x, d_b_dec, d_W_enc, d_b_enc if ctx.needs_input_grad[3] else None, None


def pre_acts_sparse_grad(x: torch.Tensor, b_dec: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                         max_density: float = 1 / 16) -> torch.Tensor:
    """(x - b_dec) @ W_enc + b_enc with the encoder gradient read from the nonzero entries of its incoming
    gradient when at most `max_density` of them are nonzero."""
    return _PreActsSparseGrad.apply(x, b_dec, W_enc, b_enc, max_density)
