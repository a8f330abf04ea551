"""Plain-text rendering of recommendations for the terminal (the TUI has its own widgets)."""

from __future__ import annotations

import json
import math

from advisor.recommend import Candidate, Recommendation

CONSTRAINT_LABELS = {
    "max_latency_ms": "max latency",
    "min_throughput": "min throughput",
    "min_accuracy": "min accuracy",
    "max_drop": "max drop",
    "max_relative_drop": "max relative drop",
    "max_weight_mb": "max weight memory",
}
CONSTRAINT_UNITS = {
    "max_latency_ms": "ms",
    "min_throughput": "/s",
    "min_accuracy": "points",
    "max_drop": "points",
    "max_relative_drop": "% of dense",
    "max_weight_mb": "MB",
}

METRIC_LABELS = {"top1": "top-1", "top1_agreement": "agreement"}


def number(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}{suffix}"


def method_label(row: dict) -> str:
    """Return 'dense', or the criterion with its reconstruction, corrections, pattern and
    allocation, for example 'wanda 2:4' or 'magnitude+block_recon(sparse)+bias_correction (erk)'."""
    if row["criterion"] == "dense":
        return "dense"
    pattern = "" if row["pattern"] == "unstructured" else f" {row['pattern']}"
    allocation = "" if row["allocation"] in ("uniform", "none") else f" ({row['allocation']})"
    recipe = json.loads(row.get("recipe_json") or "{}")
    reconstruction = recipe.get("reconstruction", "none")
    suffix = ""
    if reconstruction != "none":
        # Published rows may not say which activations fed the reconstruction.
        recon_input = recipe.get("recon_input")
        if recon_input:
            suffix = f"+{reconstruction}_recon({recon_input})"
        elif recipe.get("recon_steps"):
            suffix = f"+{reconstruction}_recon(steps={recipe['recon_steps']})"
        else:
            suffix = f"+{reconstruction}_recon"
        if recipe.get("progressive"):
            suffix += " progressive"
    suffix += "".join(f"+{c}" for c in recipe.get("corrections") or [])
    return f"{row['criterion']}{suffix}{pattern}{allocation}"


def candidate_cells(candidate: Candidate, with_runtime: bool = False) -> list[str]:
    row = candidate.row
    return [
        row["model_key"],
        method_label(row),
        sparsity_cell(row),
        *([candidate.runtime or "-"] if with_runtime else []),
        f"{number(candidate.accuracy, 1)} {METRIC_LABELS[candidate.metric]}",
        number(candidate.drop, 1),
        number(candidate.latency_ms, 2),
        speedup_cell(candidate),
        evidence_cell(row),
    ]


def evidence_cell(row: dict) -> str:
    """Return the provenance, with the 80 % retention interval for a predicted row."""
    if row["provenance"] == "predicted" and row.get("prediction_json"):
        p = json.loads(row["prediction_json"])
        return f"predicted {p['retention_low']:.0f}–{p['retention_high']:.0f} %"
    return row["provenance"]


def sparsity_cell(row: dict) -> str:
    """Achieved sparsity; a published row that gives only the requested one shows it with '~'."""
    if row.get("achieved_sparsity") is None:
        return "~" + number((row.get("requested_sparsity") or 0) * 100, 1, "%")
    return number(row["achieved_sparsity"] * 100, 1, "%")


# Marks on a speedup that is not from a timing of the result itself; explained under the table.
SOURCE_MARKS = {"result": "", "same_sparsity": "*", "dense_kernels": "†"}


def speedup_cell(candidate: Candidate) -> str:
    """Return the speedup over dense on the same runtime (p50), marked by the kind of timing; '-' if none."""
    timing = candidate.timing
    if timing is None or candidate.row["criterion"] == "dense" or timing.speedup is None:
        return "-"
    return f"{timing.speedup:.2f}×{SOURCE_MARKS[timing.source]}"


HEADERS = ["model", "method", "sparsity", "accuracy", "drop", "latency ms", "speedup p50", "evidence"]


def headers(with_runtime: bool) -> list[str]:
    return [*HEADERS[:3], "runtime", *HEADERS[3:]] if with_runtime else HEADERS


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    return "\n".join(lines)


def describe_violation(constraint: str, amount: float, candidate: Candidate) -> str:
    label = CONSTRAINT_LABELS.get(constraint, constraint)
    if math.isinf(amount):
        if constraint == "max_latency_ms":
            return f"{label}: not measured on this profile, runtime and batch size"
        return f"{label}: not measured"
    if constraint == "max_weight_mb" and math.isinf(amount):
        return f"{label}: not counted"
    return f"{label} missed by {amount:.2f} {CONSTRAINT_UNITS.get(constraint, '')}".rstrip()


