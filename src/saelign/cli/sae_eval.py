"""`saelign sae eval`: reconstruction/sparsity metrics on a store, and CE-loss/KL with the SAE spliced in."""

import argparse
from pathlib import Path
from typing import Any

from saelign.cli.common import add_stage_parser, build_config
from saelign.models import DEFAULT_MODEL, ModelConfig
from saelign.sae.evaluate import DENSITY_PLOT, EVAL_FILE, EvalConfig
from saelign.sae.pipeline import evaluate_sae_files


def register(group: Any) -> None:
    parser = add_stage_parser(
        group, "eval", help="evaluate an SAE: FVU, L0, dead/dense latents, CE-loss recovered and KL",
        configs=[(ModelConfig, ""), (EvalConfig, "")], sections=("model", "eval"),
        description="Reconstruction and sparsity metrics on an activation store, then (unless --n-contexts 0) "
                    "next-token CE loss with the SAE spliced in at its hookpoint vs. clean and zero-ablated, on "
                    "corpus contexts the store did not cover. --model defaults to the store's model. Writes "
                    "eval.json and feature_density.png into --out.")
    parser.add_argument("--sae", required=True, metavar="DIR", help="SAE directory (any supported layout)")
    parser.add_argument("--store", required=True, metavar="DIR", help="activation store of the SAE's hookpoint")
    parser.add_argument("--hookpoint", default=None, help="hookpoint to splice into (default: the SAE's, else the store's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = build_config(EvalConfig, args, section="eval")
    model_cfg = build_config(ModelConfig, args, section="model")
    if args.model is None and model_cfg.model == DEFAULT_MODEL:
        model_cfg.model = ""  # the store's model
    results = evaluate_sae_files(args.sae, args.store, cfg, model_cfg, args.hookpoint, args.overwrite)
    print(format_table(results, args.sae))
    print(f"wrote {Path(cfg.out) / EVAL_FILE} and {Path(cfg.out) / DENSITY_PLOT}")
    return 0


def format_table(results: dict[str, Any], sae_path: str) -> str:
    info, recon = results["sae"], results["reconstruction"]
    rows = [
        ("SAE", f"{sae_path} ({info['activation']}, {info['d_in']} -> {info['d_sae']}, hookpoint {info['hookpoint'] or '?'})"),
        ("tokens", f"{recon['tokens']}"),
        ("MSE", _num(recon["mse"])),
        ("FVU", f"{_num(recon['fvu'])}  (explained variance {_num(recon['explained_variance'])})"),
        ("L0", _num(recon["l0"])),
        ("dead latents", f"{100 * recon['dead_fraction']:.2f} %"),
        ("dense latents", f"{100 * recon['dense_fraction']:.2f} %"),
    ]
    splice = results.get("splice")
    if splice:
        rows += [
            ("CE clean / SAE / zero", f"{_num(splice['ce_loss_clean'])} / {_num(splice['ce_loss_sae'])} / {_num(splice['ce_loss_zero'])}"),
            ("CE loss recovered", _num(splice["ce_loss_recovered"])),
            ("KL(clean || SAE)", f"{_num(splice['kl_div'])} nats/token over {splice['predictions']} predictions"),
        ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
