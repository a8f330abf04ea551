"""Plain-text rendering of recommendations for the terminal (the TUI has its own widgets).

Headers and sentences go through `_`, so they follow `ptsa --lang`; numbers, model names,
method names and commands stay as they are. `method_label`, `number` and `sparsity_cell` return
values, not prose, and the report and the TUI use them in either language.
"""

from __future__ import annotations

import json
import math
import unicodedata

from advisor.i18n import N_, _
from advisor.labels import CONSTRAINT_UNITS, PROVENANCE_NAMES, TASK_NAMES, risk_text
from advisor.recommend import Candidate, Recommendation
from advisor.roi import note_text

# The CLI's shorter names of the limits; the report and the TUI use advisor.labels.CONSTRAINT_NAMES.
CONSTRAINT_LABELS = {
    "max_latency_ms": N_("max latency"),
    "min_throughput": N_("min throughput"),
    "min_accuracy": N_("min accuracy"),
    "max_drop": N_("max drop"),
    "max_relative_drop": N_("max relative drop"),
    "max_weight_mb": N_("max weight memory"),
}

METRIC_LABELS = {"top1": N_("top-1"), "top1_agreement": N_("agreement"), "box_map": N_("box mAP"),
                 "box_map_fidelity": N_("box mAP vs dense")}


def _constraint_label(constraint: str | None) -> str:
    return _(CONSTRAINT_LABELS[constraint]) if constraint in CONSTRAINT_LABELS else str(constraint)


def _unit(constraint: str) -> str:
    return _(CONSTRAINT_UNITS[constraint]) if constraint in CONSTRAINT_UNITS else ""


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
        f"{number(candidate.accuracy, 1)} {_(METRIC_LABELS[candidate.metric])}",
        number(candidate.drop, 1),
        number(candidate.latency_ms, 2),
        speedup_cell(candidate),
        evidence_cell(row),
    ]


def evidence_cell(row: dict) -> str:
    """Return the provenance, with the 80 % retention interval for a predicted row."""
    if row["provenance"] == "predicted" and row.get("prediction_json"):
        p = json.loads(row["prediction_json"])
        return _("predicted {low:.0f}–{high:.0f} %").format(low=p["retention_low"], high=p["retention_high"])
    provenance = row["provenance"]
    return _(PROVENANCE_NAMES[provenance]) if provenance in PROVENANCE_NAMES else provenance


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


HEADERS = [N_("model"), N_("method"), N_("sparsity"), N_("accuracy"), N_("drop"), N_("latency ms"),
           N_("speedup p50"), N_("evidence")]


def headers(with_runtime: bool) -> list[str]:
    """Return the translated headers of the candidate table."""
    names = [*HEADERS[:3], N_("runtime"), *HEADERS[3:]] if with_runtime else HEADERS
    return [_(name) for name in names]


