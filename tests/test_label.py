from __future__ import annotations

import json

import pytest
import torch

from conftest import make_tiny_model
from saelign.errors import SaelignError
from saelign.label import (
    ContextExample,
    LatentLabel,
    TokenScore,
    label_latents,
    load_labels,
    logit_lens,
    render_latent_cards,
    save_labels,
    scan_latents,
    top_contexts,
)
from saelign.label.contexts import TopActivationBuffer, candidate_mask
from saelign.label.labels import activating_tokens, short_label
from saelign.label.logit_lens import final_norm
from saelign.models import forward_capture
from saelign.sae import SAE, SAEConfig

HOOK = "model.layers.1"
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France and Berlin is the capital of Germany.",
    "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\nMix flour, water, salt and yeast.",
    "hello",
    "Sparse autoencoders decompose activations into interpretable features, then knead and bake.",
    "I cannot help with that request because it could cause harm. 0123456789",
    "user assistant system hello world",
]


@pytest.fixture(scope="module")
def sae() -> SAE:
    torch.manual_seed(0)
    model = SAE(SAEConfig(d_in=32, d_sae=48, activation="relu", hookpoint=HOOK))
    with torch.no_grad():
        model.b_enc.normal_(0, 0.3)  # some latents fire often, some rarely: exercises ranking and filtering
    return model


def brute_force(model, tokenizer, sae, texts, context_length, left=8, right=2):
    """Every (activation, doc, position, window text) computed one context at a time, then sorted."""
    specials = set(tokenizer.all_special_ids)
    per_latent: dict[int, list[tuple[float, int, int, str, str, str]]] = {j: [] for j in range(sae.d_sae)}
    for doc, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for offset in range(0, len(ids), context_length):
            chunk = ids[offset : offset + context_length]
            acts = forward_capture(model, [HOOK], torch.tensor([chunk]))[HOOK][0]
            z = sae.encode(acts).detach()
            for p in range(1, len(chunk)):
                if chunk[p] in specials:
                    continue
                window = (tokenizer.decode(chunk[max(0, p - left) : p]), tokenizer.decode([chunk[p]]),
                          tokenizer.decode(chunk[p + 1 : p + 1 + right]))
                for j in range(sae.d_sae):
                    per_latent[j].append((float(z[p, j]), doc, offset + p, *window))
    return {j: sorted((r for r in rows if r[0] > 0), key=lambda r: -r[0]) for j, rows in per_latent.items()}


@pytest.mark.parametrize("context_length,batch_size", [(12, 3), (64, 8)])
def test_top_contexts_matches_brute_force(tiny_llama, tokenizer, sae, context_length, batch_size):
    n_top = 4
    got = top_contexts(tiny_llama, tokenizer, sae, None, TEXTS, n_top=n_top, context_length=context_length, batch_size=batch_size)
    want = brute_force(tiny_llama, tokenizer, sae, TEXTS, context_length)
    assert set(got) == set(range(sae.d_sae))
    assert sum(len(v) for v in got.values()) > sae.d_sae  # most latents fire somewhere
    for j in range(sae.d_sae):
        expected = want[j][:n_top]
        assert [(e.doc_id, e.position) for e in got[j]] == [(r[1], r[2]) for r in expected], f"latent {j}"
        assert [e.activation for e in got[j]] == pytest.approx([r[0] for r in expected], rel=1e-4, abs=1e-5)
        assert [(e.text_left, e.token, e.text_right) for e in got[j]] == [r[3:] for r in expected]


def test_scan_subset_frequency_and_token_batches_agree(tiny_llama, tokenizer, sae):
    latents = [3, 0, 17]
    scan = scan_latents(tiny_llama, tokenizer, sae, HOOK, TEXTS, latents=latents + [0], n_top=3, context_length=256)
    assert list(scan.contexts) == latents  # repeated ids are scanned once
    specials = set(tokenizer.all_special_ids)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert scan.n_tokens == sum(sum(1 for tok in row[1:] if tok not in specials) for row in ids)
    full = brute_force(tiny_llama, tokenizer, sae, TEXTS, 256)
    for j in latents:
        assert scan.frequency[j] == pytest.approx(len(full[j]) / scan.n_tokens)
    # the same documents as one [1, T] id tensor each give the same contexts
    batches = [torch.tensor([row]) for row in ids]
    from_tokens = top_contexts(tiny_llama, tokenizer, sae, HOOK, batches, latents=latents, n_top=3)
    assert from_tokens == scan.contexts


def test_max_tokens_stops_the_pass_early(tiny_llama, tokenizer, sae):
    scan = scan_latents(tiny_llama, tokenizer, sae, HOOK, TEXTS * 4, latents=[0], context_length=16, batch_size=2, max_tokens=30)
    assert scan.n_tokens == 30
    full = scan_latents(tiny_llama, tokenizer, sae, HOOK, TEXTS * 4, latents=[0], context_length=16, batch_size=2)
    assert full.n_tokens > 60
    assert all(e.doc_id <= 2 for e in scan.contexts[0])  # only the first documents were read


