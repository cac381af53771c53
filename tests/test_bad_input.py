"""One table of bad inputs over the CLI's entry points and the file loaders behind them.

Each case copies a small world (tiny Llama folder, corpus, activation store, SAE, aligned SAE, ontology, a
finished SAILS run), breaks something, runs one command in-process and checks: exit code 2; stderr ends in
one line `saelign: error: ...` that names the file, line or field and says what to do (the case's fragments);
no traceback; and every file and folder that existed before is unchanged (sha256 of each), with nothing new
left behind. The API cases check the same of a loader called directly: a SaelignError, nothing else."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save, save_file
from transformers import AutoModelForCausalLM as AutoModel

from saelign.align.slots import SlotMap, save_slot_map
from saelign.cli import main
from saelign.errors import SaelignError
from saelign.models import ModelConfig
from saelign.sae import SAE, SAEConfig, save_sae
from saelign.sails import pipeline
from saelign.store import CaptureConfig, capture
from test_cli_align import ONTOLOGY
from test_sails_pipeline import inputs, tiny_config  # noqa: F401  (inputs is a fixture)

HOOK = "model.layers.1"
STORE = f"acts/{HOOK}"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_llama_dir, inputs) -> Path:  # noqa: F811
    """The pristine world every case starts from (copied per case)."""
    root = tmp_path_factory.mktemp("bad_input_world")
    shutil.copytree(tiny_llama_dir, root / "model")
    (root / "corpus.txt").write_text((inputs["root"] / "corpus.txt").read_text())
    cfg = CaptureConfig(
        hookpoints=[HOOK],
        corpus=str(root / "corpus.txt"),
        context_length=16,
        token_budget=200,
        shard_tokens=64,
        out=str(root / "acts"),
    )
    capture(ModelConfig(model=str(root / "model")), cfg)
    sae = SAE(SAEConfig(d_in=32, d_sae=48, activation="topk", k=4, hookpoint=HOOK))
    sae.reset_parameters(seed=0)
    save_sae(sae, root / "sae")
    aligned = SAE(
        SAEConfig(d_in=32, d_sae=50, activation="topk", k=4, hookpoint=HOOK, always_on_latents=[48, 49])
    )
    aligned.reset_parameters(seed=1)
    save_sae(aligned, root / "aligned")
    save_slot_map(
        SlotMap(concepts=["capital", "food"], slots=[48, 49], hookpoint=HOOK, d_sae=50), root / "aligned"
    )
    (root / "ontology.yaml").write_text(yaml.safe_dump(ONTOLOGY, sort_keys=False))
    shutil.copy(root / "ontology.yaml", root / "aligned" / "ontology.yaml")
    pipeline.run_pipeline(tiny_config(inputs), root / "run")
    (root / "outside").mkdir()
    (root / "outside" / "keep.json").write_text('{"keep": true}\n')
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under root: files by sha256, folders as 'dir', links by target (never followed)."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[key] = "dir"
        else:
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# Ways to break the world (each takes the world's copy).
def write(rel: str, text: str | bytes) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        (w / rel).parent.mkdir(parents=True, exist_ok=True)
        (w / rel).write_bytes(text if isinstance(text, bytes) else text.encode())

    return setup


def cut(rel: str, keep: float = 0.5) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        data = (w / rel).read_bytes()
        (w / rel).write_bytes(data[: int(len(data) * keep)])

    return setup


def append(rel: str, extra: bytes) -> Callable[[Path], None]:
    return lambda w: (w / rel).write_bytes((w / rel).read_bytes() + extra)


def flip(rel: str, at: int = -20) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        data = bytearray((w / rel).read_bytes())
        data[at] ^= 0xFF
        (w / rel).write_bytes(bytes(data))

    return setup


def edit_json(rel: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        data = json.loads((w / rel).read_text())
        change(data)
        (w / rel).write_text(json.dumps(data))

    return setup


def retensor(
    rel: str, change: Callable[[dict[str, torch.Tensor]], None], manifest: bool = False
) -> Callable[[Path], None]:
    """Rewrite a safetensors file with changed tensors; with `manifest`, as a store shard whose manifest entry
    is updated to match (so only the content is wrong)."""

    def setup(w: Path) -> None:
        tensors = load_file(w / rel)
        change(tensors)
        if not manifest:
            save_file(tensors, w / rel)
            return
        data = save(tensors, metadata={"format": "saelign-activations"})
        (w / rel).write_bytes(data)
        path = (w / rel).parent / "manifest.json"
        m = json.loads(path.read_text())
        entry = next(s for s in m["shards"] if s["file"] == Path(rel).name)
        entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        path.write_text(json.dumps(m))

    return setup


def nan_row(tensors: dict[str, torch.Tensor]) -> None:
    tensors["activations"][3, 5] = math.nan


def foreign_sae(d_in: int = 48, hookpoint: str = HOOK) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        sae = SAE(SAEConfig(d_in=d_in, d_sae=16, activation="topk", k=2, hookpoint=hookpoint))
        save_sae(sae, w / "other_sae")

    return setup


def foreign_adapter(folder: Path) -> None:
    """A stock PEFT adapter of a wider Llama (hidden size 48): another model's adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    from saelign.sails.adapters import save_adapter

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=400,
        hidden_size=48,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        num_key_value_heads=2,
    )
    other = get_peft_model(
        AutoModelForCausalLM.from_config(config), LoraConfig(r=2, target_modules=["q_proj"])
    )
    save_adapter(other, folder, {})