def display_width(text: str) -> int:
    """Return the columns `text` takes in a terminal: wide and full-width characters (CJK) take two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - display_width(text))


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(display_width(h), *(display_width(r[i]) for r in rows)) if rows else display_width(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(_pad(h, w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(_pad(c, w) for c, w in zip(row, widths)))
    return "\n".join(lines)


def describe_violation(constraint: str, amount: float, candidate: Candidate) -> str:
    label = _constraint_label(constraint)
    if math.isinf(amount):
        if constraint == "max_latency_ms":
            return _("{name}: not measured on this profile, runtime and batch size").format(name=label)
        return _("{name}: not measured").format(name=label)
    return _("{name} missed by {amount:.2f} {unit}").format(name=label, amount=amount, unit=_unit(constraint)).rstrip()


def profile_text(result: Recommendation) -> str:
    """Return one line naming the latency evidence: statistic, runtime, batch size and profile."""
    budget = result.budget
    fields = {"stat": budget.latency_stat, "runtimes": ", ".join(budget.runtimes), "batch": budget.batch_size}
    profile = result.profile
    if profile is None:
        return _("latency {stat} on {runtimes} at batch {batch}: not measured").format(**fields)
    device = profile.device if profile.device not in (None, "cpu") else None
    threads = profile.num_threads and _("{n} threads").format(n=profile.num_threads)
    described = ", ".join(str(x) for x in (profile.cpu_model, device, threads) if x)
    if described:
        return _("latency {stat} on {runtimes} at batch {batch}, profile {profile} ({described})").format(
            profile=profile.env_key, described=described, **fields)
    return _("latency {stat} on {runtimes} at batch {batch}, profile {profile}").format(profile=profile.env_key, **fields)


def _rows(n: int) -> str:
    return _("1 row") if n == 1 else _("{n} rows").format(n=n)


def source_notes(candidates: list[Candidate]) -> list[str]:
    """Say how many shown rows take their latency from another timing than their own."""
    notes = []
    counts: dict[str, int] = {}
    for c in candidates:
        if c.timing is not None and c.row["criterion"] != "dense":
            counts[c.timing.source] = counts.get(c.timing.source, 0) + 1
    if counts.get("same_sparsity"):
        notes.append(_("* latency and speedup measured for the same model, sparsity and pattern with a magnitude "
                       "mask, not for this result ({rows}).").format(rows=_rows(counts["same_sparsity"])))
    if counts.get("dense_kernels"):
        notes.append(_("† the dense model's latency: this runtime ran dense kernels only, so the zeros do not change "
                       "it; 1.00× is inferred, not measured ({rows}).").format(rows=_rows(counts["dense_kernels"])))
    sparse = [c for c in candidates if c.row["criterion"] != "dense" and c.timing is not None]
    if sparse and all(c.timing.sparse_kernel is None for c in sparse):
        notes.append(_("No sparse kernel ran on {runtime}: the zeros save storage once "
                       "compressed, not time; speedups are measured, never estimated from FLOPs.").format(
                           runtime=sparse[0].timing.runtime))
    return notes


def citation_notes(candidates: list[Candidate]) -> list[str]:
    """List the sources of the published and predicted rows shown."""
    sources = list(dict.fromkeys(c.row.get("source") for c in candidates
                                 if c.row["provenance"] != "measured" and c.row.get("source")))
    notes = [_("Sources of published and predicted rows:")] if sources else []
    notes += [f"  {source}" for source in sources]
    if any(c.row["provenance"] == "predicted" for c in candidates):
        notes.append(_("Predicted rows show their 80 % interval of retention (sparse top-1 / dense top-1); an "
                       "accuracy limit applies to the interval's low end."))
    return notes


def binding_text(candidate: Candidate) -> str | None:
    """Say which constraint binds a candidate and by how much headroom."""
    binding = candidate.binding()
    if binding is None:
        return None
    return _("the tightest constraint is {name}, with {headroom:.2f} {unit} of headroom").format(
        name=_constraint_label(binding), headroom=candidate.margins[binding], unit=_unit(binding))


def _english(message: str) -> str:
    return message


def risk_detail(risk: dict) -> str:
    """Return a risk in the user's language.

    In English it is the `detail` recorded with the risk, the same text as in the JSON output.
    In another language it is the sentence of `advisor.labels.risk_text`, as in the report and
    the TUI. A risk that the catalog does not translate keeps its `detail`.
    """
    translated = risk_text(risk, _)
    return risk["detail"] if translated == risk_text(risk, _english) else translated


def risk_lines(candidate: Candidate) -> list[str]:
    return ["  " + _("risk: {text}").format(text=risk_detail(risk)) for risk in candidate.risks]


def recommendation_text(result: Recommendation, limit: int = 10) -> str:
    budget = result.budget
    with_runtime = len(budget.runtimes) > 1
    parts = []
    if result.found:
        shown = result.ranked[:limit]
        rows = [[str(i + 1), *candidate_cells(c, with_runtime), "P" if c.pareto else ""] for i, c in enumerate(shown)]
        parts.append(_meeting_text(result))
        parts.append(_table(rows, [_("#"), *headers(with_runtime), _("front")]))
        best = result.ranked[0]
        why = binding_text(best)
        if why:
            parts.append(_("Top candidate: {why}.").format(why=why))
        parts.extend(risk_lines(best))
        if any(c.pareto for c in shown):
            parts.append(_("P: on the Pareto front of accuracy, latency and weight memory (no other candidate is "
                           "better on all three)."))
        parts.extend(source_notes(shown))
        parts.extend(citation_notes(shown))
    else:
        binding = result.binding_constraint()
        parts.append(_("No candidate meets the budget: {name} rules out {n} of {total} candidates.").format(
            name=_constraint_label(binding), n=result.failing_counts.get(binding, 0), total=result.total))
        parts.append(_("Nearest candidates ({profile}):").format(profile=profile_text(result)))
        rows = []
        for c in result.nearest:
            misses = "; ".join(describe_violation(k, v, c) for k, v in c.violations.items())
            rows.append([*candidate_cells(c, with_runtime), misses])
        parts.append(_table(rows, [*headers(with_runtime), _("why it fails")]))
    parts.extend(_next_step_lines(result, limit))
    return "\n".join(parts)


def _meeting_text(result: Recommendation) -> str:
    return _("{n} of {total} candidates meet the budget (objective: {objective}; {profile}):").format(
        n=result.meeting_count, total=result.total, objective=result.budget.objective, profile=profile_text(result))


def _next_step_lines(result: Recommendation, limit: int) -> list[str]:
    step = result.next_step(limit)
    if step is None:
        return []
    return [_("Next measurement to reduce doubt: {command}").format(command=step[1])]


def money(value: float | None, currency: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} {currency}"


ROI_HEADERS = [N_("#"), N_("model"), N_("method"), N_("sparsity"), N_("runtime"), N_("accuracy"), N_("given up"),
               N_("sized by p50 ms"), N_("speedup"), N_("instances"), N_("cost"), N_("saving"), N_("weight MB"),
               N_("storage MB")]


def workload_text(result: Recommendation) -> str:
    w = result.workload
    period = _("once") if w.per_device else _("a month")
    unit = _("device") if w.per_device else _("instance-hour")
    parts = [_("peak {peak:g} requests/s at {util:g} % utilisation").format(peak=w.peak_rps, util=w.utilisation * 100),
             _("{price:g} {currency} per {unit}").format(price=w.price, currency=w.currency, unit=unit)]
    if w.requests_per_day is not None:
        parts.append(_("{n:,.0f} requests a day").format(n=w.requests_per_day))
    if w.instances_today is not None:
        parts.append(_("{n} running today").format(n=w.instances_today))
    return _("Workload: {details}; costs are {period}.").format(details=", ".join(parts), period=period)


def _sized_cell(cost) -> str:
    """Return the p50 that sized a candidate, marked when it is the dense model's."""
    text = number(cost.sized_p50_ms, 2)
    return _("{value} (dense)").format(value=text) if cost.sized_by == "dense_timing" else text


