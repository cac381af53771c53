"""The command line's own surface: --version, an unknown flag answered with the subcommand's usage, --help
showing the defaults the default preset uses, and config files whose options sit outside their section."""

from __future__ import annotations

import pytest

from saelign.cli import main
from saelign.runinfo import SAELIGN_VERSION
from saelign.sails.presets import DEFAULT_PRESET, PRESETS


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"saelign {SAELIGN_VERSION}"


@pytest.mark.parametrize(
    "argv, usage",
    [
        (["capture", "--bogus", "1"], "usage: saelign capture"),
        (["sae", "eval", "--sae", "x", "--store", "y", "--bogus"], "usage: saelign sae eval"),
        (["sails", "run", "--lora-r", "4"], "usage: saelign sails run"),
        (
            ["align", "swap", "--aligned", "a", "--prompt", "p", "--source", "s", "--target", "t", "--nope"],
            "usage: saelign align swap",
        ),
    ],
)
def test_an_unknown_flag_prints_the_subcommands_usage(capsys, argv, usage):
    code, _, err = run(argv, capsys)
    assert code == 2 and err.startswith(usage)
    assert "unrecognized arguments" in err.strip().splitlines()[-1]


def test_sails_help_shows_the_default_presets_values(capsys):
    code, out, _ = run(["sails", "run", "--help"], capsys)
    text = " ".join(out.split())  # argparse wraps help lines
    assert code == 0 and DEFAULT_PRESET == "quick"
    quick = PRESETS["quick"]
    assert f"--sft-steps INT optimizer steps (default: {quick['sft']['steps']})" in text
    assert f"(default: {quick['sae']['d_sae']})" in text.rsplit("--sae-d-sae INT", 1)[1][:200]
    assert "(default: 300)" not in text.rsplit("--sft-steps INT", 1)[1][:60]  # SFTConfig's own default
    assert "the defaults shown above are those of the default preset, quick" in text


def test_config_options_outside_their_section_are_refused(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("k: 8\nsae:\n  d_sae: 16\n")
    code, _, err = run(
        ["sae", "train", "--store", str(tmp_path), "--config", str(config), "--out", str(tmp_path / "o")],
        capsys,
    )
    assert code == 2 and err.strip() == (
        f"saelign: error: config file {config}: unknown top-level key(s) k; this "
        "command reads the sections sae, train (put each option inside its section)"
    )
    assert not (tmp_path / "o").exists()
