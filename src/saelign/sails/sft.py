"""Supervised fine-tuning on (prompt, response) pairs, for LoRA adapters and full fine-tuning. Pairs are
chat-formatted by default (`chat.encode_pair`); `encode_completion` frames them as plain text continuations.

The loss is the mean cross-entropy over response tokens only (through the end-of-turn token), normalised over
all micro-batches of an optimizer step so gradient accumulation equals one large batch. Optional per-pair
weights make it a weighted mean per token (sum of w * CE over sum of w, per response token): a pair of weight 2
counts as two copies of it in the batch, and the loss keeps its scale, so the learning rate means the same. Logits are computed only
from the first response position on (`logits_to_keep`), which skips most of the LM head on the prompt tokens,
and the opening all sequences of a micro-batch share (a chat template's system turn) is read once for them.

Resumable (`saelign.checkpoint` in `out/checkpoint/`): the data order is a pure function of (seed, epoch), so
a resumed run ends with the same weights as an uninterrupted one. A checkpoint written where `stop` ended
training is final, so a rerun does not train on.

Under torchrun each rank forwards every N-th sequence of each micro-batch; its loss is its share of the global
mean (the response-token count is the global one), gradients are summed over the ranks, so N processes give
one process's result on the same global batch up to float summation order (dropout draws differ). Rank 0 runs
the evaluation and sends its result to the others, so all take the same stopping decision.

With `retain_weight` > 0 the loss adds retain_weight x the mean token KL(p_base || p_adapted) on generic text
contexts the caller gives (`sails.retain`): a term that keeps the adapter from moving what it should not. Each
step reads `retain_batch` of them, in an order that is again a pure function of (seed, epoch); under torchrun
each rank takes its share and divides by the step's global token count, like the cross-entropy.

With `unlikelihood_weight` > 0 the loss adds unlikelihood_weight x the mean token -log(1 - p) of refusals the
caller gives as contrasts for harmless prompts (`sails.unlikelihood`), read `unlikelihood_batch` per step in an
order that is a pure function of (seed, epoch), shared over the ranks like the retain term.

With `consistency_weight` > 0 the loss adds consistency_weight x the mean over twins (two training prompts of
one behaviour in different registers, `sails.consistency`) of the normalised distance between their
last-prompt-token residuals, `consistency_batch` twins per step in an order that is a pure function of
(seed, epoch), shared over the ranks like the retain term.

`gradient_checkpointing` trades compute for memory (bench/results/pipeline.json has both) and changes no result,
so a run may be resumed with it switched."""

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign import checkpoint, distributed
from saelign.configs import help_field
from saelign.errors import SaelignError, require
from saelign.io import read_json, write_json_atomic
from saelign.progress import logger, progress
from saelign.sails.chat import encode_pair
from saelign.sails.consistency import Twin, consistency_sum, encode_twins
from saelign.sails.retain import kl_to_base_sum, require_adapters, retain_mask
from saelign.sails.unlikelihood import IGNORE, Contrast, PairEncoder, encode_contrasts, unlikelihood_sum
from saelign.text import pad, pad_token_id
from saelign.text.opening import accepts_logits_to_keep, forward_after_opening

CHECKPOINT_DIR = "checkpoint"
HISTORY_FILE = "history.json"

EvalFn = Callable[[nn.Module, int], dict[str, Any]]
StopFn = Callable[[dict[str, Any]], bool]  # an evaluation's result -> whether training ends there
# Options of the retain term: left out of the resume fingerprint while it is off, so checkpoints written before
# it existed stay resumable.
RETAIN_FIELDS = ("retain_weight", "retain_batch", "retain_contexts", "retain_context_length")
# The same for the unlikelihood term.
UNLIKELIHOOD_FIELDS = ("unlikelihood_weight", "unlikelihood_batch", "unlikelihood_tokens", "unlikelihood_skip")
# The same for the weight average and the consistency term.
AVERAGE_FIELDS = ("ema_decay",)
CONSISTENCY_FIELDS = ("consistency_weight", "consistency_batch")


