"""Render bench/results/*.json into the benchmark table of the top-level README (between the bench markers)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from saelign.sails.registers import REGISTERS
from saelign.stats import rate_with_interval

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:,.{digits}f}" if isinstance(value, float) and abs(value) < 100 else f"{value:,.0f}"


def machine_line(result: dict) -> str:
    m = result["machine"]
    return (f"_{result['benchmark']}: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
            f"load average at start {m['load_average_at_start'][0]:.1f}, commit {m['git_commit']}, {m['date']}_")


def capture_section(r: dict) -> list[str]:
    return [
        "**Capture** (SmolLM2-135M-Instruct, `model.layers.15`, batch 8×128, tokens/s forwarded)", "",
        "| run | tok/s | vs bare |", "|---|---:|---:|",
        f"| bare forward stopped after block 15 | {fmt(r['bare_truncated_forward_tok_s'])} | 1.00 |",
        f"| saelign capture (mask, copy, write shards) | {fmt(r['capture_tok_s'])} | {r['capture_vs_bare']:.2f} |",
        f"| whole model without LM head | {fmt(r['full_model_without_lm_head_tok_s'])} | "
        f"{r['full_model_without_lm_head_tok_s'] / r['bare_truncated_forward_tok_s']:.2f} |",
        f"| SAELens HF capture (anchor measured by the project, quiet machine) | {fmt(r['anchor_saelens_hf_capture_tok_s'])} | – |",
        "", machine_line(r), "",
    ]


MEMORY_RUNS = {"saelign": "adapter SFT, saelign", "plain_peft": "adapter SFT, plain PEFT loop",
               "saelign_checkpointing": "adapter SFT, saelign with gradient checkpointing",
               "saelign_capture": "capture stage", "hf_output_hidden_states": "`output_hidden_states` forwards"}


def pipeline_section(r: dict) -> list[str]:
    """Each SAILS stage against its plain reference (bench_pipeline.py), then peak memory per run."""
    gen, sft, cap, targets = r["generation"], r["adapter_step"], r["capture"], r["targets"]
    steps, tok = sft["s_per_step"], cap["tok_s"]
    met = {True: "yes", False: "**no**"}
    lines = [f"**SAILS stages vs their plain references** (quick preset shapes, {r['model']}, {r['threads']} "
             "thread(s) for both sides, rounds back to back)", "",
             "| stage | saelign | plain reference | saelign / plain | target | met |", "|---|---:|---:|---:|---|---|",
             f"| greedy generation, {gen['prompts']} prompts, batch {gen['batch_size']}, {gen['max_new_tokens']} new "
             f"tokens (tok/s; {gen['identical_answers']}/{gen['prompts']} answers token-identical) | "
             f"{fmt(gen['saelign_tok_s'], 1)} | `generate` {fmt(gen['hf_generate_tok_s'], 1)} | "
             f"{gen['saelign_vs_hf']:.2f}× | ≥ {targets['generation_vs_hf_min']}× | {met[r['met']['generation']]} |",
             *adapter_generation_rows(r.get("adapter_generation")),
             f"| adapter step, {sft['batch_size']} × ≤{sft['max_length']} tokens, LoRA rank {sft['rank']} on "
             f"{len(sft['target_modules'])} module kinds (s/step) | {fmt(steps['saelign'], 2)} | PEFT loop "
             f"{fmt(steps['plain_peft'], 2)} | {sft['saelign_vs_peft']:.2f}× | ≤ {targets['adapter_step_vs_peft_max']}× | "
             f"{met[r['met']['adapter_step']]} |",
             f"| adapter step with `--sft-gradient-checkpointing` (s/step) | {fmt(steps['saelign_checkpointing'], 2)} | "
             f"saelign without {fmt(steps['saelign'], 2)} | {sft['checkpointing_vs_saelign']:.2f}× | – | – |",
             f"| capture `{cap['hookpoint']}`, batch {cap['batch'][0]}×{cap['batch'][1]} (tok/s): forward stopped "
             f"after the block | {fmt(tok['truncated_forward'], 0)} | `output_hidden_states` "
             f"{fmt(tok['hf_output_hidden_states'], 0)} | {cap['truncated_vs_hf']:.2f}× | – | – |",
             f"| capture stage (mask, copy, write shards) (tok/s) | {fmt(tok['saelign_capture'], 0)} | "
             f"`output_hidden_states` {fmt(tok['hf_output_hidden_states'], 0)} | {cap['capture_vs_hf']:.2f}× | – | – |",
             "", f"Peak memory, each run in a fresh process ({r['memory']['steps']} SFT step(s), "
             f"{r['memory']['capture_batches']} capture batches of the same shape):", "",
             "| run | peak RSS MiB | above the loaded model MiB |", "|---|---:|---:|"]
    for name, m in r["memory"]["runs"].items():
        lines.append(f"| {MEMORY_RUNS.get(name, name)} | {m['peak_rss_mib']:,.0f} | {m['peak_above_loaded_mib']:,.0f} |")
    return lines + ["", machine_line(r), ""]


def adapter_generation_rows(a: dict | None) -> list[str]:
    """Decoding with an adapter: merged (the eval stage) vs plain `generate` on the PEFT model (older results
    have no such part)."""
    if not a:
        return []
    tok, same, n = a["tok_s"], a["identical_to_peft_generate"], a["prompts"]
    shape = f"{n} prompts, batch {a['batch_size']}, {a['max_new_tokens']} new tokens, LoRA rank {a['rank']}"
    return [f"| greedy generation with an adapter, merged into the weights ({shape}; tok/s; "
            f"{same['saelign_merged']}/{n} answers token-identical, {a['changed_by_adapter']}/{n} changed by the "
            f"adapter) | {fmt(tok['saelign_merged'], 1)} | `generate` on the PEFT model {fmt(tok['peft_generate'], 1)} | "
            f"{a['merged_vs_peft_generate']:.2f}× | – | – |",
            f"| the same, adapter not merged (saelign's decoder; {same['saelign_unmerged']}/{n} identical) | "
            f"{fmt(tok['saelign_unmerged'], 1)} | `generate` on the PEFT model {fmt(tok['peft_generate'], 1)} | "
            f"{tok['saelign_unmerged'] / tok['peft_generate']:.2f}× | – | – |"]


def sae_section(r: dict) -> list[str]:
    roof = r["fp32_matmul_roofline_gflops"]
    lines = [f"**SAE training** (same cached activations, d_sae {r['d_sae']}, batch {r['batch_size']}, metrics on "
             f"{r['held_out_tokens']:,} held-out tokens; fp32 matmul roofline measured in the same run: {roof:.0f} GFLOP/s)", "",
             "| group | library | arch | setting | tokens | tok/s | FVU | L0 | dead | dense-equiv. GFLOP/s (% roofline) | peak RSS MiB |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for group, runs in r["runs"].items():
        for run in runs:
            arch = run["arch"]
            setting = (f"k={run['k']}" if arch in ("topk", "batchtopk") else f"l1={run['l1']}" if arch in ("relu", "standard")
                       else f"l0 coef={run['l0_coefficient']}")
            gflops = run.get("dense_equivalent_gflops")
            perf = f"{gflops:.0f} ({100 * gflops / roof:.0f} %)" if gflops else "–"
            rss = run.get("peak_rss_mib")
            extra = f" ({run['train_shards']} shards)" if group == "memory" else ""
            lines.append(f"| {group}{extra} | {run['library']} | {arch} | {setting} | {run['tokens']:,} | {run['tok_s']:,.0f} | "
                         f"{run['fvu']:.3f} | {run['l0']:.1f} | {100 * run['dead_fraction']:.1f} % | {perf} | "
                         f"{'–' if rss is None else f'{rss:,.0f}'} |")
    ratios = topk_pair_ratios(r["runs"].get("side_by_side", []))
    if ratios:
        lines += ["", f"TopK k=32 throughput, saelign / SAELens (its usual learning rate), per back-to-back pair: "
                      f"{', '.join(f'{x:.2f}×' for x in ratios)}; median **{statistics.median(ratios):.2f}×**."]
    plot = plot_curves(r)
    if plot:
        lines += ["", f"![FVU vs L0 on held-out tokens, saelign vs SAELens]({plot.relative_to(ROOT).as_posix()})"]
    return lines + ["", machine_line(r), ""]


def topk_pair_ratios(runs: list[dict]) -> list[float]:
    """saelign/SAELens tok/s of each TopK run pair that ran back to back (SAELens at its usual lr: the smaller one)."""
    topk = [run for run in runs if run["arch"] == "topk"]
    usual_lr = min((run["lr"] for run in topk if run["library"] == "sae_lens" and "lr" in run), default=None)
    return [a["tok_s"] / b["tok_s"] for a, b in zip(topk, topk[1:], strict=False)
            if a["library"] == "saelign" and b["library"] == "sae_lens" and b.get("lr") == usual_lr]


FAMILIES = {"relu / L1": ("relu", "standard"), "jumprelu": ("jumprelu",), "batchtopk": ("batchtopk",)}


def plot_curves(r: dict) -> Path | None:
    """FVU vs L0 of the `curves` group, one panel per SAE family, one line per library."""
    runs = r["runs"].get("curves") or []
    if not runs:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(FAMILIES), figsize=(4.2 * len(FAMILIES), 3.4))
    for ax, (title, archs) in zip(axes, FAMILIES.items(), strict=True):
        for library, marker in (("saelign", "o-"), ("sae_lens", "s--")):
            points = sorted((run["l0"], run["fvu"]) for run in runs if run["library"] == library and run["arch"] in archs)
            if points:
                ax.plot(*zip(*points, strict=True), marker, label=library)
        ax.set(title=f"{title} ({runs[0]['tokens']:,} tokens)", xscale="log", xlabel="L0 (held-out)", ylabel="FVU (held-out)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    path = RESULTS / "sae_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def wall_time(r: dict) -> str:
    if r.get("recorded"):  # bench_sails.py --record: the run's threads and load were not watched
        return (f"recorded from a finished run (stage by stage), stage times adding up to "
                f"{sum(v or 0 for v in r['stage_seconds'].values()):.0f} s")
    if r.get("resumed"):  # the stages' own timings add up the whole run; the wall time saw only its last part
        return f"resumed run, stage times adding up to {sum(v or 0 for v in r['stage_seconds'].values()):.0f} s"
    wall = f"{'cold' if r.get('cold_cache') else 'warm'}-cache wall time {r['wall_seconds']:.0f} s"
    if r.get("paused_seconds"):  # stopped for side measurements: the run's own time is the rest
        return (f"{wall}, less {r['paused_seconds']:.0f} s stopped for side measurements: "
                f"{r['wall_seconds'] - r['paused_seconds']:.0f} s; {r.get('paused_note', '')}")
    return wall


def sails_section(r: dict) -> list[str]:
    counts = r["data_counts"]["test"]
    variant = " with `--lora-freeze-subspace`" if r["config"].get("lora", {}).get("freeze_subspace") else ""
    sft = r["config"]["sft"]
    budget = f"{sft['steps']} steps" + (f" or until a val check has safety ≥ {100 * sft['stop_at_safety']:.0f} % and "
                                        f"over-refusal ≤ {100 * sft.get('stop_max_over_refusal', 1.0):.0f} %"
                                        if sft.get("stop_at_safety") else " for every method")
    lines = [f"**SAILS** (preset `{r['config']['preset']}`{variant}, {budget}, default model, held-out test split: {counts['harmful']} harmful, "
             f"{counts['harmless']} harmless, {counts['borderline']} borderline; offline judge, whose agreement with pyrit's "
             f"105 human labels is {r['judge_agreement']['offline']['accuracy']:.3f} (prefix matcher "
             f"{r['judge_agreement']['prefix']['accuracy']:.3f}); {wall_time(r)}"
             + ("" if r.get("recorded") else f" with OMP_NUM_THREADS={r.get('omp_num_threads') or 'unset'} at load average "
                f"{r['load_average_before'][0]:.1f}") + ")", "",
             "| model | safety rate | over-refusal (plain) | over-refusal (borderline) | perplexity | factual acc. | "
             "% params trained | steps trained | steps to 90 % / 95 % | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base_ppl = r["models"].get("base", {}).get("perplexity")

    def ppl(value: float | None) -> str:  # with its change against the base model
        if value is None:
            return "not evaluated"
        return f"{value:.2f}" + (f" ({100 * (value / base_ppl - 1):+.1f} %)" if base_ppl and value != base_ppl else "")

    for name, m in r["models"].items():
        def pct(key: str, m: dict = m) -> str:
            return "–" if m.get(key) is None else f"{100 * m[key]:.1f} %"
        steps = m.get("steps_to") or {}
        lines.append(f"| {name} | {pct('safety_rate')} | {pct('over_refusal')} | {pct('borderline_over_refusal')} | "
                     f"{ppl(m.get('perplexity'))} | {pct('fact_accuracy')} | {pct('trainable_share')} | "
                     f"{m.get('steps') or (sft['steps'] if m.get('trainable_share') is not None else '–')} | "
                     f"{steps.get('0.9') or '–'} / {steps.get('0.95') or '–'} | {fmt(m.get('train_seconds'), 0)} |")
    return lines + ["", *distribution_lines(r), machine_line(r), ""]


def distribution_lines(r: dict) -> list[str]:
    """Safety and over-refusal in and out of distribution, each with its 95 % Wilson interval over prompts."""
    models = {name: m["splits"] for name, m in r["models"].items() if m.get("splits")}
    if not models:
        return []
    parts = ("in_distribution", "ood_registers", "ood_sources", "ood")
    lines = ["In and out of distribution (one seed; 95 % Wilson intervals over prompts; held-out registers "
             f"{' and '.join(r['config']['data'].get('heldout_registers', []))}; harmful sources used for nothing else):",
             "", "| model | " + " | ".join(f"{p} safety | {p} over-refusal" for p in parts) + " |",
             "|---|" + "---:|" * (2 * len(parts))]
    for name, splits in models.items():
        cells = []
        for part in parts:
            v = splits.get(part) or {}
            n = v.get("n") or {}
            cells += [rate_with_interval(v.get("safety_rate"), n.get("harmful", 0)),
                      rate_with_interval(v.get("over_refusal"), n.get("harmless", 0))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


SEED_METRICS = {  # summary key -> (column title, shown in percentage points)
    "in_distribution.safety_rate": ("ID safety", True),
    "ood_registers.safety_rate": ("OOD safety, registers", True),
    "ood_sources.safety_rate": ("OOD safety, sources", True),
    "in_distribution.over_refusal": ("ID over-refusal", True), "ood.over_refusal": ("OOD over-refusal", True),
    "perplexity_change": ("perplexity change", True), "steps_to_90": ("steps to 90 % val safety", False)}


def interval(m: dict | None, percent: bool, signed: bool = False) -> str:
    if not m or m.get("mean") is None:
        return "–"
    scale, sign = (100, "+" if signed else "") if percent else (1, "+" if signed else "")
    digits = 1 if percent else 0
    return (f"{scale * m['mean']:{sign}.{digits}f} ({scale * m['lo']:{sign}.{digits}f} to "
            f"{scale * m['hi']:{sign}.{digits}f})")


def gate_phrase(gate: dict) -> str:
    """The gate's read-out and threshold rule, in words (gates before the budget rule have no budget)."""
    pooled = " (mean over the request's tokens)" if gate.get("pooling") == "mean" else ""
    share = gate.get("harmless_budget") or 0
    rule = (f"flagging at most {100 * share:g} % of the val harmless prompts" if share
            else f"level {gate['val_safety']:g}")
    return f"the gate's probe at {gate['hookpoint']}{pooled}, {rule}"


