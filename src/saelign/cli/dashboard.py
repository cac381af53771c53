"""`saelign dashboard`: a self-contained static HTML site for an SAE's labelled features."""

import argparse
from typing import Any

from saelign.cli.common import add_stage_parser, build_config
from saelign.dashboard import DashboardConfig, build_dashboard


def register(subparsers: Any) -> None:
    parser = add_stage_parser(
        subparsers, "dashboard", help="write a static HTML feature dashboard (opens from file://, no server)",
        configs=[(DashboardConfig, "")], sections=("dashboard",),
        description="Build index.html (searchable feature list: label, detection score, density, tags) and "
                    "one page per feature (examples, activation histogram, logit lens, data-grounded line, "
                    "concept) from a labels file. `index.html#q=WORDS` opens the list filtered.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    index = build_dashboard(build_config(DashboardConfig, args, section="dashboard"))
    print(f"dashboard -> {index}")
    return 0
