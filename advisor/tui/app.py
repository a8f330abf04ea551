"""The PTS Advisor TUI: budgets and the ranked candidates, the ROI what-if, the evidence, and help.

Every query opens the database read-only and closes it at once, so a bench can write between
queries. A read that meets the writer's lock is reported, and `r` retries. Ranking runs in a
worker thread once the budget inputs have been still for a moment, so typing never waits for it. torch and timm are
never imported here, so the first screen paints without them. Labels and messages go through
the gettext catalog (`advisor.i18n`), in Japanese when the locale or `--lang ja` asks for it.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.cells import cell_len
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input, Markdown, Static, TabbedContent, TabPane
from textual_plotext import PlotextPlot

from advisor.evidence import model_evidence
from advisor.formatting import METRIC_LABELS, method_label, number
from advisor.i18n import _, pick_language, use_language
from advisor.labels import CONSTRAINT_NAMES, CONSTRAINT_UNITS, LATENCY_SOURCE_TEXT, OBJECTIVE_NAMES, risk_text
from advisor.ranking import rank_store
from advisor.recommend import Budget, Candidate, Recommendation
from advisor.roi import Workload
from advisor.tui.confirm import Confirm
from advisor.tui.forms import BudgetForm, WorkloadForm
from advisor.tui.models import ModelsPane
from advisor.tui.runs import RunsPane
from advisor.tui.reading import open_for_reading
from db import DatabaseError, DatabaseLockedError, TranslatableError

SHOWN_ROWS = 200  # rows of the ranking table; the status line gives the full count
WATCH_SECONDS = 5.0  # how often the TUI looks for new results
RANK_DELAY = 0.3  # seconds the inputs must be still before re-ranking: typing "25" ranks once, not twice


def busy_text() -> str:
    return _("The database is busy: a bench is writing results. The TUI reads it again within {seconds:g} "
             "seconds, or press r.").format(seconds=WATCH_SECONDS)


def sparsity_text(row: dict) -> str:
    if row.get("achieved_sparsity") is not None:
        return number(row["achieved_sparsity"] * 100, 0, "%")
    return "~" + number((row.get("requested_sparsity") or 0) * 100, 0, "%")


def profile_label(row: dict) -> str:
    """Return a hardware profile in a few characters: its key's start and its CPU or device."""
    what = row.get("cpu_model") or row.get("device") or ""
    return f"{row['env_key'][:6]} {what}".strip()


def binding_text(candidate: Candidate) -> str:
    """Return the binding limit and its headroom in a few characters, such as 'drop +0.5'."""
    binding = candidate.binding()
    if binding is None:
        return "-"
    short = {"max_latency_ms": _("lat"), "min_throughput": _("thr"), "min_accuracy": _("acc"),
             "max_drop": _("drop"), "max_relative_drop": _("rel"), "max_weight_mb": _("mem")}[binding]
    return f"{short} +{candidate.margins[binding]:.1f}"


def accuracy_header(task: str) -> str:
    """Return the accuracy column's heading: top-1 (or agreement) for classification, box mAP for detection."""
    return _("mAP %") if task == "detection" else _("acc %")


def ranking_headers(task: str = "classification") -> list[str]:
    # The model and method come first, so each row shows what it is before the table scrolls right.
    return ["#", _("model"), _("method"), accuracy_header(task), _("drop"), _("latency"), _("sparsity"), _("binds"),
            _("evidence")]


def ranking_cells(rank: str, candidate: Candidate) -> list[str]:
    row = candidate.row
    accuracy = number(candidate.accuracy)
    if candidate.metric in ("top1_agreement", "box_map_fidelity"):  # agreement with the dense model
        accuracy += " " + _("agr")
    return [rank, row["model_key"], method_label(row), accuracy, number(candidate.drop),
            number(candidate.latency_ms, 1), sparsity_text(row), binding_text(candidate), _(row["provenance"])]


