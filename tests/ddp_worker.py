"""The jobs tests/test_distributed.py runs under torchrun (2 gloo processes) and again in one process: SAE
training, AlignSAE post-training and adapter SFT on the tiny model, each with the same global batches.

Run as a script (by torchrun): `ddp_worker.py STORE WORK STORE_A STORE_B` trains all three into
WORK/{sae,align,sft}, one SAE per rank at the hookpoints of STORE_A and STORE_B into WORK/modules, and writes
WORK/ranks.json, how far the ranks' final weights lie apart (they must be identical)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from conftest import make_tiny_model, make_tokenizer
from saelign import distributed
from saelign.align.posttrain import PostTrainConfig, post_train
from saelign.io import save_tensors_atomic, write_json_atomic
from saelign.sae import load_sae
from saelign.sae.model import SAE, SAEConfig
from saelign.sae.pipeline import rank_batches, train_from_store, train_from_stores
from saelign.sae.train import SAETrainConfig, train_saes
from saelign.sails.lora_init import LoraInitConfig, make_peft_model
from saelign.sails.sft import SFTConfig, response_loss_sum, train_sft
from saelign.sails.subspace import random_subspace
from saelign.store import ActivationStore

PAIRS = [
    ("How do I bake bread?", "Mix flour, water, salt and yeast."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Help me hurt someone.", "I cannot help with that request because it could cause harm."),
    ("Say hello.", "hello world"),
    ("Name a colour.", "The quick brown fox is brown."),
    ("What do sparse autoencoders do?", "They decompose activations into features."),
    ("Count to three.", "0123456789"),
    ("Where is Berlin?", "Berlin is the capital of Germany."),
]
WORLD = 2  # the processes test_distributed starts; the one-process reference forms the same global batches
# Everything on the CPU (gloo): the torchrun processes see no GPU, and on a GPU machine the one-process
# reference in the test's own process must not take it either.


def train_sae(store: str, out: str, reference: bool = False) -> SAE:
    """A TopK SAE on the store; `reference`: in this one process, on the global batches that WORLD ranks'
    shares make up (train_from_store under torchrun reads only this rank's share)."""
    st = ActivationStore(store)
    tcfg = SAETrainConfig(
        total_tokens=st.num_tokens,
        batch_size=64,
        checkpoint_every_tokens=512,
        log_every_steps=4,
        out=out,
        device="cpu",
    )
    cfg = SAEConfig(d_sae=64, activation="topk", k=4)
    if not reference:
        return train_from_store(store, [cfg], tcfg)[0]
    # not strict: training stops at the first step some rank has no batch for
    shares = zip(*(rank_batches(st, tcfg, rank, WORLD) for rank in range(WORLD)), strict=False)
    full = dataclasses.replace(cfg, d_in=st.d_in, hookpoint=st.hookpoint)
    return train_saes((torch.cat(parts) for parts in shares), [full], tcfg)[0]


def per_hookpoint_config(out: str) -> SAETrainConfig:
    return SAETrainConfig(total_tokens=1000, batch_size=64, distribute_modules=True, out=out, device="cpu")


def train_per_hookpoint(stores: list[str], out: str) -> None:
    """One SAE per store's hookpoint, each trained by one rank alone on its whole store."""
    train_from_stores(stores, [SAEConfig(d_sae=32, activation="topk", k=4)], per_hookpoint_config(out))


def align_sae(sae_dir: str, store: str, out: str) -> SAE:
    """Post-train the SAE with three made-up concepts over store rows (any labels bind; the test compares)."""
    rows = torch.cat(list(ActivationStore(store).batches(512, shuffle=False, max_tokens=600)))
    cfg = PostTrainConfig(
        steps_stage1=4, steps_stage2=8, batch_size=16, generic_batch_size=32, checkpoint_every=5, out=out
    )
    aligned, _ = post_train(
        load_sae(sae_dir), rows[:200], torch.arange(200) % 3, rows[200:], cfg, ["a", "b", "c"]
    )
    return aligned


def fine_tune(out: str) -> dict[str, torch.Tensor]:
    """A LoRA adapter's trained weights after 6 steps of 2 micro-batches of 4, with an evaluation every 3."""
    tokenizer = make_tokenizer()
    model = make_peft_model(
        make_tiny_model("llama", len(tokenizer)), random_subspace(32, 4, seed=1), LoraInitConfig(rank=4)
    )
    probe = {
        "input_ids": torch.tensor([[5, 6, 7, 8]]),
        "attention_mask": torch.ones(1, 4, dtype=torch.long),
        "labels": torch.tensor([[-100, 6, 7, 8]]),
    }

    def evaluate(m: torch.nn.Module, step: int) -> dict[str, float]:
        with torch.no_grad():
            return {"probe_loss": float(response_loss_sum(m, probe))}

    cfg = SFTConfig(
        steps=6, batch_size=4, grad_accum=2, lr=1e-3, warmup=1, eval_every=3, checkpoint_every=3, out=out
    )
    history = train_sft(model, tokenizer, PAIRS, cfg, evaluate)
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    if distributed.is_main():
        save_tensors_atomic(Path(out) / "final.safetensors", params)
        write_json_atomic(Path(out) / "final_history.json", history)
    return params


def rank_spread(tensors: dict[str, torch.Tensor]) -> float:
    """Largest difference between the ranks' copies of the same tensors (0 when they agree)."""
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors.values()]).unsqueeze(0)
    copies = distributed.all_gather_rows(flat)
    return float((copies - copies[0]).abs().max())


def main(store: str, work: str, *module_stores: str) -> None:
    distributed.init()
    train_per_hookpoint(list(module_stores), f"{work}/modules")
    sae = train_sae(store, f"{work}/sae")
    aligned = align_sae(f"{work}/sae", store, f"{work}/align")
    adapter = fine_tune(f"{work}/sft")
    spread = {
        "sae": rank_spread(sae.state_dict()),
        "align": rank_spread(aligned.state_dict()),
        "sft": rank_spread(adapter),
        "world_size": distributed.world_size(),
    }
    if distributed.is_main():
        write_json_atomic(Path(work) / "ranks.json", spread)
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
