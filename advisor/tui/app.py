"""The PTS Advisor TUI: budget inputs, the ranked candidates, and the evidence of one row.

It reads the database at start and on `r` with a read-only connection that it closes at once.
A bench opens the file only to record its run and insert each model's rows, so the TUI can read
between those moments. A read that meets the writer's lock is reported as an error, and `r`
retries.
torch and timm are never imported here, so the first screen paints without them.
"""

from __future__ import annotations

import json

import math
from pathlib import Path

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Input, Label, Select, Static

from advisor.formatting import CONSTRAINT_LABELS, METRIC_LABELS, describe_violation, method_label, number
from advisor.ranking import rank_store
from advisor.recommend import LATENCY_SOURCES, OBJECTIVES, Budget, BudgetError, Candidate, Recommendation
from db import DatabaseError, Store

ALL_DATASETS = "all"
SHOWN_ROWS = 200  # rows of the ranking table; the status line gives the full count


def _parse_optional_float(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    value = float(text)  # ValueError is reported by the caller
    if math.isnan(value):
        raise ValueError("NaN is not a valid budget value")
    return value


class BudgetForm(Vertical):
    """Budget inputs. Posts `BudgetForm.Changed` with a valid budget, `Invalid` with the reason."""

    class Changed(Message):
        """The inputs form a valid budget."""

        def __init__(self, budget: Budget) -> None:
            super().__init__()
            self.budget = budget

    class Invalid(Message):
        """An input cannot be read as a budget; `reason` names the input and the problem."""

        def __init__(self, reason: str) -> None:
            super().__init__()
            self.reason = reason

    def __init__(self, budget: Budget, datasets: list[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self._initial = budget
        self._datasets = datasets

    def compose(self) -> ComposeResult:
        b = self._initial
        yield Label("Max p90 latency ms")
        yield Input(value=_fmt(b.max_latency_ms), placeholder="none", id="max-latency", type="number", compact=True)
        yield Label("Min accuracy (%)")
        yield Input(value=_fmt(b.min_accuracy), placeholder="none", id="min-accuracy", type="number", compact=True)
        yield Label("Max drop (points)")
        yield Input(value=_fmt(b.max_drop), placeholder="none", id="max-drop", type="number", compact=True)
        yield Label("Objective")
        yield Select([(o, o) for o in OBJECTIVES], value=b.objective, allow_blank=False, id="objective", compact=True)
        yield Label("Dataset")
        options = [(ALL_DATASETS, ALL_DATASETS)] + [(d, d) for d in self._datasets]
        value = b.dataset if b.dataset in self._datasets else ALL_DATASETS
        yield Select(options, value=value, allow_blank=False, id="dataset", compact=True)

    def read_budget(self) -> Budget:
        """Build a budget from the inputs; raises ValueError or BudgetError naming the bad field."""
        fields = {}
        for field_id, name in (("max-latency", "max_latency_ms"), ("min-accuracy", "min_accuracy"), ("max-drop", "max_drop")):
            text = self.query_one(f"#{field_id}", Input).value
            try:
                fields[name] = _parse_optional_float(text)
            except ValueError:
                raise ValueError(f"{CONSTRAINT_LABELS[name]}: {text!r} is not a number") from None
        dataset = self.query_one("#dataset", Select).value
        return Budget(
            **fields,
            latency_stat="p90",
            objective=str(self.query_one("#objective", Select).value),
            dataset=None if dataset == ALL_DATASETS else str(dataset),
            # Runtime, profile and batch size are not on the form yet; keep those the app started with.
            runtimes=self._initial.runtimes,
            profile=self._initial.profile,
            batch_size=self._initial.batch_size,
        )

    @on(Input.Changed)
    @on(Select.Changed)
    def _inputs_changed(self) -> None:
        try:
            self.post_message(self.Changed(self.read_budget()))
        except (ValueError, BudgetError) as exc:
            self.post_message(self.Invalid(str(exc)))


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


# Narrower than the CLI table so that the ranking fits an 80-column terminal.
# The budgeted values come first, so they stay visible when long model names need scrolling.
TUI_HEADERS = ["acc %", "drop", "p90 ms", "sparsity", "method", "model", "evidence"]


def tui_cells(candidate: Candidate) -> list[str]:
    row = candidate.row
    accuracy = number(candidate.accuracy)
    if candidate.metric == "top1_agreement":
        accuracy += " agr"
    return [
        accuracy,
        number(candidate.drop),
        number(candidate.latency_ms, 1),
        number((row.get("achieved_sparsity") or 0) * 100, 0, "%") if row.get("achieved_sparsity") is not None
        else "~" + number((row.get("requested_sparsity") or 0) * 100, 0, "%"),
        method_label(row),
        row["model_key"],
        row["provenance"],
    ]


class PTSAdvisorApp(App):
    """Plan a deployment: budgets on the left, ranked candidates and their evidence on the right."""

    TITLE = "PTS Advisor"
    CSS = """
    BudgetForm { width: 22; padding: 0 1; border-right: solid $primary; }
    BudgetForm Label { margin-top: 1; color: $text-muted; }
    BudgetForm Input, BudgetForm Select { width: 100%; }
    #main { width: 1fr; }
    #ranking { height: 1fr; }
    #status { height: auto; padding: 0 1; color: $text-muted; }
    #evidence { height: 9; padding: 0 1; border-top: solid $primary; }
    """
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("r", "reload", "Reload"),
        Binding("ctrl+t", "focus_table", "Table"),
    ]

    def __init__(self, db_path: Path, budget: Budget | None = None) -> None:
        super().__init__()
        self.db_path = Path(db_path)
        self.budget = budget or Budget()
        self.dataset_names: list[str] = []
        self.load_error: str | None = None
        self.result: Recommendation | None = None
        self._load()

    def _load(self) -> None:
        try:
            with Store.open(self.db_path, read_only=True) as store:
                self.dataset_names = [r["dataset"] for r in store.query(
                    "SELECT DISTINCT dataset FROM results ORDER BY dataset")]
            self.load_error = None
        except DatabaseError as exc:
            self.dataset_names = []
            self.load_error = str(exc)

    @property
    def datasets(self) -> list[str]:
        return self.dataset_names

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            yield BudgetForm(self.budget, self.datasets, id="budget")
            with Vertical(id="main"):
                yield Static(id="status")
                yield DataTable(id="ranking", cursor_type="row", zebra_stripes=True)
                yield Static(id="evidence")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.db_path.name
        table = self.query_one("#ranking", DataTable)
        table.add_columns("#", *TUI_HEADERS)
        self.refresh_ranking()
        table.focus()  # keys such as q and r work at once; Tab reaches the budget inputs

    @on(BudgetForm.Changed)
    def _budget_changed(self, message: BudgetForm.Changed) -> None:
        self.budget = message.budget
        self.refresh_ranking()

    @on(BudgetForm.Invalid)
    def _budget_invalid(self, message: BudgetForm.Invalid) -> None:
        # Clear the table, so no ranking is shown for a budget other than the one on screen.
        self.query_one("#ranking", DataTable).clear()
        self.query_one("#evidence", Static).update("")
        self.result = None
        self.query_one("#status", Static).update(f"[b]Invalid budget[/b]: {message.reason}")

    def refresh_ranking(self) -> None:
        """Recompute the recommendation for the current budget and redraw the table."""
        status = self.query_one("#status", Static)
        table = self.query_one("#ranking", DataTable)
        table.clear()
        if self.load_error:
            status.update(f"[b]Cannot read the database[/b]: {self.load_error}")
            self.query_one("#evidence", Static).update("")
            return
        if not self.dataset_names:
            status.update(f"No results in {self.db_path.name}. Run `ptsa demo` or `ptsa bench`, then press r.")
            return
        try:
            # The database is opened for this query only, so a bench can write between queries.
            with Store.open(self.db_path, read_only=True) as store:
                self.result = rank_store(store, self.budget, limit=SHOWN_ROWS)
        except DatabaseError as exc:
            status.update(f"[b]Cannot read the database[/b]: {exc}")
            self.result = None
            return
        except BudgetError as exc:  # a --profile that is not in this database
            status.update(f"[b]Invalid budget[/b]: {exc}")
            self.query_one("#evidence", Static).update("")
            self.result = None
            return
        shown = self.result.ranked if self.result.found else self.result.nearest
        for index, candidate in enumerate(shown):
            rank = str(index + 1) if self.result.found else "✗"
            table.add_row(rank, *tui_cells(candidate), key=str(index))
        if self.result.found:
            status.update(f"{self.result.meeting_count} of {self.result.total} candidates meet the budget "
                          f"(objective: {self.budget.objective})"
                          + (f"; the first {SHOWN_ROWS} are shown." if self.result.meeting_count > SHOWN_ROWS else "."))
        else:
            binding = self.result.binding_constraint()
            status.update(
                f"[b]No candidate meets the budget[/b]: {CONSTRAINT_LABELS.get(binding, binding)} rules out "
                f"{self.result.failing_counts.get(binding, 0)} of {self.result.total}. Nearest shown."
            )
        self._show_evidence(shown[0] if shown else None)

    def selected_candidates(self) -> list[Candidate]:
        if self.result is None:
            return []
        return self.result.ranked if self.result.found else self.result.nearest

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        candidates = self.selected_candidates()
        if event.row_key is not None and event.row_key.value is not None:
            index = int(event.row_key.value)
            if 0 <= index < len(candidates):
                self._show_evidence(candidates[index])

    def _show_evidence(self, candidate: Candidate | None) -> None:
        panel = self.query_one("#evidence", Static)
        if candidate is None:
            panel.update("")
            return
        row = candidate.row
        lines = [
            f"[b]{row['model_key']}[/b] · {method_label(row)} · requested {row['requested_sparsity']:.0%}, "
            + (f"achieved {row['achieved_sparsity']:.1%} of Conv/Linear weights" if row.get("achieved_sparsity") is not None
               else "achieved not published"),
            *self._recipe_lines(row),
            f"{METRIC_LABELS[candidate.metric]} {number(candidate.accuracy)} % "
            f"(dense {number(candidate.dense_accuracy)} %)",
            *self._provenance_lines(row),
            *self._latency_lines(candidate),
        ]
        if row.get("kl_divergence") is not None:
            lines.append(f"agreement with dense {row.get('top1_agreement') or 0:.1f} %, KL {row['kl_divergence']:.4f}")

        for constraint, amount in candidate.violations.items():
            lines.append(describe_violation(constraint, amount, candidate))
        panel.update("\n".join(lines))

    @staticmethod
    def _provenance_lines(row: dict) -> list[str]:
        """Say where the accuracy comes from: measured here, published (cited) or predicted (with its interval)."""
        if row["provenance"] == "published":
            return [f"published on {row['dataset']}: {row.get('source')}"]
        if row["provenance"] == "predicted":
            prediction = json.loads(row.get("prediction_json") or "{}")
            return [
                f"[b]predicted[/b] retention {number(prediction.get('retention'))} % of dense, 80 % interval "
                f"{number(prediction.get('retention_low'))} to {number(prediction.get('retention_high'))} "
                f"(fit {prediction.get('fit_id')}, held-out-family MAE {number(prediction.get('held_out_family_mae'))})",
            ]
        return [f"{row['provenance']} on {row['dataset']} ({row.get('eval_size')} eval inputs, "
                f"{row.get('calibration_size')} calibration), run {row.get('run_id')}"]

    def _latency_lines(self, candidate: Candidate) -> list[str]:
        timing = candidate.timing
        budget = self.budget
        if timing is None:
            return [f"latency: not measured on {budget.runtime} at batch {budget.batch_size} on this profile"]
        profile = self.result.profile if self.result else None
        cpu = (profile.cpu_model if profile else None) or "unknown CPU"
        speedup = ""
        if candidate.row["criterion"] != "dense" and timing.speedup is not None:
            kernel = timing.sparse_kernel or "dense kernels only"
            speedup = f", {timing.speedup:.2f}× dense ({kernel})"
        return [
            f"latency p50 {timing.p50_ms:.2f} ms, p90 {timing.p90_ms:.2f} ms at batch {timing.batch_size}, "
            f"{timing.runtime}{speedup}",
            f"{LATENCY_SOURCES[timing.source]}; profile {timing.env_key} ({cpu})",
        ]

    @staticmethod
    def _recipe_lines(row: dict) -> list[str]:
        # The method label leaves parameters out, so rows that differ only in them need the recipe.
        recipe = json.loads(row.get("recipe_json") or "{}").get("recipe")
        return [f"recipe: {recipe}"] if recipe and row["criterion"] != "dense" else []

    def action_reload(self) -> None:
        self._load()
        self.refresh_ranking()

    def action_focus_table(self) -> None:
        self.query_one("#ranking", DataTable).focus()


def run_app(db_path: Path, budget: Budget | None = None) -> None:
    PTSAdvisorApp(db_path, budget).run()
