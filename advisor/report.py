"""The meeting report: the recommendation, its evidence, its risks and what it saves, as Markdown.

Every sentence goes through the gettext catalog, so `ptsa report --lang ja` writes the same
report in Japanese. Numbers, model names, commands and citations stay as they are.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

from advisor.formatting import method_label, number, sparsity_cell
from advisor.i18n import translation
from advisor.labels import (
    CONSTRAINT_NAMES,
    CONSTRAINT_UNITS,
    LATENCY_SOURCE_TEXT,
    OBJECTIVE_NAMES,
    PROVENANCE_NAMES,
    Gettext,
    risk_text,
)
from advisor.recommend import Candidate, Recommendation


def _money(value: float | None, currency: str) -> str:
    return "-" if value is None else f"{value:,.0f} {currency}"


def _cell(text: str) -> str:
    """Escape a table cell: a '|' would end the cell."""
    return text.replace("|", "\\|")


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _budget_rows(result: Recommendation, t: Gettext) -> list[list[str]]:
    b = result.budget
    rows = []
    for name in CONSTRAINT_NAMES:
        value = b.limit(name)
        if value is None:
            continue
        # The minimum accuracy is a level in percent; the other accuracy limits are distances.
        unit = "%" if name == "min_accuracy" else t(CONSTRAINT_UNITS[name])
        text = f"{value:,g} {unit}"
        if name == "max_latency_ms":
            text += f" ({b.latency_stat}, " + t("batch {batch}").format(batch=b.batch_size) + ")"
        rows.append([t(CONSTRAINT_NAMES[name]), text])
    if b.margin_pct:
        rows.append([t("required headroom on latency, throughput and memory"), f"{b.margin_pct:g} %"])
    if b.accuracy_margin:
        rows.append([t("required headroom on accuracy"), f"{b.accuracy_margin:g} " + t("points")])
    rows.append([t("objective"), t(OBJECTIVE_NAMES[b.objective])])
    rows.append([t("runtimes"), ", ".join(b.runtimes)])
    rows.append([t("hardware profile"), result.profile.env_key if result.profile else t("none measured")])
    rows.append([t("dataset"), b.dataset or t("all")])
    if b.patterns:
        rows.append([t("allowed patterns"), ", ".join(b.patterns)])
    if not b.include_dense:
        rows.append([t("dense models"), t("left out")])
    if result.workload is not None:
        rows.append([t("planned utilisation at peak"), f"{result.workload.utilisation * 100:g} %"])
    return rows


def _candidate_row(rank: int, c: Candidate, t: Gettext, currency: str | None) -> list[str]:
    row = c.row
    cells = [str(rank), row["model_key"], method_label(row), sparsity_cell(row), c.runtime or "-",
             number(c.accuracy, 1) + " %", number(c.drop, 1), number(c.latency_ms, 2),
             "-" if c.timing is None or c.timing.speedup is None or c.is_dense else f"{c.timing.speedup:.2f}×",
             t(PROVENANCE_NAMES[row["provenance"]])]
    if currency is not None:
        cost = c.costing
        instances = "-" if cost.instances is None else str(cost.instances)
        cells += [instances, _money(cost.cost, currency), _money(cost.saving, currency), number(cost.weight_mb, 1),
                  number(cost.storage_mb, 1)]
    return cells


def _headline(c: Candidate, result: Recommendation, t: Gettext, sep: str = " ") -> str:
    """Return the recommendation in one paragraph; `sep` joins its sentences ('' in Japanese)."""
    text = t("We recommend **{model}** with **{method}** at {sparsity} sparsity on {runtime}: accuracy {accuracy} % "
             "({drop} points below dense), {stat} latency {latency} ms.").format(
        model=c.row["model_key"], method=method_label(c.row), sparsity=sparsity_cell(c.row),
        runtime=c.runtime or "-", accuracy=number(c.accuracy, 1), drop=number(c.drop, 1),
        stat=result.budget.latency_stat, latency=number(c.latency_ms, 2))
    binding = c.binding()
    if binding is not None:
        text += sep + t("The tightest limit is {name}, with {headroom:.2f} {unit} of headroom.").format(
            name=t(CONSTRAINT_NAMES[binding]), headroom=c.margins[binding], unit=t(CONSTRAINT_UNITS[binding]))
        if binding in ("max_latency_ms", "min_throughput", "max_weight_mb") and result.budget.margin_pct:
            text += sep + t("The budget asks for {margin:g} % of the limit as headroom.").format(
                margin=result.budget.margin_pct)
    return text


def _nearest_headline(c: Candidate, result: Recommendation, t: Gettext) -> str:
    misses = "; ".join(_miss_text(name, amount, t) for name, amount in c.violations.items())
    return t("The nearest candidate, **{model}** with **{method}** at {sparsity} sparsity on {runtime}, does not meet "
             "the budget: {misses}. Do not deploy it as it is.").format(
        model=c.row["model_key"], method=method_label(c.row), sparsity=sparsity_cell(c.row), runtime=c.runtime or "-",
        misses=misses)


def _miss_text(constraint: str, amount: float, t: Gettext) -> str:
    name = t(CONSTRAINT_NAMES[constraint])
    if amount == float("inf"):
        return t("{name} not measured").format(name=name)
    return t("{name} missed by {amount:.2f} {unit}").format(name=name, amount=amount, unit=t(CONSTRAINT_UNITS[constraint]))


def _signed_money(value: float | None, currency: str, t: Gettext) -> str:
    """Return a saving, or for a negative one the extra cost, in words."""
    if value is None:
        return "-"
    if value < 0:
        return t("{amount} more").format(amount=_money(-value, currency))
    return _money(value, currency)


def _savings(c: Candidate, result: Recommendation, t: Gettext) -> list[str]:
    w = result.workload
    cost = c.costing
    period = t("once") if w.per_device else t("per month")
    lines = [t("Workload: peak {peak:g} requests/s, planned at {util:g} % of capacity; {price:g} {currency} per {unit}.")
             .format(peak=w.peak_rps, util=w.utilisation * 100, price=w.price, currency=w.currency,
                     unit=t("device") if w.per_device else t("instance-hour")), ""]
    if cost.instances is None:
        lines.append("- " + t("Instances unknown: the candidate has no latency measured on this profile."))
        return lines
    if cost.baseline_instances is not None:
        lines.append("- " + t("Dense baseline ({model}): {n} instances, {cost} {period}.").format(
            model=cost.baseline_model, n=cost.baseline_instances, cost=_money(cost.baseline_cost, w.currency),
            period=period))
    lines.append("- " + t("Recommended: {n} instances, {cost} {period}.").format(
        n=cost.instances, cost=_money(cost.cost, w.currency), period=period))
    if cost.saving is not None:
        lines.append("- " + t("Saving: {saving} {period}; accuracy given up: {points} points.").format(
            saving=_signed_money(cost.saving, w.currency, t), period=period,
            points=number(cost.accuracy_given_up, 1)))
    if cost.saving_vs_today is not None:
        lines.append("- " + t("Saving against the {n} instances running today: {saving} {period}.").format(
            n=w.instances_today, saving=_signed_money(cost.saving_vs_today, w.currency, t), period=period))
    if cost.cost_per_million is not None:
        lines.append("- " + t("Cost per million requests: {cost}.").format(
            cost=f"{cost.cost_per_million:,.2f} {w.currency}"))
    if not cost.compute_saving and not c.is_dense:
        lines.append("- " + t("Sparsity brings no measured speed-up here on {runtime}, so it saves no compute; what it "
                              "saves is weight memory ({dense_mb} → {mb} MB in the runtime's format) and storage "
                              "({dense_storage} → {storage} MB compressed).").format(
            runtime=c.runtime, dense_mb=number(cost.baseline_weight_mb, 1), mb=number(cost.weight_mb, 1),
            dense_storage=number(cost.baseline_storage_mb, 1), storage=number(cost.storage_mb, 1)))
    return lines


def _evidence(c: Candidate, t: Gettext) -> list[str]:
    row = c.row
    lines = ["- " + t("Accuracy: {provenance}, {source}; {n} evaluation images; result {result_id}, run {run_id}, "
                      "{date}.").format(
        provenance=t(PROVENANCE_NAMES[row["provenance"]]), source=row.get("source") or "-",
        n=row.get("eval_size") or "-", result_id=row["result_id"][:12], run_id=row.get("run_id") or "-",
        date=str(row.get("created_at") or "-")[:10])]
    if row.get("env_key"):
        lines.append("- " + t("Accuracy environment: {env} ({cpu}).").format(env=row["env_key"],
                                                                           cpu=row.get("cpu_model") or "-"))
    timing = c.timing
    if timing is None:
        lines.append("- " + t("Latency: not measured on this profile."))
    else:
        lines.append("- " + t("Latency: {how}; {runtime}, batch {batch}, profile {profile}; p50 {p50} ms, p90 {p90} ms.")
                     .format(how=t(LATENCY_SOURCE_TEXT[timing.source]), runtime=timing.runtime,
                             batch=timing.batch_size, profile=timing.env_key, p50=number(timing.p50_ms, 2),
                             p90=number(timing.p90_ms, 2)))
    return lines


def markdown(result: Recommendation, lang: str, limit: int = 5, command: str = "", database: str = "") -> str:
    """Return the report in `lang` ('en' or 'ja')."""
    t = translation(lang).gettext
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = ["# " + t("PTS Advisor report"), "",
           t("Generated {date} from {database}.").format(date=today, database=f"`{database}`"), ""]
    currency = None if result.workload is None else result.workload.currency
    headers = [t("#"), t("model"), t("method"), t("sparsity"), t("runtime"), t("accuracy"), t("drop (points)"),
               t("latency ms"), t("speed-up"), t("evidence")]
    if currency is not None:
        headers += [t("instances"), t("cost"), t("saving"), t("weight MB"), t("storage MB")]

    out += ["## " + t("Recommendation"), ""]
    if result.found:
        best = result.ranked[0]
        out += [_headline(best, result, t, "" if lang == "ja" else " "), ""]
        out += [t("{n} of {total} candidates meet the budget; ranked by {objective}.").format(
            n=result.meeting_count, total=result.total, objective=t(OBJECTIVE_NAMES[result.budget.objective])), ""]
        b = result.budget
        if all(limit is None for limit in (b.min_accuracy, b.max_drop, b.max_relative_drop)):
            out += ["**" + t("The budget sets no accuracy limit, so this ranking does not protect accuracy; add a "
                             "minimum accuracy or a maximum drop.") + "**", ""]
    else:
        binding = result.binding_constraint()
        out += [t("No candidate meets the budget: {name} rules out {n} of {total} candidates. The nearest ones are "
                  "below; relax that limit or measure more candidates.").format(
            name=t(CONSTRAINT_NAMES.get(binding, binding or "-")), n=result.failing_counts.get(binding, 0),
            total=result.total), ""]

    out += ["## " + t("Budget"), ""]
    out += _table([t("limit"), t("value")], _budget_rows(result, t)) + [""]

    shown = result.ranked[:limit] if result.found else result.nearest
    out += ["## " + (t("Candidates") if result.found else t("Nearest candidates")), ""]
    out += _table(headers, [_candidate_row(i + 1, c, t, currency) for i, c in enumerate(shown)]) + [""]

    if shown:
        top = shown[0]
        if not result.found:
            out += [_nearest_headline(top, result, t), ""]
        elif currency is not None:
            out += ["## " + t("What it saves"), ""] + _savings(top, result, t) + [""]
        out += ["## " + (t("Evidence") if result.found else t("Evidence of the nearest candidate")), ""]
        out += _evidence(top, t) + [""]
        out += ["## " + t("Risks"), ""]
        risks = [risk_text(r, t) for r in top.risks]
        out += [f"- {r}" for r in risks] if risks else ["- " + t("None found in the evidence.")]
        out += [""]
    step = result.next_step(limit)
    if step is not None:
        out += ["## " + t("Next measurement"), "",
                t("This measurement would remove the most doubt from the candidates above:"), "",
                f"```\n{step[1]}\n```", ""]
    out += ["## " + t("Method"), "",
            "- " + t("Latency is measured on the named hardware profile and runtime, never estimated from FLOPs or "
                     "parameter counts."),
            "- " + t("A speed-up counts only where the dense and sparse models were timed in the same interleaved "
                     "rounds and differ by more than 5 %."),
            "- " + t("Instances = ceil(peak / (capacity × utilisation)); capacity = batch × 1000 / p50 latency in ms; "
                     "a month is 730 hours.")]
    if command:
        out += ["", t("Command:"), "", f"```\n{command}\n```"]
    return "\n".join(out) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder, so no half-written report is left.

    A symbolic link is followed, so the file it points to is replaced. That file keeps its mode,
    and a new file gets the mode an ordinary new file would get (the umask applies).
    """
    from advisor.errors import ReportError

    if not str(path).strip():
        raise ReportError("--out is empty; give the path of the Markdown file to write, for example --out report.md.")
    path = Path(path).resolve()
    if path.is_dir():
        raise ReportError("{path} is a folder; give a file path, for example --out {example}.",
                          path=path, example=path / "report.md")
    if not path.parent.is_dir():
        raise ReportError("folder {folder} does not exist; create it or pick another --out path.", folder=path.parent)
    if path.exists():
        mode = path.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
