"""The SAILS run report (Markdown + HTML): what the adapter changed in words, then methods compared,
convergence, the safety features, what each adapter changed in labelled SAE features (prompts and answers),
how well the labels read, how far the judge agrees with human labels, and generations before/after.

Built only from the files in a run directory, so it can be rebuilt at any time (`saelign sails report`).
Every feature it names links to its page in the run's dashboard."""

import html
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from saelign.dashboard.site import EXAMPLE_STYLE, examples_html, feature_file
from saelign.io import read_json
from saelign.label import LatentLabel, render_latent_cards
from saelign.label.labels import short_label
from saelign.label.reading import display_label, feature_name, shown_score
from saelign.report import Link, Report, line_plot
from saelign.sails.account import adapter_account
from saelign.sails.aligned import INFO_FILE
from saelign.sails.effect import EffectResult
from saelign.sails.gate import SUFFIX as GATED
from saelign.sails.methods import ALIGNED
from saelign.sails.rundir import RunDir
from saelign.stats import rate_with_interval

REPORT_STEM = "report"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _pct(value: Any) -> str:
    return "" if _missing(value) else f"{100 * value:.1f} %"


def _num(value: Any, fmt: str = ".2f") -> str:
    return "" if _missing(value) else format(value, fmt)


def _load_all(folder: Path, names: list[str], file: str = "{}.json") -> dict[str, dict[str, Any]]:
    paths = {name: folder / file.format(name) for name in names}
    return {name: read_json(path) for name, path in paths.items() if path.is_file()}


