"""The AlignSAE report (Markdown + HTML): metric table aligned vs vanilla, α curve, confusion matrices, layer sweep.

Everything comes from the metrics dict `evaluate_aligned` writes to metrics.json (see `align.metrics`), so a
report can be rebuilt from that file alone. Targets are those of the AlignSAE issue; a missed one is shown as
missed with its number, never hidden."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from saelign.report import Report, heatmap, line_plot

# (name, metric key, comparison, threshold): the targets the report checks.
TARGETS = (
    ("diagonal binding (train templates)", "binding_train", "≥", 0.95),
    ("binding on unseen templates", "binding_test", "≥", 0.85),
    ("swap success at best α", "swap_best", "≥", 0.8),
    ("swap success ÷ vanilla baseline", "swap_ratio", "≥", 2.0),
    ("FVU increase vs the SAE before post-training", "fvu_increase", "≤", 0.2),
)


def _mean(values: Any) -> float | None:
    return sum(values) / len(values) if values else None


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers the targets are about (None where not measured)."""
    aligned = metrics["aligned"]
    swap = aligned.get("swap") or {}
    return {"binding_train": aligned.get("binding_accuracy_train"), "binding_test": aligned.get("binding_accuracy_test"),
            "swap_best": swap.get("best_success"), "swap_ratio": metrics.get("swap_ratio_vs_vanilla"),
            "fvu_increase": metrics.get("fvu_increase")}


