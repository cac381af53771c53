"""Bad input to the CLI, part one: config files, flags, unknown names, corpora, activation stores and SAEs.

Each case copies the world (`bad_input_world`), breaks something, runs one command in-process and checks: exit
code 2; stderr ends in one line `saelign: error: ...` that names the file, line or field and says what to do
(the case's fragments); no traceback; every file and folder that existed before is unchanged (sha256 of
each), and nothing new is left behind. Part two (test_bad_input_runs.py): slot maps, ontologies, labels, run
records, output folders, links, artifacts of another model, and the loaders called directly."""

from __future__ import annotations

import math

import pytest
import torch

from bad_input_world import (
    CAPTURE,
    EVAL,
    HOOK,
    LABEL,
    SAILS,
    STORE,
    SWAP,
    TRAIN,
    Case,
    append,
    check_cli_case,
    cut,
    edit_json,
    flip,
    foreign_sae,
    nan_row,
    retensor,
    world,  # noqa: F401  (world is a fixture)
    write,
)
from saelign.models import ModelConfig
from saelign.store import CaptureConfig, capture

CASES = [
    # config files: malformed, truncated, wrong shape, unknown keys
    Case(
        "config-malformed-yaml",
        [*CAPTURE, "--config", "{w}/c.yaml", "--out", "{w}/o"],
        ("c.yaml cannot be parsed", "fix its syntax"),
        write("c.yaml", "capture: [unclosed\n"),
    ),
    Case(
        "config-truncated-json",
        [*CAPTURE, "--config", "{w}/c.json", "--out", "{w}/o"],
        ("c.json cannot be parsed",),
        write("c.json", '{"capture": {"context_length": 1'),
    ),
    Case(
        "config-not-utf8",
        [*CAPTURE, "--config", "{w}/c.yaml", "--out", "{w}/o"],
        ("c.yaml is not UTF-8", "convert it"),
        write("c.yaml", b"capture:\n  corpus: \xff\xfe\n"),
    ),
    Case(
        "config-top-level-list",
        [*TRAIN, "--config", "{w}/c.yaml"],
        ("c.yaml: the top level must be a mapping",),
        write("c.yaml", "- a\n- b\n"),
    ),
    Case(
        "config-unknown-top-level-key",
        [*TRAIN, "--config", "{w}/c.yaml"],
        ("c.yaml: unknown top-level key(s) k", "sections sae, train"),
        write("c.yaml", "k: 8\n"),
    ),
    Case(
        "config-section-is-a-number",
        [*SAILS, "--config", "{w}/c.yaml"],
        ("c.yaml: sft: expected a section of options",),
        write("c.yaml", "sft: 5\n"),
    ),
    Case(
        "config-unknown-option",
        [*TRAIN, "--config", "{w}/c.yaml"],
        ("c.yaml: train: unknown option(s) lrr",),
        write("c.yaml", "train: {lrr: 0.1}\n"),
    ),
    Case(
        "config-bad-value",
        [*TRAIN, "--config", "{w}/c.yaml"],
        ("c.yaml: train.lr_warmup_fraction must lie in [0, 1)",),
        write("c.yaml", "train: {lr_warmup_fraction: 2}\n"),
    ),
    Case(
        "config-alias-bomb",
        [*TRAIN, "--config", "{w}/c.yaml"],
        ("c.yaml: unknown top-level key(s) a, b, c",),
        write(
            "c.yaml",
            "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: [*b, *b, *b, *b, *b, *b, *b, *b]\n",
        ),
    ),
    # flags: named as flags
    Case(
        "flag-negative-steps", [*SAILS, "--sft-steps", "-3", "--overwrite"], ("--sft-steps must be positive",)
    ),
    Case(
        "flag-not-a-number",
        [*CAPTURE, "--batch-size", "many", "--out", "{w}/o"],
        ("--batch-size: expected int",),
    ),
    Case("flag-nan", [*TRAIN, "--lr", "nan"], ("--lr: expected a finite number",)),
    Case(
        "flag-empty-hookpoints",
        [*CAPTURE[:-8], "--hookpoints", "", "--out", "{w}/o"],
        ("--hookpoints is empty",),
    ),
    # unknown hookpoints, modules, concepts, methods, activations
    Case(
        "unknown-hookpoint",
        [*CAPTURE[:-8], "--hookpoints", "model.layers.99", "--out", "{w}/o"],
        ("unknown hookpoint 'model.layers.99'", "close matches"),
    ),
    Case(
        "unknown-module",
        [*SAILS, "--lora-target-modules", "attn_proj", "--overwrite"],
        ("attn_proj not found", "its linear modules are"),
    ),
    Case(
        "unknown-concept",
        [*SWAP[:-4], "--target", "weather", "--max-new-tokens", "2"],
        ("unknown concept 'weather'",),
    ),
    Case("unknown-method", [*SAILS, "--methods", "sails,dpo"], ("unknown method 'dpo'",)),
    Case("unknown-activation", [*TRAIN, "--activation", "gelu"], ("unknown SAE activation 'gelu'",)),
    Case(
        "unknown-preset",
        [*SAILS, "--config", "{w}/c.yaml"],
        ("unknown preset 'huge'", "choose from quick"),
        write("c.yaml", "preset: huge\n"),
    ),
    # corpora
    Case(
        "corpus-empty",
        [*CAPTURE[:-10], "--corpus", "{w}/empty.txt", "--hookpoints", HOOK, "--out", "{w}/o"],
        ("empty.txt has no text",),
        write("empty.txt", "\n\n  \n"),
    ),
    Case(
        "corpus-csv",
        [*CAPTURE[:-10], "--corpus", "{w}/c.csv", "--hookpoints", HOOK, "--out", "{w}/o"],
        ("c.csv has the extension '.csv'", "give a .txt"),
        write("c.csv", "a,b\n1,2\n"),
    ),
    Case(
        "corpus-jsonl-malformed",
        [*CAPTURE[:-10], "--corpus", "{w}/c.jsonl", "--hookpoints", HOOK, "--out", "{w}/o"],
        ("c.jsonl:2: not valid JSON",),
        write("c.jsonl", '{"text": "fine"}\n{"text": \n'),
    ),
    Case(
        "corpus-missing",
        [*CAPTURE[:-10], "--corpus", "{w}/nope.txt", "--hookpoints", HOOK, "--out", "{w}/o"],
        ("nope.txt' not found",),
    ),
    # activation stores: missing, malformed, truncated, oversized, corrupt, NaN, wrong dtype, other run
    Case("store-missing", [*TRAIN[:2], "--store", "{w}/nostore", *TRAIN[4:]], ("manifest.json is missing",)),
    Case("store-is-a-file", [*TRAIN[:2], "--store", "{w}/corpus.txt", *TRAIN[4:]], ("no activation store",)),
    Case(
        "manifest-malformed",
        TRAIN,
        ("manifest.json is not valid JSON",),
        write(f"{STORE}/manifest.json", "{oops"),
    ),
    Case("manifest-truncated", TRAIN, ("manifest.json is not valid JSON",), cut(f"{STORE}/manifest.json")),
    Case(
        "manifest-wrong-format",
        TRAIN,
        ("not a saelign activation store manifest",),
        edit_json(f"{STORE}/manifest.json", lambda m: m.update(format="other")),
    ),
    Case(
        "manifest-shards-not-a-list",
        TRAIN,
        ("manifest.json", "shards"),
        edit_json(f"{STORE}/manifest.json", lambda m: m.update(shards=7)),
    ),
    Case(
        "manifest-d-in-not-a-number",
        TRAIN,
        ("manifest.json", "d_in"),
        edit_json(f"{STORE}/manifest.json", lambda m: m.update(d_in="wide")),
    ),
    Case(
        "shard-truncated",
        TRAIN,
        ("shard_00001.safetensors is truncated", "rerun the same `saelign capture`"),
        cut(f"{STORE}/shard_00001.safetensors"),
    ),
    Case(
        "shard-oversized",
        TRAIN,
        ("shard_00000.safetensors is truncated or altered",),
        append(f"{STORE}/shard_00000.safetensors", b"\0" * 4096),
    ),
    Case(
        "shard-corrupt",
        TRAIN,
        ("shard_00002.safetensors is corrupt (sha256", "delete it and rerun"),
        flip(f"{STORE}/shard_00002.safetensors"),
    ),
    Case(
        "shard-nan",
        TRAIN,
        ("shard_00001.safetensors holds NaN", "--store-dtype float32"),
        retensor(f"{STORE}/shard_00001.safetensors", nan_row, manifest=True),
    ),
    Case(
        "shard-wrong-dtype",
        TRAIN,
        ("shard_00000.safetensors: column 'token_ids'", "recapture"),
        retensor(
            f"{STORE}/shard_00000.safetensors", lambda t: t.update(token_ids=t["token_ids"].float()), True
        ),
    ),
    Case(
        "shard-wrong-width",
        TRAIN,
        ("shard_00000.safetensors has activations of width 31",),
        retensor(
            f"{STORE}/shard_00000.safetensors",
            lambda t: t.update(activations=t["activations"][:, :31].contiguous()),
            True,
        ),
    ),
    Case(
        "store-of-another-hookpoint",
        [*EVAL[:4], "--store", "{w}/acts2/model.layers.2", *EVAL[6:]],
        ("store", "model.layers.2"),
        lambda w: capture(
            ModelConfig(model=str(w / "model")),
            CaptureConfig(
                hookpoints=["model.layers.2"],
                corpus=str(w / "corpus.txt"),
                context_length=16,
                token_budget=64,
                shard_tokens=64,
                out=str(w / "acts2"),
            ),
        ),
    ),
    # SAEs: missing, malformed, truncated, wrong shapes/dtypes, NaN/inf, not matching the model
    Case("sae-missing", [*EVAL[:2], "--sae", "{w}/nosae", *EVAL[4:]], ("SAE not found",)),
    Case(
        "sae-cfg-malformed",
        EVAL,
        ("sae/cfg.json is not valid JSON", "fix or regenerate"),
        write("sae/cfg.json", '{"d_in": 32,'),
    ),
    Case("sae-cfg-not-a-mapping", EVAL, ("sae/cfg.json",), write("sae/cfg.json", "[1, 2]")),
    Case(
        "sae-cfg-missing",
        EVAL,
        ("but no cfg.json", "save the SAE again"),
        lambda w: (w / "sae/cfg.json").unlink(),
    ),
    Case(
        "sae-weights-truncated",
        EVAL,
        ("sae_weights.safetensors is corrupt or truncated",),
        cut("sae/sae_weights.safetensors", 0.3),
    ),
    Case(
        "sae-weights-header-garbage",
        EVAL,
        ("sae_weights.safetensors is corrupt or truncated",),
        write("sae/sae_weights.safetensors", b"\xff" * 8 + b"{not json}"),
    ),
    Case(
        "sae-weights-wrong-shape",
        EVAL,
        ("W_dec has shape (48, 31)", "do not match the config"),
        retensor("sae/sae_weights.safetensors", lambda t: t.update(W_dec=t["W_dec"][:, :31].contiguous())),
    ),
    Case(
        "sae-weights-wrong-dtype",
        EVAL,
        ("sae_weights.safetensors", "W_enc", "floating"),
        retensor("sae/sae_weights.safetensors", lambda t: t.update(W_enc=t["W_enc"].to(torch.int32))),
    ),
    Case(
        "sae-weights-nan",
        EVAL,
        ("sae_weights.safetensors", "NaN or infinite", "W_enc"),
        retensor("sae/sae_weights.safetensors", lambda t: t["W_enc"].view(-1).__setitem__(7, math.nan)),
    ),
    Case(
        "sae-weights-inf",
        EVAL,
        ("sae_weights.safetensors", "NaN or infinite", "b_dec"),
        retensor("sae/sae_weights.safetensors", lambda t: t["b_dec"].__setitem__(0, math.inf)),
    ),
    Case(
        "sae-not-matching-model",
        [*LABEL[:5], "--sae", "{w}/other_sae", *LABEL[7:]],
        ("d_in=48", "use an SAE trained on this model"),
        foreign_sae(),
    ),
    Case(
        "sae-not-matching-hookpoint",
        [*LABEL[:5], "--sae", "{w}/other_sae", *LABEL[7:], "--hookpoint", "model.layers.2"],
        ("trained on hookpoint 'model.layers.1'",),
        foreign_sae(32),
    ),
    Case(
        "sae-other-store-width",
        [*EVAL[:2], "--sae", "{w}/other_sae", *EVAL[4:]],
        ("width 48", "width 32"),
        foreign_sae(),
    ),
    Case(
        "sails-sae-of-another-model",
        [*SAILS[:3], "{w}/run2", "--config", "{w}/run/config.json", "--sae", "{w}/other_sae"],
        ("d_in=48",),
        foreign_sae(),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(case, world, tmp_path, capsys):  # noqa: F811
    check_cli_case(case, world, tmp_path, capsys)
