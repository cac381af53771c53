"""SAE files: saelign/SAELens round trips, foreign layouts against their libraries' math, and error messages."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from saelign.cli import sae_convert
from saelign.errors import SaelignError
from saelign.sae import formats
from saelign.sae.formats import CFG_FILE, WEIGHTS_FILE, check_sae_matches, detect_format, load_sae, save_sae
from saelign.sae.model import SAE, SAEConfig

D_IN, D_SAE = 12, 40
ACTIVATIONS = ["relu", "topk", "jumprelu", "batchtopk"]


def random_sae(activation: str, norm_scale: float = 0.37, seed: int = 0, **cfg) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, activation=activation, k=5, hookpoint="model.layers.1", model="tiny", **cfg))
    with torch.no_grad():
        sae.W_enc.mul_(1.5)
        sae.b_enc.normal_(0, 0.5)
        sae.b_dec.normal_(0, 0.5)
        sae.norm_scale.fill_(norm_scale)
        if sae.threshold is not None:
            sae.threshold.uniform_(0.05, 0.6)
    return sae


def inputs(n: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 3 + 1


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    error, scale = (a - b).abs().max().item(), max(1.0, b.abs().max().item())
    assert error <= tol * scale, f"max abs error {error:.3g} at scale {scale:.3g}"


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_round_trip_reproduces_encode_decode_and_config(tmp_path, activation):
    sae = random_sae(activation, always_on_latents=[3] if activation == "topk" else [])
    save_sae(sae, tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    x = inputs()
    z = sae.encode(x)
    assert torch.equal(loaded.encode(x) != 0, z != 0)  # same active set
    assert_close(loaded.encode(x), z)
    assert_close(loaded.decode(z), sae.decode(z))
    assert loaded.cfg == sae.cfg
    assert float(loaded.norm_scale) == pytest.approx(0.37)


def test_saved_layout_is_saelens_with_norm_scale_folded(tmp_path):
    sae = random_sae("batchtopk", norm_scale=2.5)
    save_sae(sae, tmp_path / "sae", extra_cfg={"context_size": 128})
    cfg = json.loads((tmp_path / "sae" / CFG_FILE).read_text())
    # SAELens has no inference "batchtopk" class: it saves those as jumprelu with a per-latent threshold
    assert cfg["architecture"] == "jumprelu" and cfg["d_in"] == D_IN and cfg["d_sae"] == D_SAE
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    meta = cfg["metadata"]
    assert meta["hook_name"] == "model.layers.1" and meta["model_name"] == "tiny" and meta["context_size"] == 128
    assert meta["saelign"]["config"]["activation"] == "batchtopk" and meta["saelign"]["norm_scale"] == 2.5
    weights = formats.load_tensors(tmp_path / "sae" / WEIGHTS_FILE)
    assert set(weights) == {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}
    # raw-unit SAELens math on the folded weights reproduces our latents and reconstruction
    x = inputs()
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    z = F.relu(pre) * (pre > weights["threshold"])
    assert_close(z, sae.encode(x))
    assert_close(z @ weights["W_dec"] + weights["b_dec"], sae(x))


def test_topk_cfg_has_k_and_relu_is_standard(tmp_path):
    save_sae(random_sae("topk"), tmp_path / "t")
    save_sae(random_sae("relu"), tmp_path / "r")
    topk = json.loads((tmp_path / "t" / CFG_FILE).read_text())
    assert topk["architecture"] == "topk" and topk["k"] == 5 and topk["rescale_acts_by_decoder_norm"] is False
    assert json.loads((tmp_path / "r" / CFG_FILE).read_text())["architecture"] == "standard"


def test_save_refuses_to_replace_a_different_sae_and_keeps_no_temp_dirs(tmp_path):
    target = tmp_path / "sae"
    save_sae(random_sae("relu"), target)
    save_sae(random_sae("relu"), target)  # identical: no-op
    (target / "notes.txt").write_text("keep me")
    other = random_sae("relu", seed=5)
    with pytest.raises(SaelignError, match="already holds a different SAE"):
        save_sae(other, target)
    save_sae(other, target, overwrite=True)
    assert_close(load_sae(target).W_dec, other.W_dec)
    assert (target / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]


def test_interrupted_save_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(formats, "write_json_atomic", crash)
    with pytest.raises(OSError):
        save_sae(random_sae("topk"), tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # the temp dir is gone, the target never appeared
    monkeypatch.undo()
    save_sae(random_sae("topk"), tmp_path / "old")
    monkeypatch.setattr(formats, "write_json_atomic", crash)
    with pytest.raises(OSError):
        save_sae(random_sae("topk", seed=3), tmp_path / "old", overwrite=True)
    with pytest.raises(SaelignError, match="no cfg.json: the save was interrupted"):
        load_sae(tmp_path / "old")


def test_a_save_into_a_folder_removes_the_temp_files_a_killed_save_left(tmp_path):
    target = tmp_path / "sae"
    save_sae(random_sae("topk"), target)
    left = [target / ".cfg.json.k1ll3d.tmp", target / ".sae_weights.safetensors.k1ll3d.tmp", target / "x.tmp"]
    for path in left:
        path.write_text("half")
    (target / CFG_FILE).unlink()  # killed before cfg.json (the marker) was written again
    save_sae(random_sae("topk", seed=2), target)
    assert sorted(p.name for p in target.iterdir()) == sorted([CFG_FILE, WEIGHTS_FILE, "x.tmp"])


def test_load_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(SaelignError, match="SAE not found"):
        load_sae(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaelignError, match="is empty"):
        load_sae(tmp_path / "empty")
    save_sae(random_sae("relu"), tmp_path / "run" / "a")
    save_sae(random_sae("relu"), tmp_path / "run" / "b")
    with pytest.raises(SaelignError, match=r"several SAEs \(a, b\)"):
        load_sae(tmp_path / "run")
    (tmp_path / "run" / "a" / WEIGHTS_FILE).write_bytes(b"\x10\x00garbage")
    with pytest.raises(SaelignError, match=f"{WEIGHTS_FILE}.*corrupt"):
        load_sae(tmp_path / "run" / "a")
    weights = formats.load_tensors(tmp_path / "run" / "b" / WEIGHTS_FILE)
    del weights["b_enc"]
    save_file(weights, str(tmp_path / "run" / "b" / WEIGHTS_FILE))
    with pytest.raises(SaelignError, match="lacks tensor.*b_enc"):
        load_sae(tmp_path / "run" / "b")
    (tmp_path / "run" / "b" / CFG_FILE).write_text("{not json")
    with pytest.raises(SaelignError, match=f"{CFG_FILE} is not valid JSON"):
        load_sae(tmp_path / "run" / "b")
    with pytest.raises(SaelignError, match="unknown SAE format"):
        load_sae(tmp_path / "run" / "b", format="npz")  # type: ignore[arg-type]


def test_loading_is_device_aware_and_accepts_the_weights_file(tmp_path):
    save_sae(random_sae("topk"), tmp_path / "sae")
    assert load_sae(tmp_path / "sae" / WEIGHTS_FILE, device="cpu").W_enc.device.type == "cpu"
    assert detect_format(tmp_path / "sae") == (tmp_path / "sae", "saelens")


# ---- foreign layouts, built by hand as each library writes them, checked against that library's math ----

def _params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"enc": torch.randn(D_SAE, D_IN, generator=g) * 0.5, "b_enc": torch.randn(D_SAE, generator=g) * 0.3,
            "dec": torch.randn(D_SAE, D_IN, generator=g) * 0.4, "b_dec": torch.randn(D_IN, generator=g)}


def test_sparsify_import_matches_sparsify_math(tmp_path):
    p = _params()
    folder = tmp_path / "layers.3"
    folder.mkdir()
    save_file({"encoder.weight": p["enc"], "encoder.bias": p["b_enc"], "W_dec": p["dec"], "b_dec": p["b_dec"]},
              str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": 32, "normalize_decoder": True,
                                                 "num_latents": D_SAE, "k": 6, "multi_topk": False,
                                                 "skip_connection": False, "transcode": False, "d_in": D_IN}))
    sae = load_sae(folder)
    assert detect_format(folder)[1] == "sparsify" and sae.cfg.activation == "topk" and sae.cfg.k == 6
    x = inputs()
    # sparsify: relu(linear(x - b_dec)), top-k of those, decode = sum of top acts * W_dec rows + b_dec
    pre = F.relu((x - p["b_dec"]) @ p["enc"].T + p["b_enc"])
    values, indices = pre.topk(6, dim=-1)
    expected = torch.zeros_like(pre).scatter_(-1, indices, values)
    assert_close(sae.encode(x), expected)
    assert_close(sae.decode(expected), expected @ p["dec"] + p["b_dec"])


def test_sparsify_transcoder_is_refused(tmp_path):
    p = _params()
    save_file({"encoder.weight": p["enc"], "encoder.bias": p["b_enc"], "W_dec": p["dec"], "b_dec": p["b_dec"]},
              str(tmp_path / "sae.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"k": 4, "d_in": D_IN, "transcode": True}))
    with pytest.raises(SaelignError, match="transcoder"):
        load_sae(tmp_path)


def _dictionary_dir(tmp_path, state: dict[str, torch.Tensor], dict_class: str):
    torch.save(state, tmp_path / "ae.pt")
    (tmp_path / "config.json").write_text(json.dumps({"trainer": {"dict_class": dict_class, "activation_dim": D_IN,
                                                                  "dict_size": D_SAE, "lm_name": "tiny-lm", "layer": 1}}))
    return load_sae(tmp_path)


def test_dictionary_learning_autoencoder(tmp_path):
    p = _params()
    sae = _dictionary_dir(tmp_path, {"bias": p["b_dec"], "encoder.weight": p["enc"], "encoder.bias": p["b_enc"],
                                     "decoder.weight": p["dec"].T.contiguous()}, "AutoEncoder")
    x = inputs()
    f = F.relu((x - p["b_dec"]) @ p["enc"].T + p["b_enc"])
    assert sae.cfg.activation == "relu" and sae.cfg.model == "tiny-lm"
    assert_close(sae.encode(x), f)
    assert_close(sae.decode(f), f @ p["dec"] + p["b_dec"])


def test_dictionary_learning_autoencoder_new_without_input_centring(tmp_path):
    p = _params()
    sae = _dictionary_dir(tmp_path, {"encoder.weight": p["enc"], "encoder.bias": p["b_enc"],
                                     "decoder.weight": p["dec"].T.contiguous(), "decoder.bias": p["b_dec"]}, "AutoEncoderNew")
    x = inputs()
    f = F.relu(x @ p["enc"].T + p["b_enc"])
    assert_close(sae.encode(x), f)
    assert_close(sae(x), f @ p["dec"] + p["b_dec"])


@pytest.mark.parametrize("dict_class", ["AutoEncoderTopK", "BatchTopKSAE"])
def test_dictionary_learning_topk_and_batchtopk(tmp_path, dict_class):
    p = _params()
    state = {"encoder.weight": p["enc"], "encoder.bias": p["b_enc"], "decoder.weight": p["dec"].T.contiguous(),
             "b_dec": p["b_dec"], "k": torch.tensor(6, dtype=torch.int), "threshold": torch.tensor(0.4)}
    sae = _dictionary_dir(tmp_path, state, dict_class)
    x = inputs()
    post = F.relu((x - p["b_dec"]) @ p["enc"].T + p["b_enc"])
    if dict_class == "AutoEncoderTopK":  # default encode: per-token top-k
        values, indices = post.topk(6, dim=-1)
        f = torch.zeros_like(post).scatter_(-1, indices, values)
    else:  # BatchTopKSAE default encode (use_threshold=True): scalar threshold on the ReLU outputs
        f = post * (post > 0.4)
    assert sae.cfg.activation == ("topk" if dict_class == "AutoEncoderTopK" else "batchtopk") and sae.cfg.k == 6
    assert_close(sae.encode(x), f)
    assert_close(sae.decode(f), f @ p["dec"] + p["b_dec"])


def test_dictionary_learning_jumprelu_and_matryoshka(tmp_path):
    p = _params()
    threshold = torch.linspace(-0.5, 0.8, D_SAE)  # negative thresholds too: relu outside the jump still applies
    (tmp_path / "j").mkdir()
    sae = _dictionary_dir(tmp_path / "j", {"W_enc": p["enc"].T.contiguous(), "b_enc": p["b_enc"], "W_dec": p["dec"],
                                           "b_dec": p["b_dec"], "threshold": threshold}, "JumpReluAutoEncoder")
    x = inputs()
    pre = x @ p["enc"].T + p["b_enc"]  # JumpReluAutoEncoder does not centre the input by default
    f = F.relu(pre * (pre > threshold))
    assert_close(sae.encode(x), f)
    assert_close(sae.decode(f), f @ p["dec"] + p["b_dec"])
    (tmp_path / "m").mkdir()
    sae = _dictionary_dir(tmp_path / "m", {"W_enc": p["enc"].T.contiguous(), "b_enc": p["b_enc"], "W_dec": p["dec"],
                                           "b_dec": p["b_dec"], "k": torch.tensor(4, dtype=torch.int),
                                           "threshold": torch.tensor(0.3), "group_sizes": torch.tensor([8, 32])},
                          "MatryoshkaBatchTopKSAE")
    post = F.relu((x - p["b_dec"]) @ p["enc"].T + p["b_enc"])
    assert_close(sae.encode(x), post * (post > 0.3))


def test_dictionary_learning_refuses_gated_and_pickled_objects(tmp_path):
    p = _params()
    with pytest.raises(SaelignError, match="gated"):
        _dictionary_dir(tmp_path, {"encoder.weight": p["enc"], "r_mag": p["b_enc"], "decoder_bias": p["b_dec"]},
                        "GatedAutoEncoder")
    # weights_only loading refuses arbitrary pickled objects instead of executing them
    torch.save({"encoder.weight": argparse.Namespace(payload=1)}, tmp_path / "ae.pt")
    with pytest.raises(SaelignError, match="ae.pt cannot be read as a tensor state dict"):
        load_sae(tmp_path)


def test_foreign_saelens_files_fold_their_conventions(tmp_path):
    """SAELens-saved jumprelu without input centring, and topk with rescale_acts_by_decoder_norm."""
    p = _params()
    W_enc, threshold = p["enc"].T.contiguous(), torch.linspace(-0.3, 0.6, D_SAE)
    (tmp_path / "j").mkdir()
    save_file({"W_enc": W_enc, "b_enc": p["b_enc"], "W_dec": p["dec"], "b_dec": p["b_dec"], "threshold": threshold},
              str(tmp_path / "j" / WEIGHTS_FILE))
    (tmp_path / "j" / CFG_FILE).write_text(json.dumps({
        "architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "apply_b_dec_to_input": False,
        "normalize_activations": "none", "metadata": {"hook_name": "model.layers.2", "model_name": "m"}}))
    sae = load_sae(tmp_path / "j")
    x = inputs()
    pre = x @ W_enc + p["b_enc"]
    f = F.relu(pre) * (pre > threshold)
    assert sae.cfg.hookpoint == "model.layers.2" and sae.cfg.model == "m"
    assert_close(sae.encode(x), f)
    assert_close(sae.decode(f), f @ p["dec"] + p["b_dec"])

    (tmp_path / "t").mkdir()
    save_file({"W_enc": W_enc, "b_enc": p["b_enc"], "W_dec": p["dec"], "b_dec": p["b_dec"]}, str(tmp_path / "t" / WEIGHTS_FILE))
    (tmp_path / "t" / CFG_FILE).write_text(json.dumps({
        "architecture": "topk", "d_in": D_IN, "d_sae": D_SAE, "k": 7, "rescale_acts_by_decoder_norm": True, "metadata": {}}))
    sae = load_sae(tmp_path / "t")
    norms = p["dec"].norm(dim=1)
    pre = ((x - p["b_dec"]) @ W_enc + p["b_enc"]) * norms
    values, indices = pre.topk(7, dim=-1)
    f = torch.zeros_like(pre).scatter_(-1, indices, values.relu())
    assert_close(sae.encode(x), f)
    assert_close(sae.decode(f), f @ (p["dec"] / norms[:, None]) + p["b_dec"])

    (tmp_path / "t" / CFG_FILE).write_text(json.dumps({"architecture": "gated", "d_in": D_IN, "d_sae": D_SAE}))
    with pytest.raises(SaelignError, match="architecture 'gated' is not supported"):
        load_sae(tmp_path / "t")


def test_check_sae_matches(tiny_llama):
    good = SAE(SAEConfig(d_in=32, d_sae=64, hookpoint="model.layers.1"))
    check_sae_matches(good, tiny_llama, "model.layers.1")
    with pytest.raises(SaelignError, match="trained on hookpoint 'model.layers.1' but 'model.layers.2'"):
        check_sae_matches(good, tiny_llama, "model.layers.2")
    with pytest.raises(SaelignError, match="reads d_in=16 .* outputs width 32"):
        check_sae_matches(SAE(SAEConfig(d_in=16, d_sae=64)), tiny_llama, "model.layers.1")
    with pytest.raises(SaelignError, match="width 64"):
        check_sae_matches(SAE(SAEConfig(d_in=32, d_sae=64)), tiny_llama, "model.layers.1.mlp.up_proj")


def test_convert_cli_writes_a_loadable_sae(tmp_path, capsys):
    p = _params()
    src = tmp_path / "sparsify" / "layers.1"
    src.mkdir(parents=True)
    save_file({"encoder.weight": p["enc"], "encoder.bias": p["b_enc"], "W_dec": p["dec"], "b_dec": p["b_dec"]},
              str(src / "sae.safetensors"))
    (src / "cfg.json").write_text(json.dumps({"k": 3, "d_in": D_IN, "num_latents": D_SAE}))
    parser = argparse.ArgumentParser()
    sae_convert.register(parser.add_subparsers())
    args = parser.parse_args(["convert", "--input", str(src), "--output", str(tmp_path / "out"), "--from", "sparsify",
                              "--hookpoint", "model.layers.1"])
    assert args.func(args) == 0
    assert "topk SAE 12 -> 40, k=3, hookpoint model.layers.1" in capsys.readouterr().out
    converted, original = load_sae(tmp_path / "out"), load_sae(src)
    assert converted.cfg.hookpoint == "model.layers.1"
    x = inputs()
    assert_close(converted(x), original(x))