@dataclass
class SFTConfig:
    # Options that may change on resume: steps only extends or shortens a constant schedule (a cosine one adds
    # it back to the fingerprint); the stop rule is the caller's (sails.evaluate.safety_stop).
    RESUME_FREE: ClassVar[frozenset[str]] = frozenset({"steps", "eval_every", "stop_at_safety",
                                                       "stop_max_over_refusal", "checkpoint_every", "out",
                                                       "gradient_checkpointing"})
    # Options that change how, not what, training computes: a run directory's train stage ignores them.
    OUTPUT_FREE: ClassVar[frozenset[str]] = frozenset({"gradient_checkpointing"})
    steps: int = help_field(300, "optimizer steps")
    lr: float = help_field(2e-4, "peak AdamW learning rate (LoRA ~1e-4..1e-3; full fine-tuning ~1e-5)")
    batch_size: int = help_field(8, "sequences per micro-batch")
    grad_accum: int = help_field(1, "micro-batches per optimizer step")
    max_length: int = help_field(128, "tokens per sequence (prompt + response); longer pairs are cut at the end")
    warmup: int = help_field(10, "linear learning-rate warm-up steps")
    schedule: Literal["constant", "cosine"] = help_field("constant", "after warm-up: constant, or cosine decay to 0 at steps")
    weight_decay: float = help_field(0.0, "AdamW weight decay")
    max_grad_norm: float = help_field(1.0, "gradient-norm clipping (0 = off)")
    seed: int = help_field(0, "seed for the data order and dropout")
    eval_every: int = help_field(0, "run the evaluation every N steps, plus at step 0 and the end (0 = only at the end)")
    stop_at_safety: float = help_field(0.0, "end training after the first evaluation (eval_every) whose validation "
                                            "safety rate reaches this, e.g. 0.95; 0 = always train every step")
    stop_max_over_refusal: float = help_field(1.0, "with stop_at_safety: that evaluation's validation over-refusal must "
                                                   "also be at most this, e.g. 0.1")
    gradient_checkpointing: bool = help_field(False, "recompute each block's activations in the backward pass "
                                                      "instead of keeping them: less memory, more compute")
    retain_weight: float = help_field(0.0, "weight of the retain term: mean token KL(base || adapted) on generic "
                                           "text contexts disjoint from the perplexity test text (0 = off)")
    retain_batch: int = help_field(4, "retain contexts per optimizer step")
    retain_contexts: int = help_field(64, "generic text contexts the retain term cycles through")
    retain_context_length: int = help_field(128, "tokens per retain context")
    unlikelihood_weight: float = help_field(0.0, "weight of the refusal-unlikelihood term: mean -log(1 - p) of "
                                                 "refusal openings on harmless prompts (0 = off)")
    unlikelihood_batch: int = help_field(8, "refusal contrasts per optimizer step")
    unlikelihood_tokens: int = help_field(4, "tokens of each refusal pushed down, after the prefix it shares "
                                             "with the harmless answer")
    unlikelihood_skip: int = help_field(0, "tokens of each refusal after that shared prefix left out of the push "
                                           "(1: its opening word, e.g. 'I', stays; what follows is pushed)")
    consistency_weight: float = help_field(0.0, "weight of the register-consistency term: mean normalised "
                                                "distance between the last-prompt-token residuals of two "
                                                "training wordings of one behaviour (0 = off)")
    consistency_batch: int = help_field(4, "twins (pairs of wordings) of the consistency term per step")
    ema_decay: float = help_field(0.0, "keep an exponential moving average of the trained weights with this "
                                       "decay (e.g. 0.95: about the last 20 steps), evaluate it at each check "
                                       "and return it instead of the last step's weights (0 = off)")
    checkpoint_every: int = help_field(50, "write a resumable checkpoint every N steps (0 = only at the end)")
    out: str = help_field("", "folder for checkpoint/ and history.json ('' = keep nothing on disk)")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "max_length", "retain_batch", "retain_contexts",
                     "unlikelihood_batch", "unlikelihood_tokens", "consistency_batch"):
            require(getattr(self, name) >= 1, f"{name} must be positive, got {getattr(self, name)}")
        for name in ("warmup", "eval_every", "checkpoint_every", "weight_decay", "max_grad_norm",
                     "unlikelihood_skip"):
            require(getattr(self, name) >= 0, f"{name} must not be negative, got {getattr(self, name)}")
        require(self.lr > 0, f"lr must be positive, got {self.lr}")
        for name in ("retain_weight", "unlikelihood_weight", "consistency_weight"):
            require(0 <= getattr(self, name) < float("inf"),
                    f"{name} must be 0 (off) or a positive number, got {getattr(self, name)}")
        require(0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        require(self.retain_context_length >= 2,
                f"retain_context_length must be at least 2 tokens, got {self.retain_context_length}")
        for name in ("stop_at_safety", "stop_max_over_refusal"):
            require(0 <= getattr(self, name) <= 1, f"{name} is a rate between 0 and 1, got {getattr(self, name)}")


def encode_completion(tokenizer: PreTrainedTokenizerBase, prompt: str,
                      response: str) -> tuple[list[int], list[int]]:
    """The prompt as plain text (tokenised as `text.token_ids` does for generation) continued by a space, the
    response and the end-of-sequence token, so a greedy continuation stops after the answer."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return prompt_ids, tokenizer(" " + response, add_special_tokens=False)["input_ids"] + eos


def encode_examples(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]], max_length: int,
                    encode: PairEncoder = encode_pair) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per pair; labels are IGNORE on the prompt. Pairs left without response tokens are dropped."""
    return [example for _, example in _encode_kept(tokenizer, pairs, max_length, encode)]


def _encode_kept(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]], max_length: int,
                 encode: PairEncoder) -> list[tuple[int, tuple[list[int], list[int]]]]:
    """`encode_examples` with each kept example's index in `pairs` (to keep its weight)."""
    examples = []
    for index, (prompt, response) in enumerate(pairs):
        prompt_ids, response_ids = encode(tokenizer, prompt, response)
        ids = (prompt_ids + response_ids)[:max_length]
        labels = ([IGNORE] * len(prompt_ids) + response_ids)[:max_length]
        if any(t != IGNORE for t in labels):
            examples.append((index, (ids, labels)))
    if len(examples) < len(pairs):
        logger.warning(f"{len(pairs) - len(examples)} of {len(pairs)} pairs have no response token within "
                       f"max_length={max_length} and are skipped")
    if not examples:
        raise SaelignError(f"max_length={max_length}: no pair keeps any response token; raise max_length")
    return examples


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    ids, mask = pad([e[0] for e in examples], pad_id)
    labels, _ = pad([e[1] for e in examples], IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def response_logits(model: nn.Module, batch: dict[str, torch.Tensor], keep_logits: bool = True,
                    share_opening: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets): the logits from the first labelled position on, each row predicting its target.
    With `share_opening`, the opening every row shares (a chat template's system turn) is read once and its
    KV cache repeated for the rows, gradients and all: the same loss at fewer tokens (off under gradient
    checkpointing, whose recomputation would extend the cache twice)."""
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    labelled = (labels != IGNORE).any(0).nonzero()
    start = max(int(labelled[0]) - 1, 0)  # logits at position t predict token t+1
    kwargs: dict[str, Any] = {"logits_to_keep": labels.shape[1] - start} if keep_logits else {}
    out, shared = forward_after_opening(model, ids, mask, limit=start if share_opening else 0, **kwargs)
    logits = out.logits
    if not keep_logits:
        logits = logits[:, start - shared:]
    return logits[:, :-1], labels[:, start + 1:]


def response_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], keep_logits: bool = True,
                      weights: torch.Tensor | None = None, share_opening: bool = True) -> torch.Tensor:
    """Summed next-token cross-entropy over labelled (response) positions; with `weights` ([batch]) each
    sequence's tokens count `weights[i]` times."""
    logits, targets = response_logits(model, batch, keep_logits, share_opening)
    flat = logits.float().reshape(-1, logits.shape[-1])
    if weights is None:  # the unweighted sum as before, so unweighted runs keep their exact numbers
        return F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE, reduction="sum")
    per_token = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE, reduction="none")
    return (per_token.view(targets.shape) * weights.to(per_token)[:, None]).sum()


