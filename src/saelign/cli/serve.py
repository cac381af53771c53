"""`saelign serve`: the steering page on a local web server (needs the `serve` extra: fastapi, uvicorn)."""

import argparse
import socket
from typing import Any

from saelign.cli.common import add_stage_parser, build_config
from saelign.errors import SaelignError
from saelign.serve.config import Limits, ServeConfig


def register(subparsers: Any) -> None:
    parser = add_stage_parser(
        subparsers,
        "serve",
        help="a local web page to steer and audit a model: sliders, adapter switch, answers",
        configs=[(ServeConfig, ""), (Limits, "")],
        sections=("serve", "limits"),
        description="Load a model once (from a SAILS run folder and/or explicit paths) and serve one page: "
        "the base and the modified answer side by side and streamed, the prompt's top SAE features with "
        "their labels, a slider per concept slot and per selected SAILS feature, and the adapter switch. "
        "A --config file holds the options in `serve:` and `limits:` sections.",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = build_config(ServeConfig, args, section="serve")
    limits = build_config(Limits, args, section="limits")
    try:
        import uvicorn

        from saelign.serve.app import create_app
    except ImportError as exc:
        raise SaelignError(
            f"saelign serve needs the serve extra ({exc.name} is missing): pip install 'saelign[serve]'"
        ) from exc
    from saelign.serve.session import load_session

    app = create_app(load_session(cfg), limits)
    # Bind first so the printed URL names the real port (also when --port 0 picks a free one).
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((cfg.host, cfg.port))
    host = f"[{cfg.host}]" if family == socket.AF_INET6 else cfg.host
    print(f"saelign serve: open http://{host}:{sock.getsockname()[1]}/  (Ctrl+C stops)", flush=True)
    with sock:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0
