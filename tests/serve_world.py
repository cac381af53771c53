"""A tiny world for `saelign serve` tests and the load bench: a random Llama saved as a SAILS run folder (SAE,
labels, selection, PEFT adapter) plus an AlignSAE folder, and a way to run `saelign serve` on it.

The model's embeddings are untied (a tied tiny model repeats its input) and the adapter's B is random and
large, so the adapter, a clamped slot and a pushed feature all visibly change the greedy answer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from conftest import make_tokenizer, tiny_config
from saelign.align.slots import SlotMap, save_slot_map
from saelign.io import write_json_atomic
from saelign.label.contexts import ContextExample
from saelign.label.labels import LatentLabel, save_labels
from saelign.sae.formats import save_sae
from saelign.sae.model import SAE, SAEConfig

HOOK = "model.layers.1"
CONCEPTS = ["france", "germany", "bread"]
FEATURES = [5, 9, 17]
PROMPT = "The capital of France is"


def _sae(seed: int) -> SAE:
    sae = SAE(SAEConfig(d_in=32, d_sae=64, activation="relu", hookpoint=HOOK))
    with torch.no_grad():
        sae.reset_parameters(seed=seed)
    return sae.requires_grad_(False)


def _label(latent: int) -> LatentLabel:
    context = ContextExample(
        text_left="The capital of ", token=" France", text_right=" is", activation=2.0, doc_id=0, position=3
    )
    return LatentLabel(latent, f"capital cities #{latent}", [" France"], [context], [], [], 0.01)


def build_world(root: Path) -> dict[str, Path]:
    """{'run': SAILS run folder, 'aligned': AlignSAE folder, 'model': HF folder} under `root`."""
    tokenizer = make_tokenizer()
    config = tiny_config("llama", len(tokenizer))
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    paths = {"run": root / "run", "aligned": root / "aligned", "model": root / "model"}
    model.save_pretrained(paths["model"])
    tokenizer.save_pretrained(paths["model"])
    run = paths["run"]
    write_json_atomic(run / "config.json", {"model": {"model": str(paths["model"])}})
    save_sae(_sae(1), run / "sae")
    write_json_atomic(run / "sae.json", {"path": "sae"})  # as the pipeline writes it: relative to the run
    save_labels(run / "labels.json", {i: _label(i) for i in FEATURES})
    (run / "labels.html").write_text("<html><body>latent cards</body></html>")  # what `saelign label` writes
    write_json_atomic(
        run / "select" / "selection.json",
        {
            "selection": {
                "hookpoint": HOOK,
                "latent_ids": FEATURES,
                "scores": [1.0] * 3,
                "mean_harmful": [1.0] * 3,
                "mean_harmless": [0.5] * 3,
                "signs": [1] * 3,
                "labels": {},
            }
        },
    )
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["o_proj", "down_proj"], lora_alpha=8))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    peft.save_pretrained(run / "methods" / "sails" / "adapter")
    aligned = _sae(2)
    save_sae(aligned, paths["aligned"])
    save_slot_map(SlotMap(CONCEPTS, [0, 1, 2], HOOK, 64, scales=[1.5, 1.0, 2.0]), paths["aligned"])
    return paths


def start_server(world: dict[str, Path], *extra: str) -> tuple[subprocess.Popen, str]:
    """`saelign serve` on the world in a subprocess on a free 127.0.0.1 port; (process, base URL)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    environment = {**os.environ, "PYTHONPATH": src, "SAELIGN_QUIET": "1", "OMP_NUM_THREADS": "1"}
    aligned = ["--aligned", str(world["aligned"])] if "aligned" in world else []
    command = [
        sys.executable,
        "-c",
        "import sys; from saelign.cli import main; sys.exit(main())",
        "serve",
        "--run",
        str(world["run"]),
        *aligned,
        "--device",
        "cpu",
        "--port",
        "0",
        *extra,
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment
    )
    deadline, lines = time.monotonic() + 600, []  # the default model is converted once on first use
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        found = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        if found:  # keep reading, so a chatty server never blocks on a full pipe
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, found.group(1)
    proc.kill()
    raise RuntimeError("saelign serve did not start:\n" + "".join(lines))


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (Linux VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
