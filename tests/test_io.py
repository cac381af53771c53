import os

import pytest
import torch

from saelign.errors import SaelignError
from saelign.io import atomic_path, load_tensors, read_json, save_tensors_atomic, write_json_atomic


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert read_json(target) == {"v": 1}
    assert os.listdir(tmp_path) == ["a.json"]


def test_tensor_round_trip_and_truncation_error(tmp_path):
    path = tmp_path / "t.safetensors"
    tensors = {"w": torch.randn(3, 4), "i": torch.arange(5, dtype=torch.int32)}
    save_tensors_atomic(path, tensors)
    loaded = load_tensors(path)
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["i"], tensors["i"])
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SaelignError, match="corrupt or truncated"):
        load_tensors(path)


def test_unwritable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SaelignError, match="cannot create output directory"):
        write_json_atomic(blocker / "sub" / "a.json", {})


def test_invalid_json_names_file_and_line(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{\n"a": 1,\n}')
    with pytest.raises(SaelignError, match=r"m.json is not valid JSON \(line 3"):
        read_json(path)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_artifacts_get_the_mode_the_umask_gives_a_normal_file(tmp_path, umask):
    previous = os.umask(umask)
    try:
        save_tensors_atomic(tmp_path / "w.safetensors", {"w": torch.ones(2)})
        write_json_atomic(tmp_path / "a.json", {})
    finally:
        os.umask(previous)
    for name in ("w.safetensors", "a.json"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask
