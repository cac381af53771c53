"""Every artifact gets the mode the user's umask gives a normal file or folder, so a shared model, SAE or
adapter folder is readable to others. Temporary files and folders are private (0600/0700) and safetensors
writes 0600 files, so a writer that renames them into place without fixing the mode fails here.

The run uses umask 027 (files 0640, folders 0750): neither the private modes nor a hard-coded 0644/0755
can pass for it."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest

from saelign.datasets import fetch
from saelign.models import ModelConfig
from saelign.sails.pipeline import run_pipeline
from saelign.store import CaptureConfig, capture
from test_sails_pipeline import tiny_config, write_inputs

UMASK = 0o027
FILE_MODE, DIR_MODE = 0o666 & ~UMASK, 0o777 & ~UMASK
# One of each artifact kind (relative to the folders the test makes): all must exist, and so be checked.
KINDS = [
    "run/sae/sae_weights.safetensors",
    "run/sae/cfg.json",
    "run/sae/checkpoint/state.json",
    "run/select/subspace.safetensors",
    "run/select/selection.json",
    "run/labels.json",
    "run/config.json",
    "run/run.json",
    "run/methods/sails/adapter/adapter_model.safetensors",
    "run/methods/sails/adapter/adapter_config.json",
    "run/methods/sails/adapter/sails_provenance.json",
    "run/methods/full/adapter/model.safetensors",
    "run/methods/full/adapter/config.json",
    "run/eval/sails.json",
    "run/effect/sails.json",
    "run/report.md",
    "run/report.html",
    "run/report_safety_rate.png",
    "run/dashboard/index.html",
    "store/model.layers.1/shard_00000.safetensors",
    "store/model.layers.1/manifest.json",
    "cache/pkg/data/a.txt",
]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_llama_dir) -> Path:
    root = tmp_path_factory.mktemp("modes")
    inputs = write_inputs(tmp_path_factory.mktemp("modes_inputs"), tiny_llama_dir)
    previous = os.umask(UMASK)
    try:
        run_pipeline(tiny_config(inputs, methods=["sails", "full"]), root / "run")
        cfg = CaptureConfig(
            hookpoints=["model.layers.1"],
            corpus=str(inputs["root"] / "corpus.txt"),
            context_length=16,
            token_budget=100,
            shard_tokens=64,
            out=str(root / "store"),
        )
        capture(ModelConfig(model=str(tiny_llama_dir)), cfg)
        wheel = root / "pkg.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("pkg/data/a.txt", "hello")
        fetch.extract_members(wheel, ["pkg/data/*.txt"], root / "cache")  # a dataset cache folder
    finally:
        os.umask(previous)
    return root


def test_every_artifact_kind_is_there(artifacts):
    assert [kind for kind in KINDS if not (artifacts / kind).is_file()] == []


def test_every_file_and_folder_has_the_umask_mode(artifacts):
    wrong = []
    for path in [artifacts / "run", artifacts / "store", artifacts / "cache", *artifacts.rglob("*")]:
        if path.name == "pkg.whl" or path.is_symlink():
            continue  # the test's own input
        mode = stat.S_IMODE(path.stat().st_mode)
        want = DIR_MODE if path.is_dir() else FILE_MODE
        if mode != want:
            wrong.append(f"{path.relative_to(artifacts)}: {mode:o}, want {want:o}")
    assert wrong == []
