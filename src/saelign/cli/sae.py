"""`saelign sae {train,eval,convert}`: the SAE command group."""

from typing import Any

from saelign.cli import sae_convert, sae_eval, sae_train


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("sae", help="train, evaluate and convert sparse autoencoders",
                                   description="Train, evaluate and convert sparse autoencoders.")
    group = parser.add_subparsers(dest="sae_command", metavar="SUBCOMMAND", required=True)
    sae_train.register(group)
    sae_eval.register(group)
    sae_convert.register(group)
