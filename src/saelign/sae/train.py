"""Train one or several SAEs from one activation stream: every batch feeds every SAE (e.g. a k sweep).

Inputs are normalised by one scale estimated from the first batches (mean squared norm = d_in), stored in each
SAE's `norm_scale`, and b_dec starts at the normalised mean. Tokens with a massive norm (attention sinks beyond
the masked first position: very few tokens, far above the median norm, can carry much of the variance) are
left out of those two estimates, which they would otherwise skew. They are trained on by default: they are
real inputs the model's forward depends on, and an SAE that never saw one cannot reconstruct them, which
shows in its held-out FVU; `drop_outliers` leaves them out. Decoder rows stay unit norm. What differs between
activations (loss, extra parameters, dead-latent revival) is the activation's own (`saelign.sae.activations`).

With `out` set, rerunning with the same configuration resumes from the checkpoint, skipping the batches
already consumed (the stream must be deterministic, like the store's seeded shuffle): same SAEs at the end.

Under torchrun (`saelign.distributed`) each rank's `batches` are its share of every global batch: gradients,
the FVU denominator, the input-scale estimate, firing counts and metrics are reduced over the ranks, so N
processes give one process's result on the same global batches (up to float summation order). Two parts stay
per rank, as in sparsify: BatchTopK picks its k * B latents within each rank's rows, and AuxK normalises by
each rank's residual variance. Training stops at the first step where some rank's stream has ended."""

import dataclasses
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from saelign import checkpoint, distributed
from saelign.configs import config_to_dict, help_field
from saelign.device import resolve_device, resolve_dtype
from saelign.errors import SaelignError, require
from saelign.io import read_json, write_json_atomic
from saelign.progress import logger, progress
from saelign.runinfo import record_stage
from saelign.sae import stream_stats
from saelign.sae.activations import activation_class
from saelign.sae.activations.base import full_options
from saelign.sae.formats import CFG_FILE, save_sae
from saelign.sae.losses import TrainBatch, total_variance
from saelign.sae.model import SAE, SAEConfig

CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "train_log.json"