def roi_text(result: Recommendation, limit: int = 10) -> str:
    """Return the ROI table: instances, cost and memory of each candidate against its dense baseline."""
    parts = [workload_text(result)]
    shown = result.ranked[:limit] if result.found else result.nearest
    if not result.found:
        binding = result.binding_constraint()
        parts.append(_("No candidate meets the budget: {name} rules out {n} of {total} candidates. Nearest:").format(
            name=_constraint_label(binding), n=result.failing_counts.get(binding, 0), total=result.total))
    else:
        parts.append(_meeting_text(result))
    currency = result.workload.currency
    rows, notes = [], {}
    for i, c in enumerate(shown):
        cost = c.costing
        instances = "-" if cost.instances is None else (
            f"{cost.baseline_instances}→{cost.instances}" if cost.baseline_instances is not None else str(cost.instances))
        rows.append([
            str(i + 1), c.row["model_key"], method_label(c.row), sparsity_cell(c.row), c.runtime or "-",
            f"{number(c.accuracy, 1)} {_(METRIC_LABELS[c.metric])}", number(cost.accuracy_given_up, 1),
            _sized_cell(cost), speedup_cell(c), instances,
            money(cost.cost, currency), money(cost.saving, currency),
            number(cost.weight_mb, 1), number(cost.storage_mb, 1),
        ])
        for note in cost.notes:
            if note["code"] not in notes:
                notes[note["code"]] = note_text(note["code"], c, cost, _)
    parts.append(_table(rows, [_(name) for name in ROI_HEADERS]))
    baseline = result.workload.baseline_model
    if baseline:
        parts.append(_("instances: dense baseline → candidate; saving = baseline cost − candidate cost; given up = "
                       "points below {baseline} (dense).").format(baseline=baseline))
    else:
        parts.append(_("instances: dense baseline → candidate; saving = baseline cost − candidate cost; given up = "
                       "points below the candidate's own dense model."))
    if result.workload.instances_today is not None and shown and shown[0].costing.saving_vs_today is not None:
        saving = shown[0].costing.saving_vs_today
        fields = {"n": result.workload.instances_today, "amount": money(abs(saving), currency)}
        if saving >= 0:
            parts.append(_("Against the {n} instances running today, the top row saves {amount}.").format(**fields))
        else:
            parts.append(_("Against the {n} instances running today, the top row costs more by {amount}.").format(
                **fields))
    if shown and all(c.costing.instances is None for c in shown):
        parts.append(_("None of these candidates has a timing on this profile, runtime and batch size, so none can be "
                       "sized; time them first (see the next measurement below)."))
    parts.extend(_("note: {detail}").format(detail=detail) for detail in notes.values())
    parts.extend(source_notes(shown))
    parts.extend(_next_step_lines(result, limit))
    return "\n".join(parts)


