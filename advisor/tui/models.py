"""The Models tab: every architecture with stored features, its size and its predicted robustness.

The rows are read, then the predictions computed, in a worker thread the first time the tab
opens: the table shows at once, and the predicted retention joins it when the regressor, which
needs scikit-learn (about a second to import), has run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Input, Select, Static

from advisor.catalog import REFERENCE_SPARSITY, add_predictions, architecture_rows
from advisor.formatting import number
from advisor.i18n import N_, _
from advisor.labels import TASK_NAMES
from bench_engine.paths import data_dir
from advisor.tui.reading import open_for_reading
from db import DatabaseError

SORTS = {"retention": N_("predicted retention"), "params": N_("parameters"), "gmacs": N_("GMACs"),
         "architecture": N_("name"), "results": N_("results")}


class ModelsPane(Vertical):
    """A filterable, sortable table of architectures."""

    def __init__(self, db_path: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.db_path = db_path
        self.rows: list[dict[str, Any]] = []
        self.fit_id: str | None = None
        self.loaded = False
        self.predicting = False

    def compose(self) -> ComposeResult:
        with Horizontal(id="models-bar"):
            yield Input(placeholder=_("filter by name, task or family"), id="models-filter", compact=True)
            yield Select([(_(label), key) for key, label in SORTS.items()], value="retention", allow_blank=False,
                         id="models-sort", compact=True)
        yield Static(_("Reading the architectures…"), id="models-status")
        yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#models-table", DataTable).add_columns(
            _("architecture"), _("task"), _("family"), _("params M"), _("GMACs"), _("attention"), _("results"),
            _("retention % at 50 %"))

    def load(self) -> None:
        """Read the rows and predictions once, in a worker thread."""
        if not self.loaded:
            self.loaded = True
            self._read()

    def reload(self) -> None:
        """Read the rows again (after `r`), if the tab has been opened; a new fit shows up this way."""
        if self.loaded:
            self.query_one("#models-status", Static).update(_("Reading the architectures…"))
            self._read()

    @work(thread=True, exclusive=True)
    def _read(self) -> None:
        try:
            with open_for_reading(self.db_path) as store:
                rows = architecture_rows(store)
            self.app.call_from_thread(self._show, [dict(row) for row in rows], None, True)
            with open_for_reading(self.db_path) as store:
                fit_id = add_predictions(store, rows, data_dir())
        except DatabaseError as exc:
            self.app.call_from_thread(self._show_error, exc.localized(_))
            return
        self.app.call_from_thread(self._show, rows, fit_id, False)

    def _show_error(self, error: str) -> None:
        self.query_one("#models-status", Static).update(_("Cannot read the database: {error}").format(error=error))

    def _show(self, rows: list[dict[str, Any]], fit_id: str | None, predicting: bool) -> None:
        self.rows, self.fit_id, self.predicting = rows, fit_id, predicting
        self.refresh_table()

    @on(Input.Changed, "#models-filter")
    @on(Select.Changed, "#models-sort")
    def refresh_table(self) -> None:
        """Redraw the table for the current filter and sort."""
        if not self.loaded:
            return
        table = self.query_one("#models-table", DataTable)
        table.clear()
        text = self.query_one("#models-filter", Input).value.strip().lower()
        sort = str(self.query_one("#models-sort", Select).value)
        shown = [r for r in self.rows if text in r["architecture"].lower() or text in (r["family"] or "").lower()
                 or text in self._task_label(r).lower()]
        descending = sort in ("retention", "results")
        shown.sort(key=lambda r: (r.get(sort) is None, -(r.get(sort) or 0) if descending else r.get(sort) or 0,
                                  r["architecture"]))
        for row in shown[:500]:
            features = json.loads(row.get("features_json") or "{}")
            attention = bool(features.get("attention_calls") or features.get("attention_modules"))
            retention = "-" if row.get("retention") is None else (
                f"{row['retention']:.0f} ({row['retention_low']:.0f}–{row['retention_high']:.0f})")
            table.add_row(row["architecture"], self._task_label(row), row["family"] or "-", number(row["params"] / 1e6, 2),
                          number(row["gmacs"], 3), _("yes") if attention else _("no"), str(row["results"]), retention)
        status = _("{shown} of {total} architectures with stored features.").format(shown=len(shown),
                                                                                    total=len(self.rows))
        if len(shown) > 500:
            status += " " + _("The first 500 are shown.")
        if self.predicting:
            status += " " + _("Computing the predicted retention…")
        elif self.fit_id is None:
            status += " " + _("No regressor is fitted: run `ptsa fit` to see predicted retention.")
        else:
            status += " " + _("Retention: predicted by fit {fit} for uniform magnitude pruning at {sparsity:.0%}, "
                              "with its 80 % interval (of top-1, or of box mAP for a detector).").format(
                fit=self.fit_id, sparsity=REFERENCE_SPARSITY)
        if len(self.rows) < 50:
            status += " " + _("`ptsa features --all` adds every timm architecture.")
        self.query_one("#models-status", Static).update(status)

    @staticmethod
    def _task_label(row: dict[str, Any]) -> str:
        task = row.get("task") or "classification"
        return _(TASK_NAMES[task]) if task in TASK_NAMES else task
