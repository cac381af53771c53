"""The stage table: one declaration makes a stage a CLI subcommand and a step of the pipeline, in declared order."""

from __future__ import annotations

import json

import pytest

from saelign.cli import main
from saelign.sails import pipeline
from saelign.sails.presets import SailsConfig
from saelign.sails.rundir import RunDir, Stage
from saelign.sails.stages import STAGES


def test_the_stages_read_only_declared_stages_and_write_distinct_files():
    names = list(STAGES)
    for i, stage in enumerate(STAGES.values()):
        assert all(names.index(u) < i for u in stage.upstream), f"{stage.name} reads a later stage"
    outputs = [o for stage in STAGES.values() for o in stage.outputs]
    assert len(outputs) == len(set(outputs))


def test_a_stage_declared_once_is_a_subcommand_and_runs_in_pipeline_order(tmp_path, monkeypatch, capsys):
    ran = []

    def audit(run: RunDir, name: str) -> dict:
        ran.append(name)
        run.path("audit").mkdir(exist_ok=True)
        run.path("audit", f"{name}.json").write_text("{}")
        return {"audited": name}

    stage = Stage("audit", "check every method's adapter for the audit (audit/)", audit,
                  outputs=("audit/{name}.json",), keys=("effect_top",), per=lambda cfg: cfg.methods)
    monkeypatch.setitem(STAGES, "audit", stage)
    assert "audit     check every method's adapter" in _help(["sails", "--help"], capsys)
    assert "--run DIR" in _help(["sails", "audit", "--help"], capsys)

    cfg = SailsConfig(methods=["sails", "lora"])
    run = RunDir(tmp_path / "run", cfg, STAGES)
    assert run.units(list(STAGES))[-2:] == ["audit:sails", "audit:lora"]
    assert run.units(list(STAGES)).index("report") < run.units(list(STAGES)).index("audit:sails")
    pipeline.run_pipeline(cfg, tmp_path / "run", ["audit"])
    pipeline.run_pipeline(cfg, tmp_path / "run", ["audit"])  # done: skipped
    assert ran == ["sails", "lora"]
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    assert recorded["audit:lora"]["audited"] == "lora" and recorded["audit:lora"]["key"] == run.key("audit:lora")


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        main(argv)
    return capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--lora-init", "--sft-out", "--select-hookpoints", "--sae-hookpoint"])
def test_options_the_pipeline_sets_itself_are_no_flags(tmp_path, capsys, flag):
    with pytest.raises(SystemExit):
        main(["sails", "run", "--out", str(tmp_path / "run"), flag, "x"])
    assert f"unrecognized arguments: {flag} x" in capsys.readouterr().err