def profile_text(result: Recommendation) -> str:
    """Return one line naming the latency evidence: statistic, runtime, batch size and profile."""
    budget = result.budget
    where = f"latency {budget.latency_stat} on {', '.join(budget.runtimes)} at batch {budget.batch_size}"
    profile = result.profile
    if profile is None:
        return f"{where}: not measured"
    device = profile.device if profile.device not in (None, "cpu") else None
    described = ", ".join(str(x) for x in (profile.cpu_model, device,
                                           profile.num_threads and f"{profile.num_threads} threads") if x)
    return f"{where}, profile {profile.env_key}" + (f" ({described})" if described else "")


def _rows(n: int) -> str:
    return "1 row" if n == 1 else f"{n} rows"


def source_notes(candidates: list[Candidate]) -> list[str]:
    """Say how many shown rows take their latency from another timing than their own."""
    notes = []
    counts: dict[str, int] = {}
    for c in candidates:
        if c.timing is not None and c.row["criterion"] != "dense":
            counts[c.timing.source] = counts.get(c.timing.source, 0) + 1
    if counts.get("same_sparsity"):
        notes.append(f"* latency and speedup measured for the same model, sparsity and pattern with a magnitude "
                     f"mask, not for this result ({_rows(counts['same_sparsity'])}).")
    if counts.get("dense_kernels"):
        notes.append(f"† the dense model's latency: this runtime ran dense kernels only, so the zeros do not change "
                     f"it; 1.00× is inferred, not measured ({_rows(counts['dense_kernels'])}).")
    sparse = [c for c in candidates if c.row["criterion"] != "dense" and c.timing is not None]
    if sparse and all(c.timing.sparse_kernel is None for c in sparse):
        notes.append(f"No sparse kernel ran on {sparse[0].timing.runtime}: the zeros save storage once "
                     "compressed, not time; speedups are measured, never estimated from FLOPs.")
    return notes


def citation_notes(candidates: list[Candidate]) -> list[str]:
    """List the sources of the published and predicted rows shown."""
    sources = list(dict.fromkeys(c.row.get("source") for c in candidates
                                 if c.row["provenance"] != "measured" and c.row.get("source")))
    notes = ["Sources of published and predicted rows:"] if sources else []
    notes += [f"  {source}" for source in sources]
    if any(c.row["provenance"] == "predicted" for c in candidates):
        notes.append("Predicted rows show their 80 % interval of retention (sparse top-1 / dense top-1); an "
                     "accuracy limit applies to the interval's low end.")
    return notes


def binding_text(candidate: Candidate) -> str | None:
    """Say which constraint binds a candidate and by how much headroom."""
    binding = candidate.binding()
    if binding is None:
        return None
    return (f"the tightest constraint is {CONSTRAINT_LABELS[binding]}, with {candidate.margins[binding]:.2f} "
            f"{CONSTRAINT_UNITS[binding]} of headroom")


def risk_lines(candidate: Candidate) -> list[str]:
    return [f"  risk: {risk['detail']}" for risk in candidate.risks]


def recommendation_text(result: Recommendation, limit: int = 10) -> str:
    budget = result.budget
    with_runtime = len(budget.runtimes) > 1
    parts = []
    if result.found:
        shown = result.ranked[:limit]
        rows = [[str(i + 1), *candidate_cells(c, with_runtime), "P" if c.pareto else ""] for i, c in enumerate(shown)]
        parts.append(
            f"{result.meeting_count} of {result.total} candidates meet the budget "
            f"(objective: {budget.objective}; {profile_text(result)}):"
        )
        parts.append(_table(rows, ["#", *headers(with_runtime), "front"]))
        best = result.ranked[0]
        why = binding_text(best)
        if why:
            parts.append(f"Top candidate: {why}.")
        parts.extend(risk_lines(best))
        if any(c.pareto for c in shown):
            parts.append("P: on the Pareto front of accuracy, latency and weight memory (no other candidate is "
                         "better on all three).")
        parts.extend(source_notes(shown))
        parts.extend(citation_notes(shown))
    else:
        binding = result.binding_constraint()
        parts.append(
            f"No candidate meets the budget: {CONSTRAINT_LABELS.get(binding, binding)} rules out "
            f"{result.failing_counts.get(binding, 0)} of {result.total} candidates."
        )
        parts.append(f"Nearest candidates ({profile_text(result)}):")
        rows = []
        for c in result.nearest:
            misses = "; ".join(describe_violation(k, v, c) for k, v in c.violations.items())
            rows.append([*candidate_cells(c, with_runtime), misses])
        parts.append(_table(rows, [*headers(with_runtime), "why it fails"]))
    step = result.next_step(limit)
    if step is not None:
        parts.append(f"Next measurement to reduce doubt: {step[1]}")
    return "\n".join(parts)


