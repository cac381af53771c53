"""`saelign sae train`: train SAEs on an activation store, or on the fly from a model; comma lists sweep."""

import argparse
import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saelign.cli.common import add_stage_parser, build_config, config_file
from saelign.configs import config_to_dict, help_field
from saelign.errors import SaelignError, require
from saelign.models import ModelConfig
from saelign.sae.activations import ACTIVATIONS, activation_class
from saelign.sae.activations.base import options_class
from saelign.sae.model import SAEConfig
from saelign.sae.pipeline import train_from_stores, train_on_the_fly
from saelign.sae.train import LOG_FILE, SAETrainConfig, default_names
from saelign.store import ActivationStore


@dataclass
class SAESweepConfig:
    activation: list[str] = help_field(["topk"], f"{', '.join(sorted(ACTIVATIONS))}; a comma list trains one "
                                                 "SAE per value")
    k: list[int] = help_field([32], "active latents per token (topk, batchtopk); e.g. 16,32,64 sweeps k")
    d_sae: list[int] = help_field([4608], "number of latents; a comma list sweeps the width")

    def __post_init__(self) -> None:
        for name in self.activation:
            activation_class(name)  # an unknown name fails before any data is read
        for name in ("activation", "k", "d_sae"):
            require(getattr(self, name), f"{name} is empty; give at least one value")
        require(min(self.k) >= 1, f"k must be positive, got {self.k}")
        require(min(self.d_sae) >= 1, f"d_sae must be positive, got {self.d_sae}")


def register(group: Any) -> None:
    parser = add_stage_parser(
        group, "train", help="train SAEs (one or a sweep) on an activation store or on the fly",
        configs=[(SAESweepConfig, ""), (SAETrainConfig, ""), (options_class(), "")],
        sections=("sae", "train"),
        description="Train sparse autoencoders on the activations of one hookpoint. Comma lists in --activation, "
                    "--k and --d-sae train every combination from one pass over the data (saved in OUT/k16, "
                    "OUT/k32, ...; a single SAE goes in OUT). Rerun the same command to resume from the checkpoint. "
                    "A --config file holds the options in `sae:` and `train:` sections; the activations' "
                    "options (ActivationOptions) go in `train:`.")
    source = parser.add_argument_group("activation source (--store, or --model/--hookpoint/--corpus)")
    source.add_argument("--store", metavar="DIR[,DIR...]",
                        help="activation store folder (from `saelign capture`); a comma list trains at each "
                             "store's hookpoint, into OUT/<hookpoint>")
    source.add_argument("--model", metavar="MODEL", help="capture on the fly from this model ('default', HF folder, .gguf)")
    source.add_argument("--hookpoint", metavar="PATH", help="module path to capture on the fly, e.g. model.layers.15")
    source.add_argument("--corpus", default="sotu", metavar="SRC", help="text for on-the-fly capture (as in `saelign capture`)")
    source.add_argument("--context-length", type=int, default=128, metavar="INT", help="tokens per context on the fly")
    parser.set_defaults(func=run, data_parallel=True)


def _train_config(args: argparse.Namespace) -> SAETrainConfig:
    """Defaults < the --config file's `train:` section < flags, where the activations' options
    (l1_coefficient, ...) stand among the general ones, as flags do, and go to `activation_options`."""
    section = dict(config_file(args).get("train") or {})
    names = {f.name for f in dataclasses.fields(options_class())}
    own = {name: section.pop(name) for name in names & section.keys()}
    # Checked as their own config first, so an error names the flag or the file's key that set the value.
    options = build_config(options_class(), args, section="train", file_data=own)
    given = set(own) | {name for name in names if getattr(args, name, None) is not None}
    nested = section.get("activation_options") or {}
    require(isinstance(nested, dict), f"{args.config}: train.activation_options must be a mapping of options")
    section["activation_options"] = {**nested, **{name: getattr(options, name) for name in given}}
    return build_config(SAETrainConfig, args, section="train", file_data=section)


def run(args: argparse.Namespace) -> int:
    sweep = build_config(SAESweepConfig, args, section="sae")
    tcfg = _train_config(args)
    require(tcfg.out, "--out is required: the folder that receives the SAEs, the log and the checkpoint")
    if bool(args.store) == bool(args.model or args.hookpoint):
        raise SaelignError("give either --store DIR, or --model and --hookpoint (with --corpus) to train on the fly")
    if not args.store and not (args.model and args.hookpoint):
        raise SaelignError("on-the-fly training needs both --model and --hookpoint")
    cfgs = [SAEConfig(d_sae=d_sae, activation=act, k=k)  # width, hookpoint and model come from the source
            for act, k, d_sae in itertools.product(sweep.activation, dict.fromkeys(sweep.k), sweep.d_sae)
            if activation_class(act).uses_k or k == sweep.k[0]]  # k only matters to some activations
    names = default_names(cfgs)
    out = Path(tcfg.out)
    if args.store:
        stores = [s for s in args.store.split(",") if s]
        train_from_stores(stores, cfgs, tcfg, names)
        # Printed from the stores, not from what this process trained: with distribute_modules rank 0, which
        # prints, trains only some hookpoints.
        several = len(stores) > 1
        folders = [out / ActivationStore(s, verify=False).hookpoint for s in stores] if several else [out]
    else:
        train_on_the_fly(ModelConfig(model=args.model, device=tcfg.device), args.hookpoint, cfgs, tcfg,
                         args.corpus, args.context_length, names)
        folders = [out]
    for folder in folders:
        for name, cfg in zip(names, cfgs, strict=True):
            where = folder if len(cfgs) == 1 else folder / name
            print(f"{name}: {cfg.activation} d_sae={cfg.d_sae} k={cfg.k} -> {where}")
        print(f"training log: {folder / LOG_FILE}; sweep: {config_to_dict(sweep)}")
    return 0
