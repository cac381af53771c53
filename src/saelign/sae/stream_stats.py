"""Statistics of the SAE training stream, taken over every rank's rows under torchrun: the input scale and
mean from the first batches, each step's row counts, and the FVU denominator of a global batch.

In one process they are the plain batch statistics; with N ranks each holds a share of every global batch and
the statistics are reduced over the ranks (sums in float64: the variance is a difference of sums)."""

import itertools
import math
from collections.abc import Callable, Iterator

import torch

from saelign import distributed
from saelign.errors import require

NORM_ESTIMATE_TOKENS = 4096  # rows for the input scale and the b_dec init (the mean is within ~1 % by then)


def input_scale(
    stream: Iterator[torch.Tensor],
    outlier_ratio: float,
) -> tuple[Iterator[torch.Tensor], float, torch.Tensor, float]:
    """(the stream with the batches read put back, the scale that makes the mean squared norm d_in, the
    scaled mean, the norm above which tokens are outliers: inf if none are) from the first batches, outliers
    left out of the scale and mean."""
    head: list[torch.Tensor] = []
    world = distributed.world_size()
    need = -(-NORM_ESTIMATE_TOKENS // world)  # per rank: the same number of batches as one process reads
    while sum(x.shape[0] for x in head) < need and (x := next(stream, None)) is not None:
        head.append(x)
    require(
        head,
        f"the activation stream is empty{f' on rank {distributed.rank()}' if world > 1 else ''}; "
        "capture activations first",
    )
    rows = torch.cat(head)
    norms = rows.norm(dim=1)
    median = distributed.all_gather_rows(norms, "the input-scale estimate").median()
    max_norm = outlier_ratio * float(median) if outlier_ratio else math.inf
    rows = rows[norms <= max_norm]
    if world == 1:
        scale = math.sqrt(rows.shape[1] / float(rows.pow(2).sum(1).mean().clamp_min(1e-12)))
        mean = rows.mean(0) * scale
    else:  # count, sum and squared norm of the kept rows over the ranks
        stats = distributed.all_reduce_(_sums(rows), "sum", "the input-scale estimate")
        scale = math.sqrt(rows.shape[1] / max(float(stats[-1] / stats[0]), 1e-12))
        mean = (stats[1:-1] / stats[0] * scale).to(rows.dtype)
    return itertools.chain(head, stream), scale, mean, max_norm


def _sums(x: torch.Tensor) -> torch.Tensor:
    """[rows, sum of the rows..., sum of squares] in float64."""
    xd = x.double()
    return torch.cat([xd.new_tensor([x.shape[0]]), xd.sum(0), xd.pow(2).sum().reshape(1)])


def step_counts(consumed: int, kept: int, alive: bool) -> tuple[int, int, bool, bool]:
    """Over the ranks: rows consumed and kept (outliers dropped) this step, whether every rank had a batch,
    and whether every rank kept some rows (else all skip the step: ranks must run the same collectives)."""
    world = distributed.world_size()
    if world == 1:
        return consumed, kept, alive, kept > 0
    counts = torch.tensor([consumed, kept, alive, kept > 0], dtype=torch.float64)
    counts = distributed.all_reduce_(counts, "sum", "the batch-size all-reduce").tolist()
    return int(counts[0]), int(counts[1]), counts[2] == world, counts[3] == world


def variance_of() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The FVU denominator under torchrun: the global batch's variance over the number of ranks, so that the
    mean of the ranks' gradients is the global batch's; None in one process (the batch's own variance)."""
    world = distributed.world_size()
    return None if world == 1 else lambda x: global_variance(x) / world


def global_variance(x: torch.Tensor) -> torch.Tensor:
    """`total_variance` of the global batch whose share on this rank is `x`."""
    stats = distributed.all_reduce_(_sums(x), "sum", "the batch-variance all-reduce")
    variance = float(stats[-1] - stats[1:-1].pow(2).sum() / stats[0])
    return torch.tensor(max(variance, torch.finfo(x.dtype).tiny), device=x.device, dtype=x.dtype)