def money(value: float | None, currency: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} {currency}"


ROI_HEADERS = ["#", "model", "method", "sparsity", "runtime", "accuracy", "given up", "sized by p50 ms", "speedup",
               "instances", "cost", "saving", "weight MB", "storage MB"]


def workload_text(result: Recommendation) -> str:
    w = result.workload
    period = "once" if w.per_device else "a month"
    unit = "device" if w.per_device else "instance-hour"
    parts = [f"peak {w.peak_rps:g} requests/s at {w.utilisation * 100:g} % utilisation",
             f"{w.price:g} {w.currency} per {unit}"]
    if w.requests_per_day is not None:
        parts.append(f"{w.requests_per_day:,.0f} requests a day")
    if w.instances_today is not None:
        parts.append(f"{w.instances_today} running today")
    return f"Workload: {', '.join(parts)}; costs are {period}."


def _sized_cell(cost) -> str:
    """Return the p50 that sized a candidate, marked when it is the dense model's."""
    text = number(cost.sized_p50_ms, 2)
    return f"{text} (dense)" if cost.sized_by == "dense_timing" else text


def roi_text(result: Recommendation, limit: int = 10) -> str:
    """Return the ROI table: instances, cost and memory of each candidate against its dense baseline."""
    parts = [workload_text(result)]
    shown = result.ranked[:limit] if result.found else result.nearest
    if not result.found:
        binding = result.binding_constraint()
        parts.append(f"No candidate meets the budget: {CONSTRAINT_LABELS.get(binding, binding)} rules out "
                     f"{result.failing_counts.get(binding, 0)} of {result.total} candidates. Nearest:")
    else:
        parts.append(f"{result.meeting_count} of {result.total} candidates meet the budget (objective: "
                     f"{result.budget.objective}; {profile_text(result)}):")
    currency = result.workload.currency
    rows, notes = [], {}
    for i, c in enumerate(shown):
        cost = c.costing
        instances = "-" if cost.instances is None else (
            f"{cost.baseline_instances}→{cost.instances}" if cost.baseline_instances is not None else str(cost.instances))
        rows.append([
            str(i + 1), c.row["model_key"], method_label(c.row), sparsity_cell(c.row), c.runtime or "-",
            f"{number(c.accuracy, 1)} {METRIC_LABELS[c.metric]}", number(cost.accuracy_given_up, 1),
            _sized_cell(cost), speedup_cell(c), instances,
            money(cost.cost, currency), money(cost.saving, currency),
            number(cost.weight_mb, 1), number(cost.storage_mb, 1),
        ])
        for note in cost.notes:
            notes.setdefault(note["code"], note["detail"])
    parts.append(_table(rows, ROI_HEADERS))
    baseline = result.workload.baseline_model
    parts.append("instances: dense baseline → candidate; saving = baseline cost − candidate cost; given up = points "
                 "below " + (f"{baseline} (dense)." if baseline else "the candidate's own dense model."))
    if result.workload.instances_today is not None and shown and shown[0].costing.saving_vs_today is not None:
        saving = shown[0].costing.saving_vs_today
        verb = "saves" if saving >= 0 else "costs more by"
        parts.append(f"Against the {result.workload.instances_today} instances running today, the top row {verb} "
                     f"{money(abs(saving), currency)}.")
    if shown and all(c.costing.instances is None for c in shown):
        parts.append("None of these candidates has a timing on this profile, runtime and batch size, so none can be "
                     "sized; time them first (see the next measurement below).")
    parts.extend(f"note: {detail}" for detail in notes.values())
    parts.extend(source_notes(shown))
    step = result.next_step(limit)
    if step is not None:
        parts.append(f"Next measurement to reduce doubt: {step[1]}")
    return "\n".join(parts)


LATENCY_HEADERS = ["runtime", "batch", "criterion", "sparsity", "p50 ms", "p90 ms", "spread", "dense p50 ms", "speedup",
                   "verdict"]


def latency_table(rows: list[dict]) -> str:
    """Return latency measurements as a plain table, one line per runtime, batch and timed model."""
    cells = []
    for row in rows:
        sparsity = "dense" if row["criterion"] == "dense" else (
            row["pattern"] if row["pattern"] != "unstructured" else f"{row['requested_sparsity']:.0%}"
        )
        cells.append([
            row["runtime"],
            str(row["batch_size"]),
            row["criterion"],
            sparsity,
            number(row["p50_ms"], 2),
            number(row["p90_ms"], 2),
            number(row["spread"] * 100, 0, " %"),
            # The dense p50 timed in the same rounds: the denominator of this row's speedup.
            number(row.get("baseline_p50_ms"), 2),
            "-" if row["speedup"] is None else f"{row['speedup']:.2f}×",
            row["verdict"] or "baseline",
        ])
    return _table(cells, LATENCY_HEADERS)


