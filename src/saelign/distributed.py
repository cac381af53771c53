"""Data parallelism over `torch.distributed`, for every trainer and capture: one process per device, launched
by `torchrun` (gloo on CPU, NCCL on CUDA). Without torchrun's environment everything here is a no-op over one
process, so the same code runs with 1 and N processes.

Ranks must take part in the same collectives in the same order; a rank that dies breaks the next collective
at once (torchrun also stops the others), and one that hangs makes the others fail after `timeout_s()`:
both surface as a SaelignError naming the operation, never as a silent hang. Rank 0 writes every file.

`solo()` runs a block as if alone (rank 0 of 1): used to train one SAE per rank (`distribute_modules`)."""

import contextlib
import datetime
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from saelign.errors import SaelignError

TIMEOUT_ENV = "SAELIGN_DIST_TIMEOUT_S"
_DEFAULT_TIMEOUT_S = 1800  # long enough for rank 0's periodic evaluation while the others wait
_BUCKET_ELEMENTS = 1 << 24  # gradients are reduced in flat buckets of at most this many elements
_solo_depth = 0


def launched() -> bool:
    """Whether torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def global_rank_from_env() -> int:
    """This process's rank as the launcher set it (known before `init`)."""
    return int(os.environ.get("RANK", "0"))


def timeout_s() -> int:
    value = os.environ.get(TIMEOUT_ENV, str(_DEFAULT_TIMEOUT_S))
    if not value.isdigit() or int(value) < 1:
        raise SaelignError(
            f"{TIMEOUT_ENV}={value!r}: give the collective timeout as a positive number of seconds"
        )
    return int(value)


def init() -> None:
    """Join the process group torchrun describes (idempotent; nothing to do in a single process). On CUDA each
    rank takes the GPU of its LOCAL_RANK, so `cuda` means that GPU for everything that follows."""
    if not launched() or dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise SaelignError(
                f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} GPU(s); "
                "launch at most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local)
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s()))
    except (RuntimeError, ValueError) as exc:
        raise SaelignError(
            f"cannot join the torchrun process group ({exc}); check MASTER_ADDR/MASTER_PORT "
            "and that every node runs the same torchrun command"
        ) from exc


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() and not _solo_depth else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() and not _solo_depth else 0


def is_main() -> bool:
    """Whether this process writes files and reports (rank 0, or the only process)."""
    return rank() == 0


def global_rank() -> int:
    """The rank in the whole job, also inside `solo()` (which of the per-rank jobs this one is)."""
    return dist.get_rank() if dist.is_initialized() else 0


def global_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


@contextlib.contextmanager
def solo() -> Iterator[None]:
    """Within the block this process acts alone: rank 0 of 1, no collectives, it writes its own files."""
    global _solo_depth
    _solo_depth += 1
    try:
        yield
    finally:
        _solo_depth -= 1


