"""Supervised fine-tuning on chat-formatted (prompt, response) pairs, for LoRA adapters and full fine-tuning.

The loss is the mean cross-entropy over response tokens only (through the end-of-turn token), normalised over
all micro-batches of an optimizer step so gradient accumulation equals one large batch. Logits are computed only
from the first response position on (`logits_to_keep`), which skips most of the LM head on the prompt tokens.

Resumable: every `checkpoint_every` steps one safetensors file `out/checkpoint.safetensors` (trainable weights,
AdamW state, RNG state, step) is written atomically. The data order is a pure function of (seed, epoch), so a
resumed run ends with the same weights as an uninterrupted one. `out/history.json` holds the training losses and
the periodic eval_fn results (convergence curves). With `stop_at_safety`, training ends after the first periodic
evaluation whose `safety_rate` (on the validation split) reaches it while its `over_refusal` is at most
`stop_max_over_refusal`: a stopping rule that sees no test data.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.configs import help_field
from saelign.errors import SaelignError
from saelign.io import load_tensors, read_json, save_tensors_atomic, write_json_atomic
from saelign.progress import logger, progress
from saelign.sails.chat import encode_pair, pad_right

IGNORE = -100
CHECKPOINT_FILE = "checkpoint.safetensors"
HISTORY_FILE = "history.json"
# Options that change the trajectory: a checkpoint may only be resumed under the same values.
_TRAJECTORY_FIELDS = ("lr", "batch_size", "grad_accum", "max_length", "warmup", "schedule", "weight_decay",
                      "max_grad_norm", "seed")

EvalFn = Callable[[nn.Module, int], dict[str, Any]]


@dataclass
class SFTConfig:
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
    checkpoint_every: int = help_field(50, "write a resumable checkpoint every N steps (0 = only at the end)")
    out: str = help_field("", "folder for checkpoint.safetensors and history.json ('' = keep nothing on disk)")

    def __post_init__(self) -> None:
        for name in ("stop_at_safety", "stop_max_over_refusal"):
            if not 0 <= getattr(self, name) <= 1:
                raise SaelignError(f"sft.{name} is a rate between 0 and 1, got {getattr(self, name)}")


def encode_examples(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]],
                    max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per pair; labels are IGNORE on the prompt. Pairs left without response tokens are dropped."""
    examples = []
    for prompt, response in pairs:
        prompt_ids, response_ids = encode_pair(tokenizer, prompt, response)
        ids = (prompt_ids + response_ids)[:max_length]
        labels = ([IGNORE] * len(prompt_ids) + response_ids)[:max_length]
        if any(t != IGNORE for t in labels):
            examples.append((ids, labels))
    if len(examples) < len(pairs):
        logger.warning(f"{len(pairs) - len(examples)} of {len(pairs)} pairs have no response token within "
                       f"max_length={max_length} and are skipped")
    if not examples:
        raise SaelignError(f"max_length={max_length}: no pair keeps any response token; raise max_length")
    return examples


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    ids, mask = pad_right([e[0] for e in examples], pad_id)
    labels, _ = pad_right([e[1] for e in examples], IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def response_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], keep_logits: bool = True) -> torch.Tensor:
    """Summed next-token cross-entropy over labelled (response) positions."""
    labels = batch["labels"]
    labelled = (labels != IGNORE).any(0).nonzero()
    start = max(int(labelled[0]) - 1, 0)  # logits at position t predict token t+1
    kwargs: dict[str, Any] = {"logits_to_keep": labels.shape[1] - start} if keep_logits else {}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, **kwargs).logits
    if not keep_logits:
        logits = logits[:, start:]
    targets = labels[:, start + 1:]
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _lr_at(step: int, cfg: SFTConfig) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else 1.0
    if cfg.schedule == "cosine":
        return cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))
    return cfg.lr * warm