def other_tokenizer(model: Path, out: Path) -> None:
    """The same model with one token added to its tokenizer: a store's tokens mean other text to it."""
    from transformers import AutoTokenizer

    shutil.copytree(model, out)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    tokenizer.add_tokens(["zzzq"])
    tokenizer.save_pretrained(str(out))


def link(rel: str, target: str) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        path = w / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        path.symlink_to(w / target, target_is_directory=(w / target).is_dir())

    return setup


def steps(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        for s in setups:
            s(w)

    return setup


@dataclass
class Case:
    id: str
    argv: list[str]  # "{w}" is the world's copy
    says: tuple[str, ...]  # fragments of the one-line message: the file/field and the fix
    setup: Callable[[Path], None] | None = None
    skip: str = ""


MODEL = ["--model", "{w}/model", "--device", "cpu"]
CAPTURE = [
    "capture",
    *MODEL,
    "--corpus",
    "{w}/corpus.txt",
    "--hookpoints",
    HOOK,
    "--context-length",
    "16",
    "--token-budget",
    "200",
    "--shard-tokens",
    "64",
]
TRAIN = [
    "sae",
    "train",
    "--store",
    f"{{w}}/{STORE}",
    "--d-sae",
    "16",
    "--k",
    "2",
    "--batch-size",
    "32",
    "--out",
    "{w}/trained",
]
EVAL = [
    "sae",
    "eval",
    "--sae",
    "{w}/sae",
    "--store",
    f"{{w}}/{STORE}",
    "--n-contexts",
    "0",
    "--device",
    "cpu",
    "--out",
    "{w}/eval",
]
LABEL = [
    "label",
    *MODEL,
    "--sae",
    "{w}/sae",
    "--corpus",
    "{w}/corpus.txt",
    "--token-budget",
    "64",
    "--context-length",
    "16",
    "--out",
    "{w}/labels.json",
]
SWAP = [
    "align",
    "swap",
    *MODEL,
    "--aligned",
    "{w}/aligned",
    "--prompt",
    "The capital of France is",
    "--source",
    "capital",
    "--target",
    "food",
    "--max-new-tokens",
    "2",
]
ALIGN_TRAIN = [
    "align",
    "train",
    *MODEL,
    "--sae",
    "{w}/sae",
    "--ontology",
    "{w}/ontology.yaml",
    "--corpus",
    "{w}/corpus.txt",
    "--generic-tokens",
    "64",
    "--context-length",
    "16",
    "--steps-stage1",
    "1",
    "--steps-stage2",
    "1",
    "--out",
    "{w}/aligned2",
]
SAILS = ["sails", "run", "--out", "{w}/run"]
ROOT = os.geteuid() == 0

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
        lambda w: (w / "ontology.yaml").write_text(
            yaml.safe_dump(
                {**ONTOLOGY, "concepts": [{**c, "name": c["name"] + "2"} for c in ONTOLOGY["concepts"]]}
            )
        ),
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
        lambda w: (w / "o.yaml").write_text(
            yaml.safe_dump(
                {**ONTOLOGY, "concepts": [{**c, "name": c["name"] + "2"} for c in ONTOLOGY["concepts"]]}
            )
        ),
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
def test_bad_input_is_one_clear_line_and_changes_nothing(case, world, tmp_path, capsys):
    if case.skip:
        pytest.skip(case.skip)
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    if case.setup:
        case.setup(w)
    before = snapshot(w)
    argv = [a.replace("{w}", str(w)) for a in case.argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.rstrip("\n").split("\n")
    last = lines[-1]
    assert code == 2, f"exit {code}: {err[-2000:]}"
    assert last.startswith(("saelign: error: ", "saelign ")), last
    for fragment in case.says:
        assert fragment.replace("{w}", str(w)) in last, f"{fragment!r} not in: {last}"
    after = snapshot(w)
    changed = sorted(k for k in before if after.get(k) != before[k])
    added = sorted(set(after) - set(before))
    assert (changed, added) == ([], []), last


@dataclass
class ApiCase:
    id: str
    call: Callable[[Path], object]  # a loader called on the world's copy
    says: tuple[str, ...]
    setup: Callable[[Path], None] | None = None


def _loaders():
    from saelign.align.ontology import load_ontology
    from saelign.align.slots import load_slot_map
    from saelign.checkpoint import load as load_checkpoint
    from saelign.configs import load_config_file
    from saelign.label.labels import load_labels
    from saelign.sae import load_sae
    from saelign.sails.adapters import load_adapter
    from saelign.store import ActivationStore

    return (
        load_ontology,
        load_slot_map,
        load_checkpoint,
        load_config_file,
        load_labels,
        load_sae,
        load_adapter,
        ActivationStore,
    )


(
    load_ontology,
    load_slot_map,
    load_checkpoint,
    load_config_file,
    load_labels,
    load_sae,
    load_adapter,
    ActivationStore,
) = _loaders()


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
        lambda w: load_adapter(AutoModel.from_pretrained(str(w / "model")), w / "other_adapter"),
        ("does not fit this model",),
        lambda w: foreign_adapter(w / "other_adapter"),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in API_CASES])
def test_loaders_raise_only_saelign_errors_and_change_nothing(case, world, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    if case.setup:
        case.setup(w)
    before = snapshot(w)
    with pytest.raises(SaelignError) as info:
        case.call(w)
    message = str(info.value)
    assert "\n" not in message and all(fragment in message for fragment in case.says), message
    assert snapshot(w) == before