def _checkpoint_blocks(model: nn.Module) -> None:
    """HF gradient checkpointing per decoder block (transformers 5 names it activation checkpointing),
    non-reentrant: the reentrant kind gives no gradient to a LoRA inside a block whose input (from the frozen
    embeddings) does not require one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise SaelignError(f"gradient_checkpointing: {type(base).__name__} does not support it; turn "
                           "gradient_checkpointing off")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def _step_samples(n: int, seed: int, step: int, size: int) -> list[int]:
    """The `size` samples of one step in the concatenated per-epoch permutations of `n` samples, each a pure
    function of (seed, epoch): a resumed run sees the same data without saving any order."""
    first, last = step * size, (step + 1) * size - 1
    order = {e: np.random.default_rng([seed, e]).permutation(n) for e in range(first // n, last // n + 1)}
    return [int(order[i // n][i % n]) for i in range(first, last + 1)]


def _response_targets(example: tuple[list[int], list[int]]) -> int:
    """Tokens an example adds to a step's loss: labelled positions after the first (nothing predicts it)."""
    return sum(t != IGNORE for t in example[1][1:])


def _fingerprint(cfg: SFTConfig, params: dict[str, torch.Tensor], examples: list,
                 weights: list[float] | None, retain: torch.Tensor | None, contrasts: list | None,
                 twins: list | None) -> dict[str, Any]:
    data = hashlib.sha256(json.dumps(examples).encode()).hexdigest()
    shapes = hashlib.sha256(json.dumps({n: list(p.shape) for n, p in params.items()}).encode()).hexdigest()
    steps = {"steps": cfg.steps} if cfg.schedule == "cosine" else {}
    # Only weighted runs record weights, so checkpoints of unweighted ones written before stay resumable.
    weighted = {} if weights is None else {"weights_sha256": hashlib.sha256(json.dumps(weights).encode()).hexdigest()}
    retained = {} if retain is None else {"retain_sha256": hashlib.sha256(json.dumps(retain.tolist()).encode()).hexdigest()}
    contrasted = ({} if contrasts is None
                  else {"contrasts_sha256": hashlib.sha256(json.dumps(contrasts).encode()).hexdigest()})
    twinned = {} if twins is None else {"twins_sha256": hashlib.sha256(json.dumps(twins).encode()).hexdigest()}
    found = checkpoint.fingerprint(cfg, **steps, data_sha256=data, trainable_sha256=shapes, **weighted, **retained,
                                   **contrasted, **twinned)
    # Likewise the retain and unlikelihood options only where the term is on.
    off = ((RETAIN_FIELDS if retain is None else ()) + (UNLIKELIHOOD_FIELDS if contrasts is None else ())
           + (AVERAGE_FIELDS if cfg.ema_decay == 0 else ()) + (CONSISTENCY_FIELDS if twins is None else ()))
    return {k: v for k, v in found.items() if k not in off}