FEATURE_HEADERS = ["architecture", "family", "params M", "GMACs", "layers", "linear", "depthwise", "attention",
                   "residual adds"]


def features_table(rows: list[dict]) -> str:
    """Return stored architecture features as a plain table, one line per architecture."""
    cells = []
    for row in rows:
        features = json.loads(row["features_json"])
        cells.append([
            row["architecture"],
            row["family"],
            number(features["params"] / 1e6, 2),
            number(features["gmacs"], 3),
            str(int(features["prunable_layers"])),
            number(features["linear_share"] * 100, 0, " %"),
            number(features["depthwise_conv_share"] * 100, 0, " %"),
            "yes" if features["attention_calls"] or features["attention_modules"] else "no",
            str(int(features["residual_adds"])),
        ])
    return _table(cells, FEATURE_HEADERS)


MODEL_LABELS = {"regressor": "regressor", "params_only": "baseline: parameter count only",
                "recipe_mean": "baseline: mean of the same recipe and sparsity"}


def fit_text(row: dict, metrics: dict) -> str:
    """Describe a fit: its data and the held-out-family metrics of the regressor and baselines."""
    models = metrics["models"]
    cells = [[MODEL_LABELS[name], number(m["mae"], 2), number(m["rmse"], 2), number(m["spearman"], 2),
              number(m["within_5"] * 100, 0, " %")] for name, m in models.items()]
    lines = [
        f"fit {row['fit_id']}: {row['n_rows']} pruned results, {row['n_architectures']} architectures, "
        f"{row['n_families']} families (training data {row['training_sha256'][:12]}, scikit-learn "
        f"{row['sklearn_version']})",
        f"Held-out-family cross-validation ({metrics['split']}), retention in points of dense top-1:",
        _table(cells, ["model", "MAE", "RMSE", "Spearman", "within ±5"]),
        f"80 % interval: the quantile models cover {models['regressor']['interval_80_coverage'] * 100:.0f} % of "
        f"held-out rows; widened by {models['regressor']['interval_adjustment']:.1f} points they cover "
        f"{models['regressor']['interval_80_coverage_adjusted'] * 100:.0f} % (calibrated on these same folds).",
    ]
    better = all(models["regressor"][m] < models[b][m] for b in ("params_only", "recipe_mean") for m in ("mae", "rmse"))
    margin = min(models[b]["mae"] for b in ("params_only", "recipe_mean")) - models["regressor"]["mae"]
    if not better:
        lines.append("The regressor does NOT beat both baselines on MAE and RMSE; treat its predictions as rough.")
    elif margin < 1.0:
        lines.append(f"The regressor beats both baselines on MAE and RMSE, but by only {margin:.2f} points of MAE "
                     "over the closer one: within noise for this much data; treat its predictions as rough.")
    else:
        lines.append(f"The regressor beats both baselines on MAE and RMSE, by {margin:.2f} points of MAE or more.")
    lines.append("Per family (held out): " + ", ".join(
        f"{family} {m['regressor_mae']:.1f}" for family, m in metrics["per_family"].items()) + " MAE.")
    lines.append(f"saved to {row['model_path']}")
    return "\n".join(lines)


def prediction_text(predictions: list[dict]) -> str:
    """Describe each prediction: retention with its interval, top-1 when dense is known, drivers."""
    parts = []
    for p in predictions:
        top1 = "" if p["top1"] is None else (
            f"; top-1 {p['top1']:.1f} % ({p['top1_low']:.1f} to {p['top1_high']:.1f}) from dense "
            f"{p['dense_top1']:.1f} % ({p.get('dense_top1_source')})")
        parts.append(
            f"{p['model_key']} on {p['dataset']}, {p['recipe']} at {p['sparsity']:.0%}: retention "
            f"{p['retention']:.1f} % of dense (80 % interval {p['retention_low']:.1f} to {p['retention_high']:.1f}){top1}"
        )
        for warning in p.get("warnings") or []:
            parts.append(f"  note: {warning}")
        if not p["drivers"]:
            parts.append("  no architecture feature moves this prediction away from the training median's")
        for d in p["drivers"]:
            parts.append(f"  {d['feature']} = {d['value']:.3g} (training median {d['training_median']:.3g}): "
                         f"{d['effect']:+.1f} points")
    if predictions:
        parts.append(f"predicted by fit {predictions[0]['fit_id']}, whose held-out-family MAE is "
                     f"{predictions[0]['held_out_family_mae']:.1f} points")
    return "\n".join(parts)

