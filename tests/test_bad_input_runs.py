"""Bad input, part two: slot maps, ontologies, labels, run records, output folders, links out of a run
folder and artifacts of another model through the CLI (checked as in test_bad_input.py), then every file
loader called directly: a SaelignError with a one-line message, nothing else, and nothing changed."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from bad_input_world import (
    ALIGN_TRAIN,
    CAPTURE,
    EVAL,
    LABEL,
    MODEL,
    SAILS,
    STORE,
    SWAP,
    TRAIN,
    Case,
    check_cli_case,
    copy_world,
    cut,
    edit_json,
    foreign_adapter,
    foreign_sae,
    link,
    other_ontology,
    other_tokenizer,
    snapshot,
    world,  # noqa: F401  (a fixture)
    write,
)
from saelign.align.ontology import load_ontology
from saelign.align.slots import load_slot_map
from saelign.checkpoint import load as load_checkpoint
from saelign.configs import load_config_file
from saelign.errors import SaelignError
from saelign.label.labels import load_labels
from saelign.sae import load_sae
from saelign.sails.adapters import load_adapter
from saelign.store import ActivationStore

ROOT = os.geteuid() == 0

CASES = [
    # slot maps, ontologies, labels, run records
    Case(
        "slot-map-malformed", SWAP, ("slot_map.json is not valid JSON",), write("aligned/slot_map.json", "{")
    ),
    Case(
        "slot-map-of-another-sae",
        SWAP,
        ("made for an SAE with d_sae=64",),
        edit_json("aligned/slot_map.json", lambda m: m.update(d_sae=64)),
    ),
    Case(
        "slot-map-slot-out-of-range",
        SWAP,
        ("slot_map.json",),
        edit_json("aligned/slot_map.json", lambda m: m.update(slots={"900": m["slots"]["48"]})),
    ),
    Case("ontology-empty", ["align", "check", "--ontology", "{w}/o.yaml"], ("o.yaml",), write("o.yaml", "")),
    Case(
        "ontology-malformed",
        ["align", "check", "--ontology", "{w}/o.yaml"],
        ("o.yaml",),
        write("o.yaml", "a: ["),
    ),
    Case(
        "ontology-a-list",
        ["align", "check", "--ontology", "{w}/o.yaml"],
        ("o.yaml",),
        write("o.yaml", "- 1\n"),
    ),
    Case(
        "align-train-other-ontology",
        [*ALIGN_TRAIN[:-1], "{w}/aligned"],
        ("another ontology", "choose another --out"),
        lambda w: (w / "ontology.yaml").write_text(other_ontology()),
    ),
    Case(
        "labels-malformed",
        ["dashboard", "--labels", "{w}/run/labels.json", "--out", "{w}/dash"],
        ("labels.json is not valid JSON",),
        cut("run/labels.json"),
    ),
    Case(
        "labels-not-ours",
        ["dashboard", "--labels", "{w}/run/labels.json", "--out", "{w}/dash"],
        ("not a saelign labels file",),
        write("run/labels.json", '{"latents": []}'),
    ),
    Case(
        "labels-rows-malformed",
        ["dashboard", "--labels", "{w}/run/labels.json", "--out", "{w}/dash"],
        ("labels.json: latents[0] is malformed",),
        edit_json("run/labels.json", lambda m: m["latents"][0].pop("short_label")),
    ),
    Case(
        "run-json-malformed",
        ["sails", "report", "--run", "{w}/run"],
        ("run.json is not valid JSON",),
        cut("run/run.json"),
    ),
    Case(
        "run-json-a-list", ["sails", "report", "--run", "{w}/run"], ("run.json",), write("run/run.json", "[]")
    ),
    Case(
        "run-config-malformed",
        ["sails", "report", "--run", "{w}/run"],
        ("config.json is not valid JSON",),
        cut("run/config.json"),
    ),
    Case(
        "run-config-unknown-option",
        ["sails", "report", "--run", "{w}/run"],
        ("unknown option(s) colour",),
        edit_json("run/config.json", lambda m: m.update(colour="red")),
    ),
    Case("run-stage-without-run", ["sails", "eval", "--run", "{w}/nothing"], ("has no", "saelign sails run")),
    # output folders: exist, are files, unwritable
    Case("out-is-a-file", [*CAPTURE, "--out", "{w}/corpus.txt"], ("cannot create output directory",)),
    Case(
        "sails-out-is-a-file",
        [*SAILS[:3], "{w}/corpus.txt", "--config", "{w}/run/config.json"],
        ("corpus.txt",),
    ),
    Case(
        "capture-over-another-store",
        [*CAPTURE[:10], "32", *CAPTURE[11:], "--out", "{w}/acts"],
        ("holds a store made with different settings", "context_length: 16 -> 32", "choose another --out"),
    ),
    Case(
        "align-train-out-is-a-file",
        [*ALIGN_TRAIN[:-1], "{w}/corpus.txt"],
        ("corpus.txt",),
    ),
    Case(
        "eval-out-exists",
        EVAL,
        ("holds an earlier evaluation", "pass --overwrite"),
        write("eval/eval.json", "{}"),
    ),
    Case(
        "convert-over-another-sae",
        ["sae", "convert", "--input", "{w}/sae", "--output", "{w}/aligned"],
        ("already holds a different SAE", "--overwrite"),
    ),
    Case(
        "train-over-another-sae", [*TRAIN[:-1], "{w}/sae"], ("already holds an SAE", "choose another --out")
    ),
    Case(
        "out-unwritable",
        [*TRAIN[:-1], "{w}/locked/sub"],
        ("not writable",),
        lambda w: ((w / "locked").mkdir(), os.chmod(w / "locked", 0o555)),
        skip="root writes anywhere" if ROOT else "",
    ),
    # symlinks out of the run folder
    Case(
        "run-link-outside",
        [*SAILS, "--eval-max-new-tokens", "5", "--overwrite"],
        ("run/eval is a link to", "outside the run folder"),
        link("run/eval", "outside"),
    ),
    Case(
        "run-file-link-outside",
        ["sails", "report", "--run", "{w}/run"],
        ("run/report.md is a link to", "outside the run folder"),
        link("run/report.md", "outside/keep.json"),
    ),
    # artifacts from another run or model
    Case(
        "serve-adapter-of-another-model",
        ["serve", "--run", "{w}/run", "--adapter", "{w}/other_adapter", "--device", "cpu", "--port", "0"],
        ("other_adapter does not fit this model", "use an adapter trained on this model"),
        lambda w: foreign_adapter(w / "other_adapter"),
    ),
    Case(
        "serve-sae-of-another-model",
        ["serve", "--run", "{w}/run", "--sae", "{w}/other_sae", "--device", "cpu", "--port", "0"],
        ("selection.json: latent",),
        foreign_sae(),
    ),
    Case(
        "align-eval-other-ontology",
        [
            "align",
            "eval",
            *MODEL,
            "--aligned",
            "{w}/aligned",
            "--vanilla",
            "{w}/sae",
            "--ontology",
            "{w}/o.yaml",
            "--out",
            "{w}/ae",
        ],
        ("differ from the slot map's",),
        lambda w: (w / "o.yaml").write_text(other_ontology()),
    ),
    Case(
        "store-of-another-tokenizer",
        [*EVAL[:6], "--n-contexts", "2", "--model", "{w}/model2", *EVAL[-4:]],
        ("was captured with another tokenizer", "leave --model out"),
        lambda w: other_tokenizer(w / "model", w / "model2"),
    ),
    Case(
        "align-build-bad-out",
        ["align", "build", "--name", "relations", "--out", "{w}/r.txt"],
        ("--out", "use a .yaml, .yml or .json"),
    ),
    Case(
        "convert-unknown-format",
        ["sae", "convert", "--input", "{w}/sae", "--output", "{w}/c", "--format", "xyz"],
        ("invalid choice: 'xyz'",),
    ),
    Case("label-latent-out-of-range", [*LABEL, "--latents", "900"], ("900",)),
    # unknown flags and missing arguments
    Case("unknown-flag", [*EVAL, "--bogus", "1"], ("unrecognized arguments: --bogus 1",)),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(case, world, tmp_path, capsys):  # noqa: F811
    check_cli_case(case, world, tmp_path, capsys)


@dataclass
class ApiCase:
    id: str
    call: Callable[[Path], object]  # a loader called on the world's copy
    says: tuple[str, ...]
    setup: Callable[[Path], None] | None = None


def own_options(w: Path) -> dict:
    """The options the SAE checkpoint was made with, so loading gets past the fingerprint check."""
    return json.loads((w / "run" / "sae" / "checkpoint" / "state.json").read_text())["options"]


API_CASES = [
    ApiCase(
        "store-manifest-a-list",
        lambda w: ActivationStore(w / STORE),
        ("manifest.json", "not a saelign"),
        write(f"{STORE}/manifest.json", "[]"),
    ),
    ApiCase(
        "store-shard-entry-malformed",
        lambda w: ActivationStore(w / STORE),
        ("shards[0] needs file",),
        edit_json(f"{STORE}/manifest.json", lambda m: m["shards"][0].update(bytes="many")),
    ),
    ApiCase(
        "store-shard-name-escapes",
        lambda w: ActivationStore(w / STORE),
        ("shards[0] needs file",),
        edit_json(f"{STORE}/manifest.json", lambda m: m["shards"][0].update(file="../../outside/keep.json")),
    ),
    ApiCase(
        "sae-cfg-metadata-not-a-mapping",
        lambda w: load_sae(w / "sae"),
        ("cfg.json is malformed",),
        edit_json("sae/cfg.json", lambda m: m.update(metadata=[1])),
    ),
    ApiCase(
        "sae-cfg-norm-scale-text",
        lambda w: load_sae(w / "sae"),
        ("cfg.json is malformed",),
        edit_json("sae/cfg.json", lambda m: m["metadata"]["saelign"].update(norm_scale="big")),
    ),
    ApiCase(
        "sae-cfg-d-sae-negative",
        lambda w: load_sae(w / "sae"),
        ("d_sae must be positive",),
        edit_json("sae/cfg.json", lambda m: m["metadata"]["saelign"]["config"].update(d_sae=-1)),
    ),
    ApiCase(
        "slot-map-a-list",
        lambda w: load_slot_map(w / "aligned"),
        ("slot_map.json",),
        write("aligned/slot_map.json", "[]"),
    ),
    ApiCase(
        "ontology-concepts-a-string",
        lambda w: load_ontology(w / "ontology.yaml"),
        ("ontology.yaml",),
        write("ontology.yaml", "name: x\nconcepts: hello\n"),
    ),
    ApiCase(
        "labels-latents-a-number",
        lambda w: load_labels(w / "run" / "labels.json"),
        ("labels.json",),
        edit_json("run/labels.json", lambda m: m.update(latents=5)),
    ),
    ApiCase(
        "config-deeply-nested",
        lambda w: load_config_file(w / "c.json"),
        ("c.json cannot be parsed",),
        write("c.json", "[" * 100000),
    ),
    ApiCase(
        "checkpoint-state-malformed",
        lambda w: load_checkpoint(w / "run" / "sae" / "checkpoint", {}),
        ("state.json is not valid JSON",),
        cut("run/sae/checkpoint/state.json"),
    ),
    ApiCase(
        "checkpoint-files-point-outside",
        lambda w: load_checkpoint(w / "run" / "sae" / "checkpoint", own_options(w)),
        ("state.json",),
        edit_json(
            "run/sae/checkpoint/state.json", lambda m: m.update(files={"sae0": "../../../outside/keep.json"})
        ),
    ),
    ApiCase(
        "adapter-of-another-model",
        lambda w: load_adapter(AutoModelForCausalLM.from_pretrained(str(w / "model")), w / "other_adapter"),
        ("does not fit this model",),
        lambda w: foreign_adapter(w / "other_adapter"),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in API_CASES])
def test_loaders_raise_only_saelign_errors_and_change_nothing(case, world, tmp_path):  # noqa: F811
    w = copy_world(world, tmp_path, case.setup)
    before = snapshot(w)
    with pytest.raises(SaelignError) as info:
        case.call(w)
    message = str(info.value)
    assert "\n" not in message and all(fragment in message for fragment in case.says), message
    assert snapshot(w) == before