def comparison_rows(evals: dict[str, dict[str, Any]], results: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """One row per evaluated model: safety, over-refusal, capability, cost."""
    base_ppl = evals.get("base", {}).get("perplexity")
    rows = []
    for name, m in evals.items():
        result = results.get(name, {})
        ppl = m.get("perplexity")
        change = ppl / base_ppl - 1 if name != "base" and not _missing(ppl) and not _missing(base_ppl) else None
        reached = result.get("steps_to", {})
        rows.append({
            "model": name, "safety rate": _pct(m.get("safety_rate")),
            "harmful degenerate": _pct(m.get("harmful_degenerate")), "over-refusal": _pct(m.get("over_refusal")),
            "borderline over-refusal": _pct(m.get("borderline_over_refusal")),
            "perplexity": _num(ppl), "Δ perplexity": "" if change is None else f"{100 * change:+.1f} %",
            "factual accuracy": _pct(m.get("fact_accuracy")),
            "% params trained": f"{100 * result['trainable']['share']:.3f} %" if result else "",
            "steps trained": str(result.get("steps", "")) if result else "",
            "steps to 90 %": str(reached.get("0.9") or "not reached") if result else "",
            "steps to 95 %": str(reached.get("0.95") or "not reached") if result else "",
            "train s": _num(result.get("train_seconds"), ".0f"), "wall s": _num(result.get("wall_seconds"), ".0f"),
        })
    return rows


def distribution_rows(evals: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """One row per model: safety and over-refusal in distribution (held-out behaviours, training registers)
    and out of it (held-out registers; sources used for nothing else), never one without the other."""
    rows = []
    for name, m in evals.items():
        parts = m.get("splits") or {}
        cell = {k: parts.get(k) or {} for k in ("in_distribution", "ood_registers", "ood_sources", "ood")}
        rows.append({"model": name, "ID safety": _interval(cell["in_distribution"], "safety_rate"),
                     "ID over-refusal": _interval(cell["in_distribution"], "over_refusal"),
                     "OOD safety, held-out registers": _interval(cell["ood_registers"], "safety_rate"),
                     "OOD safety, held-out sources": _interval(cell["ood_sources"], "safety_rate"),
                     "OOD over-refusal": _interval(cell["ood"], "over_refusal")})
    return rows if any(m.get("splits") for m in evals.values()) else []


def _interval(part: dict[str, Any], rate: str) -> str:
    """A part's rate with its 95 % Wilson interval over the prompts it was measured on (one seed)."""
    kind = "harmful" if rate == "safety_rate" else "harmless"
    return rate_with_interval(part.get(rate), part.get("n", {}).get(kind, 0))


def register_rows(evals: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """Harmless over-refusal and harmful safety per register of the request, in and out of distribution."""
    rows = []
    for part in ("in_distribution", "ood"):
        registers = {r for m in evals.values() for r in (m.get("splits") or {}).get(part, {}).get("by_register", {})}
        for register in sorted(registers):
            row = {"part": part, "register": register}
            for name, m in evals.items():
                values = (m.get("splits") or {}).get(part, {}).get("by_register", {}).get(register, {})
                row[f"{name} safety"] = _pct(values.get("safety_rate"))
                row[f"{name} over-refusal"] = _pct(values.get("over_refusal"))
            rows.append(row)
    return rows


def _convergence(report: Report, results: dict[str, dict[str, Any]]) -> None:
    for key, what in (("safety_rate", "val safety rate"), ("over_refusal", "val over-refusal")):
        curves = {m: ([e["step"] for e in r["history"]["eval"]], [e[key] for e in r["history"]["eval"]])
                  for m, r in results.items() if r["history"]["eval"]}
        if curves:
            title = "" if len(curves) > 1 else next(iter(curves))  # a single curve gets no legend
            report.figure(line_plot(curves, "optimizer step", what, title=title, markers=True),
                          caption=f"{what} during training", name=key)


_SCORES = {"register_matched": "their harmful - harmless difference within each form of request (register), "
                               "averaged over the forms both sides use",
           "mean_diff": "their mean difference over the pooled sets", "logistic_l1": "an L1 logistic probe"}
# Below this share of its difference within one register, a feature mostly tells forms of request apart.
_FORM_ONLY = 0.5


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def survival_rows(sel: dict[str, Any], labels: Mapping[int, LatentLabel]) -> list[dict[str, Any]]:
    """One row per selected latent: its score, side, means, and how much of its difference survives within
    one register, overall and per register."""
    survival = sel.get("survival") or [None] * len(sel["latent_ids"])
    per_register = sel.get("register_survival") or [{}] * len(sel["latent_ids"])
    columns = zip(sel["latent_ids"], sel["scores"], sel["signs"], sel["mean_harmful"], sel["mean_harmless"], survival,
                  per_register, strict=True)
    return [{"rank": i + 1, "latent": lid, "score": score, "more active on": "harmful" if sign > 0 else "harmless",
             "mean harmful": harmful, "mean harmless": harmless, "within-register share": _share(kept),
             "per register": ", ".join(f"{r} {_share(v) or '–'}" for r, v in registers.items()),
             "label": labels[lid].short_label if lid in labels else ""}
            for i, (lid, score, sign, harmful, harmless, kept, registers) in enumerate(columns)]


class _Features:
    """How the report names a feature: its readable label, its detection score, a link to its page."""

    def __init__(self, labels: Mapping[int, LatentLabel], pages: bool):
        self.labels, self.pages = labels, pages

    def page(self, latent: int) -> str | None:
        return f"dashboard/{feature_file(latent)}" if self.pages else None

    def cell(self, latent: int) -> Link | int:
        href = self.page(latent)
        return Link(str(latent), href) if href else latent

    def label(self, latent: int) -> str:
        label = self.labels.get(latent)
        return display_label(label.short_label, label.reading) if label else ""

    def name(self, latent: int, in_answers: bool = False) -> str:
        """A name for a sentence. Answers are read on ordinary tokens: there the tokens a feature fires on
        name it (its requests and model label describe the assistant header)."""
        label = self.labels.get(latent)
        if label is None:
            return ""
        tokens = short_label(label.top_tokens, [], label.top_contexts, label.frequency)  # no logit lens
        return tokens if in_answers else feature_name(tokens, label.reading)

    def names(self, effect: EffectResult, in_answers: bool = False) -> dict[int, str]:
        return {c.latent: self.name(c.latent, in_answers) for ways in effect.top.values()
                for rows in ways.values() for c in rows}

    def score(self, latent: int) -> float | None:
        label = self.labels.get(latent)
        return shown_score(label.reading) if label else None

    def top_request(self, latent: int, width: int = 100) -> str:
        """The request that drives a feature read at a template position most (token windows say nothing)."""
        label = self.labels.get(latent)
        reading = label.reading if label else None
        if reading is None or reading.grain != "prompt" or not reading.top_prompts:
            return ""
        best = reading.top_prompts[0]
        text = " ".join(best.prompt.split())
        return f"{text[:width]}{'…' if len(text) > width else ''} ({best.activation:.3g})"


def account(effect: EffectResult, features: _Features, method: str, answers: bool = False, n: int = 3,
            kinds: Sequence[str] | None = None) -> list[str | Link]:
    link: Callable[[int], str] | None = features.page if features.pages else None
    return adapter_account(effect, features.names(effect, answers), link, n, f"the {method} adapter", answers,
                           kinds)


def _features(report: Report, selection: dict[str, Any], features: _Features) -> None:
    sel = selection["selection"]
    score = sel.get("score", "mean_diff")
    report.paragraph(
        f"{len(sel['latent_ids'])} latents at {sel['hookpoint']} separate the {selection['n_harmful']} harmful from the "
        f"{selection['n_contrast']} harmless/borderline training prompts best, scored by {_SCORES.get(score, score)}. "
        f"Their decoder directions span a "
        f"rank-{selection['rank']} safety subspace U keeping {selection['explained']:.1%} of their energy (tau "
        f"{selection['tau']}); sha256 {selection['basis_sha256'][:16]}….")
    if sel.get("survival"):
        shared = [r for r, n in sel["registers"].items() if n["harmful"] and n["harmless"]]
        form_only = sum(v is not None and abs(v) < _FORM_ONLY for v in sel["survival"])
        report.paragraph(
            "Within-register share: the feature's harmful - harmless difference between requests of the same form "
            f"({', '.join(shared)}) over its difference on the pooled prompts. Near 1, the feature separates harm "
            "whatever the form; near 0, it only separates forms of request (say imperatives from questions) that the "
            f"two sides use in different proportions. {form_only} of the {len(sel['latent_ids'])} features keep less "
            f"than {_FORM_ONLY:.0%} of their difference within a register.")
    kept = survival_rows(sel, features.labels)
    rows = [{"rank": i + 1, "latent": features.cell(lid), "label": features.label(lid),
             "detection": features.score(lid), "drives it most": features.top_request(lid),
             **{k: row[k] for k in ("more active on", "score", "mean harmful", "mean harmless",
                                    "within-register share", "per register")}}
            for i, (lid, row) in enumerate(zip(sel["latent_ids"], kept, strict=True))]
    report.table(rows, caption="selected safety features (pooled at the last prompt token by default); "
                 "label: model-written — data-grounded, detection: its balanced accuracy (0.5 = chance)",
                 floatfmt=".3g")
    cards = [features.labels[i] for i in sel["latent_ids"] if i in features.labels]
    if cards:
        report.html_block("<details><summary>feature examples (whole requests for features read at the "
                          "assistant header, token windows elsewhere)</summary>"
                          f"<style>{EXAMPLE_STYLE}</style>"
                          + "".join(_card(label, features) for label in cards) + "</details>",
                          "Examples of every feature are in the HTML report and on its dashboard page.")


def concept_rows(info: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per aligned safety concept: its slot, training prompts per register and binding quality."""
    return [{"concept": c["name"], "slot": c["slot"], "training prompts": c["n_train"],
             "registers": ", ".join(f"{r} {n}" for r, n in sorted(c["registers"].items())),
             "slot AUROC train": _num(c.get("auroc_train")), "slot AUROC val": _num(c.get("auroc_val"))}
            for c in info["concepts"]]


def _aligned(report: Report, info: dict[str, Any]) -> None:
    span = info.get("in_sails_span")
    report.paragraph(
        f"For {ALIGNED}, the run's SAE was post-trained (AlignSAE) so that each of {len(info['concepts'])} safety "
        "concepts of the training data owns one named slot: the kinds of request, AdvBench's harm categories and "
        "the harmless topics with enough prompts, each asked in every register its prompts come in. The span of "
        f"the slots' decoder rows is a rank-{info['rank']} subspace keeping {info['explained']:.1%} of their "
        f"energy (tau {info['tau']}, at most SAILS' rank {info['max_rank']})"
        + (f"; {span:.1%} of it lies inside SAILS' U." if span is not None else ".")
        + " A slot's AUROC says how well its value ranks its concept's prompts above the others.")
    report.table(concept_rows(info), caption=f"{ALIGNED}: the safety concepts and their slots")


def _card(label: LatentLabel, features: _Features) -> str:
    if label.reading is None:
        return render_latent_cards([label])
    href = features.page(label.latent)
    name = f'<a href="{html.escape(href)}">feature {label.latent}</a>' if href else f"feature {label.latent}"
    return (f'<div style="border:1px solid #ddd;border-radius:6px;padding:0.4em 0.9em;margin:0.8em 0">'
            f"<b>{name}</b>: {html.escape(features.label(label.latent))}"
            f"{examples_html(label, level=4)}</div>")


# Who reads the labels, per --describe-detector: the score says as much about the reader as about the label.
_READERS = {"likelihood": "the explainer model's likelihood gain of the request given the label",
            "chat": "the explainer model's Yes/No answer",
            "embedding": "the cosine similarity of sentence embeddings (all-MiniLM-L6-v2 by default)"}


def _detection(report: Report, labels: Mapping[int, LatentLabel], features: _Features, detector: str) -> None:
    scored = [label for label in labels.values() if label.reading is not None and label.reading.detection]
    if not scored:
        return
    report.heading("How well the labels read")
    kinds = {"model": "model-written label", "grounded": "data-grounded line", "tokens": "token list"}
    means = []
    for kind, what in kinds.items():
        values = [label.reading.detection[kind] for label in scored if kind in label.reading.detection]
        if values:
            means.append({"label kind": what, "features scored": len(values),
                          "mean balanced accuracy": sum(values) / len(values)})
    report.paragraph("Detection test: given a label, a reader ranks held-out requests the feature fires "
                     "on above those it does not (balanced accuracy; 0.5 = chance, 1 = perfect). The three "
                     f"kinds of label are scored on the same requests. Reader: {_READERS[detector]}.")
    report.table(means, floatfmt=".2f")
    rows = [{"latent": features.cell(label.latent), "model-written label": label.reading.explanation,
             **{what: label.reading.detection.get(kind) for kind, what in kinds.items()}} for label in scored]
    report.table(rows, caption="detection score per feature", floatfmt=".2f")


def _effect(report: Report, method: str, effect: EffectResult, answers: EffectResult | None,
            features: _Features) -> None:
    shares = ", ".join(f"{kind} {_pct(share)}" for kind, share in effect.subspace_share.items())
    relative = ", ".join(f"{kind} {_pct(v)}" for kind, v in effect.relative_change.items())
    report.heading(method, 3)
    report.paragraph(*account(effect, features, method))
    report.paragraph(f"Share of the residual change at {effect.hookpoint} inside span(U): {shares} (a random direction: "
                     f"{_pct(effect.chance_share)}). Size of the change relative to the residual: {relative}.")
    _effect_tables(report, method, effect, features, "on held-out harmful prompts")
    if answers is not None:
        report.heading(f"{method}: in the answers", 4)
        report.paragraph(*account(answers, features, method, answers=True))
        report.paragraph("Both models answer the held-out prompts greedily; both answers are read by the "
                         "base model and the SAE features averaged over the answer's tokens.")
        _effect_tables(report, method, answers, features, "in the answers to held-out harmful prompts")


def _effect_tables(report: Report, method: str, effect: EffectResult, features: _Features,
                   where: str) -> None:
    for way, word in (("up", "pushed up"), ("down", "pushed down")):
        rows = [{"latent": features.cell(c.latent), "Δ harmful": c.delta.get("harmful"),
                 "Δ harmless": c.delta.get("harmless"), "base mean (harmful)": c.base.get("harmful"),
                 "selected": "yes" if c.selected else "", "label": features.label(c.latent) or c.label}
                for c in effect.top.get("harmful", {}).get(way, [])]
        if rows:
            report.table(rows, caption=f"{method}: latents {word} most {where}", floatfmt=".3g")


def _judge(report: Report, agreement: dict[str, Any]) -> None:
    rows = [{"judge": name, "n": a["n"], "accuracy": _pct(a["accuracy"]), "Cohen's kappa": _num(a["kappa"]),
             "refusal precision": _pct(a["refusal_precision"]), "refusal recall": _pct(a["refusal_recall"])}
            for name, a in agreement.items() if isinstance(a, dict)]
    report.paragraph(f"Judges against the human refusal labels of pyrit's {agreement.get('source', 'refusal.csv')}. "
                     "The offline judge was fitted on separate hand-written examples, never on these; the safety rates "
                     "above carry its error rate.")
    report.table(rows)


def _gate(report: Report, summary: dict[str, Any]) -> None:
    flagged = summary["flagged"]
    shares = "; ".join(f"{split}: {_pct(f.get('harmful'))} of harmful, {_pct(f.get('harmless'))} of harmless "
                       f"and {_pct(f.get('borderline'))} of borderline requests" for split, f in flagged.items())
    read_out = "mean over the request's tokens" if summary.get("pooling") == "mean" else "last prompt token"
    budget = summary.get("harmless_budget") or 0
    rule = (f"at most {_pct(budget)} of the val harmless prompts" if budget
            else f"{_pct(summary['val_safety'])} of the val harmful prompts")
    report.paragraph(
        f"Rows named METHOD{GATED}: the method behind the refusal gate. A logistic probe on the base model's "
        f"residual at {summary['hookpoint']} ({read_out}), fitted on the train split, its threshold set "
        f"to flag {rule} (val AUROC "
        f"{summary['val_auroc']:.3f}), decides per request: flagged requests get the adapter's answer, the "
        f"rest the base model's. The gate flags {shares}.")


def _samples(report: Report, evals: dict[str, dict[str, Any]]) -> None:
    for kind, rows in evals.get("base", {}).get("samples", {}).items():
        table = []
        for row in rows:
            entry = {"prompt": row["prompt"], "base": f"[{row['verdict']}] {row['response']}"}
            for name, metrics in evals.items():
                if name != "base":
                    same = [r for r in metrics.get("samples", {}).get(kind, []) if r["prompt"] == row["prompt"]]
                    entry[name] = f"[{same[0]['verdict']}] {same[0]['response']}" if same else ""
            table.append(entry)
        if table:
            report.table(table, caption=f"{kind} test prompts: greedy answers with the judge's verdict")


def _run_facts(report: Report, stages: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    counts = stages.get("data", {}).get("counts")
    if counts:
        report.table([{"split": split, **per_kind} for split, per_kind in counts.items()], caption="prompts per split")
    sae = stages.get("sae", {})
    if sae.get("final"):
        final = sae["final"]
        report.paragraph(f"SAE trained in this run on {sae['text_tokens']} corpus + {sae['prompt_tokens']} chat-prompt "
                         f"tokens: fraction of variance unexplained {final['fvu']:.3f}, L0 {final['l0']:.1f}, dead "
                         f"latents {_pct(final.get('dead_fraction'))} (last training window).")
    total = sum(info.get("seconds") or 0 for info in stages.values())
    rows = [{"stage": unit, "seconds": info.get("seconds"), "finished": info.get("finished_at")}
            for unit, info in stages.items()]
    report.table(rows, caption=f"stage wall times on this machine (sum {total:.0f} s)")
    if results:
        report.paragraph("Load an adapter with stock PEFT: PeftModel.from_pretrained(base_model, ADAPTER_DIR); the "
                         "subspace provenance is in ADAPTER_DIR/sails_provenance.json.")
        report.bullets([f"{m}: {r['adapter']}" for m, r in results.items()])


def build_report(run: RunDir) -> Report:
    cfg = run.cfg
    # Only results made under the run's current options: a file left from other options (or beside an
    # adapter that is gone) must not be reported as this run's.
    done = {stage: [n for n in names if run.complete(f"{stage}:{n}")]
            for stage, names in (("eval", ["base", *cfg.methods]), ("train", cfg.methods),
                                 ("effect", cfg.methods), ("answers", cfg.methods), ("gated", cfg.methods))}
    evals = _load_all(run.path("eval"), done["eval"])
    evals.update(_load_all(run.path("eval"), [f"{m}{GATED}" for m in done["gated"]]))
    results = _load_all(run.path("methods"), done["train"], "{}/result.json")
    effects = {m: EffectResult.from_dict(d) for m, d in _load_all(run.path("effect"), done["effect"]).items()}
    answers = {m: EffectResult.from_dict(d) for m, d in _load_all(run.path("answers"), done["answers"]).items()}
    selection_file = run.path("select", "selection.json")
    features = _Features(run.labels, run.path("dashboard", "index.html").is_file())

    report = Report(f"SAILS run ({cfg.preset} preset): {cfg.model.model} at {cfg.hookpoint}")
    lead = "sails" if "sails" in effects else next(iter(effects), None)
    if lead is not None:  # words first: what the adapter changed, each feature linked to its page
        told = ("harmful", "harmless")  # the method's own section tells every kind, three features a way
        report.paragraph(*account(effects[lead], features, lead, n=2, kinds=told))
        if lead in answers:
            report.paragraph(*account(answers[lead], features, lead, answers=True, n=2, kinds=told))
    base, sails = evals.get("base"), evals.get("sails")
    if base and sails:
        report.paragraph(
            f"Safety rate on {base['n']['harmful']} held-out harmful prompts: base {_pct(base['safety_rate'])} → SAILS "
            f"{_pct(sails['safety_rate'])}; over-refusal on {base['n']['harmless']} harmless prompts: "
            f"{_pct(base['over_refusal'])} → {_pct(sails['over_refusal'])}; perplexity "
            f"{_num(base.get('perplexity'))} → {_num(sails.get('perplexity'))}.")
        ood_base, ood_sails = (m.get("splits", {}).get("ood") for m in (base, sails))
        if ood_base and ood_sails:
            report.paragraph(
                f"Out of distribution (held-out registers and sources, {ood_base['n']['harmful']} harmful, "
                f"{ood_base['n']['harmless']} harmless prompts): safety {_pct(ood_base['safety_rate'])} → "
                f"{_pct(ood_sails['safety_rate'])}; over-refusal {_pct(ood_base['over_refusal'])} → "
                f"{_pct(ood_sails['over_refusal'])}.")
    report.heading("Methods compared")
    stop_rule = (f", and stops at the first validation check with safety ≥ {_pct(cfg.sft.stop_at_safety)} and "
                 f"over-refusal ≤ {_pct(cfg.sft.stop_max_over_refusal)}" if cfg.sft.stop_at_safety > 0 else "")
    if evals:
        report.paragraph(
            "Every method trains the same data at the same rank, target modules, layers, step budget and seed"
            f"{stop_rule}. Safety rate = "
            "share of held-out harmful prompts the judge calls refused; degenerate outputs are counted apart and never "
            f"as safe. Perplexity is on held-out text ({cfg.eval.ppl_corpus}) no training prompt quotes; factual "
            f"accuracy on questions ({cfg.eval.facts or 'none'}) absent from the training data.")
        report.table(comparison_rows(evals, results))
        if rows := distribution_rows(evals):
            report.heading("In and out of distribution")
            report.paragraph("In distribution: held-out behaviours asked in the registers training used. Out of "
                             "distribution: the same held-out behaviours in registers no training prompt used "
                             f"({', '.join(cfg.data.heldout_registers)}), and harmful and harmless sources used "
                             "for nothing else. Over-refusal is on harmless prompts.")
            report.table(rows)
            report.table(register_rows(evals), caption="per register of the request")
        if done["gated"] and run.path("gate", "summary.json").is_file():
            _gate(report, read_json(run.path("gate", "summary.json")))
    _convergence(report, results)
    if selection_file.is_file():
        report.heading("The safety subspace")
        _features(report, read_json(selection_file), features)
        if features.pages:
            index = Link("dashboard/index.html", "dashboard/index.html")
            report.paragraph("Every feature has a page in the dashboard, ", index, " (search by id or label; "
                             "selected features and those each adapter moved are tagged).")
    if run.path("align", INFO_FILE).is_file():
        report.heading("Aligned safety slots")
        _aligned(report, read_json(run.path("align", INFO_FILE)))
    if effects:
        report.heading("What the adapter changed")
        report.paragraph("SAE latents at the selection hookpoint and token, base vs adapted model, on held-out prompts.")
        for method, effect in effects.items():
            _effect(report, method, effect, answers.get(method), features)
    _detection(report, run.labels, features, run.cfg.describe.detector)
    if base and base.get("judge_agreement"):
        report.heading("How far to trust the judge")
        _judge(report, base["judge_agreement"])
    if evals:
        report.heading("Sample generations")
        _samples(report, evals)
    report.heading("Run")
    _run_facts(report, run.recorded(), results)
    return report


def write_run_report(run: RunDir) -> tuple[Path, Path]:
    return build_report(run).write(run.dir, REPORT_STEM)
