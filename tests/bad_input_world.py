"""The world the bad-input suites break: a tiny Llama folder, a corpus, an activation store, an SAE, an
aligned SAE with its slot map and ontology, a finished SAILS run and a folder outside it; the ways to break
it; and the check every case makes (nothing that existed changed, nothing new left behind)."""

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

from saelign.align.slots import SlotMap, save_slot_map
from saelign.cli import main
from saelign.models import ModelConfig
from saelign.sae import SAE, SAEConfig, save_sae
from saelign.sails.pipeline import run_pipeline
from saelign.store import CaptureConfig, capture
from test_cli_align import ONTOLOGY
from test_sails_pipeline import tiny_config, write_inputs

HOOK = "model.layers.1"
STORE = f"acts/{HOOK}"


@pytest.fixture(scope="session")
def world(tmp_path_factory, tiny_llama_dir) -> Path:
    """The pristine world every case starts from (each case works on a copy)."""
    root = tmp_path_factory.mktemp("bad_input_world")
    inputs = write_inputs(tmp_path_factory.mktemp("bad_input_sails_inputs"), tiny_llama_dir)
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
    run_pipeline(tiny_config(inputs), root / "run")
    (root / "outside").mkdir()
    (root / "outside" / "keep.json").write_text('{"keep": true}\n')
    return root


def copy_world(world: Path, tmp_path: Path, setup: Callable[[Path], None] | None) -> Path:
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    if setup:
        setup(w)
    return w


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


def other_ontology() -> str:
    """The test ontology with every concept renamed."""
    return yaml.safe_dump(
        {**ONTOLOGY, "concepts": [{**c, "name": c["name"] + "2"} for c in ONTOLOGY["concepts"]]}
    )


@dataclass
class Case:
    id: str
    argv: list[str]  # "{w}" is the world's copy
    says: tuple[str, ...]  # fragments of the one-line message: the file/field and the fix
    setup: Callable[[Path], None] | None = None
    skip: str = ""


def check_cli_case(case: Case, world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Exit code 2, one `saelign: error:` line with the case's fragments, no traceback, nothing changed."""
    if case.skip:
        pytest.skip(case.skip)
    w = copy_world(world, tmp_path, case.setup)
    before = snapshot(w)
    try:
        code = main([a.replace("{w}", str(w)) for a in case.argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.rstrip("\n").split("\n")[-1]
    assert code == 2, f"exit {code}: {err[-2000:]}"
    assert last.startswith(("saelign: error: ", "saelign ")), last
    for fragment in case.says:
        assert fragment in last, f"{fragment!r} not in: {last}"
    after = snapshot(w)
    changed = sorted(k for k in before if after.get(k) != before[k])
    added = sorted(set(after) - set(before))
    assert (changed, added) == ([], []), last


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
