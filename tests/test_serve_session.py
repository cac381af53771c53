"""Loading what the page steers: a SAILS run folder's parts, explicit paths over them, and clear errors."""

from __future__ import annotations

import shutil

import pytest
from peft import PeftModel

from saelign.errors import SaelignError
from saelign.io import write_json_atomic
from saelign.sae.formats import load_sae
from saelign.serve import ServeConfig, load_session
from serve_world import FEATURES, build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("serve"))


def test_a_run_folder_gives_model_sae_labels_features_and_adapter(world):
    session = load_session(ServeConfig(run=str(world["run"]), aligned=str(world["aligned"]), device="cpu"))
    assert [f.id for f in session.features] == FEATURES
    assert session.features[0].label == "capital cities #5" and session.labels[9] == "capital cities #9"
    assert session.features[0].scale == 2.0  # the label's strongest context activation
    assert isinstance(session.peft, PeftModel) and session.model is session.peft.get_base_model()
    assert session.slot_map.concepts == ["france", "germany", "bread"]
    assert session.dashboard == world["run"] / "labels.html"


def test_explicit_paths_win_and_missing_parts_are_left_out(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    shutil.rmtree(run / "methods")
    (run / "labels.json").unlink()
    (run / "labels.html").write_text("<html>cards</html>")
    other = tmp_path / "other_sae"
    shutil.copytree(world["aligned"], other)
    write_json_atomic(run / "sae.json", {"path": str(other)})
    session = load_session(ServeConfig(run=str(run), device="cpu"))
    assert session.peft is None and session.aligned is None and session.dashboard is None
    assert session.features[0].scale == 1.0 and session.features[0].label == ""  # the selection's mean
    assert session.sae.W_dec.equal(load_sae(other).W_dec)  # sae.json names the SAE
    bare = load_session(
        ServeConfig(
            model=str(world["model"]),
            adapter=str(world["run"] / "methods" / "sails" / "adapter"),
            device="cpu",
        )
    )
    assert bare.sae is None and bare.features == [] and bare.peft is not None


def test_errors_name_the_problem(world, tmp_path):
    with pytest.raises(SaelignError, match="--run .* or --model"):
        ServeConfig()
    with pytest.raises(SaelignError, match="not a SAILS run folder"):
        load_session(ServeConfig(run=str(tmp_path), device="cpu"))
    with pytest.raises(SaelignError, match="slot map"):
        load_session(ServeConfig(model=str(world["model"]), aligned=str(world["run"] / "sae"), device="cpu"))
    with pytest.raises(SaelignError, match="port"):
        ServeConfig(model="default", port=70000)
