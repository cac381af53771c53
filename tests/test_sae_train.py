"""SAE training: sparse-gradient parity with dense autograd, losses, dead latents, checkpoints, sweeps, CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from saelign.cli import main
from saelign.errors import SaelignError
from saelign.sae import SAE, SAEConfig, load_sae
from saelign.sae.activations import ReLU, TopK, activation_class
from saelign.sae.activations.batchtopk import batch_topk_selection
from saelign.sae.activations.jumprelu import jumprelu
from saelign.sae.losses import TrainBatch
from saelign.sae.sparse_ops import ActiveLatents, sparse_decode
from saelign.sae.train import SAETrainConfig, auto_lr, default_names, train_saes
from saelign.store import StoreWriter
from saelign.store.store import FORMAT, FORMAT_VERSION

D_IN, N_FEAT = 16, 32


def dictionary(seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(N_FEAT, D_IN, generator=torch.Generator().manual_seed(seed)), dim=1)


def synthetic(n: int, seed: int, active: float = 3.0) -> torch.Tensor:
    """Sparse non-negative combinations of a ground-truth dictionary (~`active` features per token)."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.rand(n, N_FEAT, generator=g) < active / N_FEAT) * (torch.rand(n, N_FEAT, generator=g) * 2 + 0.5)
    return z @ dictionary() + 0.5


def batches(x: torch.Tensor, size: int):
    return [x[i:i + size] for i in range(0, x.shape[0], size)]


def random_sae(activation: str, d_sae: int = 48, k: int = 4) -> SAE:
    sae = SAE(SAEConfig(d_in=D_IN, d_sae=d_sae, activation=activation, k=k))
    sae.reset_parameters(seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn(sae.W_enc.shape, generator=g))
        sae.b_enc.normal_(0, 0.2, generator=g)
        sae.b_dec.normal_(0, 0.2, generator=g)
    return sae


def grads(sae: SAE, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    sae.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in sae.named_parameters() if p.requires_grad}