def test_candidate_mask_excludes_first_position_specials_and_padding():
    ids = torch.tensor([[5, 1, 7, 8], [9, 10, 3, 3]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert candidate_mask(ids, mask, [1, 3]).tolist() == [[False, False, True, True], [False, True, False, False]]


def test_reported_contexts_never_sit_on_first_position_or_special_tokens(tiny_llama, tokenizer, sae):
    context_length = 8
    got = top_contexts(tiny_llama, tokenizer, sae, HOOK, TEXTS, n_top=10, context_length=context_length)
    special_text = {tokenizer.decode([i]) for i in tokenizer.all_special_ids}
    examples = [e for rows in got.values() for e in rows]
    assert examples
    assert all(e.position % context_length != 0 for e in examples)
    assert not any(e.token in special_text for e in examples)


def test_buffer_matches_global_topk_with_fixed_memory():
    torch.manual_seed(1)
    n_top, n_latents, window = 5, 7, 3
    small, large = TopActivationBuffer(n_top, n_latents, window), TopActivationBuffer(n_top, n_latents, window)
    chunks = [torch.randn(int(n), n_latents) for n in torch.randint(1, 40, (30,))]
    offset = 0
    for i, chunk in enumerate(chunks):
        rows = torch.arange(offset, offset + chunk.shape[0])
        windows = rows[:, None].repeat(1, window)
        large.update(chunk, rows // 10, rows, windows)
        if i < 2:
            small.update(chunk, rows // 10, rows, windows)
        offset += chunk.shape[0]
    for name in ("values", "doc_ids", "positions", "windows"):
        assert getattr(small, name).shape == getattr(large, name).shape  # independent of the stream length
    values, rows = torch.cat(chunks).topk(n_top, dim=0)
    assert torch.equal(large.values, values)
    assert torch.equal(large.positions, rows) and torch.equal(large.doc_ids, rows // 10)
    assert torch.equal(large.windows, rows[..., None].expand(-1, -1, window))


def test_bad_inputs_raise_clear_errors(tiny_llama, tokenizer, sae):
    with pytest.raises(SaelignError, match="latent ids must be in 0..47"):
        top_contexts(tiny_llama, tokenizer, sae, HOOK, TEXTS, latents=[48])
    with pytest.raises(SaelignError, match="not a single string"):
        top_contexts(tiny_llama, tokenizer, sae, HOOK, "just one text")
    with pytest.raises(SaelignError, match="unknown hookpoint"):
        top_contexts(tiny_llama, tokenizer, sae, "model.layer.1", TEXTS)
    with pytest.raises(SaelignError, match="shape"):
        top_contexts(tiny_llama, tokenizer, sae, HOOK, [torch.tensor([1, 2, 3])])


@pytest.mark.parametrize("arch", ["llama", "gemma", "gpt2"])
def test_logit_lens_equals_manual_unembedding_of_norm_scaled_direction(tokenizer, arch):
    model = make_tiny_model(arch, len(tokenizer), seed=3)
    norm = final_norm(model)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.5)
    gain = norm.weight + 1 if arch == "gemma" else norm.weight  # Gemma's RMSNorm scales by (1 + weight)
    sae = SAE(SAEConfig(d_in=32, d_sae=16, activation="relu", hookpoint="model.layers.2"))
    latents = [0, 5, 15]
    lens = logit_lens(model, sae, latents, k=7, tokenizer=tokenizer, chunk=2)
    unembed = model.get_output_embeddings().weight
    for latent in latents:
        d = sae.W_dec[latent] / sae.W_dec[latent].norm()
        scores = (unembed @ (gain * d)).detach()
        up, down = lens[latent]
        assert [t.token_id for t in up] == scores.topk(7).indices.tolist()
        assert [t.token_id for t in down] == scores.topk(7, largest=False).indices.tolist()
        assert [t.score for t in up] == pytest.approx(scores.topk(7).values.tolist(), rel=1e-4, abs=1e-5)
        assert [t.token for t in up] == [tokenizer.decode([t.token_id]) for t in up]


def test_logit_lens_rejects_mismatched_sae(tiny_llama):
    with pytest.raises(SaelignError, match="does not match the model's d_model 32"):
        logit_lens(tiny_llama, SAE(SAEConfig(d_in=16, d_sae=4, activation="relu")), [0])


def test_short_label_and_activating_tokens_on_constructed_case():
    contexts = [ContextExample("how to make a", " bomb", " at home", 5.0, 0, 4),
                ContextExample("a", " weapon", " and", 4.0, 1, 2),
                ContextExample("the", " bomb", " went", 3.0, 2, 7),
                ContextExample("big", " weapon", "", 1.0, 3, 2)]
    tokens = activating_tokens(contexts)
    assert tokens == [" bomb", " weapon"]  # equal counts: more summed activation first
    up = [TokenScore(" explosive", 11, 2.0), TokenScore("attack", 12, 1.5)]
    assert short_label(tokens, up, contexts, 0.01) == "'bomb' 'weapon' → 'explosive' 'attack' ← \"how to make a [bomb] at home\""
    assert short_label([], up, [], 0.0) == "(never fired; promotes 'explosive' 'attack')"
    assert short_label(tokens, [], contexts, 0.5).endswith("(dense: 50% of tokens)")
    long = ContextExample("one two three four five six seven eight nine ten\n eleven", "ing", " after that and more words here to the right end",
                          2.0, 0, 9)
    assert short_label(["ing"], [TokenScore("\n", 5, 1.0)], [long], 0.01) == (
        "'ing' → '\\n' ← \"…seven eight nine ten eleven[ing] after that and more words…\"")


def test_label_latents_json_round_trip_and_frequency_selection(tiny_llama, tokenizer, sae, tmp_path):
    labels = label_latents(tiny_llama, tokenizer, sae, TEXTS, top_by_frequency=5, n_contexts=3, logit_k=4, hookpoint=HOOK)
    scan = scan_latents(tiny_llama, tokenizer, sae, HOOK, TEXTS, n_top=3)
    expected = sorted(scan.frequency, key=lambda j: (-scan.frequency[j], j))[:5]
    assert list(labels) == expected
    for latent, label in labels.items():
        assert label.top_contexts == scan.contexts[latent] and label.frequency == scan.frequency[latent]
        assert len(label.logit_up) == len(label.logit_down) == 4
        assert label.top_tokens[0].strip() in label.short_label
    path = save_labels(tmp_path / "labels.json", labels, meta={"hookpoint": HOOK})
    assert load_labels(path) == labels
    assert json.loads(path.read_text())["meta"] == {"hookpoint": HOOK}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(SaelignError, match="not both"):
        label_latents(tiny_llama, tokenizer, sae, TEXTS, latents=[1], top_by_frequency=2)


def test_load_labels_rejects_foreign_or_malformed_files(tmp_path):
    (tmp_path / "other.json").write_text('{"latents": []}')
    with pytest.raises(SaelignError, match="not a saelign labels file"):
        load_labels(tmp_path / "other.json")
    (tmp_path / "bad.json").write_text('{"format": "saelign-labels", "version": 1, "latents": [{"latent": 1}]}')
    with pytest.raises(SaelignError, match=r"latents\[0\] is malformed"):
        load_labels(tmp_path / "bad.json")


def test_cards_escape_corpus_text_and_scale_highlight():
    evil = "<script>alert(1)</script>"
    label = LatentLabel(7, f"label {evil}", [" <b>"],
                        [ContextExample(evil, " <b>", "&amp;", 4.0, 0, 3), ContextExample("x", "y", "z", 1.0, 1, 2)],
                        [TokenScore("<img src=x onerror=1>", 1, 1.0)], [TokenScore('"quote"', 2, -1.0)], 0.125)
    page = render_latent_cards({7: label})
    assert "<script>" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&amp;amp;" in page and "&quot;quote&quot;" in page
    assert "latent 7" in page and "12.500% of tokens" in page
    assert "rgba(255,120,0,1.00)" in page and "rgba(255,120,0,0.25)" in page  # highlight ∝ activation / max


def run_label_cli(argv: list[str]) -> int:
    import argparse

    from saelign.cli import label as label_cli

    parser = argparse.ArgumentParser()
    label_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["label", *argv])
    return args.func(args)


def test_label_cli_writes_labels_dashboard_and_run_json(tiny_llama_dir, sae, tmp_path):
    from saelign.sae.formats import save_sae

    sae_dir = save_sae(sae, tmp_path / "sae")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS + ["<script>alert('corpus')</script> is not markup here."]))
    assert run_label_cli(["--model", str(tiny_llama_dir), "--sae", str(sae_dir), "--corpus", str(corpus),
                          "--n-contexts", "3", "--top-by-frequency", "5", "--context-length", "16", "--device", "cpu"]) == 0
    labels = load_labels(sae_dir / "labels.json")
    assert len(labels) == 5 and all(label.top_contexts for label in labels.values())
    page = (sae_dir / "labels.html").read_text()
    assert page.count("latent ") >= 5 and "<script>" not in page
    assert (sae_dir / "labels_frequency.png").read_bytes().startswith(b"\x89PNG")
    assert "| latent | frequency | label |" in (sae_dir / "labels.md").read_text()
    run = json.loads((sae_dir / "run.json").read_text())
    assert run["stages"]["label"]["n_labelled"] == 5

    out = tmp_path / "picked.json"
    run_label_cli(["--model", str(tiny_llama_dir), "--sae", str(sae_dir), "--corpus", str(corpus), "--latents", "2,7",
                   "--out", str(out), "--device", "cpu"])
    assert list(load_labels(out)) == [2, 7]
    with pytest.raises(SaelignError, match="not both"):
        run_label_cli(["--model", str(tiny_llama_dir), "--sae", str(sae_dir), "--latents", "1", "--top-by-frequency", "2"])
    with pytest.raises(SaelignError, match="trained on hookpoint"):
        run_label_cli(["--model", str(tiny_llama_dir), "--sae", str(sae_dir), "--corpus", str(corpus),
                       "--hookpoint", "model.layers.2", "--device", "cpu"])