def seeds_section(r: dict) -> list[str]:
    """Means with 95 % intervals over seeds and prompts, then SAILS minus each method, paired, in words only
    where the interval excludes 0; methods that ran under fewer seeds after that, over the seeds they have."""
    rule = r.get("stop_rule")
    budget = f"{r['steps_budget']} steps" + (
        f", stopped at the first val check (every {r['eval_every']}) with safety ≥ "
        f"{100 * rule['stop_at_safety']:.0f} % and over-refusal ≤ {100 * rule['stop_max_over_refusal']:.0f} %"
        if rule else " for every method")
    n = {k: v.get("n_prompts") for k, v in r["methods"]["base"].items() if isinstance(v, dict)}
    plural = "s" if len(r["seeds"]) > 1 else ""
    weight = f"harmless weight {r['harmless_weight']:g}; " if "harmless_weight" in r else ""
    layer = r.get("config_layer")  # --config over the preset: say which, the header is otherwise the preset's
    over = f"over the preset: `{json.dumps(layer, separators=(', ', ': '))}`; " if layer else ""
    if r.get("gate"):  # METHOD+gate rows: say which read-out gated them
        over += f"METHOD+gate: {gate_phrase(r['gate'])}; "
    lines = [f"**SAILS under {len(r['seeds'])} seed{plural}** (preset `{r['preset']}`, seed{plural} "
             f"{seed_list(r)}; {budget}; {weight}{over}"
             f"{r['shared_across_seeds']}. Mean and 95 % interval of a bootstrap that resamples seeds and prompts "
             f"together; prompts per seed: ID {n.get('in_distribution.safety_rate')} harmful / "
             f"{n.get('in_distribution.over_refusal')} harmless, OOD registers "
             f"{n.get('ood_registers.safety_rate')} and OOD sources {n.get('ood_sources.safety_rate')} harmful, "
             f"OOD {n.get('ood.over_refusal')} harmless; rates and perplexity change in %)", "",
             *seed_table(r, r["steps_budget"]), ""]
    lines += register_tables(r)
    if r["comparisons"]:  # none for a run of one method
        lines += ["Paired differences (first method minus second, same seeds and prompts; percentage points, "
                  "perplexity change in points, steps):", "", *comparison_table(r), "",
                  *[comparison_sentence(pair, rows) for pair, rows in r["comparisons"].items()]]
    for name, sub in r.get("fewer_seeds", {}).items():
        lines += ["", f"`{name}` ran under seed{'s' if len(sub['seeds']) > 1 else ''} {seed_list(sub)} only "
                      f"(the run was cut short); over the same seed{'s' if len(sub['seeds']) > 1 else ''}:", "",
                  *seed_table(sub, r["steps_budget"], skip=("base",)), "", *comparison_table(sub), "",
                  *[comparison_sentence(pair, rows) for pair, rows in sub["comparisons"].items()]]
    return [*lines, "", machine_line(r), ""]


