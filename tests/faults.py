"""Fault injection for the long jobs: each runs as a real `saelign` subprocess on the tiny Llama, is killed
with SIGKILL at a seeded moment, and is rerun with the same command.

A trial checks three things:
- right after the kill, nothing looks complete while half-written: every JSON/JSONL/YAML/safetensors file
  under its final name parses, and every completion marker (a store's manifest, an SAE's cfg.json, a
  checkpoint's state.json, an adapter's adapter_config.json, slot_map.json, a SAILS unit's run.json record)
  implies that the files it stands for are there and load;
- the rerun exits 0 and its artifacts equal an uninterrupted run's: tensors bitwise, JSON after dropping the
  wall-clock fields in VOLATILE, the SAILS report with its numbers (wall times among them) masked, every other
  file byte for byte (paths of the trial folder read as those of the reference folder). Two things differ
  between any two whole runs and are left out: PEFT's target_modules order in adapter_config.json (a set
  written in string-hash order) and the global torch RNG state in SAE-training checkpoints (never seeded);
- the folder is usable by the next command: the loader of what the job makes accepts it.

Kill moments are spread over phases (PHASES): start-up (before the job writes anything), a random time within
an uninterrupted run, the moment a temporary file (an atomic write in progress) or a checkpoint file appears,
and the last file events of the run. Which events exist comes from watching an uninterrupted reference run.
The moment is seeded; where the kill lands is up to the scheduler, so a trial records what the folder held.

`python tests/faults.py` runs every trial and writes bench/results/fault_injection.json."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from safetensors import safe_open

from conftest import TRAINING_TEXT, make_tiny_model, make_tokenizer
from test_cli_align import ONTOLOGY, TRAIN_FLAGS, tiny_sae, write_yaml
from test_sails_pipeline import write_inputs

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("startup", "random", "write", "checkpoint", "finishing")
TRIALS = {"capture": 6, "sae-train": 5, "align-train": 5, "sails-train": 5, "sails-run": 4}  # 25 in all
# Fields that hold wall-clock facts (times, rates, the machine): an interrupted run differs there by nature.
VOLATILE = frozenset(
    {"finished_at", "seconds", "tokens_per_s", "train_seconds", "wall_seconds", "environment", "new_tokens"}
)
# io.atomic_path's files and save_sae/save_adapter's folders (.NAME.RANDOM.tmp or .partial); safetensors' own
# temp files (.tmpRANDOM); both also once normalised (RANDOM -> '*')
TEMP = re.compile(r"^\.(.+)\.[^./]+\.(tmp|partial)$|^\.tmp([A-Za-z0-9_]{6}|\*)$")
NUMBER = re.compile(rb"\d+(\.\d+)?")


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "SAELIGN_QUIET": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }


def cli(argv: list[str]) -> list[str]:
    return [sys.executable, "-c", "import sys; from saelign.cli import main; sys.exit(main())", *argv]


def is_temp(rel: str) -> bool:
    return any(TEMP.match(part) for part in Path(rel).parts)


def scan(folder: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime)} of every file under `folder`."""
    found = {}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:  # removed between listing and stat
                continue
            found[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns)
    return found


def normalise(rel: str) -> str:
    """The random part of a temporary name replaced by '*', so the events of two runs compare."""
    return "/".join(
        TEMP.sub(lambda m: f".{m.group(1)}.*.{m.group(2)}" if m.group(1) else ".tmp*", part)
        for part in Path(rel).parts
    )


def final_name(rel: str) -> str:
    """Where a normalised temporary path lands once written: '.k4.*.partial/.cfg.json.*.tmp' -> 'k4/cfg.json'
    (a file written inside a temporary folder appears under the folder's final name)."""
    return "/".join(re.sub(r"^\.(.+)\.\*\.(tmp|partial)$", r"\1", part) for part in Path(rel).parts)


