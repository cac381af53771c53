"""`saelign sae convert`: read an SAE in any supported layout and write it in ours (= SAELens')."""

import argparse
from dataclasses import dataclass
from typing import Any

from saelign.cli.common import add_stage_parser, build_config
from saelign.configs import help_field
from saelign.errors import SaelignError
from saelign.sae.formats import FORMATS, Format, load_sae, save_sae


@dataclass
class ConvertConfig:
    input: str = help_field("", "SAE directory (or its weights file) to read")
    output: str = help_field("", "directory to write cfg.json + sae_weights.safetensors into")
    format: Format = help_field("auto", "layout of --input: auto-detect, saelens (also saelign), sparsify or dictionary_learning")
    hookpoint: str = help_field("", "module path to record, e.g. model.layers.6 (foreign layouts rarely record a usable one)")
    model: str = help_field("", "model name to record ('' keeps what the input records)")
    overwrite: bool = help_field(False, "replace a different SAE already in --output")


def register(group: Any) -> None:
    parser = add_stage_parser(
        group, "convert", help="convert a SAELens, sparsify or dictionary_learning SAE to saelign/SAELens format",
        configs=[(ConvertConfig, "")],
        description="Read an SAE saved by saelign/SAELens, EleutherAI sparsify (cfg.json + sae.safetensors) or "
                    "saprmarks dictionary_learning (ae.pt + config.json) and write it as cfg.json + "
                    "sae_weights.safetensors, which both saelign and SAELens load with identical outputs.")
    parser.add_argument("--from", dest="format", choices=["auto", *FORMATS], default=None, help="alias of --format")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = build_config(ConvertConfig, args)
    if not cfg.input or not cfg.output:
        raise SaelignError("give both --input (the SAE to read) and --output (the directory to write)")
    sae = load_sae(cfg.input, format=cfg.format)
    if cfg.hookpoint:
        sae.cfg.hookpoint = cfg.hookpoint
    if cfg.model:
        sae.cfg.model = cfg.model
    out = save_sae(sae, cfg.output, overwrite=cfg.overwrite)
    k = f", k={sae.cfg.k}" if sae.activation.uses_k else ""
    print(f"{sae.cfg.activation} SAE {sae.d_in} -> {sae.d_sae}{k}, hookpoint {sae.cfg.hookpoint or '(unset)'} -> {out}")
    return 0