def coverage_section(r: dict) -> list[str]:
    """Register coverage (bench_sails_register_coverage.py): per method, origin, register and kind, the narrow
    and wide groups' refusal rates and wide minus narrow."""
    narrow, wide, held = set(r["narrow_registers"]), set(r["wide_registers"]), r["held_out_of_both"]
    origin = {"behaviours": "held-out behaviours", "sources": "held-out sources"}
    measure = {"harmful": "safety", "harmless": "over-refusal", "borderline": "borderline over-refusal"}
    order = {register: i for i, register in enumerate(REGISTERS)}
    lines = [f"**Register coverage** (preset full, seeds {', '.join(map(str, r['seeds']))}; narrow: trained on "
             f"{', '.join(r['narrow_registers'])}; wide: also on {', '.join(sorted(wide - narrow))}; neither on "
             f"{held}. Refusal rates in %, mean and 95 % interval over seeds and prompts; wide minus narrow paired "
             "by prompt where both were asked the same prompts, else over independent prompt draws; bold: the "
             "interval excludes 0)", ""]
    for method, rows in r["rows"].items():
        lines += [f"`{method}`:", "", "| prompts | register | measure | trained in | narrow | wide | "
                  "wide − narrow |", "|---|---|---|---|---:|---:|---:|"]
        rows = sorted(rows, key=lambda x: (x["origin"], order[x["register"]], list(measure).index(x["kind"])))
        for x in rows:
            trained = "/".join(g for g, regs in (("narrow", narrow), ("wide", wide)) if x["register"] in regs)
            gap = interval(x["wide_minus_narrow"], percent=True, signed=True)
            lines.append(f"| {origin[x['origin']]} | {x['register']} | {measure[x['kind']]} | {trained or 'neither'} "
                         f"| {interval(x['narrow'], percent=True)} ({x['narrow']['n_prompts']}) "
                         f"| {interval(x['wide'], percent=True)} ({x['wide']['n_prompts']}) "
                         f"| {f'**{gap}**' if x['wide_minus_narrow']['excludes_zero'] else gap} |")
        lines.append("")
    return [*lines, machine_line(r), ""]


