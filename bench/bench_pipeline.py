"""Each SAILS stage against its plain reference, in one process, at the quick preset's shapes, default model.

1. target/eval generation: saelign's batched greedy decoder vs `model.generate(do_sample=False)` on the same
   left-padded batches (same prompts, batch size, max_new_tokens, stop ids); both must give the same tokens.
   With an adapter (eval of a trained method): the PEFT adapter merged into the weights, as the eval stage
   decodes, vs plain `generate` on the unmerged PEFT model, and saelign's decoder on the unmerged model.
2. adapter step: `train_sft` on a SAILS-initialised PEFT LoRA vs a plain PEFT loop (full logits, HF's own
   loss) at the same batches, rank and target modules; and `train_sft` with gradient checkpointing.
3. capture: the forward stopped after the hookpoint's block vs a full forward with output_hidden_states, plus
   the whole capture stage (mask, copy, write shards).

The two sides of each comparison run back to back in rounds, so background load hits both alike. Peak RSS is
measured per run from a reset high-water mark, above the RSS at its start.

Run: OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python bench/bench_pipeline.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import statistics
import subprocess
import sys
import tempfile
from importlib import resources
from itertools import islice
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from common import Timer, current_rss_mib, peak_rss_mib, write_result
from saelign.datasets.corpus import iter_contexts, open_corpus
from saelign.models import ModelConfig, forward_capture, load_model
from saelign.sails.adapters import merged_for_inference
from saelign.sails.generate import encode_chat
from saelign.sails.lora_init import LoraInitConfig, make_peft_model
from saelign.sails.presets import SailsConfig, preset_layer, resolve_config
from saelign.sails.sft import SFTConfig, _step_samples, collate, encode_examples, train_sft
from saelign.sails.subspace import random_subspace
from saelign.store.capture import capture
from saelign.text import cut_at_stop, greedy_decode, pad, pad_token_id, stop_ids

TARGETS = {"adapter_step_vs_peft_max": 1.1, "generation_vs_hf_min": 0.9}


def harmless_prompts(n: int) -> list[str]:
    data = json.loads(resources.files("saelign").joinpath("data/harmless_prompts.json").read_text())
    topics = list(data["prompts"].values())
    mixed = [group[i] for i in range(max(map(len, topics))) for group in topics if i < len(group)]
    return mixed[:n]


def hf_generate(model, prompts: list[list[int]], max_new: int, pad_id: int, stops: list[int],
                batch_size: int) -> list[list[int]]:
    """Plain `generate`, greedy, on the batches greedy_decode makes (longest prompts first)."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, mask = pad([prompts[i] for i in rows], pad_id, left=True)
            made = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                  eos_token_id=stops, pad_token_id=pad_id, top_p=None, top_k=None,
                                  temperature=None)
            for i, row in zip(rows, made[:, ids.shape[1]:].tolist(), strict=True):
                out[i] = cut_at_stop(row, set(stops))
    return out


def generation(model, tokenizer, cfg: SailsConfig, n_prompts: int, rounds: int
               ) -> tuple[dict, list[str], list[str]]:
    prompts = harmless_prompts(n_prompts)
    ids = encode_chat(tokenizer, prompts)
    max_new, batch = cfg.targets.max_new_tokens, cfg.targets.batch_size
    pad_id, stops = pad_token_id(tokenizer), stop_ids(model, tokenizer)
    ours, plain, same = [], [], []
    for _ in range(rounds):
        with Timer() as t:
            tokens = greedy_decode(model, ids, max_new, pad_id, stops, batch)
        ours.append(sum(map(len, tokens)) / t.seconds)
        with Timer() as t:
            reference = hf_generate(model, ids, max_new, pad_id, stops, batch)
        plain.append(sum(map(len, reference)) / t.seconds)
        same.append(sum(a == b for a, b in zip(tokens, reference, strict=True)))
    answers = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in tokens]
    result = {"prompts": len(prompts), "batch_size": batch, "max_new_tokens": max_new,
              "prompt_tokens_mean": statistics.mean(map(len, ids)), "generated_tokens": sum(map(len, tokens)),
              "saelign_tok_s": statistics.median(ours), "hf_generate_tok_s": statistics.median(plain),
              "identical_answers": min(same), "all_rounds": {"saelign": ours, "hf_generate": plain}}
    result["saelign_vs_hf"] = result["saelign_tok_s"] / result["hf_generate_tok_s"]
    return result, prompts, answers


