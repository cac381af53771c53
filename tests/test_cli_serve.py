"""`saelign serve` options: flags and a --config file's `serve:`/`limits:` sections reach the app; errors are
one line; the printed URL names the port really bound."""

from __future__ import annotations

import uvicorn

import saelign.serve.app
import saelign.serve.session
from saelign.cli import main


def test_options_reach_the_app_and_the_url_names_the_bound_port(tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(saelign.serve.session, "load_session", lambda cfg: seen.setdefault("cfg", cfg))
    monkeypatch.setattr(
        saelign.serve.app, "create_app", lambda session, limits: seen.setdefault("limits", limits)
    )
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self, sockets: seen.setdefault("port", sockets[0].getsockname()[1])
    )
    config = tmp_path / "serve.yaml"
    config.write_text(
        "serve:\n  run: runs/sails\n  port: 0\nlimits:\n  max_new_tokens: 16\n  queue_size: 3\n"
    )
    assert main(["serve", "--config", str(config), "--queue-size", "5"]) == 0
    assert seen["cfg"].run == "runs/sails" and seen["cfg"].host == "127.0.0.1"
    assert (seen["limits"].max_new_tokens, seen["limits"].queue_size) == (16, 5)
    assert f"http://127.0.0.1:{seen['port']}/" in capsys.readouterr().out and seen["port"] > 0


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    assert main(["serve"]) == 2
    assert "give --run" in capsys.readouterr().err
    assert main(["serve", "--run", str(tmp_path), "--queue-size", "0"]) == 2
    assert "--queue-size must be positive" in capsys.readouterr().err
    assert main(["serve", "--run", str(tmp_path)]) == 2
    assert "not a SAILS run folder" in capsys.readouterr().err
