"""Property-based fuzzing of the file loaders: whatever a store manifest, an SAE's cfg.json or safetensors
header, a slot map, an ontology, a labels file, a config file or a SAILS run record holds, loading it either
works or raises SaelignError: never another exception type, never a hang (each example runs under an alarm).

Inputs are valid files with one part replaced (a value swapped for any JSON value, a key dropped or added),
whole random JSON documents, and random bytes. The default suite runs a few examples per loader; `-m fuzz`
runs many more."""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import signal
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saelign.align.ontology import load_ontology
from saelign.align.slots import SlotMap, load_slot_map, save_slot_map
from saelign.configs import config_from_dict, config_to_dict, load_config_file
from saelign.errors import SaelignError
from saelign.io import load_tensors
from saelign.label.contexts import ContextExample
from saelign.label.labels import LatentLabel, TokenScore, load_labels, save_labels
from saelign.label.reading import check_labels_file
from saelign.runinfo import record_stage
from saelign.sae import SAE, SAEConfig, load_sae, save_sae
from saelign.sails.pipeline import stored_config
from saelign.sails.presets import SailsConfig, preset_layer, resolve_config
from saelign.sails.rundir import RunDir
from saelign.sails.stages import STAGES
from saelign.store import ActivationStore, CaptureConfig
from test_cli_align import ONTOLOGY
from test_sae_train import synthetic, write_store

QUICK_EXAMPLES, LONG_EXAMPLES = 12, 400
HANG_SECONDS = 10

# JSON values of every kind, nested a little: what a damaged or hand-edited file may hold in any place.
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every place in a JSON document (the root included)."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from paths(child, (*prefix, key))


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """`base` with one place replaced by any JSON value, or a key removed or added there."""
    doc = json.loads(json.dumps(base))
    where = draw(st.sampled_from(list(paths(doc))))
    if not where:
        return draw(json_values)
    parent = doc
    for key in where[:-1]:
        parent = parent[key]
    op = draw(st.sampled_from(["replace", "remove", "add"]))
    if op == "remove" and isinstance(parent, dict):
        del parent[where[-1]]
    elif op == "add" and isinstance(parent, dict):
        parent[draw(st.text(max_size=8))] = draw(json_values)
    else:
        parent[where[-1]] = draw(json_values)
    return doc


def documents(base: Any) -> st.SearchStrategy[bytes]:
    """JSON text of mutated `base` (mostly), random JSON, or random bytes."""
    as_json = st.one_of(mutated(base), mutated(base), mutated(base), json_values).map(
        lambda d: json.dumps(d, allow_nan=True).encode()
    )
    return st.one_of(as_json, as_json, as_json, st.binary(max_size=200))