def target_checks(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per target. When the vanilla baseline never swaps, the ratio is unbounded; its row then gives the
    conservative lower bound aligned ÷ (1 / n), as if the vanilla SAE had got one of its n swaps right, and a note."""
    values = headline(metrics)
    vanilla_swap = metrics.get("vanilla", {}).get("swap") or {}
    rows = []
    for name, key, op, threshold in TARGETS:
        value, note = values[key], None
        if key == "swap_ratio" and value is None and vanilla_swap.get("best_success") == 0 and values["swap_best"] is not None:
            n = vanilla_swap["alphas"][str(vanilla_swap["best_alpha"])]["n"]
            value = values["swap_best"] * n
            note = f"the vanilla SAE swapped none of its {n} cases; value = lower bound aligned ÷ (1/{n})"
        met = None if value is None else value >= threshold if op == "≥" else value <= threshold
        rows.append({"target": name, "value": value, "goal": f"{op} {threshold:g}",
                     "met": "n/a" if met is None else "yes" if met else "NO", **({"note": note} if note else {})})
    return rows


def metric_rows(metrics: Mapping[str, Any]) -> list[list[Any]]:
    """[metric, aligned, vanilla] rows."""
    rows: list[list[Any]] = []

    def add(name: str, get: Any) -> None:
        values = [get(metrics[side], side) for side in ("aligned", "vanilla")]
        if any(v is not None for v in values):
            rows.append([name, *values])

    add("binding accuracy, train templates", lambda m, _: m.get("binding_accuracy_train"))
    add("binding accuracy, unseen templates", lambda m, _: m.get("binding_accuracy_test"))
    for style in metrics["aligned"].get("binding_accuracy_test_by_style", {}):
        add(f"binding accuracy, unseen templates, {style} style",
            lambda m, _, style=style: m.get("binding_accuracy_test_by_style", {}).get(style))
    add("mean AUC, train", lambda m, _: _mean(m.get("auc_train")))
    add("mean AUC, unseen templates", lambda m, _: _mean(m.get("auc_test")))
    recon = metrics.get("reconstruction", {})
    add("FVU, generic text", lambda _, side: recon.get(side, {}).get("generic", {}).get("fvu"))
    add("FVU, concept prompts", lambda _, side: recon.get(side, {}).get("concept", {}).get("fvu"))
    add("L0, generic text", lambda _, side: recon.get(side, {}).get("generic", {}).get("l0"))
    splice = metrics.get("splice", {})
    add("CE loss recovered", lambda _, side: splice.get(side, {}).get("ce_loss_recovered"))
    add("KL(clean ‖ spliced)", lambda _, side: splice.get(side, {}).get("kl_div"))
    add("slot–slot mean |r|", lambda m, _: m.get("entanglement", {}).get("slot_slot_mean_abs_corr"))
    add("slot–free max |r| (mean)", lambda m, _: m.get("entanglement", {}).get("slot_free_max_abs_corr_mean"))
    add("effective latents per concept", lambda m, _: m.get("fragmentation", {}).get("effective_latents_mean"))
    add("slot share of the concept signal", lambda m, _: _mean(m.get("fragmentation", {}).get("slot_share")))
    add("best α", lambda m, _: (m.get("swap") or {}).get("best_alpha"))
    add("swap success at best α", lambda m, _: (m.get("swap") or {}).get("best_success"))
    add("swap success at best α, lenient (authors' match)", lambda m, _: (m.get("swap") or {}).get("best_success_lenient"))
    add("rest unchanged at best α",
        lambda m, _: m["swap"]["alphas"][_alpha_key(m["swap"])]["rest_unchanged"] if m.get("swap") else None)
    if metrics.get("fvu_increase") is not None:
        rows.append(["FVU increase (aligned vs vanilla)", metrics["fvu_increase"], None])
    oracle = metrics.get("swap_oracle")
    if oracle:  # not an SAE's: the ceiling for any edit of the concept token
        rows.append(["swap oracle ceiling (strict / lenient)", f"{oracle['success']:.3f} / {oracle['success_lenient']:.3f}", None])
    return rows


def _alpha_key(swap: Mapping[str, Any]) -> str:
    return max(swap["alphas"], key=lambda a: swap["alphas"][a]["success"])


def _alpha_figure(metrics: Mapping[str, Any]) -> Any:
    curves = {}
    for side in ("aligned", "vanilla"):
        swap = metrics[side].get("swap")
        if swap:
            alphas = sorted(swap["alphas"], key=float)
            curves[f"{side} SAE"] = ([float(a) for a in alphas], [swap["alphas"][a]["success"] for a in alphas])
    return line_plot(curves, "α (target slot value, in units of its mean on its concept)", "swap success",
                     title="Concept swap success vs α", markers=True) if curves else None


def write_report(metrics: Mapping[str, Any], out_dir: str | Path, stem: str = "report") -> tuple[Path, Path]:
    """Write `<stem>.md` and `<stem>.html` (with their PNG figures) into out_dir."""
    concepts = list(metrics["concepts"])
    onto = metrics.get("ontology", {})
    report = Report("AlignSAE: concept-aligned SAE report")
    report.paragraph(f"Hookpoint {metrics['hookpoint']}; ontology {onto.get('name', '?')} with {len(concepts)} concepts "
                     f"({onto.get('train_examples', '?')} train prompts, {onto.get('test_examples', '?')} prompts on "
                     f"unseen templates). The vanilla baseline reads the SAE before post-training through its single "
                     "best latent per concept (highest AUC on the train prompts).")
    report.heading("Targets")
    report.table(target_checks(metrics), caption="AlignSAE targets (n/a: not measured)")
    report.heading("Metrics")
    report.table(metric_rows(metrics), header=["metric", "aligned", "vanilla"])
    figure = _alpha_figure(metrics)
    if figure is not None:
        report.heading("Concept swap vs α")
        swap = metrics["aligned"]["swap"]
        report.paragraph(f"Source slot set to 0 and target slot to α × its scale at the concept token; success = the "
                         f"next token becomes the target concept's answer. {swap['alphas'][_alpha_key(swap)]['n']} swaps "
                         f"per α; {swap.get('skipped_same_answer', 0)} pairs skipped (same answer), "
                         f"{swap.get('skipped_unknown_target', 0)} skipped (target fact unknown to the model).")
        report.figure(figure, caption="swap success vs α, aligned slots and vanilla best latents", name="alpha_curve")
    report.heading("Per-concept confusion")
    for split, title in (("test", "unseen templates"), ("train", "train templates")):
        for side in ("aligned", "vanilla"):
            matrix = metrics[side].get(f"confusion_{split}")
            if matrix is not None:
                fig = heatmap(matrix, concepts, concepts, title=f"{side} SAE, {title}", xlabel="strongest slot",
                              ylabel="true concept")
                report.figure(fig, caption=f"{side}: share of {title} prompts of each concept (row) whose strongest "
                                           "slot is each concept's (column)", name=f"confusion_{side}_{split}")
    sweep = metrics.get("layer_sweep")
    if sweep:
        report.heading("Layer sweep")
        report.table([{k: v for k, v in row.items() if not isinstance(v, dict | list)} for row in sweep])
        layers = [row["layer"] for row in sweep]
        curves = {name: (layers, [row.get(key) for row in sweep]) for name, key in
                  (("aligned binding, train", "binding_train"), ("aligned binding, unseen", "binding_test"),
                   ("vanilla binding, unseen", "vanilla_binding_test"), ("aligned swap success, best α", "swap_best"),
                   ("vanilla swap success, best α", "vanilla_swap_best"))
                  if all(row.get(key) is not None for row in sweep)}
        if curves:
            report.figure(line_plot(curves, "layer", "accuracy / success", title="Where binding emerges", markers=True),
                          caption="binding accuracy (and swap success, where measured) per layer", name="layer_sweep")
    return report.write(out_dir, stem)
