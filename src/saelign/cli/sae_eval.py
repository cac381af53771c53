"""`saelign sae eval`: reconstruction/sparsity metrics on a store, and CE-loss/KL with the SAE spliced in."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from saelign.cli.common import add_stage_parser, build_config
from saelign.configs import config_to_dict
from saelign.datasets.corpus import iter_contexts, open_corpus
from saelign.errors import SaelignError
from saelign.models import DEFAULT_MODEL, ModelConfig, load_model
from saelign.models.loading import model_identity
from saelign.runinfo import record_stage
from saelign.sae.evaluate import DENSITY_PLOT, EVAL_FILE, EvalConfig, context_batches, evaluate_sae
from saelign.sae.formats import check_sae_matches, load_sae
from saelign.store import ActivationStore


def register(group: Any) -> None:
    parser = add_stage_parser(
        group, "eval", help="evaluate an SAE: FVU, L0, dead/dense latents, CE-loss recovered and KL",
        configs=[(ModelConfig, ""), (EvalConfig, "")],
        description="Reconstruction and sparsity metrics on an activation store, then (unless --n-contexts 0) "
                    "next-token CE loss with the SAE spliced in at its hookpoint vs. clean and zero-ablated, on "
                    "corpus contexts the store did not cover. --model defaults to the store's model. Writes "
                    "eval.json and feature_density.png into --out.")
    parser.add_argument("--sae", required=True, metavar="DIR", help="SAE directory (any supported layout)")
    parser.add_argument("--store", required=True, metavar="DIR", help="activation store of the SAE's hookpoint")
    parser.add_argument("--hookpoint", default=None, help="hookpoint to splice into (default: the SAE's, else the store's)")
    parser.set_defaults(func=run)


def _store_model(store: ActivationStore) -> str:
    """The --model value that reloads the store's model (manifests record the default model by name)."""
    recorded = str(store.manifest.get("model", DEFAULT_MODEL))
    return DEFAULT_MODEL if recorded == model_identity(ModelConfig()) else recorded


def _covered_contexts(store: ActivationStore) -> int:
    return int(store.load_shard(len(store.shards) - 1)["context_ids"].max()) + 1


def run(args: argparse.Namespace) -> int:
    cfg = build_config(EvalConfig, args, section="eval")
    model_cfg = build_config(ModelConfig, args, section="model")
    store = ActivationStore(args.store)
    if args.model is None and model_cfg.model == DEFAULT_MODEL:
        model_cfg.model = _store_model(store)
    sae = load_sae(args.sae)
    hookpoint = args.hookpoint or sae.cfg.hookpoint or store.hookpoint
    if sae.d_in != store.d_in:
        raise SaelignError(f"the SAE reads width {sae.d_in} but store {args.store} holds width {store.d_in}; "
                           "evaluate it on a store of its own hookpoint")
    if hookpoint != store.hookpoint:
        raise SaelignError(f"the SAE is for hookpoint {hookpoint} but store {args.store} holds {store.hookpoint}")
    batches = store.batches(cfg.batch_size, shuffle=False, max_tokens=cfg.max_tokens or None)
    model = token_batches = None
    if cfg.n_contexts > 0:
        model, tokenizer = load_model(model_cfg)
        check_sae_matches(sae, model, hookpoint)
        sae = sae.to(next(model.parameters()).device)
        manifest = store.manifest
        recorded = manifest.get("corpus", {})
        same_corpus = not cfg.corpus or cfg.corpus == recorded.get("source")
        corpus = open_corpus(cfg.corpus or recorded.get("source", "sotu"), recorded.get("text_field", "text"),
                             bool(recorded.get("chat", False)), int(recorded.get("seed", 0)))
        skip = cfg.skip_contexts if cfg.skip_contexts >= 0 else (_covered_contexts(store) if same_corpus else 0)
        masking = manifest.get("masking", {})
        token_batches = context_batches(iter_contexts(corpus, tokenizer, int(manifest.get("context_length", 128))),
                                        masking.get("token_ids", []), bool(masking.get("first_position", True)),
                                        cfg.context_batch_size, cfg.n_contexts, skip)
    results = evaluate_sae(sae, batches, model=model, hookpoint=hookpoint, token_batches=token_batches,
                           cfg=cfg, out_dir=cfg.out)
    summary = {k: v for k, v in results.items() if k != "firing_frequency"}
    record_stage(cfg.out, "sae_eval", {"sae": str(args.sae), "store": str(args.store), "eval": config_to_dict(cfg),
                                       "model": config_to_dict(model_cfg)}, results=summary)
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