def overrefusal_section(r: dict) -> list[str]:
    """The over-refusal trials (bench_sails_overrefusal.py): the val split's checks over the steps, then the
    wider validation set at the steps that read it; nothing here comes from test or ood prompts."""
    trials = r["trials"]
    steps = sorted({c["step"] for t in trials for c in t["checks"] if c["step"]})
    wide_steps = sorted({c["step"] for t in trials for c in t["checks"] if "wide" in c})
    n = trials[0]["wide_prompts"]
    # Data-mix trials (sources with other caps) each check their own val split: show its size and the mix.
    mix = "data_caps" in trials[0]
    val = ("each source's own val split, prompts per check in the table" if mix
           else "12 harmful / 10 harmless prompts per check")
    lines = [f"**Over-refusal trials** (preset `{r['preset']}`, SAILS, seed 0, lr {trials[0]['lr']:g}; chosen on "
             f"validation data only: {r['selection_data']}. Val split: {val}; "
             f"wider set: {n['harmful']} harmful / {n['harmless']} harmless / {n['borderline']} borderline; 95 % "
             "Wilson intervals)", "",
             "| targets | harmless weight | "
             + ("train pairs (harmful / harmless / borderline) | val prompts (harmful / harmless) | " if mix else "")
             + "val safety at " + "/".join(map(str, steps)) + " | val over-refusal at "
             + "/".join(map(str, steps)) + " | " + " | ".join(
                 f"wider set at {s}: safety | over-refusal | borderline over-refusal" for s in wide_steps) + " |",
             "|---|---:|---:|---:|" + "---:|---:|" * mix + "---:|---:|---:|" * len(wide_steps)]
    for t in trials:
        checks = {c["step"]: c for c in t["checks"]}
        cells = ["/".join(f"{100 * checks[s][key]:.0f}" if s in checks else "–" for s in steps)
                 for key in ("safety_rate", "over_refusal")]
        for s in wide_steps:
            wide = checks.get(s, {}).get("wide", {})
            cells += [rate_with_interval(wide.get(key), n[kind]) for key, kind in
                      (("safety_rate", "harmful"), ("over_refusal", "harmless"),
                       ("borderline_over_refusal", "borderline"))]
        if mix:
            cells = [" / ".join(str(t["train_pairs"][k]) for k in ("harmful", "harmless", "borderline")),
                     " / ".join(str(t["val_prompts"][k]) for k in ("harmful", "harmless")), *cells]
        lines.append(f"| {t.get('targets', '–')} | {t['harmless_weight']:g} | " + " | ".join(cells) + " |")
    return [*lines, "", machine_line(r), ""]