def adapter_generation(model, tokenizer, cfg: SailsConfig, prompts: list[str], rounds: int) -> dict:
    """Decoding with a (pretend-trained) SAILS-initialised LoRA on every target module: merged, as the eval
    stage runs it, vs the unmerged PEFT model (plain `generate`, and saelign's decoder)."""
    rank = cfg.subspace.max_rank
    basis = random_subspace(model.config.hidden_size, rank, seed=0)
    peft_model = make_peft_model(copy.deepcopy(model), basis, dataclasses.replace(cfg.lora, rank=rank)).eval()
    with torch.no_grad():  # B starts at 0: move every adapter weight so that the adapter changes the answers
        gen = torch.Generator().manual_seed(0)
        for param in (p for name, p in peft_model.named_parameters() if "lora_" in name):
            param.add_(0.02 * torch.randn(param.shape, generator=gen))
    merged = merged_for_inference(copy.deepcopy(peft_model))
    ids = encode_chat(tokenizer, prompts)
    max_new, batch = cfg.eval.max_new_tokens, cfg.eval.batch_size
    pad_id, stops = pad_token_id(tokenizer), stop_ids(model, tokenizer)
    runs = {"saelign_merged": lambda: greedy_decode(merged, ids, max_new, pad_id, stops, batch),
            "peft_generate": lambda: hf_generate(peft_model, ids, max_new, pad_id, stops, batch),
            "saelign_unmerged": lambda: greedy_decode(peft_model, ids, max_new, pad_id, stops, batch)}
    speeds: dict[str, list] = {name: [] for name in runs}
    tokens: dict[str, list] = {}
    for _ in range(rounds):
        for name, run in runs.items():
            with Timer() as t:
                tokens[name] = run()
            speeds[name].append(sum(map(len, tokens[name])) / t.seconds)
    base = greedy_decode(model, ids, max_new, pad_id, stops, batch)
    tok_s = {name: statistics.median(s) for name, s in speeds.items()}
    same = {name: sum(a == b for a, b in zip(rows, tokens["peft_generate"], strict=True))
            for name, rows in tokens.items()}
    return {"prompts": len(prompts), "batch_size": batch, "max_new_tokens": max_new, "rank": rank,
            "tok_s": tok_s, "merged_vs_peft_generate": tok_s["saelign_merged"] / tok_s["peft_generate"],
            "identical_to_peft_generate": same,
            "changed_by_adapter": sum(a != b for a, b in zip(base, tokens["peft_generate"], strict=True)),
            "all_rounds": speeds}


