"""`saelign label`: top activating contexts + logit lens -> labels JSON and an HTML feature dashboard."""

import argparse
from typing import Any

from saelign.cli.common import add_stage_parser, build_config
from saelign.label.labels import LabelConfig, label_sae
from saelign.models import ModelConfig


def register(subparsers: Any) -> None:
    parser = add_stage_parser(
        subparsers, "label", help="label SAE latents from top activating contexts and the logit lens",
        configs=[(ModelConfig, ""), (LabelConfig, "")], sections=("model", "label"),
        description="Scan a corpus once, keep each latent's top activating contexts (never the first position of a "
                    "context or special tokens), project decoder directions through the final norm and unembedding, "
                    "and write labels JSON (default SAE_DIR/labels.json) plus an HTML/Markdown dashboard beside it. "
                    "A --config file holds the options in `model:` and `label:` sections.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model_cfg = build_config(ModelConfig, args, section="model")
    cfg = build_config(LabelConfig, args, section="label")
    out = label_sae(model_cfg, cfg)
    print(f"labels -> {out}")
    return 0