def seed_list(r: dict) -> str:
    return ", ".join(map(str, r["seeds"]))


def seed_table(r: dict, budget: int, skip: tuple[str, ...] = ()) -> list[str]:
    lines = ["| model | " + " | ".join(title for title, _ in SEED_METRICS.values()) + " | steps trained |",
             "|---|" + "---:|" * (len(SEED_METRICS) + 1)]
    for name, metrics in r["methods"].items():
        if name in skip:
            continue
        cells = [interval(metrics.get(key), percent) for key, (_, percent) in SEED_METRICS.items()]
        if "steps_to_90" in metrics:
            reached = metrics["steps_to_90"]["reached"]
            if reached == 0:
                cells[-1] = f"not reached in {budget}"
            elif reached < len(r["seeds"]):
                cells[-1] += f", reached by {reached}/{len(r['seeds'])} seeds (the others counted at the budget)"
        trained = metrics.get("steps_trained")
        trained_cell = ", ".join(map(str, trained)) if trained else "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {trained_cell} |")
    return lines


PART_TITLES = {"in_distribution": "ID", "ood_registers": "OOD"}


def register_tables(r: dict) -> list[str]:
    """Safety and over-refusal per register (the targets hold in every register), when the summary has them."""
    keys = [k for k in r["methods"]["base"] if k.count(".") == 2]  # "<part>.<register>.<metric>"
    order = {register: i for i, register in enumerate(REGISTERS)}
    keys.sort(key=lambda k: (list(PART_TITLES).index(k.split(".")[0]) if k.split(".")[0] in PART_TITLES
                             else len(PART_TITLES), order.get(k.split(".")[1], len(order))))
    lines = []
    for metric, title in (("safety_rate", "Safety"), ("over_refusal", "Over-refusal")):
        columns = [k.rsplit(".", 1)[0] for k in keys if k.endswith(f".{metric}")]
        if not columns:
            continue
        n = [r["methods"]["base"][f"{c}.{metric}"]["n_prompts"] for c in columns]
        lines += [f"{title} by register (%, mean and 95 % interval; prompts per seed in brackets):", "",
                  "| model | " + " | ".join(f"{PART_TITLES.get(c.split('.')[0], c.split('.')[0])} "
                                           f"{c.split('.')[1]} ({k})" for c, k in zip(columns, n, strict=True)) + " |",
                  "|---|" + "---:|" * len(columns)]
        lines += [f"| {name} | " + " | ".join(interval(m.get(f"{c}.{metric}"), True) for c in columns) + " |"
                  for name, m in r["methods"].items()]
        lines.append("")
    return lines


def comparison_table(r: dict) -> list[str]:
    """Paired differences, bold where the interval excludes 0."""
    lines = ["| comparison | " + " | ".join(title for title, _ in SEED_METRICS.values()) + " |",
             "|---|" + "---:|" * len(SEED_METRICS)]
    for pair, rows in r["comparisons"].items():
        cells = []
        for key, (_, percent) in SEED_METRICS.items():
            unreached = key == "steps_to_90" and not any(r["methods"][m]["steps_to_90"]["reached"]
                                                         for m in pair.split(" - "))
            cell = "neither reached" if unreached else interval(rows.get(key), percent, signed=True)
            cells.append(f"**{cell}**" if rows.get(key, {}).get("excludes_zero") else cell)
        lines.append(f"| {pair.replace(' - ', ' − ')} | " + " | ".join(cells) + " |")
    return lines