def plain_peft_steps(model, examples: list, pad_id: int, sft: SFTConfig, lora: LoraInitConfig,
                     rank: int) -> list[float]:
    """The textbook PEFT loop: HF's loss over the full logits, backward, clip, AdamW; seconds per step."""
    config = LoraConfig(r=rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=sft.lr, weight_decay=sft.weight_decay)
    peft_model.train()
    seconds = []
    for step in range(sft.steps):
        with Timer() as t:
            rows = _step_samples(len(examples), sft.seed, step, sft.batch_size)  # train_sft's batches
            batch = collate([examples[i] for i in rows], pad_id)
            loss = peft_model(**batch, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, sft.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        seconds.append(t.seconds)
    return seconds


def sft_run(kind: str, model, tokenizer, cfg: SailsConfig, pairs: list[tuple[str, str]],
            steps: int) -> list[float]:
    """Seconds per step of one SFT run of `kind` on `model` (wrapped in place: pass a copy)."""
    rank, lora = cfg.subspace.max_rank, cfg.lora
    sft = dataclasses.replace(cfg.sft, steps=steps, eval_every=0, checkpoint_every=0, out="",
                              gradient_checkpointing=kind == "saelign_checkpointing")
    if kind == "plain_peft":
        examples = encode_examples(tokenizer, pairs, sft.max_length)
        return plain_peft_steps(model, examples, pad_token_id(tokenizer), sft, lora, rank)
    # A random basis: the init's values do not change what a step costs.
    basis = random_subspace(model.config.hidden_size, rank, seed=0)
    peft_model = make_peft_model(model, basis, dataclasses.replace(lora, rank=rank))
    return [e["seconds"] for e in train_sft(peft_model, tokenizer, pairs, sft)["train"]]


SFT_RUNS = ("saelign", "plain_peft", "saelign_checkpointing")


def adapter_steps(model, tokenizer, cfg: SailsConfig, pairs: list[tuple[str, str]], steps: int,
                  rounds: int) -> dict:
    runs: dict[str, list] = {kind: [] for kind in SFT_RUNS}
    for _ in range(rounds):
        for kind in SFT_RUNS:  # the first step of a run pays one-off allocations
            runs[kind] += sft_run(kind, copy.deepcopy(model), tokenizer, cfg, pairs, steps)[1:]
    per_step = {name: statistics.median(s) for name, s in runs.items()}
    lengths = [len(ids) for ids, _ in encode_examples(tokenizer, pairs, cfg.sft.max_length)]
    return {"steps_per_run": steps, "rounds": rounds, "batch_size": cfg.sft.batch_size,
            "max_length": cfg.sft.max_length, "sequence_tokens_mean": statistics.mean(lengths),
            "rank": cfg.subspace.max_rank, "target_modules": cfg.lora.target_modules, "s_per_step": per_step,
            "saelign_vs_peft": per_step["saelign"] / per_step["plain_peft"],
            "checkpointing_vs_saelign": per_step["saelign_checkpointing"] / per_step["saelign"],
            "all_steps": runs}


def sotu_batches(tokenizer, cfg: SailsConfig, n_batches: int) -> list[torch.Tensor]:
    batch, length = cfg.capture.batch_size, cfg.capture.context_length
    contexts = list(islice(iter_contexts(open_corpus("sotu"), tokenizer, length), n_batches * batch))
    return [torch.stack(contexts[i:i + batch]) for i in range(0, len(contexts), batch)]


def capture_stage(model, tokenizer, cfg: SailsConfig, batches: list[torch.Tensor]) -> None:
    """saelign's capture stage over the same contexts (sotu has no special tokens; position 0 is cut)."""
    kept_rows = sum(int(b[:, 1:].numel()) for b in batches)
    with tempfile.TemporaryDirectory() as out:
        capture_cfg = dataclasses.replace(cfg.capture, hookpoints=[cfg.hookpoint], token_budget=kept_rows,
                                          out=out)
        capture(ModelConfig(), capture_cfg, model=model, tokenizer=tokenizer)


@torch.inference_mode()
def hf_hidden_states(model, batches: list[torch.Tensor]) -> None:
    """The plain way to read a hookpoint: the whole model, logits included, every block's output kept."""
    for ids in batches:
        model(input_ids=ids, output_hidden_states=True, use_cache=False)


def capture_part(model, tokenizer, cfg: SailsConfig, n_batches: int, rounds: int) -> dict:
    hookpoint = cfg.hookpoint
    block = int(hookpoint.rsplit(".", 1)[1])
    batches = sotu_batches(tokenizer, cfg, n_batches)
    tokens = sum(b.numel() for b in batches)
    with torch.inference_mode():  # the same activations either way
        full = model(input_ids=batches[0], output_hidden_states=True, use_cache=False).hidden_states
    torch.testing.assert_close(forward_capture(model, [hookpoint], batches[0])[hookpoint], full[block + 1])

    runs = {"truncated_forward": lambda: [forward_capture(model, [hookpoint], ids) for ids in batches],
            "hf_output_hidden_states": lambda: hf_hidden_states(model, batches),
            "saelign_capture": lambda: capture_stage(model, tokenizer, cfg, batches)}
    speeds: dict[str, list] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            with Timer() as t:
                run()
            speeds[name].append(tokens / t.seconds)
    tok_s = {name: statistics.median(s) for name, s in speeds.items()}
    return {"hookpoint": hookpoint, "batch": list(batches[0].shape), "tokens_per_round": tokens,
            "rounds": rounds, "tok_s": tok_s,
            "truncated_vs_hf": tok_s["truncated_forward"] / tok_s["hf_output_hidden_states"],
            "capture_vs_hf": tok_s["saelign_capture"] / tok_s["hf_output_hidden_states"],
            "all_rounds": speeds}


MEMORY_RUNS = (*SFT_RUNS, "saelign_capture", "hf_output_hidden_states")


def memory_run(kind: str, args: argparse.Namespace) -> dict[str, float]:
    """In a fresh process (a freed heap stays in the RSS): the peak RSS of one run of `kind`, and above the
    RSS with the model loaded."""
    cfg = resolve_config([preset_layer("quick")])
    model, tokenizer = load_model(ModelConfig())
    if kind in SFT_RUNS:
        pairs = [(prompt, answer) for prompt, answer in json.loads(Path(args.pairs).read_text())]
        run = functools.partial(sft_run, kind, model, tokenizer, cfg, pairs, args.memory_steps)
    else:
        batches = sotu_batches(tokenizer, cfg, args.capture_batches)
        run = functools.partial(capture_stage, model, tokenizer, cfg, batches) if kind == "saelign_capture" \
            else functools.partial(hf_hidden_states, model, batches)
    loaded = current_rss_mib()
    run()
    peak = peak_rss_mib()
    return {"loaded_rss_mib": loaded, "peak_rss_mib": peak, "peak_above_loaded_mib": peak - loaded}


def memory(pairs: list[tuple[str, str]], args: argparse.Namespace) -> dict[str, dict]:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(pairs, file)
        file.flush()
        out = {}
        for kind in MEMORY_RUNS:
            child = subprocess.run([sys.executable, __file__, "--memory-run", kind, "--pairs", file.name,
                                    "--threads", str(args.threads), "--memory-steps", str(args.memory_steps),
                                    "--capture-batches", str(args.capture_batches)],
                                   capture_output=True, text=True, check=True)
            out[kind] = json.loads(child.stdout.strip().splitlines()[-1])
            print(kind, out[kind], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for every run "
                        "(1 on a loaded, shared CPU: see bench/README.md)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=64, help="generation prompts (and SFT pairs)")
    parser.add_argument("--sft-steps", type=int, default=3, help="optimizer steps per timed SFT run")
    parser.add_argument("--memory-steps", type=int, default=2, help="optimizer steps per memory run")
    parser.add_argument("--capture-batches", type=int, default=6)
    parser.add_argument("--memory-run", choices=MEMORY_RUNS, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--pairs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_run:
        print(json.dumps(memory_run(args.memory_run, args)))
        return
    cfg = resolve_config([preset_layer("quick")])
    model, tokenizer = load_model(ModelConfig())
    gen, prompts, answers = generation(model, tokenizer, cfg, args.prompts, args.rounds)
    print({k: v for k, v in gen.items() if k != "all_rounds"}, flush=True)
    adapted = adapter_generation(model, tokenizer, cfg, prompts, args.rounds)
    print({k: v for k, v in adapted.items() if k != "all_rounds"}, flush=True)
    pairs = list(zip(prompts, answers, strict=True))
    sft = adapter_steps(model, tokenizer, cfg, pairs, args.sft_steps, args.rounds)
    print({k: v for k, v in sft.items() if k != "all_steps"}, flush=True)
    cap = capture_part(model, tokenizer, cfg, args.capture_batches, args.rounds)
    print({k: v for k, v in cap.items() if k != "all_rounds"}, flush=True)
    write_result("pipeline", {
        "preset": "quick", "model": "SmolLM2-135M-Instruct", "threads": args.threads, "targets": TARGETS,
        "generation": gen, "adapter_generation": adapted, "adapter_step": sft, "capture": cap,
        "memory": {"steps": args.memory_steps, "capture_batches": args.capture_batches,
                   "runs": memory(pairs, args)},
        "met": {"adapter_step": sft["saelign_vs_peft"] <= TARGETS["adapter_step_vs_peft_max"],
                "generation": gen["saelign_vs_hf"] >= TARGETS["generation_vs_hf_min"]},
    })


if __name__ == "__main__":
    main()
