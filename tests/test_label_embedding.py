"""The sentence-embedding detector: loading (safetensors only), mean pooling over real tokens, unit vectors,
cosine scores; on a tiny random BERT saved here, and on the real all-MiniLM-L6-v2 where it is cached."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from saelign.datasets.fetch import data_dir, extracted_patterns
from saelign.datasets.registry import MINILM
from saelign.errors import SaelignError
from saelign.label.describe import DescribeConfig, describe_latents
from saelign.label.detect import DETECTORS, LikelihoodDetector, make_detector, score_labels
from saelign.label.embedding import EmbeddingDetector, embed, load_embedder


@dataclass(frozen=True)
class LabelledRow:
    prompt: str
    kind: str
    source: str


WORDS = "how do i bake bread a cake soup recipe oven sort list in python rain poem capital of ? .".split()
TEXTS = ["how do i bake bread ?", "a soup recipe", "sort a list in python", "poem"]


def _tiny_bert(folder, safetensors: bool = True):
    torch.manual_seed(0)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                                 *WORDS])})
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertModel(config)
    model.save_pretrained(folder)
    if not safetensors:  # the old pickled layout (written only: nothing here may unpickle it)
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    return _tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def test_embeddings_are_unit_mean_pooled_and_padding_free(tiny_bert_dir):
    model, tokenizer = load_embedder(str(tiny_bert_dir))
    assert not model.training and next(model.parameters()).dtype == torch.float32
    vectors = embed(model, tokenizer, TEXTS, batch_size=3)  # two batches, padded to unlike lengths
    assert vectors.shape == (4, 32)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(4), atol=1e-5)
    for text, vector in zip(TEXTS, vectors, strict=True):  # naive reference: one text, no padding
        ids = tokenizer(text, return_tensors="pt")
        mean = model(**ids).last_hidden_state[0].mean(0)
        assert torch.allclose(vector, mean / mean.norm(), atol=1e-5)
    long = embed(model, tokenizer, ["bake bread " * 100])  # past the 64 positions: truncated, not failing
    assert long.shape == (1, 32) and torch.isfinite(long).all()


def test_detector_scores_are_cosine_similarities(tiny_bert_dir):
    model, tokenizer = load_embedder(str(tiny_bert_dir))
    detector = EmbeddingDetector(model, tokenizer, batch_size=2)
    scores = detector.scores("bake bread", TEXTS)
    reference = embed(model, tokenizer, TEXTS) @ embed(model, tokenizer, ["bake bread"])[0]
    assert scores == pytest.approx(reference.tolist(), abs=1e-5)
    assert detector.scores(TEXTS[2], TEXTS)[2] == pytest.approx(1.0, abs=1e-5)  # a text matches itself
    assert detector.scores("bake bread", []) == []


def test_pickled_weights_and_other_pooling_are_refused(tmp_path, tiny_bert_dir):
    pickled = _tiny_bert(tmp_path / "pickled", safetensors=False)
    assert (pickled / "pytorch_model.bin").is_file()
    with pytest.raises(SaelignError, match="--describe-embedder .*no model.safetensors"):
        load_embedder(str(pickled))
    with pytest.raises(SaelignError, match="--describe-embedder .*nowhere: .*no config.json"):
        load_embedder(str(tmp_path / "nowhere"))
    (tiny_bert_dir / "1_Pooling").mkdir()
    try:
        (tiny_bert_dir / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
        with pytest.raises(SaelignError, match="pooling other than the mean"):
            load_embedder(str(tiny_bert_dir))
    finally:
        (tiny_bert_dir / "1_Pooling" / "config.json").unlink()
        (tiny_bert_dir / "1_Pooling").rmdir()


def test_detector_names_map_to_detectors(tiny_bert_dir, tiny_llama, tokenizer):
    assert DETECTORS == ("likelihood", "chat", "embedding")
    assert isinstance(make_detector("embedding", None, embedder=str(tiny_bert_dir)), EmbeddingDetector)
    assert isinstance(make_detector("likelihood", (tiny_llama, tokenizer)), LikelihoodDetector)
    with pytest.raises(SaelignError, match="--describe-detector 'judge': unknown detector; use one of lik"):
        make_detector("judge", (tiny_llama, tokenizer))
    with pytest.raises(SaelignError, match="--describe-detector chat: .*give one"):
        make_detector("chat", None)
    with pytest.raises(SaelignError, match="detector: 'judge' is not one of likelihood, chat, embedding"):
        DescribeConfig(detector="judge")


def test_describe_scores_every_label_kind_with_the_embedding_detector(tiny_bert_dir, tiny_llama, tokenizer):
    from saelign.label.grounding import labelled_examples
    from saelign.sae import SAE, SAEConfig

    rows = [LabelledRow(f"bake bread {i}", "harmless", "harmless:cooking") for i in range(8)]
    rows += [LabelledRow(f"sort a list {i}", "harmful", "advbench") for i in range(8)]
    prompts = labelled_examples(rows)
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=32, d_sae=16, activation="relu", hookpoint="model.layers.1"))
    with torch.no_grad():
        sae.b_enc.fill_(0.05)  # most latents fire somewhere: gives held-out firing examples
    cfg = DescribeConfig(n_examples=1, n_heldout=3, label_tokens=4, detector="embedding",
                         embedder=str(tiny_bert_dir))
    readings = describe_latents(tiny_llama, tokenizer, sae, "model.layers.1", prompts, [1, 2], cfg,
                                token_labels={1: "'bread'", 2: "'list'"}, explainer=(tiny_llama, tokenizer))
    scored = [r.detection for r in readings.values() if r.detection]
    assert scored
    assert all({"grounded", "tokens"} <= set(d) and all(0 <= v <= 1 for v in d.values()) for d in scored)


def _minilm_cached() -> bool:
    return set(MINILM.members) <= extracted_patterns(data_dir(MINILM.package, MINILM.version))


COOKING = ["How long should I bake bread in the oven?", "Give me a soup recipe with leeks",
           "How do I bake a cake?", "What oven temperature roasts a chicken?", "Share a recipe for pancakes",
           "How do I make pasta sauce?"]
OTHER = ["How do I sort a list in Python?", "Explain photosynthesis", "What is the capital of Peru?",
         "Write a poem about rain", "How do I fix a flat tyre?", "Who won the 1998 World Cup?"]


@pytest.mark.slow
def test_minilm_tells_a_planted_topic_feature_from_a_random_one():
    """Only where all-MiniLM-L6-v2 was already fetched (e.g. by a describe run): tests never download."""
    if not _minilm_cached():
        pytest.skip("all-MiniLM-L6-v2 not in the cache; `--describe-detector embedding` fetches it once")
    texts = [f"{t} ({i})" for i in range(4) for t in COOKING + OTHER]
    planted = torch.tensor([2.0 if t.split(" (")[0] in COOKING else 0.0 for t in texts])
    random_feature = torch.rand(len(texts), generator=torch.Generator().manual_seed(0))  # split at its median
    detector = make_detector("embedding", None)
    labels = {"model": {0: "cooking and baking recipes", 1: "cooking and baking recipes"},
              "tokens": {0: "'Python' 'sort'"}}
    scores = score_labels(detector, labels, torch.stack([planted, random_feature], 1), texts, [0, 1], n=12)
    assert scores[0]["model"] >= 0.95
    assert scores[0]["tokens"] <= 0.5  # a label naming another topic tells nothing or points the wrong way
    assert abs(scores[1]["model"] - 0.5) <= 0.25
