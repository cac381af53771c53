"""`saelign capture`: run a model over a corpus and write one activation store per hookpoint."""

import argparse
from typing import Any

from saelign.cli.common import add_stage_parser, build_config
from saelign.models import ModelConfig
from saelign.store import ActivationStore, CaptureConfig, capture


def register(subparsers: Any) -> None:
    parser = add_stage_parser(
        subparsers, "capture", help="capture activations into a sharded store (resumable)",
        configs=[(ModelConfig, ""), (CaptureConfig, "")], sections=("model", "capture"),
        description="Run the model over a text corpus and store the activations at each hookpoint, masking special "
                    "tokens and the first position of each context. Rerun the same command to resume. A --config "
                    "file holds the options in `model:` and `capture:` sections.")
    parser.set_defaults(func=run, data_parallel=True)


def run(args: argparse.Namespace) -> int:
    model_cfg = build_config(ModelConfig, args, section="model")
    cfg = build_config(CaptureConfig, args, section="capture")
    stores = capture(model_cfg, cfg)
    for hookpoint, path in stores.items():
        store = ActivationStore(path, verify=False)
        print(f"{hookpoint}: {store.num_tokens} tokens x {store.d_in} -> {path}")
    return 0