@dataclass
class SAETrainConfig:
    # Options that may change between a run and its resumption: they do not change the result.
    RESUME_FREE: ClassVar[frozenset[str]] = frozenset({"out", "device", "log_every_steps",
                                                       "checkpoint_every_tokens"})
    total_tokens: int = help_field(0, "training tokens (0 = one pass over the activation store)")
    batch_size: int = help_field(4096, "tokens per optimizer step")
    lr: float = help_field(0.0, "Adam learning rate; 0 = auto: 2e-4 / sqrt(d_sae / 16384) (EleutherAI "
                                "sparsify's rule), for sparse activations (topk, batchtopk) raised under "
                                "100M tokens by (1e8 / total_tokens)^0.47, at most 12x")
    lr_warmup_fraction: float = help_field(0.01, "linear learning-rate warmup over this fraction of training")
    lr_decay_fraction: float = help_field(0.5, "linear learning-rate decay to 0 over this final fraction of "
                                               "training")
    adam_beta1: float = help_field(0.9, "Adam beta1")
    adam_beta2: float = help_field(0.999, "Adam beta2")
    dead_window_tokens: int = help_field(0, "a latent that fired on none of this many recent tokens is dead; "
                                            "0 = auto, total_tokens / 20 clamped to [batch_size, 10M]")
    outlier_norm_ratio: float = help_field(10.0, "tokens whose norm exceeds this multiple of the median token norm "
                                                 "(massive-activation attention sinks) are outliers: left out of the "
                                                 "input-scale and b_dec estimates; 0 = none are")
    drop_outliers: bool = help_field(False, "also leave outlier tokens out of training (they are rare but carry much "
                                            "of the variance; at high learning rates they can kill latents)")
    seed: int = help_field(0, "seed of the weight initialisation (shared by all SAEs of a sweep)")
    log_every_steps: int = help_field(10, "steps between metric log entries")
    checkpoint_every_tokens: int = help_field(5_000_000, "tokens between checkpoints (needs out)")
    out: str = help_field("", "output folder (SAE files, checkpoint/, train_log.json, run.json); empty = keep in memory")
    device: str = help_field("auto", "cpu, cuda, cuda:N or auto")
    dtype: str = help_field("auto", "compute dtype of the dense products: auto (fp32 on CPU, bf16 on CUDA), float32, ...; "
                                    "weights and Adam state stay fp32")
    distribute_modules: bool = help_field(
        False, "with several stores (hookpoints) under torchrun: each rank trains the SAEs of its own "
               "hookpoints on their whole stores (sparsify's distribute_modules), instead of all ranks sharing "
               "each batch")
    activation_options: dict[str, Any] = help_field({}, "the activations' options by name (l1_coefficient, "
                                                        "auxk_alpha, ...: saelign.sae.activations); each SAE "
                                                        "reads its activation's, unset ones keep defaults",
                                                    cli=False)

    def __post_init__(self) -> None:
        for name in ("batch_size", "log_every_steps", "checkpoint_every_tokens"):
            require(getattr(self, name) >= 1, f"{name} must be positive, got {getattr(self, name)}")
        for name in ("lr_warmup_fraction", "lr_decay_fraction"):
            require(0 <= getattr(self, name) < 1, f"{name} must lie in [0, 1), got {getattr(self, name)}")
        for name in ("total_tokens", "lr", "dead_window_tokens", "outlier_norm_ratio"):
            require(getattr(self, name) >= 0, f"{name} must not be negative, got {getattr(self, name)}")
        self.activation_options = full_options(self.activation_options)

    def dead_window(self) -> int:
        return self.dead_window_tokens or min(max(self.total_tokens // 20, self.batch_size), 10_000_000)


def auto_lr(cfg: SAEConfig, total_tokens: int) -> float:
    """sparsify's width rule suits long runs; short (CPU-sized) runs of sparse activations (topk, batchtopk)
    need larger steps: a boost, capped for the shortest runs, that fades into the plain rule at 100M tokens.
    Dense activations, where every latent moves at every step, diverge at such rates: they keep the plain
    rule."""
    base = 2e-4 / math.sqrt(cfg.d_sae / 16384)
    if not activation_class(cfg.activation).sparse:
        return base
    return base * min(12.0, max(1.0, (1e8 / total_tokens) ** 0.47))


class _Trainee:
    """One SAE in training: its parameters, Adam state, dead-latent counters and metric window."""

    def __init__(self, name: str, cfg: SAEConfig, tcfg: SAETrainConfig, device: torch.device, dtype: torch.dtype):
        self.name, self.tcfg, self.dtype = name, tcfg, dtype
        self.sae = SAE(cfg, device)
        self.sae.reset_parameters(seed=tcfg.seed)
        self.act = activation_class(cfg.activation).from_options(tcfg.activation_options)
        base_lr = tcfg.lr or auto_lr(cfg, tcfg.total_tokens)
        groups: list[dict[str, Any]] = [{"params": [self.sae.W_enc, self.sae.b_enc, self.sae.W_dec, self.sae.b_dec],
                                         "peak_lr": base_lr}, *self.act.prepare(self.sae)]
        self.optimizer = torch.optim.Adam(groups, lr=base_lr, betas=(tcfg.adam_beta1, tcfg.adam_beta2),
                                          fused=device.type in ("cpu", "cuda"))
        self.since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=device)
        # Metric sums stay on the device between log steps: no host sync per step on a GPU.
        self.window: dict[str, torch.Tensor] = {}
        self.window_steps = 0

    def step(self, x: torch.Tensor, x_var: torch.Tensor, tokens_done: int, rows: int, total: int,
             pre_buffer: torch.Tensor | None) -> None:
        """One optimizer step on `x`, this rank's share of a global batch of `rows` rows."""
        tcfg, sae = self.tcfg, self.sae
        for group in self.optimizer.param_groups:
            group["lr"] = checkpoint.scheduled_lr(group["peak_lr"], tokens_done, tokens_done + rows,
                                                  total, tcfg.lr_warmup_fraction * total,
                                                  tcfg.lr_decay_fraction * total)
        result = self.act.loss(sae, TrainBatch(x, x_var, self.since_fired >= tcfg.dead_window(), pre_buffer,
                                               tokens_done + rows, total, self.dtype,
                                               stream_stats.variance_of()))
        self.optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        # Each rank's loss is its rows' share of the global one (means over equal shares, or the squared error
        # over the global variance / world): the mean of the ranks' gradients is the global batch's.
        distributed.all_reduce_gradients(p for group in self.optimizer.param_groups for p in group["params"])
        fired = result.fired
        if distributed.world_size() > 1:
            fired = distributed.all_reduce_(fired.to(torch.int32), "max", "the firing all-reduce").bool()
        with torch.no_grad():
            grad, w = sae.W_dec.grad, sae.W_dec
            # keep the step tangent to the unit sphere of each row, in one in-place pass
            grad.addcmul_(w, torch.linalg.vecdot(grad, w).unsqueeze(1), value=-1.0)
        self.optimizer.step()
        sae.normalize_decoder()
        self.act.after_step(sae)
        self.since_fired += rows
        self.since_fired.masked_fill_(fired, 0)
        metrics = {"loss": result.loss.detach(), "mse": result.sq_err / x.numel(), "fvu": result.sq_err / x_var,
                   "l0": result.l0, "aux": result.aux if result.aux is not None else torch.zeros((), device=x.device)}
        for key, value in metrics.items():
            self.window[key] = self.window[key] + value if key in self.window else value.float()
        self.window_steps += 1

    def flush_metrics(self) -> dict[str, float]:
        """The window's mean metrics over the steps and ranks (a collective under torchrun)."""
        if self.window and distributed.world_size() > 1:
            stacked = distributed.all_reduce_(torch.stack(list(self.window.values())), "mean",
                                              "the metrics all-reduce")
            self.window = dict(zip(self.window, stacked, strict=True))
        entry = {key: float(value) / max(self.window_steps, 1) for key, value in self.window.items()}
        entry["dead_fraction"] = float((self.since_fired >= self.tcfg.dead_window()).float().mean())
        entry["lr"] = self.optimizer.param_groups[0]["lr"]  # the weights' group
        self.window, self.window_steps = {}, 0
        return entry

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"param.{k}": v for k, v in self.sae.state_dict().items()}
        opt_tensors, param_groups = checkpoint.optimizer_tensors(self.optimizer)
        tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
        tensors["since_fired"] = self.since_fired
        info = {"name": self.name, "config": config_to_dict(self.sae.cfg), "param_groups": param_groups,
                **self.act.state(), "window": {k: float(v) for k, v in self.window.items()},
                "window_steps": self.window_steps}
        return tensors, info

    @torch.no_grad()
    def load_state(self, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        self.sae.load_state_dict({k.removeprefix("param."): v for k, v in tensors.items() if k.startswith("param.")})
        checkpoint.load_optimizer(self.optimizer, {k.removeprefix("optim."): v for k, v in tensors.items()
                                                   if k.startswith("optim.")}, info["param_groups"])
        self.since_fired.copy_(tensors["since_fired"])
        device = self.since_fired.device
        self.act.load_state(info)
        self.window = {k: torch.tensor(v, device=device) for k, v in info["window"].items()}
        self.window_steps = info["window_steps"]


def default_names(cfgs: list[SAEConfig]) -> list[str]:
    """Folder names for a sweep from the fields that differ (k16, k32, ...); "sae" for a single SAE."""
    if len(cfgs) == 1:
        return ["sae"]
    short = {"activation": "", "k": "k", "d_sae": "d"}
    varying = [f for f in short if len({getattr(c, f) for c in cfgs}) > 1]
    names = ["-".join(f"{short[f]}{getattr(c, f)}" for f in varying) or "sae" for c in cfgs]
    return names if len(set(names)) == len(names) else [f"{n}-{i}" for i, n in enumerate(names)]


def _checked(batches: Iterable[torch.Tensor], d_in: int, device: torch.device) -> Iterator[torch.Tensor]:
    for index, x in enumerate(batches):
        if x.ndim != 2 or x.shape[1] != d_in:
            raise SaelignError(f"activation batch {index} has shape {tuple(x.shape)}, the SAEs expect [tokens, d_in={d_in}]; "
                               "use activations of the hookpoint the SAEs are configured for")
        x = x.to(device=device, dtype=torch.float32)
        require(bool(torch.isfinite(x).all()), f"activation batch {index} contains NaN or infinite values; "
                                               "recapture the activations with the model in float32")
        yield x


def _initialise(stream: Iterator[torch.Tensor], runs: list[_Trainee],
                outlier_ratio: float) -> tuple[Iterator[torch.Tensor], float]:
    """Set norm_scale and b_dec from the first batches; return the stream with those batches put back, and the
    norm above which tokens are outliers (inf if none are)."""
    stream, scale, mean, max_norm = stream_stats.input_scale(stream, outlier_ratio)
    with torch.no_grad():
        for run in runs:
            run.sae.norm_scale.fill_(scale)
            run.sae.b_dec.copy_(mean)
    return stream, max_norm


def _skip(stream: Iterator[torch.Tensor], tokens: int, steps: int) -> None:
    """Pass over the batches a checkpoint consumed: `tokens` rows (one process), or `steps` batches a rank."""
    if distributed.world_size() > 1:
        for _ in range(steps):
            if next(stream, None) is None:
                raise SaelignError(f"rank {distributed.rank()}'s activation stream ended before the "
                                   f"checkpoint's step {steps}; resume with the same store, options and "
                                   "number of processes")
        return
    seen = 0
    while seen < tokens:
        x = next(stream, None)
        if x is None:
            raise SaelignError(f"the activation stream ended after {seen} tokens, before the checkpoint's {tokens}; "
                               "resume with the same store and options, or delete the checkpoint folder")
        seen += x.shape[0]
    if seen != tokens:
        raise SaelignError(f"the activation stream's batches do not line up with the checkpoint ({seen} vs {tokens} tokens); "
                           "resume with the same store and --batch-size, or delete the checkpoint folder")


@dataclass
class _Progress:
    """Where training stands; saved in the checkpoint state."""

    step: int = 0
    tokens: int = 0  # rows consumed from the stream, dropped outliers included
    max_norm: float | None = None  # raw-unit norm above which tokens are dropped; None = keep all
    dropped: int = 0
    log: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _fingerprint(runs: list[_Trainee], tcfg: SAETrainConfig) -> dict[str, Any]:
    # The number of processes decides which rows each rank reads: a checkpoint resumes under the same one.
    return checkpoint.fingerprint(tcfg, saes=[[r.name, config_to_dict(r.sae.cfg)] for r in runs],
                                  processes=distributed.world_size())


# Options newer than some checkpoints, at the value those runs effectively used.
_ADDED_OPTIONS = {"distribute_modules": False, "processes": 1}


def _restore(ckpt: tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]], runs: list[_Trainee]) -> _Progress:
    state, tensors = ckpt
    for index, run in enumerate(runs):
        run.load_state(tensors[f"sae{index}"], state["runs"][index])
    checkpoint.set_rng_state(tensors["rng"])
    return _Progress(state["step"], state["tokens"], state["max_norm"], state["dropped"])


