"""Run-directory keys: a unit's key changes exactly when an option it depends on, or an earlier unit it reads,
changes."""

from __future__ import annotations

import dataclasses

import pytest

from saelign.sails.presets import SailsConfig
from saelign.sails.rundir import RunDir
from saelign.sails.stages import STAGES

# describe reads every method's effect and answers: whatever changes one of them rekeys it
ALL = {"data", "sae", "labels", "select", "targets", "train:sails", "eval:base", "eval:sails", "effect:sails",
       "answers:sails", "describe"}
TRAINED = {"train:sails", "eval:sails", "effect:sails", "answers:sails", "describe"}


@pytest.mark.parametrize("section, change, rekeyed", [
    ("data", {"max_harmful": 7}, ALL),
    ("capture", {"token_budget": 99}, ALL - {"data", "targets", "eval:base"}),
    ("sae", {"d_sae": 99}, ALL - {"data", "targets", "eval:base"}),
    ("sae_train", {"lr": 0.1}, ALL - {"data", "targets", "eval:base"}),
    ("label", {"n_contexts": 2}, {"labels", "effect:sails", "answers:sails", "describe"}),
    ("describe", {"explain_top": 3}, {"describe"}),
    ("select", {"top_k": 3}, {"select", *TRAINED}),
    ("targets", {"max_new_tokens": 3}, {"targets", *TRAINED}),
    ("sft", {"steps": 3}, TRAINED),
    ("sft", {"gradient_checkpointing": True}, set()),  # same result: a done train stage stays done
    ("validation", {"per_kind": 3}, TRAINED),
    ("sft", {"retain_weight": 1.0}, TRAINED),
    ("validation", {"ppl_contexts": 4}, TRAINED),
    ("eval", {"n_facts": 3}, {"eval:base", "eval:sails"}),
    ("eval", {"seed": 3}, {"eval:base", *TRAINED}),  # the test text, and where validation and retain text lie
])
def test_changing_one_section_rekeys_exactly_the_units_that_depend_on_it(tmp_path, section, change, rekeyed):
    cfg = SailsConfig()
    changed = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **change)})
    units = RunDir(tmp_path, cfg, STAGES).units(list(STAGES))
    before, after = RunDir(tmp_path, cfg, STAGES), RunDir(tmp_path, changed, STAGES)
    assert {u for u in units if u != "report" and before.key(u) != after.key(u)} == rekeyed


def test_hidden_fields_are_not_part_of_a_key(tmp_path):
    cfg = SailsConfig()
    moved = dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, out="elsewhere"))
    assert RunDir(tmp_path, cfg, STAGES).components("train:sails") == RunDir(tmp_path, moved, STAGES).components(
        "train:sails")
    assert "out" not in RunDir(tmp_path, cfg, STAGES).components("train:sails")["sft"]


def test_a_clear_cut_short_leaves_no_half_deleted_unit_folder(tmp_path, monkeypatch):
    """`--overwrite` deletes a unit's folder; killed while deleting, it must not leave an adapter or
    checkpoint folder whose marker files outlived their data (the sails-train fault trial's finding)."""
    from saelign.sails import rundir

    run = RunDir(tmp_path, SailsConfig(), STAGES)
    adapter = tmp_path / "methods" / "sails" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")

    def killed(path, ignore_errors=False):
        if path.exists():
            raise KeyboardInterrupt

    monkeypatch.setattr(rundir.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        run.clear("train:sails")
    monkeypatch.undo()
    assert not (tmp_path / "methods" / "sails").exists()
    run.clear("train:sails")  # the next clear also removes what the cut-short one moved aside
    assert list((tmp_path / "methods").iterdir()) == []


def test_run_folders_made_before_the_retain_term_keep_their_keys(tmp_path):
    """The train key of the default config as it was before sft.retain_*, validation.ppl_contexts and the
    eval corpus options joined it (the added options are left out while at their old values)."""
    run = RunDir(tmp_path, SailsConfig(), STAGES)
    assert run.key("train:sails") == "cc36b3066979d255"
    assert "retain_weight" not in run.components("train:sails")["sft"]


def test_a_changed_gate_or_base_evaluation_rekeys_and_clears_every_gated_unit(tmp_path):
    """gated:M composes eval/base.json, eval/M.json and the gate's decisions: a new gate (another read-out) or a
    new base evaluation must redo it, or the old composition would pass for the new gate's."""
    cfg = dataclasses.replace(SailsConfig(), methods=["sails", "lora"],
                              gate=dataclasses.replace(SailsConfig().gate, enabled=True))
    moved = dataclasses.replace(cfg, gate=dataclasses.replace(cfg.gate, hookpoint="model.layers.27"))
    before, after = RunDir(tmp_path, cfg, STAGES), RunDir(tmp_path, moved, STAGES)
    rekeyed = {u for u in before.units(list(STAGES)) if u != "report" and before.key(u) != after.key(u)}
    assert rekeyed == {"gate:gate", "gated:sails", "gated:lora"}
    assert {"gated:sails", "gated:lora"} <= set(before.downstream("gate:gate"))
    assert "gated:sails" in before.downstream("eval:base") and "gate:gate" in before.upstream("gated:lora")