def yaml_documents(base: Any) -> st.SearchStrategy[bytes]:
    as_yaml = st.one_of(mutated(base), mutated(base), json_values).map(lambda d: yaml.safe_dump(d).encode())
    return st.one_of(as_yaml, as_yaml, st.text(max_size=200).map(str.encode), st.binary(max_size=100))


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise Hang(f"a loader ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def only_saelign_errors(load: Callable[[], object], seconds: float = HANG_SECONDS) -> None:
    with time_limit(seconds):
        try:
            load()
        except SaelignError as exc:
            assert str(exc)  # a message, whatever it says


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Path:
    """One valid file of each kind, the starting point of the mutations."""
    root = tmp_path_factory.mktemp("fuzz_valid")
    write_store(root / "store", synthetic(300, seed=0)[:, :16])
    sae = SAE(SAEConfig(d_in=16, d_sae=24, activation="topk", k=2, hookpoint="model.layers.1"))
    sae.reset_parameters(seed=0)
    save_sae(sae, root / "sae")
    save_slot_map(
        SlotMap(concepts=["a", "b"], slots=[3, 7], hookpoint="model.layers.1", d_sae=24), root / "sae"
    )
    label = LatentLabel(
        latent=3,
        short_label="bread",
        top_tokens=["bread"],
        top_contexts=[ContextExample("I bake ", "bread", " daily", 2.5, 0, 3)],
        logit_up=[TokenScore("loaf", 5, 1.5)],
        logit_down=[TokenScore("car", 6, -1.0)],
        frequency=0.01,
    )
    save_labels(root / "labels.json", {3: label}, {"d_sae": 24})
    (root / "ontology.yaml").write_text(yaml.safe_dump(ONTOLOGY))
    (root / "run").mkdir()
    record_stage(root / "run", "data", {"data": {}}, key="abc", seconds=1.0)
    return root


def fresh_copy(valid: Path) -> Path:
    """A private copy per example: some loaders repair or remove files."""
    work = Path(tempfile.mkdtemp(prefix="fuzz-"))
    shutil.copytree(valid, work, dirs_exist_ok=True)
    return work


def header_of(path: Path) -> dict:
    size = struct.unpack("<Q", path.read_bytes()[:8])[0]
    return json.loads(path.read_bytes()[8 : 8 + size])


def with_header(path: Path, header: Any) -> bytes:
    """The safetensors file at `path` with its JSON header replaced (the tensor bytes kept)."""
    data = path.read_bytes()
    body = data[8 + struct.unpack("<Q", data[:8])[0] :]
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def sails_run(work: Path) -> RunDir:
    return RunDir(work / "run", resolve_config([preset_layer("quick")]), STAGES)


# target name -> (strategy given the valid folder, check given (copy, drawn bytes))
def _manifest(valid: Path) -> st.SearchStrategy[bytes]:
    return documents(json.loads((valid / "store" / "manifest.json").read_text()))


def _check_manifest(work: Path, raw: bytes) -> None:
    (work / "store" / "manifest.json").write_bytes(raw)
    store = ActivationStore(work / "store")
    for index in range(len(store.shards)):
        store.load_shard(index)


def _check_capture_resume(work: Path, raw: bytes) -> None:
    from saelign.store.store import StoreWriter

    header = json.loads((work / "store" / "manifest.json").read_text())  # the identity capture would give
    (work / "store" / "manifest.json").write_bytes(raw)
    StoreWriter(work / "store", header, token_budget=None)


def _cfg(valid: Path) -> st.SearchStrategy[bytes]:
    return documents(json.loads((valid / "sae" / "cfg.json").read_text()))


def _check_cfg(work: Path, raw: bytes) -> None:
    (work / "sae" / "cfg.json").write_bytes(raw)
    load_sae(work / "sae")


def _sae_header(valid: Path) -> st.SearchStrategy[bytes]:
    path = valid / "sae" / "sae_weights.safetensors"
    base = header_of(path)
    return st.one_of(mutated(base).map(lambda h: with_header(path, h)), st.binary(max_size=300))


def _check_sae_header(work: Path, raw: bytes) -> None:
    (work / "sae" / "sae_weights.safetensors").write_bytes(raw)
    load_tensors(work / "sae" / "sae_weights.safetensors")
    load_sae(work / "sae")


def _shard_header(valid: Path) -> st.SearchStrategy[bytes]:
    path = valid / "store" / "shard_00000.safetensors"
    return mutated(header_of(path)).map(lambda h: with_header(path, h))


def _check_shard_header(work: Path, raw: bytes) -> None:
    shard = work / "store" / "shard_00000.safetensors"
    shard.write_bytes(raw)
    manifest = json.loads((work / "store" / "manifest.json").read_text())
    manifest["shards"][0]["bytes"] = len(raw)  # only the header is wrong, not the size
    (work / "store" / "manifest.json").write_text(json.dumps(manifest))
    ActivationStore(work / "store", verify=False).load_shard(0)


def _slot_map(valid: Path) -> st.SearchStrategy[bytes]:
    return documents(json.loads((valid / "sae" / "slot_map.json").read_text()))


def _check_slot_map(work: Path, raw: bytes) -> None:
    (work / "sae" / "slot_map.json").write_bytes(raw)
    load_slot_map(work / "sae", load_sae(work / "sae"))


def _ontology(valid: Path) -> st.SearchStrategy[bytes]:
    return st.one_of(yaml_documents(ONTOLOGY), documents(ONTOLOGY))


def _check_ontology(work: Path, raw: bytes) -> None:
    (work / "o.yaml").write_bytes(raw)
    (work / "o.json").write_bytes(raw)
    for name in ("o.yaml", "o.json"):
        with contextlib.suppress(SaelignError):
            load_ontology(work / name).examples("train")
    load_ontology(work / "o.yaml")


def _labels(valid: Path) -> st.SearchStrategy[bytes]:
    return documents(json.loads((valid / "labels.json").read_text()))


def _check_labels(work: Path, raw: bytes) -> None:
    (work / "labels.json").write_bytes(raw)
    with contextlib.suppress(SaelignError):
        check_labels_file(work / "labels.json", load_sae(work / "sae"))
    load_labels(work / "labels.json")


SAILS_FILE = {"preset": "quick", "sft": {"steps": 5}, "capture": {"context_length": 16}, "methods": ["sails"]}
SECTIONS = {
    "model": {"model": "x", "device": "cpu"},
    "capture": {"hookpoints": ["model.layers.1"], "token_budget": 9},
}


def _config(valid: Path) -> st.SearchStrategy[bytes]:
    return st.one_of(yaml_documents(SAILS_FILE), yaml_documents(SECTIONS), documents(SECTIONS))


def _check_config(work: Path, raw: bytes) -> None:
    for name in ("c.yaml", "c.json"):
        (work / name).write_bytes(raw)
        with contextlib.suppress(SaelignError):
            resolve_config([preset_layer("quick"), load_config_file(work / name)])
        with contextlib.suppress(SaelignError):
            data = load_config_file(work / name, ("model", "capture"))
            config_from_dict(CaptureConfig, data.get("capture") or {})


def _run_json(valid: Path) -> st.SearchStrategy[bytes]:
    return documents(json.loads((valid / "run" / "run.json").read_text()))


def _check_run_json(work: Path, raw: bytes) -> None:
    (work / "run" / "run.json").write_bytes(raw)
    run = sails_run(work)
    with contextlib.suppress(SaelignError):
        for unit in run.units(list(STAGES)):
            run.status(unit)
    with contextlib.suppress(SaelignError):
        run.check_stale(run.units(list(STAGES)))
    record_stage(work / "run", "data", {"data": {}}, key="abc")


def _run_config(valid: Path) -> st.SearchStrategy[bytes]:
    return documents(config_to_dict(resolve_config([preset_layer("quick")])))


def _check_run_config(work: Path, raw: bytes) -> None:
    (work / "run" / "config.json").write_bytes(raw)
    stored = stored_config(work / "run")
    resolve_config([stored or {}])


@functools.cache
def _stage_configs() -> dict[str, tuple[type, dict[str, Any]]]:
    """Every stage config a config file can fill, with the valid options it starts from."""
    from saelign.align.pipeline import AlignEvalConfig, AlignTrainConfig
    from saelign.align.posttrain import PostTrainConfig
    from saelign.cli.sae_convert import ConvertConfig
    from saelign.cli.sae_train import SAESweepConfig
    from saelign.dashboard import DashboardConfig
    from saelign.label.labels import LabelConfig
    from saelign.sae.evaluate import EvalConfig
    from saelign.sae.train import SAETrainConfig
    from saelign.serve.config import Limits, ServeConfig

    required = {AlignTrainConfig: {"sae": "s"}, AlignEvalConfig: {"aligned": "a"}, ServeConfig: {"run": "r"}}
    classes = [
        CaptureConfig,
        SAETrainConfig,
        SAESweepConfig,
        EvalConfig,
        ConvertConfig,
        LabelConfig,
        DashboardConfig,
        AlignTrainConfig,
        AlignEvalConfig,
        PostTrainConfig,
        ServeConfig,
        Limits,
    ]
    out = {cls.__name__: (cls, config_to_dict(cls(**required.get(cls, {})))) for cls in classes}
    out["SailsConfig"] = (SailsConfig, config_to_dict(resolve_config([preset_layer("quick")])))
    return out


def _stage_config(valid: Path) -> st.SearchStrategy[bytes]:
    configs = _stage_configs()
    return st.sampled_from(sorted(configs)).flatmap(
        lambda name: mutated(configs[name][1]).map(
            lambda d: json.dumps({"class": name, "options": d}).encode()
        )
    )


def _check_stage_config(work: Path, raw: bytes) -> None:
    drawn = json.loads(raw)
    cls = _stage_configs()[drawn["class"]][0]
    config_from_dict(cls, drawn["options"])


TARGETS: dict[str, tuple[Callable[[Path], st.SearchStrategy[bytes]], Callable[[Path, bytes], None]]] = {
    "store-manifest": (_manifest, _check_manifest),
    "store-manifest-capture-resume": (_manifest, _check_capture_resume),
    "sae-cfg-json": (_cfg, _check_cfg),
    "sae-safetensors-header": (_sae_header, _check_sae_header),
    "shard-safetensors-header": (_shard_header, _check_shard_header),
    "slot-map": (_slot_map, _check_slot_map),
    "ontology": (_ontology, _check_ontology),
    "labels": (_labels, _check_labels),
    "config-file": (_config, _check_config),
    "run-json": (_run_json, _check_run_json),
    "run-config-json": (_run_config, _check_run_config),
    "stage-config-options": (_stage_config, _check_stage_config),
}


def fuzz(target: str, valid: Path, data: st.DataObject) -> None:
    strategy, check = TARGETS[target]
    raw = data.draw(strategy(valid), label=target)
    work = fresh_copy(valid)
    try:
        only_saelign_errors(lambda: check(work, raw))
    finally:
        shutil.rmtree(work, ignore_errors=True)


SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=QUICK_EXAMPLES, deadline=None, suppress_health_check=SUPPRESS, derandomize=True)
@given(data=st.data())
def test_loaders_raise_only_saelign_errors(valid, target, data):
    fuzz(target, valid, data)


@pytest.mark.fuzz
@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=LONG_EXAMPLES, deadline=None, suppress_health_check=SUPPRESS)
@given(data=st.data())
def test_loaders_raise_only_saelign_errors_many_examples(valid, target, data):
    fuzz(target, valid, data)


def test_the_alarm_stops_a_hang():
    with pytest.raises(Hang):
        only_saelign_errors(lambda: time.sleep(60), seconds=0.2)