def _save(out: Path, runs: list[_Trainee], tcfg: SAETrainConfig, prog: _Progress, finished: bool) -> None:
    tensors: dict[str, dict[str, torch.Tensor]] = {"rng": checkpoint.rng_state()}
    infos = []
    for index, run in enumerate(runs):
        tensors[f"sae{index}"], info = run.state()
        infos.append(info)
    checkpoint.save(out / CHECKPOINT_DIR, prog.step, tensors, _fingerprint(runs, tcfg), tokens=prog.tokens,
                    max_norm=prog.max_norm, dropped=prog.dropped, finished=finished, runs=infos)


def train_saes(batches: Iterable[torch.Tensor], sae_cfgs: list[SAEConfig], train_cfg: SAETrainConfig,
               names: list[str] | None = None) -> list[SAE]:
    """Train one SAE per config on the same batches ([tokens, d_in] activations in raw model units).
    With train_cfg.out, a single SAE is saved in `out` and several in `out/<name>` (names default to the
    fields that differ, e.g. k16, k32), together with `train_log.json`, `run.json` and the checkpoint.
    Under torchrun, `batches` are this rank's shares of the global batches (train_from_store splits them)."""
    distributed.init()
    tcfg = train_cfg
    require(sae_cfgs, "no SAE configurations given")
    require(tcfg.total_tokens >= 1, "total_tokens must be set (positive) to schedule training")
    d_in = sae_cfgs[0].d_in
    for cfg in sae_cfgs:
        if cfg.d_in != d_in:
            raise SaelignError(f"all SAEs trained on one stream need the same d_in; got {d_in} and {cfg.d_in}")
        if cfg.always_on_latents and not activation_class(cfg.activation).elementwise:
            raise SaelignError("always_on_latents are added by AlignSAE post-training (`saelign align`); train without them")
    names = names or default_names(sae_cfgs)
    if len(names) != len(sae_cfgs) or len(set(names)) != len(names):
        raise SaelignError(f"need one distinct name per SAE, got {names}")
    device = resolve_device(tcfg.device)
    runs = [_Trainee(name, cfg, tcfg, device, resolve_dtype(tcfg.dtype, device))
            for name, cfg in zip(names, sae_cfgs, strict=True)]
    out = Path(tcfg.out) if tcfg.out else None
    stream = iter(_checked(batches, d_in, device))
    ckpt = checkpoint.load(out / CHECKPOINT_DIR, _fingerprint(runs, tcfg), _ADDED_OPTIONS) if out else None
    if ckpt is not None and out is not None:
        prog = _restore(ckpt, runs)
        if (out / LOG_FILE).is_file():
            prog.log = [e for e in read_json(out / LOG_FILE, "training log")["entries"] if e["step"] <= prog.step]
        if ckpt[0]["finished"]:
            logger.info(f"SAE training in {out} already finished ({prog.tokens} tokens); keeping its result")
            return _finish(out, runs, tcfg, prog, seconds=0.0)
        logger.info(f"resuming SAE training in {out} at step {prog.step} ({prog.tokens} tokens)")
        _skip(stream, prog.tokens, prog.step)
    else:
        taken = [d for d in _sae_dirs(out, runs) if (d / CFG_FILE).exists()] if out else []
        if taken:
            raise SaelignError(f"{taken[0]} already holds an SAE but {out} has no training checkpoint to resume; "
                               "choose another --out or delete the old SAE")
        stream, max_norm = _initialise(stream, runs, tcfg.outlier_norm_ratio)
        prog = _Progress(max_norm=max_norm if math.isfinite(max_norm) and tcfg.drop_outliers else None)
    began = time.perf_counter()
    _loop(stream, runs, tcfg, prog, out)
    if prog.tokens < tcfg.total_tokens:
        logger.warning(f"the activation stream ended after {prog.tokens} of {tcfg.total_tokens} training tokens")
    if prog.dropped:
        logger.info(f"dropped {prog.dropped} outlier tokens (norm > {prog.max_norm:.4g}, see outlier_norm_ratio)")
    for run in runs:
        run.act.finish(run.sae)
        if run.sae.threshold is not None:  # BatchTopK's estimate comes from each rank's own rows
            distributed.all_reduce_(run.sae.threshold.data, "mean", "the threshold all-reduce")
    return _finish(out, runs, tcfg, prog, seconds=time.perf_counter() - began)