def file_events(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    events = [f"+{normalise(p)}" for p in after if p not in before]
    events += [f"~{normalise(p)}" for p in after if p in before and after[p] != before[p]]
    return events + [f"-{normalise(p)}" for p in before if p not in after]


@dataclasses.dataclass(frozen=True)
class Trigger:
    """When to kill: after `delay` seconds, or when file event `event` has been seen `ordinal` times. A
    temporary file lives too briefly to be seen every time: its kill also fires once `target` (the file it
    becomes) has been written `ordinal` times."""

    phase: str
    delay: float | None = None
    event: str | None = None
    ordinal: int = 1
    target: str | None = None

    def fires(self, elapsed: float, seen: Counter) -> bool:
        if self.delay is not None and elapsed >= self.delay:
            return True
        written = seen[f"+{self.target}"] + seen[f"~{self.target}"] if self.target else 0
        return self.event is not None and (seen[self.event] >= self.ordinal or written >= self.ordinal)


@dataclasses.dataclass
class Observed:
    returncode: int
    seconds: float
    events: list[tuple[float, str]]
    killed: bool
    output: str


def run_cli(argv: list[str], watch: Path, trigger: Trigger | None = None, timeout: float = 900) -> Observed:
    """Run `saelign argv`, polling the files under `watch`; SIGKILL it when `trigger` fires."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cli(argv), stdout=log, stderr=subprocess.STDOUT, env=environment(), cwd=ROOT)
        began, before, events, seen, killed = time.monotonic(), scan(watch), [], Counter(), False
        while True:
            finished = proc.poll() is not None
            after, elapsed = scan(watch), time.monotonic() - began
            for event in file_events(before, after):
                events.append((round(elapsed, 4), event))
                seen[event] += 1
            before = after
            if finished:
                break
            if trigger is not None and trigger.fires(elapsed, seen):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed = True
                break
            if elapsed > timeout:
                proc.kill()
                raise TimeoutError(f"saelign {' '.join(argv)} ran over {timeout} s")
            time.sleep(0.001)
        log.seek(0)
        return Observed(proc.returncode, time.monotonic() - began, events, killed, log.read())


def plan(reference: Observed, phase: str, rng: random.Random) -> Trigger:
    """A kill moment in `phase`, drawn from what the uninterrupted `reference` run did."""
    timeline = reference.events
    # Files appearing under their final names: seen however fast the run goes ("~" changes of one file may
    # merge between two polls, so their counts mark nothing), but the last two, which the process may outrun.
    landmarks = [i for i, (_, e) in enumerate(timeline) if e.startswith("+") and not is_temp(e[1:])][:-2]

    def at(index: int) -> Trigger:
        """At event `index`, or at 1.5 times its reference time should this run be slower or miss it."""
        t, event = timeline[index]
        ordinal = [e for _, e in timeline[: index + 1]].count(event)
        return Trigger(phase, delay=round(1.5 * t, 3), event=event, ordinal=ordinal)

    if phase == "startup":  # before the first file appears, or as it does should this run be faster
        first, event = timeline[0] if timeline else (reference.seconds, None)
        return Trigger(phase, delay=round(rng.uniform(0.3, 1.0) * first, 3), event=event)
    # "random": a moment in the run, or the next landmark after it should this run be faster
    if phase == "random" and landmarks:
        delay = rng.uniform(0, timeline[landmarks[-1]][0])
        after = next(i for i in landmarks if timeline[i][0] >= delay)
        return dataclasses.replace(at(after), delay=round(delay, 3))
    temps = [i for i, (_, e) in enumerate(timeline) if e.startswith("+") and e.endswith(".*.tmp")]
    # "write": a file of io.atomic_path's, .NAME.*.tmp, is seen, or its NAME written
    if phase == "write" and temps:
        index = rng.choice(temps)
        return dataclasses.replace(at(index), target=final_name(timeline[index][1][1:]))
    saves = [i for i in landmarks if "checkpoint/" in timeline[i][1]]
    if phase == "checkpoint" and saves:
        return at(rng.choice(saves))
    return at(rng.choice(landmarks[-max(3, len(landmarks) // 5) :]))  # "finishing": the last fifth


# ---- what a folder must look like at any moment ------------------------------------------------------------


def check_file(path: Path) -> str | None:
    """Why the file under its final name is not whole (None if it is)."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                if line.strip():
                    json.loads(line)
        elif path.suffix in (".yaml", ".yml"):
            yaml.safe_load(path.read_text())
        elif path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as handle:
                for key in handle.keys():
                    handle.get_tensor(key)
    except Exception as exc:  # any way of failing to parse is the finding
        return f"{path}: {type(exc).__name__}: {exc}"
    return None


def check_markers(folder: Path) -> list[str]:
    """Every completion marker under `folder` must stand for files that are there and load."""
    from saelign.align.pipeline import load_aligned
    from saelign.errors import SaelignError
    from saelign.io import load_tensors, read_json
    from saelign.sae import load_sae
    from saelign.store import ActivationStore

    problems = [
        p
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not is_temp(str(path.relative_to(folder))) and (p := check_file(path))
    ]
    if problems:
        return problems

    def attempt(what: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except (SaelignError, OSError, ValueError, KeyError) as exc:
            problems.append(f"{what}: {type(exc).__name__}: {exc}")

    for path in sorted(folder.rglob("*")):
        if is_temp(str(path.relative_to(folder))) or not path.is_file():
            continue
        parent = path.parent
        if path.name == "manifest.json" and read_json(path).get("format") == "saelign-activations":
            attempt(f"store {parent}", lambda p=parent: _check_store(ActivationStore(p)))
        elif path.name == "cfg.json":
            attempt(f"SAE {parent}", lambda p=parent: load_sae(p))
        elif path.name == "state.json" and parent.name == "checkpoint":
            state = read_json(path)
            attempt(
                f"checkpoint {parent}",
                lambda s=state, p=parent: [load_tensors(p / f) for f in s["files"].values()],
            )
        elif path.name == "slot_map.json":
            attempt(f"aligned SAE {parent}", lambda p=parent: load_aligned(p))
        elif path.name == "adapter_config.json":
            attempt(
                f"adapter {parent}",
                lambda p=parent: (
                    load_tensors(p / "adapter_model.safetensors"),
                    read_json(p / "sails_provenance.json"),
                ),
            )
        elif path.name == "run.json" and (parent / "config.json").is_file():
            attempt(f"SAILS run {parent}", lambda p=parent: _check_units(p))
    return problems


def _check_store(store: Any) -> None:
    for index in range(len(store.shards)):
        store.load_shard(index)  # sha256 against the manifest


def _check_units(run_dir: Path) -> None:
    """Every unit run.json records as done (under the current key) has all its output files."""
    from saelign.errors import SaelignError
    from saelign.sails.pipeline import stored_config
    from saelign.sails.presets import resolve_config
    from saelign.sails.rundir import RunDir
    from saelign.sails.stages import STAGES

    run = RunDir(run_dir, resolve_config([stored_config(run_dir)]), STAGES)
    recorded = run.recorded()
    for unit in run.units(list(STAGES)):
        record = recorded.get(unit, {})
        if record.get("key") == run.key(unit) and not record.get("pending"):
            missing = [str(p) for p in run.outputs(unit) if not p.is_file()]
            if missing:
                raise SaelignError(f"run.json records {unit} as done but {', '.join(missing)} are missing")


# ---- comparing a finished trial with the uninterrupted run -------------------------------------------------


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        # PEFT keeps target_modules as a set and writes it in the process's string-hash order
        return {
            k: sorted(v) if k == "target_modules" and isinstance(v, list) else _strip(v)
            for k, v in value.items()
            if k not in VOLATILE
        }
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _tensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    with safe_open(str(path), "pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {}


def compare(trial: Path, reference: Path, tolerate: str = "^$") -> list[str]:
    """Differences between the artifacts of two runs (empty: equal), but in files matching `tolerate`."""
    import torch

    files = {p for p in scan(trial) if not is_temp(p)}
    expected = {p for p in scan(reference) if not is_temp(p)}
    differences = [f"missing {p}" for p in sorted(expected - files)] + [
        f"extra {p}" for p in sorted(files - expected)
    ]
    for rel in sorted(files & expected):
        if re.search(tolerate, rel):
            continue
        a, b = trial / rel, reference / rel
        if a.suffix == ".safetensors":
            (ta, ma), (tb, mb) = _tensors(a), _tensors(b)
            if ma != mb or ta.keys() != tb.keys() or not all(torch.equal(ta[k], tb[k]) for k in ta):
                differences.append(f"{rel}: tensors differ")
            continue
        text_a = a.read_bytes().replace(str(trial).encode(), str(reference).encode())
        text_b = b.read_bytes()
        if a.suffix == ".json":
            same = _strip(json.loads(text_a)) == _strip(json.loads(text_b))
        elif a.name.startswith("report."):  # its numbers include wall times; its sources are compared exactly
            same = NUMBER.sub(b"#", text_a) == NUMBER.sub(b"#", text_b)
        else:
            same = text_a == text_b
        if not same:
            differences.append(f"{rel}: contents differ")
    return differences


# ---- the world the jobs run in -----------------------------------------------------------------------------


class World:
    """The inputs of every job under `root`, each made once on first use."""

    def __init__(self, root: Path):
        self.root = root

    @cached_property
    def model(self) -> Path:
        path = self.root / "model"
        tokenizer = make_tokenizer()
        make_tiny_model("llama", len(tokenizer)).save_pretrained(path)
        tokenizer.save_pretrained(path)
        return path

    @cached_property
    def corpus(self) -> Path:
        path = self.root / "corpus.txt"
        path.write_text("\n".join(TRAINING_TEXT * 3))
        return path

    @cached_property
    def store(self) -> Path:
        """One hookpoint's activations, the input of `sae train` (captured in this process)."""
        from saelign.models import ModelConfig
        from saelign.store import CaptureConfig, capture

        cfg = CaptureConfig(
            hookpoints=["model.layers.1"],
            corpus=str(self.corpus),
            context_length=32,
            token_budget=1500,
            shard_tokens=500,
            out=str(self.root / "store"),
        )
        return capture(ModelConfig(model=str(self.model), device="cpu"), cfg)["model.layers.1"]

    @cached_property
    def vanilla(self) -> Path:
        return Path(tiny_sae(self.root / "vanilla"))

    @cached_property
    def ontology(self) -> Path:
        return Path(write_yaml(self.root / "ontology.yaml", ONTOLOGY))

    @cached_property
    def sails_config(self) -> Path:
        """The SAILS test world's config, checkpointing every few steps so that kills find some to resume."""
        inputs = write_inputs(ensure(self.root / "sails"), self.model)
        cfg = yaml.safe_load(inputs["config"].read_text())
        cfg["sae_train"].update(checkpoint_every_tokens=384, log_every_steps=2)
        cfg["sft"].update(steps=6, eval_every=3, checkpoint_every=2)
        path = self.root / "sails" / "faults.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    @cached_property
    def sails_base(self) -> Path:
        """A SAILS run up to its training stage (made in this process): what `sails train` starts from."""
        from saelign.sails.pipeline import run_pipeline
        from saelign.sails.presets import preset_layer, resolve_config

        cfg = resolve_config([preset_layer("quick"), yaml.safe_load(self.sails_config.read_text())])
        run_pipeline(cfg, self.root / "sails_base", ["data", "sae", "labels", "select", "targets"])
        return self.root / "sails_base"


def ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclasses.dataclass(frozen=True)
class Job:
    """A long job: its command for a trial folder, the folder it writes, and the next command's loading."""

    name: str
    argv: Callable[[Path], list[str]]
    output: str  # the folder inside the trial folder that the job writes: watched, checked and compared
    usable: Callable[[Path], None]
    prepare: Callable[[Path], None] = lambda trial: None
    tolerate: str = "^$"  # files (relative paths, a regex) whose contents may differ between two whole runs


def jobs(world: World) -> dict[str, Job]:
    import torch
    from peft import PeftModel

    from saelign.align.pipeline import load_aligned, resolve_ontology
    from saelign.errors import SaelignError
    from saelign.sae import load_sae
    from saelign.sails.pipeline import run_pipeline, stored_config
    from saelign.sails.presets import resolve_config
    from saelign.sails.rundir import RunDir
    from saelign.sails.stages import STAGES
    from saelign.store import ActivationStore

    def stores_usable(out: Path) -> None:
        for hookpoint in ("model.layers.1", "model.layers.2"):
            store = ActivationStore(out / hookpoint)
            rows = sum(b.shape[0] for b in store.batches(256, shuffle=True, seed=0))
            if not store.manifest["complete"] or rows != store.num_tokens:
                raise SaelignError(f"store {store.path} is incomplete")

    def adapter_usable(run_dir: Path) -> None:
        base = make_tiny_model("llama", len(make_tokenizer()))
        model = PeftModel.from_pretrained(base, str(run_dir / "methods" / "sails" / "adapter"))
        if not torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all():
            raise SaelignError("the adapter gives non-finite logits")

    def run_usable(run_dir: Path) -> None:
        run = RunDir(run_dir, resolve_config([stored_config(run_dir)]), STAGES)
        units = [u for u in run.units(list(STAGES)) if STAGES[u.partition(":")[0]].outputs]
        if todo := [u for u in units if run.status(u) != "done"]:
            raise SaelignError(f"units not done after the rerun: {todo}")
        run_pipeline(run.cfg, run_dir, ["report"])  # what `sails report` does: read every unit's files

    model, corpus = ["--model", str(world.model), "--device", "cpu"], ["--corpus", str(world.corpus)]
    capture = "capture --hookpoints model.layers.1,model.layers.2 --context-length 32 --token-budget 1500 "
    capture += "--shard-tokens 100 --batch-size 2"
    sae = "sae train --d-sae 64 --k 4,8 --batch-size 64 --total-tokens 3000 --checkpoint-every-tokens 320 "
    sae += "--log-every-steps 2 --device cpu"
    align = ["align", "train", *model, *corpus, "--checkpoint-every", "5", *TRAIN_FLAGS]
    align += ["--sae", str(world.vanilla), "--ontology", str(world.ontology)]
    sails = ["sails", "run", "--config", str(world.sails_config)]
    # fmt: off
    return {job.name: job for job in (
        Job("capture", lambda t: [*capture.split(), *model, *corpus, "--out", str(t / "acts")], "acts",
            stores_usable),
        # SAE training neither seeds nor draws from the process's global torch generator, whose state its
        # checkpoints keep: that state differs between any two runs (the weights are bitwise equal).
        Job("sae-train", lambda t: [*sae.split(), "--store", str(world.store), "--out", str(t / "sae")],
            "sae",
            lambda out: [load_sae(out / name) for name in ("k4", "k8")], tolerate=r"^checkpoint/rng-"),
        Job("align-train", lambda t: [*align, "--out", str(t / "aligned")], "aligned",
            lambda out: (load_aligned(out), resolve_ontology(str(out / "ontology.yaml")))),
        Job("sails-train", lambda t: ["sails", "train", "--run", str(t / "run")], "run", adapter_usable,
            prepare=lambda t: shutil.copytree(world.sails_base, t / "run")),
        Job("sails-run", lambda t: [*sails, "--out", str(t / "run")], "run", run_usable,
            tolerate=r"^sae/checkpoint/rng-"),  # as in sae-train
    )}
    # fmt: on


# ---- trials ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Trial:
    job: str
    index: int
    trigger: Trigger
    killed: bool
    killed_after: float
    held_at_kill: list[str]  # temporary files and markers present right after the kill
    at_kill: list[str]  # completion markers that did not hold
    rerun: str  # "ok" or the rerun's failing output
    differences: list[str]
    unusable: str
    leftovers: list[str]  # temporary files the kill left that the rerun did not remove (not a failure)

    @property
    def failed(self) -> bool:
        return bool(self.at_kill or self.rerun != "ok" or self.differences or self.unusable)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "failed": self.failed}


MARKERS = (
    "manifest.json",
    "cfg.json",
    "state.json",
    "slot_map.json",
    "adapter_config.json",
    "run.json",
    "result.json",
    "sae.json",
    "selection.json",
)


class Harness:
    """Runs the trials of the jobs in `world` under `workdir`, after one uninterrupted run per job."""

    def __init__(self, world: World, workdir: Path, seed: int = 0):
        self.world, self.workdir, self.seed = world, workdir, seed
        self.jobs = jobs(world)
        self._references: dict[str, Observed] = {}

    def reference(self, name: str) -> Observed:
        if name not in self._references:
            job, folder = self.jobs[name], ensure(self.workdir / name / "reference")
            job.prepare(folder)
            observed = run_cli(job.argv(folder), folder / job.output)
            if observed.returncode != 0:
                raise RuntimeError(f"the uninterrupted {name} run failed:\n{observed.output[-3000:]}")
            self._references[name] = observed
        return self._references[name]

    def trial(self, name: str, index: int) -> Trial:
        job, reference = self.jobs[name], self.reference(name)
        rng = random.Random(f"{self.seed}:{name}:{index}")
        trigger = plan(reference, PHASES[index % len(PHASES)], rng)
        folder = self.workdir / name / f"trial-{index:02d}"
        shutil.rmtree(folder, ignore_errors=True)
        job.prepare(ensure(folder))
        out = folder / job.output
        killed = run_cli(job.argv(folder), out, trigger)
        held = sorted(normalise(p) for p in scan(out) if is_temp(p) or Path(p).name in MARKERS)
        at_kill = check_markers(out) if out.exists() else []
        again = run_cli(job.argv(folder), out)
        rerun = "ok" if again.returncode == 0 else f"exit {again.returncode}: {again.output[-2000:]}"
        differences = (
            compare(out, self.workdir / name / "reference" / job.output, job.tolerate)
            if again.returncode == 0
            else []
        )
        unusable = ""
        try:
            job.usable(out)
        except Exception as exc:  # the next command's loader refusing the folder is the finding
            unusable = f"{type(exc).__name__}: {exc}"
        leftovers = sorted(normalise(p) for p in scan(out) if is_temp(p))
        # fmt: off
        return Trial(name, index, trigger, killed.killed, round(killed.seconds, 3), held, at_kill, rerun,
                     differences, unusable, leftovers)
        # fmt: on


def tally(trials: list[Trial]) -> dict[str, Any]:
    killed = [t for t in trials if t.killed]
    return {
        "trials": len(trials),
        "killed": len(killed),
        "failed": sum(t.failed for t in trials),
        "per_job": dict(Counter(t.job for t in killed)),
        "per_phase": dict(Counter(t.trigger.phase for t in killed)),
        "with_leftover_temp_files": sum(bool(t.leftovers) for t in trials),
        "trials_detail": [t.to_dict() for t in trials],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default=",".join(TRIALS), help="comma list of jobs (default: all)")
    parser.add_argument("--per-job", type=int, default=0, help="trials per job (default: TRIALS, 25 in all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", default="", help="keep the trial folders here (default: a temporary folder)"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from common import RESULTS, write_result

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="saelign-faults-"))
    harness = Harness(World(ensure(workdir / "world")), workdir, args.seed)
    trials = []
    for name in args.jobs.split(","):
        for index in range(args.per_job or TRIALS[name]):
            trials.append(trial := harness.trial(name, index))
            outcome = "FAILED " + json.dumps(trial.to_dict()) if trial.failed else "ok"
            print(
                f"{name} #{index} {trial.trigger.phase}: killed={trial.killed} after {trial.killed_after} s, "
                + outcome
            )
    # The failures that earlier runs (and reading the code) found, with their fixes, are kept by hand there.
    previous = RESULTS / "fault_injection.json"
    found = json.loads(previous.read_text()).get("found_and_fixed", []) if previous.is_file() else []
    result = {**tally(trials), "seed": args.seed, "found_and_fixed": found}
    write_result("fault_injection", result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("trials_detail", "found_and_fixed")}))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