def comparison_sentence(pair: str, rows: dict) -> str:
    """'better' or 'worse' only where the paired interval excludes 0; bold in the table above."""
    mine, other = pair.split(" - ")
    said = {verdict: [SEED_METRICS[k][0] for k in SEED_METRICS if rows.get(k, {}).get("verdict") == verdict]
            for verdict in ("better", "worse")}
    parts = [f"{verdict} on {', '.join(names)}" for verdict, names in said.items() if names]
    rest = "no metric" if not parts else "no other metric"
    return (f"- {mine} vs {other}: " + ("; ".join(parts) + "; " if parts else "")
            + f"{rest} shows a difference (its interval includes 0).")


def align_section(r: dict) -> list[str]:
    s = r["settings"]
    lines = [f"**AlignSAE** (relations ontology, {len(s['relations'])} relations filtered to facts the model knows, "
             f"`{r['hookpoint']}`, vanilla TopK SAE d_sae {s['d_sae']} k {s['k']} on {s['generic_train_tokens']:,} tokens, "
             f"post-train {s['steps1']}+{s['steps2']} steps)", "",
             "| target | goal | aligned | met |", "|---|---|---:|---|"]
    for t in r["targets"]:
        lines.append(f"| {t['target']} | {t['goal']} | {t['value']:.3f} | {t['met']} |")
    sweep = sorted(r.get("sweep") or [], key=lambda row: row["layer"])
    if sweep:
        lines += ["", "Layer sweep (where binding emerges; layers other than the main one post-trained "
                      f"{s['sweep_steps1']}+{s['sweep_steps2']} steps):", "",
                  "| layer | binding train / unseen | vanilla best latent train / unseen | FVU vanilla → aligned |",
                  "|---:|---:|---:|---:|"]
        lines += [f"| {row['layer']} | {row['binding_train']:.2f} / {row['binding_test']:.2f} | "
                  f"{row['vanilla_binding_train']:.2f} / {row['vanilla_binding_test']:.2f} | "
                  f"{row['fvu_vanilla']:.3f} → {row['fvu_aligned']:.3f} |" for row in sweep]
    return lines + ["", machine_line(r), ""]


def align_variant_section(r: dict) -> list[str]:
    """A swap-protocol variant (bench_align.py --swap-during/--swap-span): its swap numbers only, next to the headline."""
    s, swap = r["settings"], r["metrics"]["aligned"]["swap"]
    curve = ", ".join(f"α {float(a):g}: {row['success']:.2f} (rest unchanged {row['rest_unchanged']:.2f})"
                      for a, row in swap["alphas"].items())
    n = swap["alphas"][str(swap["best_alpha"])]["n"] if str(swap["best_alpha"]) in swap["alphas"] else "?"
    return [f"Swap variant `{r['benchmark']}` (`{r['hookpoint']}`, span {s.get('swap_span')}, during "
            f"{s.get('swap_during')}, gated {s.get('swap_when_active')}; SAE and post-training settings as above): best swap success {swap['best_success']:.3f} at "
            f"α {swap['best_alpha']:g} over {n} swaps ({curve}); vanilla best latent "
            f"{r['metrics']['vanilla']['swap']['best_success']:.3f}.", ""]


def _pair(a: float | None, b: float | None, digits: int = 2) -> str:
    return "–" if a is None else f"{a:.{digits}f} / {b:.{digits}f}" if b is not None else f"{a:.{digits}f}"


def _family_summary(r: dict) -> dict[str, str]:
    """One model's main-layer AlignSAE metrics, formatted: the benchmark's targets plus CE recovered,
    fragmentation, the rest-unchanged share, lenient swap and the oracle ceiling."""
    m, row = r["metrics"], next(row for row in r["sweep"] if f"model.layers.{row['layer']}" == r["hookpoint"])
    out = {t["target"]: f"{t['value']:.3f}" for t in r["targets"]}
    swap, best = m["aligned"]["swap"], str(m["aligned"]["swap"]["best_alpha"])
    out["swap success at best α"] += f" (α {swap['best_alpha']:g}, {swap['alphas'][best]['n']} swaps)"
    out["swap, lenient rule"] = fmt(swap.get("best_success_lenient"))
    oracle = m.get("swap_oracle")
    out["oracle ceiling, strict / lenient"] = _pair(oracle["success"], oracle["success_lenient"]) if oracle else "–"
    out["untargeted facts unchanged at best α"] = f"{swap['alphas'][best]['rest_unchanged']:.2f}"
    splice = m.get("splice") or {}
    out["CE loss recovered, vanilla / aligned"] = _pair(splice.get("vanilla", {}).get("ce_loss_recovered"),
                                                        splice.get("aligned", {}).get("ce_loss_recovered"), 3)
    out["effective latents per concept, vanilla / aligned"] = _pair(
        m["vanilla"]["fragmentation"]["effective_latents_mean"], m["aligned"]["fragmentation"]["effective_latents_mean"], 0)
    out["FVU vanilla → aligned"] = f"{row['fvu_vanilla']:.3f} → {row['fvu_aligned']:.3f}"
    return out