def fvu(x, x_hat):
    return (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_sparse_gradients_match_dense_autograd(activation):
    sae = random_sae(activation)
    x = torch.randn(40, D_IN) * 2
    dead = torch.zeros(48, dtype=torch.bool)
    dead[::3] = True
    act = activation_class(activation).from_options({"auxk_alpha": 0.5})
    result = act.loss(sae, TrainBatch(x, dead=dead, scratch=torch.empty(40, 48)))
    sparse = grads(sae, result.loss)

    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    z = sae.activate(pre, training=True)
    x_hat = z @ sae.W_dec + sae.b_dec
    k_aux = min(D_IN // 2, int(dead.sum()))
    aux_vals, aux_idx = pre.masked_fill(~dead, -torch.inf).topk(k_aux, dim=-1)
    e_hat = torch.zeros_like(pre).scatter(-1, aux_idx, F.relu(aux_vals)) @ sae.W_dec
    aux = min(int(dead.sum()) / (D_IN // 2), 1.0) * fvu((x - x_hat).detach(), e_hat)
    dense = grads(sae, fvu(x, x_hat) + 0.5 * aux)

    torch.testing.assert_close(result.sq_err, (x_hat - x).pow(2).sum().detach())
    torch.testing.assert_close(result.aux, aux.detach())
    assert sparse.keys() == dense.keys() == {"W_enc", "b_enc", "W_dec", "b_dec"}
    for name in sparse:
        torch.testing.assert_close(sparse[name], dense[name], rtol=1e-4, atol=1e-6, msg=name)
    assert result.l0 == (z > 0).sum() / 40
    assert torch.equal(result.fired, (z > 0).any(0))


def test_selection_products_match_dense_matrices():
    g = torch.Generator().manual_seed(0)
    indices = torch.rand(7, 20, generator=g).topk(3, dim=-1).indices
    sel = ActiveLatents.from_topk(indices, 20)
    values = torch.randn(21, generator=g)
    dense = torch.zeros(7, 20).scatter(1, indices, values.view(7, 3))
    other = torch.randn(7, 5, generator=g)
    torch.testing.assert_close(sel.rows_times(values, other), dense.T @ other)
    torch.testing.assert_close(sel.col_sum(values), dense.sum(0))
    W = torch.randn(20, 5, generator=g)
    torch.testing.assert_close(sparse_decode(values, W, sel), dense @ W)


def test_batch_topk_selection_is_exact_including_a_dominant_token():
    pre = torch.randn(30, 50, generator=torch.Generator().manual_seed(0))
    pre[3] += 10  # one token holds far more than 4k of the batch's winners: the fallback path
    for p in (pre, pre - 10 * (torch.arange(30) == 3)[:, None]):
        sel, values = batch_topk_selection(p, 2)
        expected = torch.zeros_like(p).view(-1)
        top = p.view(-1).topk(60)
        expected[top.indices] = top.values
        got = torch.zeros_like(p).index_put_((sel.rows, sel.cols), values)
        torch.testing.assert_close(got, expected.view_as(p))
        assert torch.equal(sel.rows, sel.rows.sort().values)


def test_dense_relu_step_matches_naive_autograd():
    sae = random_sae("relu")
    x = torch.randn(25, D_IN)
    result = ReLU(l1_coefficient=0.3).loss(sae, TrainBatch(x, tokens_done=25, total_tokens=25))
    fast = grads(sae, result.loss)
    z = F.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    naive = ((z @ sae.W_dec + sae.b_dec - x) ** 2).sum(-1).mean() + 0.3 * z.sum(-1).mean()
    torch.testing.assert_close(result.loss, naive)
    for name, grad in grads(sae, naive).items():
        torch.testing.assert_close(fast[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_jumprelu_straight_through_gradients():
    pre = torch.tensor([[0.10, 0.52, 0.90], [0.48, 0.30, 1.20]], requires_grad=True)
    theta = torch.tensor([0.5, 0.5, 1.0], requires_grad=True)
    z, counts = jumprelu(pre, theta, 0.1)
    torch.testing.assert_close(z.detach(), torch.tensor([[0, 0.52, 0], [0, 0, 1.2]]))
    torch.testing.assert_close(counts, torch.tensor([0.0, 1, 1]))
    z.backward(torch.full_like(z, 2.0))
    # Only pre-activations within bandwidth/2 of theta (0.48 in column 0, 0.52 in column 1) move the threshold,
    # each by -(theta / bandwidth) * grad.
    torch.testing.assert_close(theta.grad, torch.tensor([-0.5 / 0.1 * 2, -0.5 / 0.1 * 2, 0]))
    torch.testing.assert_close(pre.grad, torch.tensor([[0, 2, 0], [0, 0, 2.0]]))
    theta.grad = pre.grad = None
    jumprelu(pre, theta, 0.1)[1].sum().backward()  # the L0 penalty: -(1 / bandwidth) per nearby entry
    torch.testing.assert_close(theta.grad, torch.tensor([-1 / 0.1, -1 / 0.1, 0]))
    assert pre.grad is None or not pre.grad.any()


def test_topk_recovers_a_ground_truth_dictionary():
    x = synthetic(16_000, seed=1, active=1.5)
    cfg = SAETrainConfig(total_tokens=16_000, batch_size=400, lr=0.01, log_every_steps=5)
    sae, = train_saes(batches(x, 400), [SAEConfig(d_in=D_IN, d_sae=48, activation="topk", k=3)], cfg)
    test = synthetic(2000, seed=2, active=1.5)
    with torch.no_grad():
        assert float(fvu(test, sae(test))) < 0.15
        assert ((sae.encode(test) > 0).sum(-1) <= 3).all()
        best = (dictionary() @ F.normalize(sae.W_dec, dim=1).T).max(dim=1).values
    assert (best > 0.95).float().mean() > 0.9  # nearly every true feature has a near-identical decoder row
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(48))
    assert float(sae.norm_scale) == pytest.approx((D_IN / x[:4400].pow(2).sum(1).mean()).sqrt().item(), rel=1e-4)


def train_small(activation: str, **train_options) -> tuple[SAE, float, float]:
    """(SAE, held-out L0, held-out FVU) after 30 steps on the synthetic data."""
    cfg = SAETrainConfig(total_tokens=12_000, batch_size=400, lr=0.01, activation_options=train_options)
    sae, = train_saes(batches(synthetic(12_000, seed=3), 400), [SAEConfig(d_in=D_IN, d_sae=64, activation=activation, k=3)], cfg)
    test = synthetic(4000, seed=4)
    with torch.no_grad():
        l0 = float((sae.encode(test) > 0).sum(-1).float().mean())
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))
        return sae, l0, float(fvu(test, sae(test)))


def test_batchtopk_learns_an_inference_threshold_giving_about_k():
    sae, l0, error = train_small("batchtopk")
    assert 3 * 0.7 < l0 < 3 * 1.3 and error < 0.3
    assert sae.threshold.unique().numel() == 1 and float(sae.threshold[0]) > 0 and not sae.threshold.requires_grad


def test_relu_l1_coefficient_trades_sparsity_for_error():
    _, l0_weak, error_weak = train_small("relu", l1_coefficient=0.3)
    _, l0_strong, error_strong = train_small("relu", l1_coefficient=3.0)
    assert l0_strong < 0.5 * l0_weak and error_weak < error_strong and error_weak < 0.15


def test_jumprelu_learns_thresholds():
    sae, l0, error = train_small("jumprelu", jumprelu_sparsity_coefficient=1.0, jumprelu_init_threshold=0.01,
                                 jumprelu_threshold_lr=0.01)
    assert float(sae.threshold.mean()) > 0.05 and (sae.threshold >= 0).all() and not sae.threshold.requires_grad
    assert l0 < 20 and error < 0.15


def test_loss_decreases_and_log_is_written(tmp_path):
    x = synthetic(8000, seed=5)
    cfg = SAETrainConfig(total_tokens=8000, batch_size=400, lr=0.01, log_every_steps=4, out=str(tmp_path))
    sae, = train_saes(batches(x, 400), [SAEConfig(d_in=D_IN, d_sae=32, k=3, hookpoint="h", model="m")], cfg)
    log = json.loads((tmp_path / "train_log.json").read_text())
    entries = log["entries"]
    assert [e["step"] for e in entries] == [4, 8, 12, 16, 20] and log["saes"] == ["sae"]
    assert entries[-1]["fvu"] < 0.7 * entries[0]["fvu"] and entries[-1]["loss"] < entries[0]["loss"]
    assert entries[-1]["l0"] == pytest.approx(3, abs=0.01)
    assert {"mse", "dead_fraction", "lr", "tokens_per_s", "aux", "tokens"} <= entries[0].keys()
    loaded = load_sae(tmp_path)
    assert loaded.cfg.hookpoint == "h"
    torch.testing.assert_close(loaded(x[:50]), sae(x[:50]).detach())
    assert "sae_train" in json.loads((tmp_path / "run.json").read_text())["stages"]


def test_auxk_revives_dead_latents():
    # Latents 12.. hold true features but with encoders too weak to win the top-k: dead without AuxK. AuxK lets
    # them reconstruct what the live latents miss, which strengthens their encoders until they win.
    data = [synthetic(400, seed=100 + i, active=1.5) for i in range(40)]
    dead_after, loss_after = {}, {}
    for alpha in (0.0, 1 / 32):
        sae = SAE(SAEConfig(d_in=D_IN, d_sae=N_FEAT, k=2))
        with torch.no_grad():
            sae.W_dec.copy_(dictionary())
            sae.W_enc.copy_(dictionary().T)
            sae.W_enc[:, 12:] *= 0.05
            sae.b_dec.fill_(0.5)
        opt = torch.optim.Adam(sae.parameters(), lr=0.005)
        since = torch.zeros(N_FEAT, dtype=torch.long)
        since[12:] = 10**6
        for x in data:
            batch = TrainBatch(x, dead=since >= 2000, scratch=torch.empty(400, N_FEAT))
            result = TopK(auxk_alpha=alpha).loss(sae, batch)
            opt.zero_grad()
            result.loss.backward()
            opt.step()
            sae.normalize_decoder()
            since += 400
            since[result.fired] = 0
        dead_after[alpha] = float((since >= 2000).float().mean())
        with torch.no_grad():
            test = synthetic(2000, seed=3, active=1.5)
            loss_after[alpha] = float(fvu(test, sae(test)))
    assert dead_after[0.0] > 0.25 and dead_after[1 / 32] < 0.5 * dead_after[0.0], dead_after
    assert loss_after[1 / 32] < loss_after[0.0]


def test_sweep_trains_each_sae_as_if_alone():
    x = synthetic(4000, seed=8)
    cfg = SAETrainConfig(total_tokens=4000, batch_size=400, dead_window_tokens=800)
    cfgs = [SAEConfig(d_in=D_IN, d_sae=32, k=2), SAEConfig(d_in=D_IN, d_sae=32, k=4), SAEConfig(d_in=D_IN, d_sae=32, activation="relu")]
    together = train_saes(batches(x, 400), cfgs, cfg)
    alone = train_saes(batches(x, 400), cfgs[1:2], cfg)[0]
    for name, tensor in alone.state_dict().items():
        assert torch.equal(together[1].state_dict()[name], tensor), name
    assert not torch.equal(together[0].W_dec, together[1].W_dec)
    assert default_names(cfgs[:2]) == ["k2", "k4"] and default_names(cfgs) == ["topk-k2", "topk-k4", "relu-k32"]


class Crash(Exception):
    pass


def crashing(items, after: int):
    for i, item in enumerate(items):
        if i == after:
            raise Crash
        yield item


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
    x = synthetic(6000, seed=9)
    cfgs = [SAEConfig(d_in=D_IN, d_sae=32, activation=a, k=3) for a in ("topk", "jumprelu", "batchtopk")]

    def config(out):
        return SAETrainConfig(total_tokens=6000, batch_size=500, lr=0.01, dead_window_tokens=1000, log_every_steps=2,
                              checkpoint_every_tokens=1500, out=str(out))

    reference = train_saes(batches(x, 500), cfgs, config(tmp_path / "ref"))
    with pytest.raises(Crash):
        train_saes(crashing(batches(x, 500), 10), cfgs, config(tmp_path / "run"))
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert (state["step"], state["tokens"], state["finished"]) == (9, 4500, False)
    resumed = train_saes(batches(x, 500), cfgs, config(tmp_path / "run"))
    for ref, res in zip(reference, resumed, strict=True):
        for name, tensor in ref.state_dict().items():
            torch.testing.assert_close(res.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    logs = [json.loads((tmp_path / d / "train_log.json").read_text())["entries"] for d in ("ref", "run")]
    assert [{k: v for k, v in e.items() if k != "tokens_per_s"} for e in logs[0]] == \
           [{k: v for k, v in e.items() if k != "tokens_per_s"} for e in logs[1]]
    # A finished run is not retrained (the stream is never read) and another config is refused.
    again = train_saes(crashing(batches(x, 500), 0), cfgs, config(tmp_path / "run"))
    assert torch.equal(again[0].W_enc, reference[0].W_enc)
    changed = config(tmp_path / "run")
    changed.lr = 0.02
    with pytest.raises(SaelignError, match="lr"):
        train_saes(batches(x, 500), cfgs, changed)
    expected = {"checkpoint", "train_log.json", "run.json", *default_names(cfgs)}
    assert expected == {p.name for p in (tmp_path / "run").iterdir()}
    shutil.rmtree(tmp_path / "run" / "checkpoint")  # SAEs without a checkpoint belong to no resumable run
    with pytest.raises(SaelignError, match="already holds an SAE"):
        train_saes(batches(x, 500), cfgs, config(tmp_path / "run"))


def test_bad_inputs_raise_saelign_errors():
    cfg = SAETrainConfig(total_tokens=1000, batch_size=100)
    sae_cfg = [SAEConfig(d_in=D_IN, d_sae=32, k=2)]
    bad = synthetic(300, seed=0)
    bad[150, 3] = float("nan")
    with pytest.raises(SaelignError, match="batch 1 contains NaN"):
        train_saes(batches(bad, 100), sae_cfg, cfg)
    with pytest.raises(SaelignError, match="d_in=16"):
        train_saes([torch.randn(100, D_IN + 1)], sae_cfg, cfg)
    with pytest.raises(SaelignError, match="same d_in"):
        train_saes([bad], [*sae_cfg, SAEConfig(d_in=8, d_sae=32, k=2)], cfg)
    with pytest.raises(SaelignError, match="total_tokens"):
        train_saes([bad], sae_cfg, SAETrainConfig())
    with pytest.raises(SaelignError, match="empty"):
        train_saes([], sae_cfg, cfg)
    with pytest.raises(SaelignError, match="batch_size"):
        SAETrainConfig(batch_size=0)


def write_store(path, x: torch.Tensor) -> None:
    header = {"format": FORMAT, "version": FORMAT_VERSION, "model": "m", "model_dtype": "float32", "hookpoint": "model.layers.1",
              "d_in": x.shape[1], "dtype": "float32", "tokenizer": {"vocab_size": 10}, "context_length": 8,
              "shard_tokens": 1000, "corpus": {"source": "c", "sha256": "x"}, "masking": {"token_ids": [0], "first_position": True}}
    writer = StoreWriter(path, header, token_budget=None)
    n = x.shape[0]
    writer.add(0, {"activations": x, "token_ids": torch.zeros(n, dtype=torch.int32), "context_ids": torch.arange(n) // 8,
                   "positions": (torch.arange(n) % 8).int()})
    writer.finish(exhausted=True)


def test_cli_trains_a_k_sweep_from_a_store(tmp_path, capsys):
    write_store(tmp_path / "store", synthetic(3000, seed=10))
    argv = ["sae", "train", "--store", str(tmp_path / "store"), "--k", "2,4", "--d-sae", "32", "--batch-size", "500",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    for name, k in (("k2", 2), ("k4", 4)):
        sae = load_sae(tmp_path / "out" / name)
        assert (sae.cfg.k, sae.cfg.hookpoint, sae.cfg.model, sae.d_in) == (k, "model.layers.1", "m", D_IN)
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert log["entries"][-1]["tokens"] == 3000  # total_tokens defaults to one pass over the store
    assert main(argv) == 0  # finished: returns at once
    assert "k4: topk d_sae=32 k=4" in capsys.readouterr().out
    assert main(["sae", "train", "--out", str(tmp_path / "x")]) == 2


def test_cli_trains_on_the_fly_from_a_model(tmp_path, tiny_llama_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog." for i in range(60)))
    out = tmp_path / "live"
    assert main(["sae", "train", "--model", str(tiny_llama_dir), "--hookpoint", "model.layers.1", "--corpus", str(corpus),
                 "--context-length", "32", "--d-sae", "64", "--k", "4", "--total-tokens", "600", "--batch-size", "128",
                 "--device", "cpu", "--out", str(out)]) == 0
    sae = load_sae(out)
    assert (sae.d_in, sae.cfg.hookpoint) == (32, "model.layers.1")
    assert json.loads((out / "train_log.json").read_text())["entries"][-1]["tokens"] == 600


def test_dead_window_and_lr_defaults():
    assert SAETrainConfig(total_tokens=1_000_000).dead_window() == 50_000
    assert SAETrainConfig(total_tokens=10**10).dead_window() == 10_000_000
    assert SAETrainConfig(total_tokens=1000, batch_size=4096).dead_window() == 4096
    assert SAETrainConfig(total_tokens=1000, dead_window_tokens=7).dead_window() == 7
    cfg = SAEConfig(d_sae=16384)
    assert auto_lr(cfg, 10**9) == pytest.approx(2e-4) and auto_lr(cfg, 10**6) == pytest.approx(2e-4 * 100**0.47)
    assert auto_lr(SAEConfig(d_sae=16384, activation="relu"), 10**6) == pytest.approx(2e-4)
    assert auto_lr(cfg, 10**4) == pytest.approx(12 * 2e-4)


def test_jumprelu_threshold_has_its_own_learning_rate():
    # Too slow a threshold never leaves its initial value within a short run: the SAE stays dense.
    slow, l0_slow, _ = train_small("jumprelu", jumprelu_init_threshold=0.01, jumprelu_threshold_lr=1e-4)
    fast, l0_fast, _ = train_small("jumprelu", jumprelu_init_threshold=0.01, jumprelu_threshold_lr=0.01)
    assert float(slow.threshold.max()) < 0.02 < float(fast.threshold.mean())
    assert l0_fast < 0.6 * l0_slow


def test_massive_norm_outliers_skip_the_scale_estimate_and_optionally_training(tmp_path):
    x = synthetic(4000, seed=11)
    x[[5, 1500, 3999]] *= 100  # attention-sink-like tokens
    clean = torch.cat([x[:5], x[6:1500], x[1501:3999]])
    sae_cfg = [SAEConfig(d_in=D_IN, d_sae=32, k=2)]
    for drop, dropped in ((False, 0), (True, 3)):
        cfg = SAETrainConfig(total_tokens=4000, batch_size=500, drop_outliers=drop, out=str(tmp_path / str(drop)))
        sae, = train_saes(batches(x, 500), sae_cfg, cfg)
        assert float(sae.norm_scale) == pytest.approx((D_IN / clean.pow(2).sum(1).mean()).sqrt().item(), rel=1e-4)
        entries = json.loads((tmp_path / str(drop) / "train_log.json").read_text())["entries"]
        assert entries[-1]["dropped_tokens"] == dropped and entries[-1]["tokens"] == 4000
    cfg = SAETrainConfig(total_tokens=4000, batch_size=500, outlier_norm_ratio=0, drop_outliers=True, out=str(tmp_path / "c"))
    sae, = train_saes(batches(x, 500), sae_cfg, cfg)
    assert json.loads((tmp_path / "c" / "train_log.json").read_text())["entries"][-1]["dropped_tokens"] == 0
    assert float(sae.norm_scale) == pytest.approx((D_IN / x.pow(2).sum(1).mean()).sqrt().item(), rel=1e-4)


@pytest.mark.parametrize("field", ["lr", "outlier_norm_ratio", "jumprelu_threshold_lr", "batch_size"])
def test_negative_or_zero_options_name_the_field(field):
    bad = {field: -1 if field != "batch_size" else 0}
    with pytest.raises(SaelignError, match=field):
        if field.startswith("jumprelu"):
            SAETrainConfig(total_tokens=100, activation_options=bad)
        else:
            SAETrainConfig(total_tokens=100, **bad)
