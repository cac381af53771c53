"""Anchor: train an SAE with SAELens' own SAETrainer on the same cached activations as bench_sae.py.

Runs in the separate SAELens environment (scripts/saelens_venv.sh), reads saelign's activation store directly
(safetensors shards + manifest.json), holds out the last shards for evaluation exactly as bench_sae.py does,
and prints one JSON line with tokens/s, FVU, L0 and dead fraction.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from sae_lens import (
    BatchTopKTrainingSAEConfig,
    JumpReLUTrainingSAEConfig,
    StandardTrainingSAEConfig,
    TopKTrainingSAEConfig,
)
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.sae_trainer import SAETrainer
from safetensors.torch import load_file


def load_rows(store: Path, shard_names: list[str]) -> torch.Tensor:
    return torch.cat([load_file(str(store / name))["activations"].float() for name in shard_names])


def provider(data: torch.Tensor, batch_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield data[order[start:start + batch_size]]


def build(args: argparse.Namespace, d_in: int) -> TrainingSAE:
    common = dict(d_in=d_in, d_sae=args.d_sae, normalize_activations="expected_average_only_in")
    if args.arch == "topk":
        cfg = TopKTrainingSAEConfig(k=args.k, **common)
    elif args.arch == "batchtopk":
        cfg = BatchTopKTrainingSAEConfig(k=args.k, **common)
    elif args.arch == "standard":
        cfg = StandardTrainingSAEConfig(l1_coefficient=args.l1, l1_warm_up_steps=args.warmup_steps, **common)
    else:
        cfg = JumpReLUTrainingSAEConfig(l0_coefficient=args.l0, l0_warm_up_steps=args.warmup_steps, **common)
    return TrainingSAE.from_dict(cfg.to_dict())


@torch.no_grad()
def evaluate(sae: TrainingSAE, x: torch.Tensor) -> dict[str, float]:
    sae.eval()
    sq_err = sq_dev = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    mean = x.mean(0)
    for chunk in x.split(4096):
        z = sae.encode(chunk)
        sq_err += (sae.decode(z) - chunk).pow(2).sum().item()
        sq_dev += (chunk - mean).pow(2).sum().item()
        active = z > 0
        l0 += active.sum().item()
        fired |= active.any(0)
    return {"fvu": sq_err / sq_dev, "l0": l0 / len(x), "dead_fraction": 1 - fired.float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--arch", choices=["topk", "batchtopk", "standard", "jumprelu"], required=True)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--l1", type=float, default=5.0)
    parser.add_argument("--l0", type=float, default=1.0)
    parser.add_argument("--tokens", type=int, default=491_520)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--eval-shards", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    manifest = json.loads((args.store / "manifest.json").read_text())
    names = [s["file"] if isinstance(s, dict) else s for s in manifest["shards"]]
    train = load_rows(args.store, names[: -args.eval_shards])
    held_out = load_rows(args.store, names[-args.eval_shards:])
    sae = build(args, train.shape[1])
    steps = args.tokens // args.batch_size
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * args.batch_size, train_batch_size_samples=args.batch_size, lr=args.lr, lr_end=args.lr,
        lr_warm_up_steps=max(1, steps // 100), device="cpu", autocast=False, n_batches_for_norm_estimate=10,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=provider(train, args.batch_size, args.seed))
    start = time.perf_counter()
    trained = trainer.fit()
    seconds = time.perf_counter() - start
    result = {"library": "sae_lens", "arch": args.arch, "lr": args.lr, "k": args.k, "l1": args.l1, "l0_coefficient": args.l0,
              "tokens": steps * args.batch_size, "seconds": seconds, "tok_s": steps * args.batch_size / seconds,
              **evaluate(trained, held_out)}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
