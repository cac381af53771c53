"""Activation store format and loader, on synthetic rows whose values encode their row index."""

from __future__ import annotations

import json

import pytest
import torch

from saelign.errors import SaelignError
from saelign.store import ActivationStore, StoreWriter
from saelign.store.store import FORMAT, FORMAT_VERSION, MANIFEST

D = 6


def header(**overrides):
    base = {"format": FORMAT, "version": FORMAT_VERSION, "model": "m", "model_dtype": "float32", "hookpoint": "h",
            "d_in": D, "dtype": "float32", "tokenizer": {"vocab_size": 10}, "context_length": 8, "shard_tokens": 10,
            "corpus": {"source": "c", "sha256": "x"}, "masking": {"token_ids": [0], "first_position": True}}
    return {**base, **overrides}


def rows(start: int, n: int) -> dict[str, torch.Tensor]:
    index = torch.arange(start, start + n)
    return {"activations": index[:, None].float().repeat(1, D) + torch.arange(D) / 10,
            "token_ids": (index % 7).int(), "context_ids": index // 8, "positions": (index % 8).int()}


def write_store(path, total: int, batch: int = 7, **overrides) -> StoreWriter:
    writer = StoreWriter(path, header(**overrides), token_budget=None)
    for start in range(writer.rows, total, batch):
        writer.add(start, rows(start, min(batch, total - start)))
    writer.finish(exhausted=True)
    return writer


def row_ids(batch: torch.Tensor) -> list[int]:
    return batch[:, 0].round().long().tolist()


@pytest.fixture
def store(tmp_path) -> ActivationStore:
    write_store(tmp_path / "s", 95)
    return ActivationStore(tmp_path / "s")


def test_layout_and_round_trip(store):
    assert (store.d_in, store.num_tokens, store.hookpoint, len(store)) == (D, 95, "h", 95)
    assert [s["num_tokens"] for s in store.shards] == [10] * 9 + [5]
    got = list(store.iter_rows_with_tokens(batch_size=4))
    acts = torch.cat([c["activations"] for c in got])
    expected = rows(0, 95)
    assert torch.equal(acts, expected["activations"])
    for column in ("token_ids", "context_ids", "positions"):
        assert torch.equal(torch.cat([c[column] for c in got]), expected[column])


def test_every_row_exactly_once_per_epoch_and_shuffled(store):
    batches = list(store.batches(8, shuffle=True, seed=1, epochs=2, buffer_tokens=20))
    seen = [i for b in batches for i in row_ids(b)]
    assert sorted(seen) == sorted(list(range(95)) * 2)
    assert sorted(seen[:95]) == list(range(95))  # epoch boundary: each epoch is complete on its own
    assert all(b.dtype == torch.float32 and b.shape[1] == D for b in batches)
    assert seen[:95] != list(range(95)) and seen[:95] != seen[95:]
    other_seed = [i for b in store.batches(8, seed=2) for i in row_ids(b)]
    assert other_seed != seen[:95]


def test_unshuffled_is_store_order(store):
    assert [i for b in store.batches(8, shuffle=False) for i in row_ids(b)] == list(range(95))


def test_buffer_is_bounded(store):
    batches = list(store.batches(4, buffer_tokens=20))
    assert sum(b.shape[0] for b in batches) == 95
    assert 20 <= store.peak_buffer_rows <= 20 + 4 - 1


def test_max_tokens_and_ranks(store):
    assert sum(b.shape[0] for b in store.batches(8, max_tokens=30, epochs=3)) == 30
    assert sum(b.shape[0] for b in store.batches(8, max_tokens=200, epochs=3)) == 200
    parts = [{i for b in store.batches(8, seed=3, rank=r, world_size=2) for i in row_ids(b)} for r in range(2)]
    assert not parts[0] & parts[1] and parts[0] | parts[1] == set(range(95))
    with pytest.raises(SaelignError, match="fewer than 11 ranks"):
        next(store.batches(8, world_size=11))


def test_float16_store_reads_as_float32(tmp_path):
    write_store(tmp_path / "s", 25, dtype="float16")
    store = ActivationStore(tmp_path / "s")
    assert store.load_shard(0)["activations"].dtype == torch.float16
    batch = next(store.batches(25, shuffle=False))
    assert batch.dtype == torch.float32
    assert torch.allclose(batch, rows(0, 25)["activations"], atol=0.02)


def test_missing_manifest(tmp_path):
    with pytest.raises(SaelignError, match="manifest.json is missing.*saelign capture"):
        ActivationStore(tmp_path)


def test_truncated_shard_is_named(store):
    file = store.path / "shard_00003.safetensors"
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.raises(SaelignError, match="shard_00003.safetensors is truncated.*rerun the same `saelign capture`"):
        ActivationStore(store.path)


def test_corrupt_shard_is_named(store):
    file = store.path / "shard_00002.safetensors"
    data = bytearray(file.read_bytes())
    data[-4] ^= 0xFF
    file.write_bytes(bytes(data))
    reopened = ActivationStore(store.path)
    with pytest.raises(SaelignError, match="shard_00002.safetensors is corrupt"):
        list(reopened.batches(8, shuffle=False))
    damaged_header = bytearray(data)
    damaged_header[9] = ord("#")
    file.write_bytes(bytes(damaged_header))
    with pytest.raises(SaelignError, match="shard_00002.safetensors is corrupt"):
        ActivationStore(store.path, verify=False).load_shard(2)


def test_width_mismatch_is_named(store):
    manifest = json.loads((store.path / MANIFEST).read_text())
    manifest["d_in"] = D + 1
    (store.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SaelignError, match=f"shard_00000.safetensors has activations of width {D}.*d_in={D + 1}"):
        ActivationStore(store.path).load_shard(0)


def test_writer_resumes_from_last_good_shard(tmp_path):
    reference = write_store(tmp_path / "ref", 95)
    path = tmp_path / "s"
    partial = StoreWriter(path, header(), token_budget=None)
    for start in range(0, 47, 7):
        partial.add(start, rows(start, 7))  # "interrupted" after 49 rows: 4 shards on disk, 9 rows pending
    assert partial.rows == 40 and not json.loads((path / MANIFEST).read_text())["complete"]
    (path / "shard_00003.safetensors").unlink()  # damage: the writer must redo from shard 3
    for temp in (".shard_00004.safetensors.k2j4x9.tmp", ".manifest.json.a1b2c3.tmp"):  # killed mid-write
        (path / temp).write_bytes(b"cut short")
    resumed = StoreWriter(path, header(), token_budget=None)
    assert resumed.rows == 30 and not (path / "shard_00004.safetensors").exists()
    assert not list(path.glob(".*"))  # the capture fault trials found these left behind
    write_store(path, 95)
    for shard in reference.shards:
        assert (path / shard["file"]).read_bytes() == (reference.path / shard["file"]).read_bytes()
    assert json.loads((path / MANIFEST).read_text())["shards"] == reference.shards


def test_writer_refuses_other_settings_and_keeps_finished_store(tmp_path):
    write_store(tmp_path / "s", 25)
    with pytest.raises(SaelignError, match="different settings \\(context_length: 8 -> 16\\).*another --out"):
        StoreWriter(tmp_path / "s", header(context_length=16), token_budget=None)
    again = StoreWriter(tmp_path / "s", header(), token_budget=None)
    assert again.done and again.rows == 25


def test_budget_growth_extends_and_shrink_is_refused(tmp_path):
    writer = StoreWriter(tmp_path / "s", header(), token_budget=25)
    writer.add(0, rows(0, 25))
    writer.finish(exhausted=False)
    with pytest.raises(SaelignError, match="already holds 25 tokens, more than --token-budget 20"):
        StoreWriter(tmp_path / "s", header(), token_budget=20)
    grown = StoreWriter(tmp_path / "s", header(), token_budget=40)
    assert not grown.done and grown.rows == 20  # the partial last shard is redone
    grown.add(0, rows(0, 40))
    grown.finish(exhausted=False)
    assert torch.equal(next(ActivationStore(tmp_path / "s").batches(40, shuffle=False)), rows(0, 40)["activations"])


def test_shard_subset_reads_only_those_shards(store):
    seen = sorted(i for b in store.batches(4, shuffle=True, seed=3, shards=[1, 3]) for i in row_ids(b))
    assert seen == list(range(10, 20)) + list(range(30, 40))
    with pytest.raises(SaelignError, match="non-empty subset"):
        next(store.batches(4, shards=[42]))