def _loop(stream: Iterator[torch.Tensor], runs: list[_Trainee], tcfg: SAETrainConfig, prog: _Progress,
          out: Path | None) -> None:
    total, every = tcfg.total_tokens, tcfg.checkpoint_every_tokens
    buffers: dict[int, torch.Tensor] = {}
    window_began, window_tokens = time.perf_counter(), 0
    with progress(total=total, desc="sae train", unit="tok") as bar:
        bar.update(prog.tokens)
        world = distributed.world_size()
        while True:
            x, consumed, kept = next(stream, None), 0, 0
            if x is not None:
                if world == 1:  # ranks' streams end at their share of total_tokens (train_from_store)
                    x = x[: total - prog.tokens]
                consumed = x.shape[0]
                if prog.max_norm is not None:
                    keep = x.norm(dim=1) <= prog.max_norm
                    if not bool(keep.all()):
                        x = x[keep]
                kept = x.shape[0]
            consumed, kept, alive, everyone_kept = stream_stats.step_counts(consumed, kept, x is not None)
            if not alive:
                break
            prog.dropped += consumed - kept
            if everyone_kept:
                assert x is not None
                x_norm = x * runs[0].sae.norm_scale  # one scale for all SAEs: it comes from the same stream
                x_var = (stream_stats.variance_of() or total_variance)(x_norm)
                for run in runs:
                    buffer = buffers.get(run.sae.d_sae)
                    if run.act.sparse and (buffer is None or buffer.shape[0] < x.shape[0]):
                        buffer = buffers[run.sae.d_sae] = torch.empty(x.shape[0], run.sae.d_sae, device=x.device,
                                                                      dtype=run.dtype)
                    run.step(x_norm, x_var, prog.tokens, kept, total, buffer)
            prog.step, prog.tokens, window_tokens = prog.step + 1, prog.tokens + consumed, window_tokens + consumed
            bar.update(consumed)
            if prog.step % tcfg.log_every_steps == 0 or prog.tokens >= total:
                rate = window_tokens / max(time.perf_counter() - window_began, 1e-9)
                entries = [{"step": prog.step, "tokens": prog.tokens, "sae": r.name, **r.flush_metrics(),
                            "dropped_tokens": prog.dropped, "tokens_per_s": rate} for r in runs]
                prog.log.extend(entries)
                bar.set_postfix(fvu=f"{entries[0]['fvu']:.3f}", l0=f"{entries[0]['l0']:.1f}")
                logger.debug(f"step {prog.step}: " + "; ".join(f"{e['sae']} fvu {e['fvu']:.4f} l0 {e['l0']:.1f} "
                                                               f"dead {e['dead_fraction']:.3f}" for e in entries))
                if out is not None and distributed.is_main():
                    write_json_atomic(out / LOG_FILE, {"saes": [r.name for r in runs], "entries": prog.log})
                window_began, window_tokens = time.perf_counter(), 0
            if prog.tokens >= total:
                break
            if out is not None and prog.tokens // every > (prog.tokens - consumed) // every:
                _save(out, runs, tcfg, prog, finished=False)


def _sae_dirs(out: Path | None, runs: list[_Trainee]) -> list[Path]:
    if out is None:
        return []
    return [out] if len(runs) == 1 else [out / run.name for run in runs]


def _finish(out: Path | None, runs: list[_Trainee], tcfg: SAETrainConfig, prog: _Progress,
            seconds: float) -> list[SAE]:
    if out is None:
        return [run.sae for run in runs]
    final = {run.name: next((e for e in reversed(prog.log) if e["sae"] == run.name), {}) for run in runs}
    if seconds:  # before the finished checkpoint: a rerun after a crash between the two would skip the record
        record_stage(out, "sae_train", {"train": config_to_dict(tcfg), "saes": [config_to_dict(r.sae.cfg) for r in runs]},
                     steps=prog.step, tokens=prog.tokens, dropped_tokens=prog.dropped, seconds=round(seconds, 2),
                     final_metrics=final)
    _save(out, runs, tcfg, prog, finished=True)
    for run, folder in zip(runs, _sae_dirs(out, runs), strict=True):
        # Overwriting is safe: a folder of another run was refused at the start, so this one is ours.
        if distributed.is_main():
            save_sae(run.sae, folder, extra_cfg={"training_tokens": prog.tokens}, overwrite=True)
    distributed.barrier("the SAE files rank 0 writes")
    return [run.sae for run in runs]