def help_markdown() -> str:
    return "\n".join([
        "# " + _("PTS Advisor"),
        _("Pick a model, a post-training sparsity method and a sparsity that meet your budget, from measured, "
          "published and predicted evidence."),
        "",
        "## " + _("Keys"),
        "",
        "| " + _("key") + " | " + _("action") + " |",
        "|---|---|",
        "| F1 | " + _("this help") + " |",
        "| F2 | " + _("Recommend: budget and ranked candidates") + " |",
        "| F3 | " + _("ROI: instances and cost against dense") + " |",
        "| F4 | " + _("Evidence of the highlighted candidate") + " |",
        "| F5 | " + _("Runs: start a bench, watch it, cancel it") + " |",
        "| F6 | " + _("Models: every architecture with its size and predicted robustness") + " |",
        "| Tab, Shift+Tab | " + _("move between inputs and the table") + " |",
        "| ↑ ↓ | " + _("highlight a candidate") + " |",
        "| Ctrl+T | " + _("focus the table") + " |",
        "| Ctrl+B | " + _("hide or show the inputs, to give the table the whole width") + " |",
        "| ← → | " + _("scroll the table sideways to more columns") + " |",
        "| r | " + _("read the database again") + " |",
        "| q | " + _("quit") + " |",
        "",
        "## " + _("Terms"),
        "",
        "- **" + _("sparsity") + "**: " + _("share of Conv2d and Linear weights set to zero."),
        "- **" + _("binds") + "**: " + _("the limit with the least headroom, and that headroom."),
        "- **" + _("latency") + "**: " + _("the chosen statistic (p90 by default) in ms, measured on one hardware "
                                          "profile and runtime; never estimated from FLOPs."),
        "- **" + _("evidence") + "**: " + _("measured here, published by others (with its source), or predicted "
                                           "by the regressor (with its 80 % interval)."),
        "- **" + _("speed-up") + "**: " + _("counted only where dense and sparse were timed in the same "
                                           "interleaved rounds and differ by more than 5 %."),
        "- **" + _("ROI") + "**: " + _("instances = ceil(peak / (capacity × utilisation)); capacity = batch × "
                                      "1000 / p50 ms; a month is 730 hours."),
    ])