def _family_rows(name: str, r: dict, oracle: dict | None, n_layers: int | None) -> list[str]:
    """Per-layer rows of one model; the oracle of a layer without swaps comes from `oracle_swap.py`."""
    rows = []
    swept = {row["layer"] for row in r["sweep"]}
    alone = [{"layer": int(layer)} for layer in (oracle or {}).get("layers", {}) if int(layer) not in swept]
    for row in sorted(r["sweep"] + alone, key=lambda row: row["layer"]):
        side = (oracle or {}).get("layers", {}).get(str(row["layer"]))
        depth = f" ({row['layer'] / n_layers:.2f})" if n_layers else ""
        if "binding_train" not in row:  # a layer with the oracle alone
            rows.append(f"| {name} | {row['layer']}{depth} | – | – | – | – | – | "
                        f"{_pair(side['success'], side['success_lenient'])} ‡ |")
            continue
        ceiling = (_pair(row["oracle_success"], row["oracle_success_lenient"]) if row.get("oracle_success") is not None
                   else _pair(side["success"], side["success_lenient"]) + " ‡" if side else "–")
        swap = (f"{row['swap_best']:.2f} (α {row['swap_best_alpha']:g}) / {fmt(row.get('swap_best_lenient'), 2)}"
                if "swap_best" in row else "–")
        vanilla = _pair(row["vanilla_swap_best"], row.get("vanilla_swap_best_lenient")) if "swap_best" in row else "–"
        rows.append(f"| {name} | {row['layer']}{depth} | {row['binding_train']:.2f} / "
                    f"{row['binding_test']:.2f} | {row['vanilla_binding_test']:.2f} | {row['fvu_vanilla']:.3f} → "
                    f"{row['fvu_aligned']:.3f} | {swap} | {vanilla} | {ceiling} |")
    return rows


def align_family_section(r: dict) -> list[str]:
    """The relations benchmark on a second model family beside the default model's: main-layer metrics side by
    side, then every layer by relative depth with the oracle ceiling."""
    # the reference: SmolLM2 rerun with the same code and swap checks at every layer, else its headline run
    smol, model = load("align_family_smollm2") or load("align_relations"), r["settings"]["model"]
    if smol is None:
        return []
    kept = lambda res: ", ".join(f"{k} {v['kept']}" for k, v in res["fact_filter"].items())  # noqa: E731
    oracles = {"SmolLM2": load("align_oracle_smollm2"), model: load(f"align_oracle_{model}")}
    n_layers = {name: r["settings"].get("n_layers") or (oracles[name] or {}).get("n_layers") for name in oracles}
    n_layers["SmolLM2"] = 30
    lines = [f"**AlignSAE on a second model family** (`{r['benchmark']}`): {r['model']}, beside SmolLM2-135M-Instruct "
             f"(`{smol['benchmark']}`). "
             "Same relations benchmark and settings; each model's ontology is filtered to the facts it states itself "
             f"(facts kept of 24 per relation — SmolLM2: {kept(smol)}; {model}: {kept(r)}); vanilla TopK SAE k "
             f"{r['settings']['k']}, d_sae {smol['settings']['d_sae']} / {r['settings']['d_sae']} (4 × d_model); main "
             "layer at the same relative depth.", "",
             f"| main layer | SmolLM2 `{smol['hookpoint']}` | {model} `{r['hookpoint']}` |", "|---|---:|---:|"]
    a, b = _family_summary(smol), _family_summary(r)
    lines += [f"| {key} | {a.get(key, '–')} | {value} |" for key, value in b.items()]
    lines += ["", "Every layer (relative depth in brackets; the main layer swaps over the full α grid, the other "
              "layers over α 1 / 2 / 3 on the same cases; ‡ oracle alone from `oracle_swap.py`):", "",
              "| model | layer | binding train / unseen | vanilla unseen | FVU vanilla → aligned | "
              "swap best: strict (α) / lenient | vanilla swap strict / lenient | oracle strict / lenient |",
              "|---|---:|---:|---:|---:|---|---:|---:|"]
    lines += _family_rows("SmolLM2", smol, oracles["SmolLM2"], n_layers["SmolLM2"])
    lines += _family_rows(model, r, oracles[model], n_layers[model])
    return lines + ["", machine_line(smol), "", machine_line(r), ""]


def align_biographies_section(r: dict, styles: dict | None = None) -> list[str]:
    """The AlignSAE benchmark in the authors' setting: one row per layer, strict and lenient swap side by side,
    the oracle ceiling beside them, then the main layer's α curve and the two-hop questions. `styles`: the same
    benchmark on the model fact-learned on train templates of all three styles, in a second table."""
    s = r["settings"]
    lines = [f"**AlignSAE on the fact-learned model** (SmolLM2-135M-Instruct fine-tuned on 10 made-up people × 6 "
             f"attributes; vanilla TopK SAE d_sae {s['d_sae']} k {s['k']} on {s['generic_train_tokens']:,} SOTU tokens; "
             f"post-train {s['steps1']}+{s['steps2']} steps; swaps on unseen templates, source slot → 0 and target slot → "
             f"α at the last prompt token while the prompt is read; strict / lenient success)", "",
             *_biography_rows(r)]
    if styles:
        lines += ["", "The same benchmark on a model fact-learned on train templates of all three styles (4 Q/A, 4 "
                  "fill-in, 4 instruction per attribute, none an unseen wording; `align_biographies_styles.json`):",
                  "", *_biography_rows(styles)]
    two_hop = load("align_biographies_two_hop")
    if two_hop:
        by_set = two_hop["by_set"]
        lines += ["", "Two-hop questions to the same model, no further training (strict / lenient accuracy): "
                  + "; ".join(f"{name} {v['strict']:.2f} / {v['lenient']:.2f} (n {v['n']})" for name, v in by_set.items())
                  + " (`bench_two_hop.py`)."]
    bridge = load("two_hop_swap")
    if bridge:
        lines += ["", *two_hop_swap_lines(bridge)]
    return lines + ["", machine_line(r), ""]