def _collective(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:  # DistBackendError and gloo's connection errors are RuntimeErrors
        raise SaelignError(
            f"rank {rank()} of {world_size()}: {what} failed ({str(exc).splitlines()[0]}); "
            "another rank has most likely stopped -- see its error above. Collectives time "
            f"out after {timeout_s()} s ({TIMEOUT_ENV}); rerun the same command to resume from "
            "the last checkpoint"
        ) from exc


def barrier(what: str) -> None:
    """Wait until every rank got here (e.g. rank 0 wrote the files the others read next)."""
    if world_size() > 1:
        # a tiny all-reduce rather than dist.barrier: it honours the timeout on every backend
        _collective(f"waiting for every rank ({what})", dist.all_reduce, torch.zeros(1, device=_device()))


def _device() -> torch.device:
    """Where the backend's collectives take tensors: the rank's GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def all_reduce_(tensor: torch.Tensor, op: str = "sum", what: str = "all-reduce") -> torch.Tensor:
    """Reduce `tensor` over the ranks in place ("sum", "mean", "max" or "min") and return it."""
    if world_size() == 1:
        return tensor
    home = tensor.device
    work = tensor if home == _device() else tensor.to(_device())
    _collective(what, dist.all_reduce, work, _OPS["sum" if op == "mean" else op])
    if op == "mean":
        work.div_(world_size())
    if work is not tensor:
        tensor.copy_(work.to(home))
    return tensor


def all_reduce_gradients(params: Iterable[torch.Tensor], op: str = "mean") -> None:
    """Sum or average the gradients of `params` over the ranks, in flat buckets (one collective per bucket,
    not per tensor). Parameters without a gradient take part with zeros, so every rank reduces the same
    buckets."""
    if world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if p.grad.is_sparse:
            raise SaelignError("sparse gradients cannot be reduced over ranks; use dense parameters")
    buckets: dict[tuple[torch.dtype, torch.device], list[list[torch.Tensor]]] = {}
    for p in params:
        chain = buckets.setdefault((p.grad.dtype, p.grad.device), [[]])
        if chain[-1] and sum(g.numel() for g in chain[-1]) + p.numel() > _BUCKET_ELEMENTS:
            chain.append([])
        chain[-1].append(p.grad)
    for chain in buckets.values():
        for grads in chain:
            flat = torch.cat([g.reshape(-1) for g in grads])
            all_reduce_(flat, op, "the gradient all-reduce")
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()


def all_gather_rows(tensor: torch.Tensor, what: str = "all-gather") -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0, in rank order (their row counts may differ). Not
    differentiable: see `gather_rows_with_grad`."""
    if world_size() == 1:
        return tensor
    sizes = all_gather_sizes(tensor.shape[0], what)
    padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=_device())
    padded[: tensor.shape[0]] = tensor.to(_device())
    parts = [torch.empty_like(padded) for _ in sizes]
    _collective(what, dist.all_gather, parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)]).to(tensor.device)


def all_gather_sizes(n: int, what: str = "all-gather") -> list[int]:
    counts = torch.zeros(world_size(), dtype=torch.long, device=_device())
    counts[rank()] = n
    return [int(c) for c in all_reduce_(counts, "sum", what).tolist()]


class _GatherRows(torch.autograd.Function):
    """All ranks' rows, differentiable: a loss computed from all of them on every rank sends each rank the
    sum of every copy's gradient for its own rows (gloo has no reduce-scatter: one all-reduce does it)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes = all_gather_sizes(tensor.shape[0], "the batch-statistics all-gather")
        return all_gather_rows(tensor, "the batch-statistics all-gather")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = all_reduce_(grad.contiguous().clone(), "sum", "the batch-statistics gradient all-reduce")
        start = sum(ctx.sizes[: rank()])
        return grad[start : start + ctx.sizes[rank()]]


def gather_rows_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """`all_gather_rows` through which gradients flow back to each rank's rows (for losses over batch
    statistics, e.g. a covariance, that do not split into per-rank means)."""
    return tensor if world_size() == 1 else _GatherRows.apply(tensor)


def broadcast_object(value: Any, what: str = "broadcast") -> Any:
    """Rank 0's `value` on every rank (a JSON-like result, e.g. of an evaluation only rank 0 runs)."""
    if world_size() == 1:
        return value
    box = [value]
    _collective(what, dist.broadcast_object_list, box, 0, device=_device())
    return box[0]


def split(items: list[Any] | torch.Tensor) -> Any:
    """This rank's share of a global batch: every world_size-th item from its rank (all of it alone)."""
    return items[rank() :: world_size()] if world_size() > 1 else items


def require_divisible(value: int, name: str) -> None:
    if value % world_size():
        raise SaelignError(
            f"{name}={value} is not divisible by the {world_size()} processes; choose a "
            f"multiple of {world_size()} (it is the global batch, split evenly over the "
            "ranks)"
        )