def _save(out: Path, step: int, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
          fingerprint: dict[str, Any], history: dict[str, list], average: dict[str, torch.Tensor] | None) -> None:
    optim, groups = checkpoint.optimizer_tensors(optimizer)
    tensors = {"params": {n: p.detach() for n, p in params.items()}, "optimizer": optim,
               "rng": checkpoint.rng_state(), **({} if average is None else {"average": average})}
    # The history first: a resumed run keeps its entries up to the checkpoint's step, so written after the
    # checkpoint, a crash between the two would lose the steps since the previous one.
    if distributed.is_main():
        write_json_atomic(out / HISTORY_FILE, history)
    checkpoint.save(out / CHECKPOINT_DIR, step, tensors, fingerprint, param_groups=groups)


def _restore(out: Path, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
             fingerprint: dict[str, Any], average: dict[str, torch.Tensor] | None) -> int:
    """Load `out`'s checkpoint into the parameters, optimizer and weight average; return its step (0:
    none)."""
    if (old := out / "checkpoint.safetensors").is_file():  # the format before saelign.checkpoint
        raise SaelignError(f"{old} is an SFT checkpoint of an older saelign, which cannot be resumed; "
                           "delete it to train from step 0")
    ckpt = checkpoint.load(out / CHECKPOINT_DIR, fingerprint)
    if ckpt is None:
        return 0
    state, tensors = ckpt
    _copy_into(params, tensors["params"])
    if average is not None:
        _copy_into(average, tensors["average"])
    checkpoint.load_optimizer(optimizer, tensors["optimizer"], state["param_groups"])
    checkpoint.set_rng_state(tensors["rng"])
    return int(state["step"])