class PTSAdvisorApp(App):
    """Plan a deployment: budget, ranked candidates, their cost and their evidence."""

    TITLE = "PTS Advisor"
    ENABLE_COMMAND_PALETTE = False  # its footer entry would hide the F5 key at 80 columns
    CSS = """
    BudgetForm, WorkloadForm { width: 24; padding: 0 1; border-right: solid $primary; }
    BudgetForm Label, WorkloadForm Label { color: $text-muted; }
    BudgetForm, WorkloadForm { scrollbar-size-vertical: 1; }
    BudgetForm Input, BudgetForm Select, WorkloadForm Input { width: 100%; }
    BudgetForm .-hidden { display: none; }
    TabPane { padding: 0; }
    .main { width: 1fr; }
    #ranking, #roi-table { height: 1fr; }
    #status, #roi-status, #evidence-title { height: auto; padding: 0 1; color: $text-muted; }
    #evidence-scroll, #roi-notes { height: 7; padding: 0 1; border-top: solid $primary; }
    #plots { height: 1fr; }
    #plots PlotextPlot { width: 1fr; }
    #evidence-detail { height: 5; padding: 0 1; border-top: solid $primary; }
    #run-form { width: 30; padding: 0 1; border-right: solid $primary; scrollbar-size-vertical: 1; }
    #run-form Label { color: $text-muted; }
    #run-buttons { height: auto; margin-top: 1; }
    #run-buttons Button { width: auto; min-width: 10; margin-right: 1; }
    #run-status, #run-detail { height: auto; padding: 0 1; }
    #run-progress { padding: 0 1; }
    #run-log { height: 1fr; padding: 0 1; color: $text-muted; }
    #models-bar { height: 1; padding: 0 1; }
    #models-filter { width: 1fr; }
    #models-sort { width: 26; }
    #models-status { height: auto; padding: 0 1; color: $text-muted; }
    #models-table { height: 1fr; }
    #help-scroll { height: 1fr; }
    """
    # q, r and F1 are bound in __init__, so the footer names them in the chosen language. The tab
    # labels name the other keys, so the footer lists only those three.
    BINDINGS = [
        Binding("f2", "show_tab('recommend')", "Recommend", show=False),
        Binding("f3", "show_tab('roi')", "ROI", show=False),
        Binding("f4", "show_tab('evidence-tab')", "Evidence", show=False),
        Binding("f5", "show_tab('runs')", "Runs", show=False),
        Binding("f6", "show_tab('models')", "Models", show=False),
        Binding("ctrl+t", "focus_table", "Table", show=False),
        Binding("ctrl+b", "toggle_inputs", "Inputs", show=False),
    ]

    def __init__(self, db_path: Path, budget: Budget | None = None, workload: Workload | None = None,
                 lang: str | None = None) -> None:
        super().__init__()
        self.lang = pick_language(lang)
        use_language(self.lang)
        self.bind("q", "quit", description=_("Quit"))
        self.bind("r", "reload", description=_("Reload"))
        self.bind("f1", "show_tab('help')", description=_("Help"))
        self.db_path = Path(db_path)
        self.budget = budget or Budget()
        self.workload = workload
        self.dataset_names: list[str] = []
        self.task_names: list[str] = []
        self.dataset_tasks: dict[str, str] = {}
        self.profiles: list[tuple[str, str]] = []  # (env_key, short description), newest timings first
        self.load_error: str | None = None
        self.result: Recommendation | None = None
        self.roi_result: Recommendation | None = None
        self.selected: Candidate | None = None
        self._rank_timer: Timer | None = None
        self._generation = 0  # bumped for every ranking started; an older worker's result is dropped
        self._ranked: tuple[Budget, Workload | None] | None = None  # what the tables show, or will show
        self._load()

    # -- data ---------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            with open_for_reading(self.db_path, wait_seconds=1.0) as store:  # on the event loop: wait little
                self.dataset_names = [r["dataset"] for r in store.query(
                    "SELECT DISTINCT dataset FROM results ORDER BY dataset")]
                self.dataset_tasks = {r["dataset"]: r["task"] for r in store.query(
                    "SELECT dataset, min(coalesce(task, 'classification')) AS task FROM results GROUP BY dataset")}
                self.task_names = sorted(set(self.dataset_tasks.values()))
                self.profiles = [(r["env_key"], profile_label(r)) for r in store.query(
                    # Timings live in the latency table and, for results timed while benched, in results.
                    "SELECT t.env_key, any_value(e.cpu_model) AS cpu_model, any_value(e.device) AS device, "
                    "max(t.created_at) AS newest FROM (SELECT env_key, created_at FROM latency UNION ALL "
                    "SELECT env_key, created_at FROM results WHERE latency_p50_ms IS NOT NULL) t "
                    "LEFT JOIN environments e USING (env_key) WHERE t.env_key IS NOT NULL "
                    "GROUP BY t.env_key ORDER BY newest DESC")]
            self.load_error = None
        except DatabaseLockedError:
            self.load_error = busy_text()
        except DatabaseError as exc:
            self.dataset_names = []
            self.load_error = exc.localized(_)

    def _rank(self, budget: Budget, workload: Workload | None) -> Recommendation | str:
        """Return the ranking, or the message that explains why there is none."""
        if self.load_error:
            if self.load_error == busy_text():
                return self.load_error
            return _("Cannot read the database: {error}").format(error=self.load_error)
        if not self.dataset_names:
            return _("No results in {name}. Run `ptsa demo` or `ptsa bench`, then press r.").format(
                name=self.db_path.name)
        try:
            # The database is opened for this query only, so a bench can write between queries.
            with open_for_reading(self.db_path) as store:
                return rank_store(store, budget, workload, limit=SHOWN_ROWS)
        except DatabaseLockedError:
            return busy_text()
        except DatabaseError as exc:
            return _("Cannot read the database: {error}").format(error=exc.localized(_))
        except TranslatableError as exc:  # a --profile that is not in this database, or cost without a workload
            return _("Invalid budget: {reason}").format(reason=exc.localized(_))

    def _latest_change(self) -> tuple | None:
        """Return the count and newest time of results and timings; None while the file cannot be read."""
        try:
            with open_for_reading(self.db_path, wait_seconds=0) as store:
                row = store.query("SELECT (SELECT count(*) FROM results) AS results, "
                                  "(SELECT max(created_at) FROM results) AS newest, "
                                  "(SELECT count(*) FROM latency) AS timings")[0]
        except DatabaseError:  # missing, or locked by a writer for the moment: try again later
            return None
        return (row["results"], row["newest"], row["timings"])

    def check_for_new_results(self) -> None:
        """Reload when results or timings were added since the last look."""
        change = self._latest_change()
        if change is not None and change != self.last_change:
            self.last_change = change
            self.action_reload()

    # -- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with TabbedContent(initial="recommend"):
            with TabPane("F2 " + _("Recommend"), id="recommend"):
                with Horizontal():
                    yield BudgetForm(self.budget, self.dataset_names, self.profiles, tasks=self.task_names,
                                     dataset_tasks=self.dataset_tasks, id="budget")
                    with Vertical(classes="main"):
                        yield Static(id="status")
                        yield DataTable(id="ranking", cursor_type="row", zebra_stripes=True)
                        with VerticalScroll(id="evidence-scroll"):
                            yield Static(id="evidence")
            with TabPane("F3 " + _("ROI"), id="roi"):
                with Horizontal():
                    yield WorkloadForm(self.workload, id="workload")
                    with Vertical(classes="main"):
                        yield Static(id="roi-status")
                        yield DataTable(id="roi-table", cursor_type="row", zebra_stripes=True)
                        yield Static(id="roi-notes")
            with TabPane("F4 " + _("Evidence"), id="evidence-tab"):
                with Vertical():
                    yield Static(id="evidence-title")
                    with Horizontal(id="plots"):
                        yield PlotextPlot(id="accuracy-plot")
                        yield PlotextPlot(id="latency-plot")
                    yield Static(id="evidence-detail")
            with TabPane("F5 " + _("Runs"), id="runs"):
                self.runs_pane = RunsPane(self.db_path, self.lang, id="runs-pane")
                yield self.runs_pane
            with TabPane("F6 " + _("Models"), id="models"):
                yield ModelsPane(self.db_path, id="models-pane")
            with TabPane("F1 " + _("Help"), id="help"):
                with VerticalScroll(id="help-scroll", can_focus=True):
                    yield Markdown(help_markdown(), id="help-text")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.db_path.name
        self.last_change = self._latest_change()
        # New results (a bench in another terminal, or one from the Runs tab) show up by themselves.
        self.set_interval(WATCH_SECONDS, self.check_for_new_results)
        fill_table(self.query_one("#ranking", DataTable), ranking_headers(), [])
        self.start_ranking()
        self.query_one("#ranking", DataTable).focus()  # q and r work at once; Tab reaches the inputs

    # -- Recommend tab ------------------------------------------------------------------------

    def schedule_ranking(self) -> None:
        """Rank again once the inputs have been still for RANK_DELAY seconds."""
        if self._rank_timer is not None:
            self._rank_timer.stop()
        self._rank_timer = self.set_timer(RANK_DELAY, self.start_ranking)

    def start_ranking(self) -> None:
        """Rank the current budget, and price it under the workload, in a worker thread."""
        if self._rank_timer is not None:
            self._rank_timer.stop()
            self._rank_timer = None
        self._generation += 1
        self._ranked = (self.budget, self.workload)
        self.query_one("#status", Static).update(_("Ranking…"))
        if self.workload is not None:
            self.query_one("#roi-status", Static).update(_("Ranking…"))
        self._rank_in_thread(self._generation, self.budget, self.workload)

    @work(thread=True, group="ranking")
    def _rank_in_thread(self, generation: int, budget: Budget, workload: Workload | None) -> None:
        ranking = self._rank(budget, workload if budget.objective == "cost" else None)
        priced = None if workload is None else self._rank(
            Budget(**{**budget.to_dict(), "objective": "cost", "runtimes": budget.runtimes,
                      "patterns": budget.patterns}), workload)
        self.call_from_thread(self._show_results, generation, ranking, priced)

    def _show_results(self, generation: int, ranking: Recommendation | str, priced: Recommendation | str | None) -> None:
        if generation != self._generation:  # the budget changed while this one was ranked
            return
        self.show_ranking(ranking)
        self.show_roi(priced)

    def _forget_ranking(self) -> None:
        """Drop a pending or running ranking: the inputs on screen are not a valid budget or workload."""
        if self._rank_timer is not None:
            self._rank_timer.stop()
            self._rank_timer = None
        self._generation += 1
        self._ranked = None

    @on(BudgetForm.Changed)
    def _budget_changed(self, message: BudgetForm.Changed) -> None:
        # Mounting the inputs posts a change for each of them; only a different budget is re-ranked.
        if (message.value, self.workload) == self._ranked:
            return
        self.budget = message.value
        self.schedule_ranking()

    @on(BudgetForm.Invalid)
    def _budget_invalid(self, message: BudgetForm.Invalid) -> None:
        # Clear the table, so no ranking is shown for a budget other than the one on screen.
        self._forget_ranking()
        self.query_one("#ranking", DataTable).clear()
        self.query_one("#evidence", Static).update("")
        self.result = None
        self.query_one("#status", Static).update(_("[b]Invalid budget[/b]: {reason}").format(reason=message.reason))

    def show_ranking(self, ranked: Recommendation | str) -> None:
        """Redraw the Recommend table from a ranking, or show why there is none."""
        status = self.query_one("#status", Static)
        table = self.query_one("#ranking", DataTable)
        table.clear()
        if isinstance(ranked, str):
            self.result = None
            status.update(ranked)
            self.query_one("#evidence", Static).update("")
            return
        self.result = ranked
        shown = ranked.ranked if ranked.found else ranked.nearest
        fill_table(table, ranking_headers(self.budget.task),
                   [ranking_cells(str(index + 1) if ranked.found else "✗", c) for index, c in enumerate(shown)])
        if ranked.found:
            text = _("{n} of {total} candidates meet the budget (objective: {objective}).").format(
                n=ranked.meeting_count, total=ranked.total, objective=_(OBJECTIVE_NAMES[self.budget.objective]))
            if ranked.meeting_count > SHOWN_ROWS:
                text += " " + _("The first {n} are shown.").format(n=SHOWN_ROWS)
            same_task = [d for d in self.dataset_names if self.dataset_tasks.get(d, "classification") == self.budget.task]
            if self.budget.dataset is None and len(same_task) > 1:
                text += " " + _("[b]Datasets mixed[/b]: their accuracies are not comparable; pick one under Dataset.")
        else:
            binding = ranked.binding_constraint()
            text = _("[b]No candidate meets the budget[/b]: {name} rules out {n} of {total}. Nearest shown.").format(
                name=_(CONSTRAINT_NAMES.get(binding, binding or "-")), n=ranked.failing_counts.get(binding, 0),
                total=ranked.total)
        status.update(text)
        self._select(shown[0] if shown else None)

    def shown_candidates(self) -> list[Candidate]:
        if self.result is None:
            return []
        return self.result.ranked if self.result.found else self.result.nearest

    @on(DataTable.RowHighlighted, "#ranking")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        candidates = self.shown_candidates()
        if event.row_key is not None and event.row_key.value is not None:
            index = int(event.row_key.value)
            if 0 <= index < len(candidates):
                self._select(candidates[index])

    def _select(self, candidate: Candidate | None) -> None:
        self.selected = candidate
        self.query_one("#evidence", Static).update("" if candidate is None else "\n".join(self.evidence_lines(candidate)))
        # The plots are drawn when their tab is shown, which keeps them off the first screen's path.
        if self.query_one(TabbedContent).active == "evidence-tab":
            self.refresh_evidence_tab()

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "evidence-tab":
            self.refresh_evidence_tab()
        elif event.pane.id == "models":
            self.query_one(ModelsPane).load()

    def evidence_lines(self, candidate: Candidate) -> list[str]:
        """Describe a candidate: what it is, its accuracy and where it comes from, its latency, its risks."""
        row = candidate.row
        achieved = (_("achieved {value} of Conv/Linear weights").format(value=f"{row['achieved_sparsity']:.1%}")
                    if row.get("achieved_sparsity") is not None else _("achieved not published"))
        # What fails and what is at risk comes first, so it shows in the 7 rows without scrolling.
        verdict = [self._violation_text(constraint, amount) for constraint, amount in candidate.violations.items()]
        verdict += [_("risk: {text}").format(text=risk_text(risk, _)) for risk in candidate.risks]
        lines = [
            f"[b]{row['model_key']}[/b] · {method_label(row)} · "
            + _("requested {value}").format(value=f"{row['requested_sparsity']:.0%}") + ", " + achieved,
            *verdict,
            *self._recipe_lines(row),
            _("{metric} {accuracy} % (dense {dense} %)").format(
                metric=_(METRIC_LABELS[candidate.metric]),
                accuracy=number(candidate.accuracy), dense=number(candidate.dense_accuracy)),
            *self._provenance_lines(row),
            *self._latency_lines(candidate),
        ]
        if row.get("kl_divergence") is not None:
            lines.append(_("agreement with dense {agreement} %, KL {kl}").format(
                agreement=f"{row.get('top1_agreement') or 0:.1f}", kl=f"{row['kl_divergence']:.4f}"))
        return lines

    @staticmethod
    def _violation_text(constraint: str, amount: float) -> str:
        name = _(CONSTRAINT_NAMES[constraint])
        if amount == float("inf"):
            return _("{name}: not measured on this profile, runtime and batch size").format(name=name)
        return _("{name} missed by {amount} {unit}").format(name=name, amount=f"{amount:.2f}",
                                                            unit=_(CONSTRAINT_UNITS[constraint]))

    @staticmethod
    def _provenance_lines(row: dict) -> list[str]:
        """Say where the accuracy comes from: measured here, published (cited) or predicted (with its interval)."""
        if row["provenance"] == "published":
            return [_("published on {dataset}: {source}").format(dataset=row["dataset"], source=row.get("source"))]
        if row["provenance"] == "predicted":
            prediction = json.loads(row.get("prediction_json") or "{}")
            return [_("[b]predicted[/b] retention {retention} % of dense, 80 % interval {low} to {high} (fit {fit}, "
                      "held-out-family MAE {mae})").format(
                retention=number(prediction.get("retention")), low=number(prediction.get("retention_low")),
                high=number(prediction.get("retention_high")), fit=prediction.get("fit_id"),
                mae=number(prediction.get("held_out_family_mae")))]
        return [_("measured on {dataset} ({eval} eval inputs, {calibration} calibration), run {run}").format(
            dataset=row["dataset"], eval=row.get("eval_size"), calibration=row.get("calibration_size"),
            run=row.get("run_id"))]

    def _latency_lines(self, candidate: Candidate) -> list[str]:
        timing = candidate.timing
        if timing is None:
            return [_("latency: not measured on {runtime} at batch {batch} on this profile").format(
                runtime=candidate.runtime or ", ".join(self.budget.runtimes), batch=self.budget.batch_size)]
        profile = self.result.profile if self.result else None
        cpu = (profile.cpu_model if profile else None) or _("unknown CPU")
        line = _("latency p50 {p50} ms, p90 {p90} ms at batch {batch}, {runtime}").format(
            p50=f"{timing.p50_ms:.2f}", p90=number(timing.p90_ms, 2), batch=timing.batch_size, runtime=timing.runtime)
        if candidate.row["criterion"] != "dense" and timing.speedup is not None:
            line += ", " + _("{speedup}× dense ({kernel})").format(
                speedup=f"{timing.speedup:.2f}", kernel=timing.sparse_kernel or _("dense kernels only"))
        return [line, _("{source}; profile {profile} ({cpu})").format(
            source=_(LATENCY_SOURCE_TEXT[timing.source]), profile=timing.env_key, cpu=cpu)]

    @staticmethod
    def _recipe_lines(row: dict) -> list[str]:
        # The method label leaves parameters out, so rows that differ only in them need the recipe.
        recipe = json.loads(row.get("recipe_json") or "{}").get("recipe")
        return [_("recipe: {recipe}").format(recipe=recipe)] if recipe and row["criterion"] != "dense" else []

    # -- ROI tab ------------------------------------------------------------------------------

    @on(WorkloadForm.Changed)
    def _workload_changed(self, message: WorkloadForm.Changed) -> None:
        if (self.budget, message.value) == self._ranked:
            return
        self.workload = message.value
        self.schedule_ranking()

    @on(WorkloadForm.Invalid)
    def _workload_invalid(self, message: WorkloadForm.Invalid) -> None:
        self._forget_ranking()
        self.query_one("#roi-table", DataTable).clear()
        self.query_one("#roi-notes", Static).update("")
        self.roi_result = None
        self.query_one("#roi-status", Static).update(
            _("[b]Invalid workload[/b]: {reason}").format(reason=message.reason))

    def show_roi(self, ranked: Recommendation | str | None) -> None:
        """Redraw the ROI table from the candidates priced under the workload (None: no workload yet)."""
        status = self.query_one("#roi-status", Static)
        table = self.query_one("#roi-table", DataTable)
        notes = self.query_one("#roi-notes", Static)
        table.clear()
        notes.update("")
        if ranked is None or self.workload is None:
            self.roi_result = None
            status.update(_("Enter the peak rate and the price per instance-hour to size and price the candidates."))
            return
        if isinstance(ranked, str):
            self.roi_result = None
            status.update(ranked)
            return
        self.roi_result = ranked
        shown = ranked.ranked if ranked.found else ranked.nearest
        workload = self.workload
        currency = workload.currency
        today = workload.instances_today is not None
        per_million = any(c.costing.cost_per_million is not None for c in shown)
        # The model, then sizes and costs, so each row shows what it prices before the table scrolls.
        headers = ["#", _("model"), _("instances"), _("cost once") if workload.per_device else _("cost/month"),
                   _("saving"), *([_("vs today")] if today else []), *([_("per 1M req")] if per_million else []),
                   accuracy_header(self.budget.task), _("sparsity"), _("method"), _("weight MB"), _("storage MB")]
        seen: dict[str, str] = {}
        rows = []
        for index, c in enumerate(shown):
            cost = c.costing
            instances = "-" if cost.instances is None else (
                f"{cost.baseline_instances}→{cost.instances}" if cost.baseline_instances is not None
                else str(cost.instances))
            rows.append([str(index + 1), c.row["model_key"], instances, _money(cost.cost, currency),
                         _money(cost.saving, currency),
                         *([_money(cost.saving_vs_today, currency)] if today else []),
                         *([_money(cost.cost_per_million, currency, 2)] if per_million else []),
                         number(c.accuracy), sparsity_text(c.row), method_label(c.row), number(cost.weight_mb, 1),
                         number(cost.storage_mb, 1)])
            for note in cost.notes:
                seen.setdefault(note["code"], self._note_text(note["code"], c))
        fill_table(table, headers, rows)
        if workload.per_device:
            text = _("Peak {peak:g}/s at {util:g} % utilisation, {price:g} {currency} per device bought once; "
                     "cheapest first. instances: dense → candidate.")
        else:
            text = _("Peak {peak:g}/s at {util:g} % utilisation, {price:g} {currency} per instance-hour; costs "
                     "per month, cheapest first. instances: dense → candidate.")
        text = text.format(peak=workload.peak_rps, util=workload.utilisation * 100, price=workload.price,
                           currency=currency)
        if today:
            text += " " + _("vs today: the saving against the {n} instances running now.").format(
                n=workload.instances_today)
        if workload.requests_per_day:
            text += " " + _("{n:,.0f} requests a day.").format(n=workload.requests_per_day)
        status.update(text)
        notes.update("\n".join(seen.values()))

    @staticmethod
    def _note_text(code: str, candidate: Candidate) -> str:
        if code == "no_compute_saving":
            return _("No speed-up measured on {runtime}: those rows are sized like dense; their saving is weight "
                     "memory and storage, not compute.").format(runtime=candidate.runtime)
        if code == "slower_than_dense":
            return _("Some rows run slower than dense on {runtime} and need more instances.").format(
                runtime=candidate.runtime)
        return _("Rows without a timing on this profile cannot be sized; time them with `ptsa latency`.")

    # -- Evidence tab -------------------------------------------------------------------------

    def refresh_evidence_tab(self) -> None:
        """Plot accuracy and latency against sparsity for the model of the highlighted candidate."""
        title = self.query_one("#evidence-title", Static)
        accuracy_plot = self.query_one("#accuracy-plot", PlotextPlot)
        latency_plot = self.query_one("#latency-plot", PlotextPlot)
        detail = self.query_one("#evidence-detail", Static)
        for plot in (accuracy_plot, latency_plot):
            plot.plt.clear_figure()
            plot.plt.clear_data()
        candidate = self.selected
        if candidate is None:
            title.update(_("Highlight a candidate on the Recommend tab (F2) to see its evidence."))
            detail.update("")
            for plot in (accuracy_plot, latency_plot):
                plot.refresh()
            return
        row = candidate.row
        profile = self.result.profile.env_key if self.result and self.result.profile else None
        try:
            with open_for_reading(self.db_path, wait_seconds=1.0) as store:
                evidence = model_evidence(store, row["model_key"], row["dataset"], profile, self.budget.batch_size,
                                          row["result_id"])
        except DatabaseError as exc:
            title.update(_("Cannot read the database: {error}").format(error=exc.localized(_)))
            return
        title.update(_("{model} on {dataset}: ● measured, ◆ published, ○ predicted with its 80 % interval").format(
            model=row["model_key"], dataset=row["dataset"]))
        plt = accuracy_plot.plt
        if evidence.dense_accuracy is not None:
            # ASCII legend labels: plotext counts a double-width character as one column.
            plt.scatter([0.0], [evidence.dense_accuracy], marker="■", label="dense")
        markers = {"measured": "●", "published": "◆", "predicted": "○"}
        for name, points in evidence.accuracy.items():
            for provenance, marker in markers.items():
                chosen = [p for p in points if p.provenance == provenance]
                if chosen:
                    plt.scatter([p.sparsity * 100 for p in chosen], [p.accuracy for p in chosen], marker=marker,
                                label=name if provenance == "measured" or not any(
                                    p.provenance == "measured" for p in points) else None)
            for point in (p for p in points if p.low is not None and p.high is not None):
                plt.plot([point.sparsity * 100] * 2, [point.low, point.high], marker="·")
        plt.title(_("accuracy % against sparsity %"))
        accuracy_plot.refresh()
        plt = latency_plot.plt
        for runtime, points in evidence.latency.items():
            plt.plot([s * 100 for s, _p50 in points], [p50 for _s, p50 in points], marker="●", label=runtime)
        plt.title(_("p50 ms against sparsity % (magnitude, batch {batch})").format(batch=self.budget.batch_size)
                  if evidence.latency else _("no latency sweep on this profile: run `ptsa latency`"))
        latency_plot.refresh()
        layers = sorted(evidence.layers.items(), key=lambda item: -item[1])
        layer_text = ", ".join(f"{name} {value:.0%}" for name, value in layers[:6])
        detail.update("\n".join([
            *self._provenance_lines(row),
            _("most pruned layers: {layers}").format(layers=layer_text) if layer_text
            else _("per-layer sparsity: not stored for this result"),
        ]))

    # -- Runs tab -----------------------------------------------------------------------------

    @on(RunsPane.Finished)
    def _run_finished(self, message: RunsPane.Finished) -> None:
        self.action_reload()
        if self.query_one(TabbedContent).active == "evidence-tab":
            self.refresh_evidence_tab()

    def on_unmount(self) -> None:
        self.runs_pane.stop()  # the widgets are gone by now, so the pane is kept from compose

    # -- actions ------------------------------------------------------------------------------

    def action_show_tab(self, tab: str) -> None:
        # Leave the focused input first: a focused widget in the old tab pulls the old tab back.
        self.set_focus(None)
        tabs = self.query_one(TabbedContent)
        tabs.active = tab
        first = {"recommend": "#ranking", "roi": "#peak-rps", "models": "#models-filter", "runs": "#run-model",
                 "help": "#help-scroll"}.get(tab)
        if first is not None:
            self.call_after_refresh(self.query_one(first).focus)

    async def action_quit(self) -> None:
        """Quit; while a bench runs, ask first, since quitting cancels it."""
        if not self.runs_pane.running:
            self.exit()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.exit()  # on_unmount cancels the bench and waits for it

        self.push_screen(Confirm(_("A bench is running. Quit and cancel it? Jobs in progress are lost; "
                                   "finished jobs stay stored, and the same bench resumes from them."), _("Quit"), _("Keep running")), answered)

    def action_reload(self) -> None:
        """Read the database again: datasets, profiles, the ranking and, once opened, the Models tab."""
        self._load()
        self.query_one(BudgetForm).set_choices(self.dataset_names, self.profiles, self.task_names, self.dataset_tasks)
        self.start_ranking()
        self.query_one(ModelsPane).reload()

    def action_toggle_inputs(self) -> None:
        """Hide or show the input columns, so the tables get the whole width of a narrow terminal."""
        for form in (self.query_one(BudgetForm), self.query_one(WorkloadForm)):
            form.display = not form.display
        if not self.query_one(BudgetForm).display and isinstance(self.focused, Input):
            self.set_focus(None)

    def action_focus_table(self) -> None:
        self.query_one(TabbedContent).active = "recommend"
        self.query_one("#ranking", DataTable).focus()


def fill_table(table: DataTable, headers: list[str], rows: list[list[str]]) -> None:
    """Replace a table's columns and rows, each column as wide as its widest cell.

    The widths are set here rather than left to the table, which measures new rows only when the
    app is next idle: a table filled from a worker could otherwise show a frame with columns cut
    to their headers' width.
    """
    table.clear(columns=True)
    for position, header in enumerate(headers):
        width = max([cell_len(header), *(cell_len(row[position]) for row in rows)])
        table.add_column(header, width=width)
    for index, row in enumerate(rows):
        table.add_row(*row, key=str(index))


def _money(value: float | None, currency: str, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f} {currency}"


def run_app(db_path: Path, budget: Budget | None = None, workload: Workload | None = None,
            lang: str | None = None) -> None:
    PTSAdvisorApp(db_path, budget, workload, lang).run()