LATENCY_HEADERS = [N_("runtime"), N_("batch"), N_("criterion"), N_("sparsity"), "p50 ms", "p90 ms", N_("spread"),
                   N_("dense p50 ms"), N_("speedup"), N_("verdict")]


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
            # NOTE: the verdict is the English sentence stored with the measurement, so it stays English.
            row["verdict"] or _("baseline"),
        ])
    return _table(cells, [_(name) for name in LATENCY_HEADERS])


FEATURE_HEADERS = [N_("architecture"), N_("family"), N_("params M"), "GMACs", N_("layers"), N_("linear"),
                   N_("depthwise"), N_("attention"), N_("residual adds")]


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
            _("yes") if features["attention_calls"] or features["attention_modules"] else _("no"),
            str(int(features["residual_adds"])),
        ])
    return _table(cells, [_(name) for name in FEATURE_HEADERS])


MODEL_LABELS = {"regressor": N_("regressor"), "params_only": N_("baseline: parameter count only"),
                "recipe_mean": N_("baseline: mean of the same recipe and sparsity")}


def fit_text(row: dict, metrics: dict) -> str:
    """Describe a fit: its data and the held-out-family metrics of the regressor and baselines."""
    models = metrics["models"]
    cells = [[_(MODEL_LABELS[name]), number(m["mae"], 2), number(m["rmse"], 2), number(m["spearman"], 2),
              number(m["within_5"] * 100, 0, " %")] for name, m in models.items()]
    regressor = models["regressor"]
    lines = [
        _("fit {fit_id}: {rows} pruned results, {architectures} architectures, {families} families (training data "
          "{sha}, scikit-learn {version})").format(
            fit_id=row["fit_id"], rows=row["n_rows"], architectures=row["n_architectures"], families=row["n_families"],
            sha=row["training_sha256"][:12], version=row["sklearn_version"]),
        _("Held-out-family cross-validation ({split}), retention in points of the dense model's top-1 or box mAP:").format(
            split=metrics["split"]),
        _table(cells, [_("model"), "MAE", "RMSE", "Spearman", _("within ±5")]),
        _("80 % interval: the quantile models cover {coverage:.0f} % of held-out rows; widened by {widening:.1f} "
          "points they cover {adjusted:.0f} % (calibrated on these same folds).").format(
            coverage=regressor["interval_80_coverage"] * 100, widening=regressor["interval_adjustment"],
            adjusted=regressor["interval_80_coverage_adjusted"] * 100),
    ]
    better = all(models["regressor"][m] < models[b][m] for b in ("params_only", "recipe_mean") for m in ("mae", "rmse"))
    margin = min(models[b]["mae"] for b in ("params_only", "recipe_mean")) - models["regressor"]["mae"]
    if not better:
        lines.append(_("The regressor does NOT beat both baselines on MAE and RMSE; treat its predictions as rough."))
    elif margin < 1.0:
        lines.append(_("The regressor beats both baselines on MAE and RMSE, but by only {margin:.2f} points of MAE "
                       "over the closer one: within noise for this much data; treat its predictions as rough.").format(
                           margin=margin))
    else:
        lines.append(_("The regressor beats both baselines on MAE and RMSE, by {margin:.2f} points of MAE or more.").format(
            margin=margin))
    per_family = ", ".join(f"{family} {m['regressor_mae']:.1f}" for family, m in metrics["per_family"].items())
    lines.append(_("Per family (held out): {families} MAE.").format(families=per_family))
    for task, m in (metrics.get("per_task") or {}).items():
        lines.append(_("{task}: {rows} rows ({families}); MAE {mae:.1f} (parameters only {params:.1f}, "
                       "recipe mean {mean:.1f}).").format(
            task=_(TASK_NAMES.get(task, task)), rows=m["rows"], families=", ".join(m["families"]),
            mae=m["regressor_mae"], params=m["params_only_mae"], mean=m["recipe_mean_mae"]))
    lines.append(_("saved to {path}").format(path=row["model_path"]))
    return "\n".join(lines)