def _stopped(stop: StopFn | None, history: dict[str, list], step: int) -> bool:
    """Whether the run ends at `step`: `stop` accepted the evaluation made there (never at step 0)."""
    evals = history["eval"]
    return stop is not None and step >= 1 and bool(evals) and evals[-1]["step"] == step and stop(evals[-1])


def _copy_into(params: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(source[name])


@contextlib.contextmanager
def _averaged(params: dict[str, torch.Tensor], average: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """The weight average in the model's parameters for the block's duration (nothing without one)."""
    if average is None:
        yield
        return
    trained = {n: p.detach().clone() for n, p in params.items()}
    _copy_into(params, average)
    try:
        yield
    finally:
        _copy_into(params, trained)


def _run_eval(model: nn.Module, eval_fn: EvalFn, step: int, history: dict[str, list],
              params: dict[str, torch.Tensor], average: dict[str, torch.Tensor] | None) -> None:
    model.eval()
    with _averaged(params, average):
        result = eval_fn(model, step) if distributed.is_main() else None
    result = distributed.broadcast_object(result, f"sending the step-{step} evaluation to every rank")
    model.train()
    history["eval"].append({"step": step, **result})


def _retain_step(model: nn.Module, retain: torch.Tensor, masks: torch.Tensor, cfg: SFTConfig, step: int,
                 device: torch.device) -> torch.Tensor:
    """Backpropagate retain_weight x this rank's share of the step's mean token KL to the base model; return
    that share (float64, on the CPU) for the log."""
    ids = _step_samples(len(retain), cfg.seed, step, cfg.retain_batch)
    n_tokens = int(masks[ids].sum())  # of the step's global retain batch, on every rank
    share = distributed.split(ids)
    kl = kl_to_base_sum(model, retain[share].to(device), masks[share].to(device)) / max(n_tokens, 1)
    (cfg.retain_weight * kl).backward()
    return kl.detach().cpu().double()


def _unlikelihood_step(model: nn.Module, contrasts: list, cfg: SFTConfig, step: int, pad_id: int,
                       keep_logits: bool, device: torch.device) -> torch.Tensor:
    """Backpropagate unlikelihood_weight x this rank's share of the step's mean refusal unlikelihood; return
    that share (float64, on the CPU) for the log. The order is its own stream of (seed, epoch) permutations."""
    ids = _step_samples(len(contrasts), cfg.seed + 1, step, cfg.unlikelihood_batch)
    n_tokens = sum(_response_targets(contrasts[i]) for i in ids)  # of the global batch, on every rank
    batch = {k: v.to(device) for k, v in collate([contrasts[i] for i in distributed.split(ids)], pad_id).items()}
    share = not cfg.gradient_checkpointing
    loss = unlikelihood_sum(*response_logits(model, batch, keep_logits, share)) / n_tokens
    (cfg.unlikelihood_weight * loss).backward()
    return loss.detach().cpu().double()


def _consistency_step(model: nn.Module, twins: list, cfg: SFTConfig, step: int, pad_id: int,
                      device: torch.device) -> torch.Tensor:
    """Backpropagate consistency_weight x this rank's share of the step's mean twin distance; return that
    share (float64, on the CPU) for the log. The order is its own stream of (seed, epoch) permutations."""
    ids = _step_samples(len(twins), cfg.seed + 2, step, cfg.consistency_batch)
    loss = consistency_sum(model, [twins[i] for i in distributed.split(ids)], pad_id, device,
                           share_opening=not cfg.gradient_checkpointing) / len(ids)
    (cfg.consistency_weight * loss).backward()
    return loss.detach().cpu().double()


def train_sft(model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]], cfg: SFTConfig,
              eval_fn: EvalFn | None = None, stop: StopFn | None = None,
              encode: PairEncoder = encode_pair, weights: Sequence[float] | None = None,
              retain: torch.Tensor | None = None, contrasts: Sequence[Contrast] | None = None,
              twins: Sequence[Twin] | None = None) -> dict[str, list]:
    """Train the model's trainable parameters in place; return {"train": [...], "eval": [...]} (also
    history.json). `eval_fn(model, step)` runs every cfg.eval_every steps, at step 0 and at the end; training
    ends at the first periodic evaluation after step 0 whose result `stop` accepts. `encode` turns a pair
    into (prompt ids, response ids): chat turns by default, `encode_completion` for plain text. `weights`:
    one positive loss weight per pair (None: all 1). `retain`: [n, L] token contexts of the retain term
    (needed, and only read, when cfg.retain_weight > 0). `contrasts`: (prompt, unwanted, wanted response)
    triples of the unlikelihood term (needed, and only read, when cfg.unlikelihood_weight > 0). `twins`:
    index pairs into `pairs` of two wordings of one behaviour, for the consistency term (needed, and only
    read, when cfg.consistency_weight > 0). With
    cfg.ema_decay > 0 the evaluations read, and the model ends with, the moving average of the weights."""
    if stop is not None and not (eval_fn and cfg.eval_every):
        raise SaelignError("a stopping rule needs a periodic evaluation: set eval_every > 0")
    if weights is not None:
        require(len(weights) == len(pairs), f"weights: give one per pair ({len(pairs)}), got {len(weights)}")
        require(all(w > 0 for w in weights), f"weights must be positive, got a minimum of {min(weights)}")
    if cfg.retain_weight > 0:
        require(retain is not None and retain.ndim == 2 and len(retain) > 0,
                "sft.retain_weight > 0 needs retain text: pass retain=[n, L] token contexts (the SAILS pipeline "
                "builds them from its held-out corpus)")
        require_adapters(model)
    else:
        retain = None  # off: the exact path (and fingerprint) of a run without the term
    require(cfg.unlikelihood_weight == 0 or bool(contrasts),
            "sft.unlikelihood_weight > 0 needs refusal contrasts: pass contrasts=[(prompt, refusal, answer), ...] "
            "(the SAILS pipeline builds them from its harmless training pairs)")
    contrasted = (encode_contrasts(tokenizer, contrasts, cfg.unlikelihood_tokens, cfg.max_length, encode,
                                   cfg.unlikelihood_skip) if cfg.unlikelihood_weight > 0 else None)
    twinned = (encode_twins(tokenizer, [p for p, _ in pairs], twins or [], encode)
               if cfg.consistency_weight > 0 else None)
    distributed.init()
    distributed.require_divisible(cfg.batch_size, "sft.batch_size")
    if retain is not None:
        distributed.require_divisible(cfg.retain_batch, "sft.retain_batch")
    if contrasted is not None:
        distributed.require_divisible(cfg.unlikelihood_batch, "sft.unlikelihood_batch")
    if twinned is not None:
        distributed.require_divisible(cfg.consistency_batch, "sft.consistency_batch")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise SaelignError("the model has no trainable parameters; wrap it with make_peft_model or prepare_full_finetune")
    kept = _encode_kept(tokenizer, pairs, cfg.max_length, encode)
    examples = [example for _, example in kept]
    # All weights 1 is the unweighted loss: take its exact path (and fingerprint).
    weight = None if weights is None or all(w == 1 for w in weights) else [float(weights[i]) for i, _ in kept]
    pad_id = pad_token_id(tokenizer)
    device = next(iter(params.values())).device
    optimizer = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fingerprint = _fingerprint(cfg, params, examples, weight, retain, contrasted, twinned)
    # the weight average starts at the initial weights; a checkpoint holds it from then on
    average = {n: p.detach().clone() for n, p in params.items()} if cfg.ema_decay > 0 else None
    retain_masks = retain_mask(retain, pad_id) if retain is not None else None
    out = Path(cfg.out) if cfg.out else None
    history: dict[str, list] = {"train": [], "eval": []}
    torch.manual_seed(cfg.seed + distributed.rank())  # each rank its own dropout draws
    step = _restore(out, params, optimizer, fingerprint, average) if out else 0
    if out and step:
        if (out / HISTORY_FILE).is_file():
            saved = read_json(out / HISTORY_FILE, "SFT history")
            history = {key: [e for e in saved.get(key, []) if e["step"] <= step] for key in ("train", "eval")}
        logger.info(f"resuming SFT from step {step} ({out / CHECKPOINT_DIR})")
    keep_logits = accepts_logits_to_keep(model)
    if cfg.gradient_checkpointing:
        _checkpoint_blocks(model)
    model.train()
    if eval_fn and cfg.eval_every and step == 0:
        _run_eval(model, eval_fn, 0, history, params, average)
    bar = progress(total=cfg.steps, desc="sft", unit="step")
    bar.update(step)
    while step < cfg.steps and not _stopped(stop, history, step):
        started = time.perf_counter()
        ids = _step_samples(len(examples), cfg.seed, step, cfg.grad_accum * cfg.batch_size)
        # of the global batch, on every rank; weighted, the weighted token count
        n_tokens = sum(_response_targets(examples[i]) * (weight[i] if weight else 1) for i in ids)
        size = cfg.batch_size
        shares = [distributed.split(ids[m * size:(m + 1) * size]) for m in range(cfg.grad_accum)]
        micro = [(collate([examples[i] for i in share], pad_id),
                  torch.tensor([weight[i] for i in share]) if weight else None) for share in shares]
        total = torch.zeros((), dtype=torch.float64)
        for batch, batch_weights in micro:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = response_loss_sum(model, batch, keep_logits, batch_weights,
                                     share_opening=not cfg.gradient_checkpointing) / n_tokens
            loss.backward()
            total += loss.detach().cpu()
        kl = _retain_step(model, retain, retain_masks, cfg, step, device) if retain is not None else None
        pushed = (_unlikelihood_step(model, contrasted, cfg, step, pad_id, keep_logits, device)
                  if contrasted is not None else None)
        consistent = (_consistency_step(model, twinned, cfg, step, pad_id, device)
                      if twinned is not None else None)
        distributed.all_reduce_gradients(params.values(), "sum")  # each rank's loss is a share of the mean
        total = float(distributed.all_reduce_(total, "sum", "the loss all-reduce"))
        retained = {} if kl is None else {"retain_kl": float(distributed.all_reduce_(kl, "sum", "the KL all-reduce"))}
        if pushed is not None:
            retained["unlikelihood"] = float(distributed.all_reduce_(pushed, "sum", "the unlikelihood all-reduce"))
        if consistent is not None:
            retained["consistency"] = float(distributed.all_reduce_(consistent, "sum",
                                                                    "the consistency all-reduce"))
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params.values(), cfg.max_grad_norm)
        cosine = cfg.schedule == "cosine"
        lr = checkpoint.scheduled_lr(cfg.lr, step, step + 1, cfg.steps, cfg.warmup, cosine=cosine)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if average is not None:
            with torch.no_grad():
                for name, param in params.items():
                    average[name].lerp_(param, 1 - cfg.ema_decay)
        step += 1
        history["train"].append({"step": step, "loss": total, **retained, "lr": lr,
                                 "seconds": time.perf_counter() - started})
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}")
        if eval_fn and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
            _run_eval(model, eval_fn, step, history, params, average)
        if out and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps
                    or _stopped(stop, history, step)):
            _save(out, step, params, optimizer, fingerprint, history, average)
    bar.close()
    if average is not None:  # the model the caller gets, saves and evaluates is the average
        _copy_into(params, average)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_disable()  # the caller gets the model as it came, for evaluation
    model.eval()
    return history
