"""Plain-text rendering of recommendations for the terminal (the TUI has its own widgets)."""

from __future__ import annotations

import json
import math

from advisor.recommend import LATENCY_SOURCES, Candidate, Recommendation

CONSTRAINT_LABELS = {
    "max_latency_ms": "max latency",
    "min_accuracy": "min accuracy",
    "max_drop": "max drop",
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
        suffix = f"+{reconstruction}_recon" + (f"({recon_input})" if recon_input else "")
    suffix += "".join(f"+{c}" for c in recipe.get("corrections") or [])
    return f"{row['criterion']}{suffix}{pattern}{allocation}"


def candidate_cells(candidate: Candidate) -> list[str]:
    row = candidate.row
    return [
        row["model_key"],
        method_label(row),
        sparsity_cell(row),
        f"{number(candidate.accuracy, 1)} {METRIC_LABELS[candidate.metric]}",
        number(candidate.drop, 1),
        number(candidate.latency_ms, 2),
        speedup_cell(candidate),
        row["provenance"],
    ]


def sparsity_cell(row: dict) -> str:
    """Achieved sparsity; a published row that gives only the requested one shows it with '~'."""
    if row.get("achieved_sparsity") is None:
        return "~" + number((row.get("requested_sparsity") or 0) * 100, 1, "%")
    return number(row["achieved_sparsity"] * 100, 1, "%")


def speedup_cell(candidate: Candidate) -> str:
    """The measured speedup against dense on the same runtime; '-' for dense or when unmeasured."""
    timing = candidate.timing
    if timing is None or candidate.row["criterion"] == "dense" or timing.speedup is None:
        return "-"
    return f"{timing.speedup:.2f}×"


HEADERS = ["model", "method", "sparsity", "accuracy", "drop", "latency ms", "speedup", "evidence"]


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
    unit = " ms" if constraint == "max_latency_ms" else " points"
    return f"{label} missed by {amount:.2f}{unit}"


def profile_text(result: Recommendation) -> str:
    """One line naming the latency evidence: statistic, runtime, batch size and hardware profile."""
    budget = result.budget
    where = f"latency {budget.latency_stat} on {budget.runtime} at batch {budget.batch_size}"
    profile = result.profile
    if profile is None:
        return f"{where}: not measured"
    described = ", ".join(str(x) for x in (profile.cpu_model, profile.num_threads and f"{profile.num_threads} threads") if x)
    return f"{where}, profile {profile.env_key}" + (f" ({described})" if described else "")


def source_notes(candidates: list[Candidate]) -> list[str]:
    """Say how many shown rows take their latency from another timing than their own."""
    notes = []
    counts: dict[str, int] = {}
    for c in candidates:
        if c.timing is not None and c.row["criterion"] != "dense":
            counts[c.timing.source] = counts.get(c.timing.source, 0) + 1
    for source in ("same_sparsity", "dense_kernels"):
        if counts.get(source):
            notes.append(f"{counts[source]} of the rows shown use {LATENCY_SOURCES[source]}.")
    sparse = [c for c in candidates if c.row["criterion"] != "dense" and c.timing is not None]
    if sparse and all(c.timing.sparse_kernel is None for c in sparse):
        notes.append(f"No sparse kernel ran on {sparse[0].timing.runtime}: the zeros save storage once "
                     "compressed, not time; speedups are measured, never estimated from FLOPs.")
    return notes


def recommendation_text(result: Recommendation, limit: int = 10) -> str:
    budget = result.budget
    parts = []
    if result.found:
        rows = [[str(i + 1), *candidate_cells(c)] for i, c in enumerate(result.ranked[:limit])]
        parts.append(
            f"{len(result.ranked)} of {result.total} candidates meet the budget "
            f"(objective: {budget.objective}; {profile_text(result)}):"
        )
        parts.append(_table(rows, ["#", *HEADERS]))
        best = result.ranked[0]
        binding = best.binding()
        if binding:
            unit = "ms" if binding == "max_latency_ms" else "points"
            parts.append(
                f"Top candidate: the tightest constraint is {CONSTRAINT_LABELS[binding]}, with "
                f"{best.margins[binding]:.2f} {unit} of headroom."
            )
        parts.extend(source_notes(result.ranked[:limit]))
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
            rows.append([*candidate_cells(c), misses])
        parts.append(_table(rows, [*HEADERS, "why it fails"]))
    return "\n".join(parts)


LATENCY_HEADERS = ["runtime", "batch", "criterion", "sparsity", "p50 ms", "p90 ms", "spread", "speedup", "verdict"]


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