def prediction_text(predictions: list[dict]) -> str:
    """Describe each prediction: retention with its interval, top-1 or box mAP when dense is known, drivers."""
    parts = []
    for p in predictions:
        fields = {"model": p["model_key"], "dataset": p["dataset"], "recipe": p["recipe"], "sparsity": p["sparsity"],
                  "retention": p["retention"], "low": p["retention_low"], "high": p["retention_high"]}
        metric = p.get("metric", "top1")
        if p.get(metric) is None:
            parts.append(_("{model} on {dataset}, {recipe} at {sparsity:.0%}: retention {retention:.1f} % of dense "
                           "(80 % interval {low:.1f} to {high:.1f})").format(**fields))
        elif metric == "box_map":
            parts.append(_("{model} on {dataset}, {recipe} at {sparsity:.0%}: retention {retention:.1f} % of dense "
                           "(80 % interval {low:.1f} to {high:.1f}); box mAP {score:.1f} % ({score_low:.1f} to "
                           "{score_high:.1f}) from dense {dense:.1f} % ({source})").format(
                score=p["box_map"], score_low=p["box_map_low"], score_high=p["box_map_high"],
                dense=p["dense_box_map"], source=p.get("dense_source"), **fields))
        else:
            parts.append(_("{model} on {dataset}, {recipe} at {sparsity:.0%}: retention {retention:.1f} % of dense "
                           "(80 % interval {low:.1f} to {high:.1f}); top-1 {top1:.1f} % ({top1_low:.1f} to "
                           "{top1_high:.1f}) from dense {dense:.1f} % ({source})").format(
                top1=p["top1"], top1_low=p["top1_low"], top1_high=p["top1_high"], dense=p["dense_top1"],
                source=p.get("dense_source"), **fields))
        # NOTE: the warnings and the dense value's source are English text stored with the prediction.
        for warning in p.get("warnings") or []:
            parts.append("  " + _("note: {detail}").format(detail=warning))
        if not p["drivers"]:
            parts.append("  " + _("no architecture feature moves this prediction away from the training median's"))
        for d in p["drivers"]:
            parts.append("  " + _("{feature} = {value:.3g} (training median {median:.3g}): {effect:+.1f} points").format(
                feature=d["feature"], value=d["value"], median=d["training_median"], effect=d["effect"]))
    if predictions:
        parts.append(_("predicted by fit {fit_id}, whose held-out-family MAE is {mae:.1f} points").format(
            fit_id=predictions[0]["fit_id"], mae=predictions[0]["held_out_family_mae"]))
    return "\n".join(parts)

