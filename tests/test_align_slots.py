import json

import pytest

from saelign.align.slots import SLOT_MAP_FILE, SlotMap, load_slot_map, save_slot_map
from saelign.errors import SaelignError
from saelign.sae.model import SAE, SAEConfig


def make_map(**kw) -> SlotMap:
    args = dict(concepts=["capital", "language"], slots=[10, 11], hookpoint="model.layers.1", d_sae=12, scales=[1.0, 0.5])
    return SlotMap(**{**args, **kw})


def test_round_trip_and_lookup(tmp_path):
    slot_map = make_map()
    path = save_slot_map(slot_map, tmp_path)
    assert path == tmp_path / SLOT_MAP_FILE
    data = json.loads(path.read_text())
    assert data["slots"] == {"10": {"concept": "capital", "scale": 1.0}, "11": {"concept": "language", "scale": 0.5}}
    loaded = load_slot_map(tmp_path)
    assert loaded == slot_map
    assert loaded.slot("language") == 11 and loaded.scale(0) == 1.0 and loaded.index("language") == 1
    with pytest.raises(SaelignError, match="unknown concept 'colour'; the slot map has: capital, language"):
        loaded.slot("colour")


def test_validation_against_the_sae(tmp_path):
    save_slot_map(make_map(), tmp_path)
    good = SAE(SAEConfig(d_in=4, d_sae=12, activation="relu", hookpoint="model.layers.1"))
    load_slot_map(tmp_path, good)
    with pytest.raises(SaelignError, match="d_sae=12, but this SAE has d_sae=8"):
        load_slot_map(tmp_path, SAE(SAEConfig(d_in=4, d_sae=8, activation="relu", hookpoint="model.layers.1")))
    with pytest.raises(SaelignError, match="hookpoint 'model.layers.1', but the SAE reads 'model.layers.2'"):
        load_slot_map(tmp_path, SAE(SAEConfig(d_in=4, d_sae=12, activation="relu", hookpoint="model.layers.2")))


@pytest.mark.parametrize("kw,message", [
    (dict(slots=[10, 12]), r"slot\(s\) \[12\] outside 0..11"),
    (dict(slots=[10, 10]), r"duplicate slot\(s\) 10"),
    (dict(concepts=["a", "a"]), r"duplicate concept\(s\) a"),
    (dict(slots=[10]), "2 concepts, 1 slots and 2 scales"),
])
def test_inconsistent_maps_are_refused(kw, message):
    with pytest.raises(SaelignError, match=message):
        make_map(**kw).validate(SAE(SAEConfig(d_in=4, d_sae=12, activation="relu")))


def test_file_errors_name_the_file(tmp_path):
    data = make_map().to_dict()
    data["slots"]["40"] = {"concept": "colour"}
    (tmp_path / SLOT_MAP_FILE).write_text(json.dumps(data))
    with pytest.raises(SaelignError, match=rf"slot map {tmp_path / SLOT_MAP_FILE}: slot\(s\) \[40\] outside"):
        load_slot_map(tmp_path)
    del data["d_sae"]
    (tmp_path / SLOT_MAP_FILE).write_text(json.dumps(data))
    with pytest.raises(SaelignError, match="malformed entry"):
        load_slot_map(tmp_path)


def test_not_a_slot_map(tmp_path):
    (tmp_path / SLOT_MAP_FILE).write_text('{"slots": []}')
    with pytest.raises(SaelignError, match="is not a saelign slot map"):
        load_slot_map(tmp_path)
    with pytest.raises(SaelignError, match="slot map not found"):
        load_slot_map(tmp_path / "missing.json")