class _Order:
    """Sample order: concatenated per-epoch permutations, each a pure function of (seed, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self.cache: tuple[int, np.ndarray] | None = None

    def take(self, start: int, count: int) -> list[int]:
        out = []
        for i in range(start, start + count):
            epoch = i // self.n
            if self.cache is None or self.cache[0] != epoch:
                self.cache = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
            out.append(int(self.cache[1][i % self.n]))
        return out


def _fingerprint(cfg: SFTConfig, params: dict[str, torch.Tensor], examples: list) -> dict[str, Any]:
    data = hashlib.sha256(json.dumps(examples).encode()).hexdigest()
    shapes = hashlib.sha256(json.dumps({n: list(p.shape) for n, p in params.items()}).encode()).hexdigest()
    fields = {name: getattr(cfg, name) for name in _TRAJECTORY_FIELDS}
    if cfg.schedule == "cosine":
        fields["steps"] = cfg.steps
    return {**fields, "data_sha256": data, "trainable_sha256": shapes}


def _save_checkpoint(path: Path, step: int, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                     fingerprint: dict[str, Any]) -> None:
    tensors = {f"param.{n}": p.detach() for n, p in params.items()}
    for index, state in optimizer.state_dict()["state"].items():
        tensors.update({f"optim.{index}.{key}": value for key, value in state.items()})
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_tensors_atomic(path, tensors, metadata={"step": str(step), "fingerprint": json.dumps(fingerprint)})


def _load_checkpoint(path: Path, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                     fingerprint: dict[str, Any]) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    saved = json.loads(metadata.get("fingerprint", "{}"))
    changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if changed:
        raise SaelignError(f"{path} was written by a run with different {', '.join(changed)}; rerun with the same "
                           "options, model and data, or delete it to start over")
    tensors = load_tensors(path, "SFT checkpoint")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[f"param.{name}"])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, field = key.split(".", 2)
            state.setdefault(int(index), {})[field] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(metadata["step"])


def stopped_early(cfg: SFTConfig, history: dict[str, list], step: int) -> bool:
    """Whether the run ends at `step` before cfg.steps: its evaluation at that step reached cfg.stop_at_safety with
    over-refusal at most cfg.stop_max_over_refusal."""
    if cfg.stop_at_safety <= 0 or step < 1 or not history["eval"] or history["eval"][-1]["step"] != step:
        return False
    check = history["eval"][-1]
    return (check.get("safety_rate", 0.0) >= cfg.stop_at_safety
            and check.get("over_refusal", 0.0) <= cfg.stop_max_over_refusal)


def _run_eval(model: nn.Module, eval_fn: EvalFn, step: int, history: dict[str, list]) -> None:
    model.eval()
    result = eval_fn(model, step)
    model.train()
    history["eval"].append({"step": step, **result})


def train_sft(model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]], cfg: SFTConfig,
              eval_fn: EvalFn | None = None) -> dict[str, list]:
    """Train the model's trainable parameters in place; return {"train": [...], "eval": [...]} (also history.json)."""
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise SaelignError(f"steps, batch_size and grad_accum must be positive (got {cfg.steps}, {cfg.batch_size}, "
                           f"{cfg.grad_accum})")
    if cfg.stop_at_safety > 0 and not (eval_fn and cfg.eval_every):
        raise SaelignError(f"stop_at_safety={cfg.stop_at_safety} needs a periodic evaluation: set eval_every > 0")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise SaelignError("the model has no trainable parameters; wrap it with make_peft_model or prepare_full_finetune")
    examples = encode_examples(tokenizer, pairs, cfg.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(iter(params.values())).device
    optimizer = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fingerprint = _fingerprint(cfg, params, examples)
    out = Path(cfg.out) if cfg.out else None
    history: dict[str, list] = {"train": [], "eval": []}
    torch.manual_seed(cfg.seed)
    step = 0
    if out and (out / CHECKPOINT_FILE).is_file():
        step = _load_checkpoint(out / CHECKPOINT_FILE, params, optimizer, fingerprint)
        if (out / HISTORY_FILE).is_file():
            saved = read_json(out / HISTORY_FILE, "SFT history")
            history = {key: [e for e in saved.get(key, []) if e["step"] <= step] for key in ("train", "eval")}
        logger.info(f"resuming SFT from step {step} ({out / CHECKPOINT_FILE})")

    def persist(at: int) -> None:
        if out:
            _save_checkpoint(out / CHECKPOINT_FILE, at, params, optimizer, fingerprint)
            write_json_atomic(out / HISTORY_FILE, history)

    keep_logits = _accepts_logits_to_keep(model)
    order = _Order(len(examples), cfg.seed)
    model.train()
    if eval_fn and cfg.eval_every and step == 0:
        _run_eval(model, eval_fn, 0, history)
    bar = progress(total=cfg.steps, desc="sft", unit="step")
    bar.update(step)
    while step < cfg.steps and not stopped_early(cfg, history, step):
        started = time.perf_counter()
        micro = [collate([examples[i] for i in order.take((step * cfg.grad_accum + m) * cfg.batch_size, cfg.batch_size)],
                         pad_id) for m in range(cfg.grad_accum)]
        n_tokens = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro)
        total = 0.0
        for batch in micro:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = response_loss_sum(model, batch, keep_logits) / n_tokens
            loss.backward()
            total += float(loss.detach())
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params.values(), cfg.max_grad_norm)
        lr = _lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        history["train"].append({"step": step, "loss": total, "lr": lr, "seconds": time.perf_counter() - started})
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}")
        if eval_fn and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
            _run_eval(model, eval_fn, step, history)
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps or stopped_early(cfg, history, step):
            persist(step)
    bar.close()
    model.eval()
    return history