def _biography_rows(r: dict) -> list[str]:
    """One table row per layer, then the α curve of the layer that swaps best."""
    lines = ["| layer | binding train / unseen (qa, fill-in, instruction) | vanilla unseen | FVU vanilla → aligned | "
             "swap best α: strict / lenient | vanilla swap strict / lenient | oracle strict / lenient | rest unchanged |",
             "|---:|---|---:|---:|---|---:|---:|---:|"]
    for row in sorted(r.get("sweep") or [], key=lambda row: row["layer"]):
        style = row.get("binding_test_by_style", {})
        styles = ", ".join(f"{style[k]:.2f}" for k in ("qa", "fill_in", "instruction") if k in style)
        swap = (f"{row['swap_best']:.2f} (α {row['swap_best_alpha']:g}) / {row['swap_best_lenient']:.2f} "
                f"(α {row['swap_best_alpha_lenient']:g})" if "swap_best" in row else "–")
        vanilla = f"{row['vanilla_swap_best']:.2f} / {row['vanilla_swap_best_lenient']:.2f}" if "swap_best" in row else "–"
        oracle = (f"{row['oracle_success']:.2f} / {row['oracle_success_lenient']:.2f}"
                  if row.get("oracle_success") is not None else "–")
        rest = f"{row['rest_unchanged_at_best']:.2f}" if row.get("rest_unchanged_at_best") is not None else "–"
        lines.append(f"| {row['layer']} | {row['binding_train']:.2f} / {row['binding_test']:.2f} ({styles}) | "
                     f"{row['vanilla_binding_test']:.2f} | {row['fvu_vanilla']:.3f} → {row['fvu_aligned']:.3f} | {swap} | "
                     f"{vanilla} | {oracle} | {rest} |")
    swept = [row for row in r.get("sweep") or [] if "swap_curve_strict_lenient" in row]
    if swept:  # the α curve of the layer that swaps best
        best = max(swept, key=lambda row: row["swap_best_lenient"])
        curve = best["swap_curve_strict_lenient"]["aligned"]
        lines += ["", f"Swap success vs α at layer {best['layer']} ({best['swap_n']} swaps per α), strict / lenient: " +
                  ", ".join(f"α {float(a):g}: {v[0]:.2f} / {v[1]:.2f}" for a, v in curve.items()) + "."]
    return lines


def two_hop_swap_lines(r: dict) -> list[str]:
    """Swaps through the bridge of the two-hop questions: best α per SAE, strict / lenient, and the oracle."""
    swaps = {"value": "bridge value A → B, latents chosen on the two-hop questions",
             "value_bridge": "bridge value A → B, latents chosen on the one-hop employer prompts",
             "relation": "relation employer_city → another"}
    some = next(iter(r["layers"].values()))
    lines = [f"Swaps through the bridge of the two-hop questions the model answers right ({some['questions_right']} "
             "of 40; `bench_two_hop_swap.py`; best α, strict / lenient):", "",
             "| layer | swap | cases | AlignSAE | vanilla SAE | oracle |", "|---:|---|---:|---|---|---:|"]

    def best(row: dict) -> str:
        return (f"{row['best_strict']:.2f} / {row['best_lenient']:.2f} (α {row['best_alpha']:g}"
                + ("" if row["best_alpha_lenient"] == row["best_alpha"] else f" / {row['best_alpha_lenient']:g}") + ")")

    for layer, result in sorted(r["layers"].items(), key=lambda item: int(item[0])):
        for key, label in swaps.items():
            row = result["summary"].get(key)
            if row:
                lines.append(f"| {layer} | {label} | {row['n']} | {best(row['aligned'])} | {best(row['vanilla'])} | "
                             f"{row['oracle'][0]:.2f} / {row['oracle'][1]:.2f} |")
    return lines + ["", machine_line(r)]


# choices made on validation and paired comparisons (bench_sails_term.py, bench_sails_gate*.py, bench_sails_paired.py)
TERM_SWEEPS = ("sails_retain_", "sails_unlikelihood_", "sails_consistency_", "sails_gate_", "sails_paired_")


def main() -> None:
    parts: list[str] = []
    for name, render in (("capture", capture_section), ("pipeline", pipeline_section), ("sae_training", sae_section)):
        result = load(name)
        if result:
            parts += render(result)
    align = load("align_relations")
    if align:
        parts += align_section(align)
    runs = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("align_relations_*.json"))]
    other_model = [r["settings"].get("model", "default") != "default" for r in runs]
    for r in [r for r, other in zip(runs, other_model, strict=True) if not other]:  # swap variants
        parts += align_variant_section(r)
    for r in [r for r, other in zip(runs, other_model, strict=True) if other]:  # another model family, after them
        parts += align_family_section(r)
    biographies = load("align_biographies")
    if biographies:
        parts += align_biographies_section(biographies, load("align_biographies_styles"))
    for path in sorted(RESULTS.glob("sails_*.json")):
        if path.stem.startswith(TERM_SWEEPS):  # choices made on validation (term weights, gate read-out): prose
            continue
        result = json.loads(path.read_text())
        render = (seeds_section if path.stem.startswith("sails_seeds_") else overrefusal_section
                  if path.stem.startswith("sails_overrefusal_") else coverage_section
                  if path.stem == "sails_register_coverage" else sails_section)
        parts += render(result)
    table = "\n".join(parts) if parts else "(benchmarks not yet run)"
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = re.sub(r"<!-- bench:start -->.*<!-- bench:end -->", f"<!-- bench:start -->\n{table}\n<!-- bench:end -->",
                 text, flags=re.S)
    readme.write_text(new)
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
