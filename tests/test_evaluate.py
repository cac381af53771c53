"""SAE evaluation: metric values on constructed SAEs, parity with naive loops, the splice, files and the CLI."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F

from saelign.cli import sae_eval
from saelign.errors import SaelignError
from saelign.models import ModelConfig
from saelign.sae.evaluate import (
    DENSITY_PLOT,
    EVAL_FILE,
    EvalConfig,
    context_batches,
    evaluate_sae,
    reconstruction_metrics,
    splice_metrics,
)
from saelign.sae.formats import save_sae
from saelign.sae.model import SAE, SAEConfig
from saelign.store import CaptureConfig, capture

HOOK = "model.layers.1"
D = 32  # tiny model width


def identity_sae(d: int = D) -> SAE:
    """relu(x) - relu(-x) = x exactly: latents [x+, x-], decoder rows [I; -I]."""
    sae = SAE(SAEConfig(d_in=d, d_sae=2 * d, activation="relu", hookpoint=HOOK))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae


def zero_sae(b_dec: torch.Tensor | None = None) -> SAE:
    sae = SAE(SAEConfig(d_in=D, d_sae=8, activation="relu", hookpoint=HOOK))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_dec.zero_()
        sae.b_dec.copy_(b_dec if b_dec is not None else torch.zeros(D))
    return sae


def data(n: int = 300, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) * torch.linspace(0.5, 3, D) + 20  # a large mean, like the residual stream


def test_identity_sae_has_zero_fvu_and_zero_sae_has_fvu_one():
    x = data()
    exact = reconstruction_metrics(identity_sae(), x.split(64))
    assert exact["fvu"] == pytest.approx(0, abs=1e-12) and exact["mse"] == pytest.approx(0, abs=1e-12)
    assert exact["explained_variance"] == pytest.approx(1)
    mean_only = reconstruction_metrics(zero_sae(x.double().mean(0).float()), x.split(64))
    assert mean_only["fvu"] == pytest.approx(1, abs=1e-5)  # predicting the mean explains nothing
    assert mean_only["l0"] == 0 and mean_only["dead_fraction"] == 1


def test_known_firing_pattern_gives_exact_l0_dead_and_dense():
    sae = SAE(SAEConfig(d_in=4, d_sae=4, activation="relu"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(torch.eye(4))
    x = -torch.ones(10, 4)
    x[:, 0] = 1  # latent 0 fires on every token
    x[0, 1] = 1  # latent 1 on 10 % (not dense: dense means more than 10 %)
    x[3:5, 2] = 1  # latent 2 on 20 %; latent 3 never fires
    m = reconstruction_metrics(sae, [x[:3], x[3:]], dense_threshold=0.1)
    assert m["tokens"] == 10 and m["l0"] == pytest.approx(1.3)
    assert m["dead_fraction"] == 0.25 and m["dense_fraction"] == 0.5
    assert m["firing_frequency"].tolist() == pytest.approx([1.0, 0.1, 0.2, 0.0])


def test_streaming_metrics_match_a_naive_computation():
    torch.manual_seed(3)
    sae = SAE(SAEConfig(d_in=D, d_sae=96, activation="topk", k=7))
    with torch.no_grad():
        sae.b_dec.fill_(20)
        sae.b_enc.normal_(0, 0.3)
    x = data(500, seed=1)
    m = reconstruction_metrics(sae, [x[:1], x[1:200], x[200:233], x[233:]], dense_threshold=0.05)
    z, xhat = sae.encode(x).detach(), sae(x).detach().double()
    xd = x.double()
    sse = ((xhat - xd) ** 2).sum()
    assert m["mse"] == pytest.approx(float(sse / x.numel()), rel=1e-9)
    assert m["fvu"] == pytest.approx(float(sse / ((xd - xd.mean(0)) ** 2).sum()), rel=1e-9)
    assert m["l0"] == pytest.approx(7.0)
    freq = (z != 0).double().mean(0)
    assert torch.equal(m["firing_frequency"], freq.float())
    assert m["dense_fraction"] == pytest.approx(float((freq > 0.05).double().mean()))


def test_empty_input_is_an_error():
    with pytest.raises(SaelignError, match="no activations"):
        reconstruction_metrics(identity_sae(), [])


def _token_batches(tokenizer, n: int = 6, length: int = 16):
    text = " ".join(["Paris is the capital of France and the quick brown fox jumps over the lazy dog."] * 20)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids[5] = tokenizer.convert_tokens_to_ids("<|im_end|>")  # a special token inside a context is masked too
    contexts = [torch.tensor(ids[i * length:(i + 1) * length]) for i in range(n)]
    masked = [tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    return list(context_batches(iter(contexts), masked, True, batch_size=4, n_contexts=n - 1, skip=1)), contexts


def test_context_batches_mask_like_capture(tokenizer):
    batches, contexts = _token_batches(tokenizer)
    assert [ids.shape[0] for ids, _ in batches] == [4, 1]
    assert torch.equal(batches[0][0][0], contexts[1])  # one context skipped
    keep = torch.cat([k for _, k in batches])
    assert not keep[:, 0].any() and keep[:, 1:].all()


def test_exact_splice_recovers_all_ce_and_zero_sae_recovers_none(tiny_llama, tokenizer):
    batches, _ = _token_batches(tokenizer)
    exact = splice_metrics(identity_sae(), tiny_llama, HOOK, batches)
    assert exact["ce_loss_sae"] == pytest.approx(exact["ce_loss_clean"], abs=1e-6)
    assert exact["kl_div"] == pytest.approx(0, abs=1e-6)
    assert exact["ce_loss_recovered"] == pytest.approx(1, abs=1e-4)
    ablated = splice_metrics(zero_sae(), tiny_llama, HOOK, batches)
    assert ablated["ce_loss_sae"] == pytest.approx(ablated["ce_loss_zero"], abs=1e-6)
    assert ablated["ce_loss_recovered"] == pytest.approx(0, abs=1e-4)
    assert ablated["ce_loss_zero"] != pytest.approx(ablated["ce_loss_clean"], abs=1e-3)


def _naive_logprobs(model, module, row: torch.Tensor, keep: torch.Tensor, replace) -> torch.Tensor:
    """Log-probs of one context with `replace` applied position by position at the unmasked positions."""
    def hook(_module, _inputs, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        for t in range(h.shape[1]):
            if replace is not None and keep[t]:
                h[0, t] = replace(h[0, t])
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return F.log_softmax(model(input_ids=row[None]).logits[0].float(), -1)
    finally:
        handle.remove()


def test_splice_metrics_match_a_naive_per_token_loop(tiny_llama, tokenizer):
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=D, d_sae=64, activation="topk", k=8, hookpoint=HOOK))
    batches, _ = _token_batches(tokenizer)
    m = splice_metrics(sae, tiny_llama, HOOK, batches)
    module = dict(tiny_llama.named_modules())[HOOK]
    ce = {"clean": [], "sae": [], "zero": []}
    kl = []
    for ids, keep in batches:
        for row, row_keep in zip(ids, keep, strict=True):
            clean = _naive_logprobs(tiny_llama, module, row, row_keep, None)
            spliced = _naive_logprobs(tiny_llama, module, row, row_keep, lambda v: sae(v[None])[0])
            zero = _naive_logprobs(tiny_llama, module, row, row_keep, torch.zeros_like)
            for t in range(len(row) - 1):
                if row_keep[t] and row_keep[t + 1]:
                    target = row[t + 1]
                    ce["clean"].append(-clean[t, target])
                    ce["sae"].append(-spliced[t, target])
                    ce["zero"].append(-zero[t, target])
                    kl.append((clean[t].exp() * (clean[t] - spliced[t])).sum())
    assert m["predictions"] == len(kl)
    for name in ce:
        assert m[f"ce_loss_{name}"] == pytest.approx(float(torch.stack(ce[name]).mean()), rel=1e-5)
    assert m["kl_div"] == pytest.approx(float(torch.stack(kl).mean()), rel=1e-4, abs=1e-7)


def test_evaluate_sae_writes_json_and_density_plot(tmp_path, tiny_llama, tokenizer):
    batches, _ = _token_batches(tokenizer)
    results = evaluate_sae(identity_sae(), data().split(100), model=tiny_llama, token_batches=batches, out_dir=tmp_path)
    saved = json.loads((tmp_path / EVAL_FILE).read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["splice"]["hookpoint"] == HOOK and saved["reconstruction"]["tokens"] == 300
    assert len(saved["firing_frequency"]) == 2 * D
    assert (tmp_path / DENSITY_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_config_validates():
    with pytest.raises(SaelignError, match="dense_threshold"):
        EvalConfig(dense_threshold=2)


def test_eval_cli_end_to_end(tmp_path, tiny_llama_dir, tiny_llama, tokenizer, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog near Paris." for i in range(40)))
    stores = capture(ModelConfig(model=str(tiny_llama_dir)),
                     CaptureConfig(hookpoints=[HOOK], corpus=str(corpus), context_length=16, token_budget=150,
                                   shard_tokens=64, out=str(tmp_path / "acts")), model=tiny_llama, tokenizer=tokenizer)
    save_sae(identity_sae(), tmp_path / "sae")
    parser = argparse.ArgumentParser()
    sae_eval.register(parser.add_subparsers())
    args = parser.parse_args(["eval", "--sae", str(tmp_path / "sae"), "--store", str(stores[HOOK]),
                              "--model", str(tiny_llama_dir), "--n-contexts", "4", "--out", str(tmp_path / "eval")])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "CE loss recovered" in printed and "FVU" in printed
    results = json.loads((tmp_path / "eval" / EVAL_FILE).read_text())
    assert results["reconstruction"]["tokens"] == 150
    assert results["reconstruction"]["fvu"] == pytest.approx(0, abs=1e-9)
    assert results["splice"]["kl_div"] == pytest.approx(0, abs=1e-6)
    assert 0 < results["splice"]["predictions"] <= 4 * 14
    assert "sae_eval" in json.loads((tmp_path / "eval" / "run.json").read_text())["stages"]
