"""Capture throughput vs the bare model forward stopped at the same layer (same batches, same process).

Run: .venv/bin/python bench/bench_capture.py [--contexts 320]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from itertools import islice

import torch

from common import Timer, peak_rss_mib, write_result
from saelign.datasets.corpus import iter_contexts, open_corpus
from saelign.models import ModelConfig, forward_capture, load_model
from saelign.store.capture import CaptureConfig, capture

HOOKPOINT = "model.layers.15"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contexts", type=int, default=320, help="contexts of 128 tokens per timed round (a capture "
                                                                "call has ~0.4 s of fixed setup: hashes, width probe)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer = load_model(ModelConfig())
    batch, length = 8, 128
    contexts = list(islice(iter_contexts(open_corpus("sotu"), tokenizer, length), args.contexts))
    batches = [torch.stack(contexts[i:i + batch]) for i in range(0, len(contexts), batch)]
    tokens = sum(b.numel() for b in batches)
    kept_rows = sum(int((b[:, 1:] >= 0).sum()) for b in batches)  # sotu has no special tokens; position 0 is dropped
    forward_capture(model, [HOOKPOINT], batches[0])  # warm-up

    bare, full_model, captured = [], [], []
    for _ in range(args.rounds):  # interleaved rounds so background load hits both alike
        with Timer() as t:
            for ids in batches:
                forward_capture(model, [HOOKPOINT], ids)
        bare.append(tokens / t.seconds)
        with Timer() as t, torch.inference_mode():
            for ids in batches:
                model.model(input_ids=ids, use_cache=False)
        full_model.append(tokens / t.seconds)
        with tempfile.TemporaryDirectory() as out, Timer() as t:
            cfg = CaptureConfig(hookpoints=[HOOKPOINT], corpus="sotu", context_length=length, batch_size=batch,
                                token_budget=kept_rows, shard_tokens=32768, out=out)
            capture(ModelConfig(), cfg, model=model, tokenizer=tokenizer)
        captured.append(tokens / t.seconds)

    result = {
        "hookpoint": HOOKPOINT, "batch": [batch, length], "tokens_per_round": tokens, "rounds": args.rounds,
        "bare_truncated_forward_tok_s": statistics.median(bare),
        "full_model_without_lm_head_tok_s": statistics.median(full_model),
        "capture_tok_s": statistics.median(captured),
        "capture_vs_bare": statistics.median(captured) / statistics.median(bare),
        "all_rounds": {"bare": bare, "full_model": full_model, "capture": captured},
        "anchor_saelens_hf_capture_tok_s": 1020,
        "peak_rss_mib": peak_rss_mib(),
    }
    write_result("capture", result)
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items() if k != "all_rounds"})


if __name__ == "__main__":
    main()
