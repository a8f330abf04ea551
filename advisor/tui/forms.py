"""The TUI's input forms: the budget (Recommend tab) and the workload (ROI tab).

Each form posts `Changed` with a valid value on every edit, or `Invalid` with the reason,
which names the field and the problem in the user's language.
"""

from __future__ import annotations

import math
from typing import Any

from textual import events, on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Select

from advisor.i18n import N_, _
from advisor.labels import TASK_NAMES
from advisor.recommend import LATENCY_STATS, OBJECTIVES, Budget
from bench_engine.runtime_names import PUBLISHED_RUNTIMES, RUNTIME_NAMES
from bench_engine.task_names import TASKS
from advisor.roi import Workload
from db import TranslatableError

ALL_DATASETS = "all"
BILLING = ("hour", "device")
BILLING_LABELS = {"hour": N_("instance-hour"), "device": N_("device, bought once")}
LATEST_PROFILE = "latest"  # the Select value for "the most recent profile with timings"
KNOWN_RUNTIMES = RUNTIME_NAMES + PUBLISHED_RUNTIMES
OBJECTIVE_LABELS = {"accuracy": N_("highest accuracy"), "latency": N_("lowest latency"),
                    "sparsity": N_("highest sparsity"), "cost": N_("lowest cost")}


def parse_number(text: str, label: str, integer: bool = False) -> float | int | None:
    """Return the number in `text`, None when empty; raises ValueError naming the field."""
    text = text.strip()
    if not text:
        return None
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise ValueError(_("{field}: {text!r} is not a number").format(field=label, text=text)) from None
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(_("{field}: NaN is not a valid value").format(field=label))
    return value


class FieldInput(Input):
    """A form input whose Backspace is handled with the key, in typing order.

    Textual's Input deletes through a key binding, which runs as a separate step: while the app
    is busy showing a new ranking, a Backspace could land after characters typed later.
    """

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "backspace":
            event.stop()
            event.prevent_default()
            self._restart_blink()
            self.action_delete_left()
            return
        await super()._on_key(event)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else f"{value:g}"


class _Form(VerticalScroll):
    """A column of labelled inputs that reports every change."""

    class Changed(Message):
        def __init__(self, value: Any) -> None:
            super().__init__()
            self.value = value

    class Invalid(Message):
        def __init__(self, reason: str) -> None:
            super().__init__()
            self.reason = reason

    FIELDS: tuple[tuple[str, str, str], ...] = ()  # (input id, label, placeholder)

    def _inputs(self, values: dict[str, Any]) -> ComposeResult:
        for field_id, label, placeholder in self.FIELDS:
            yield Label(_(label))
            yield FieldInput(value=_fmt(values.get(field_id)), placeholder=_(placeholder), id=field_id, compact=True)

    def text(self, field_id: str) -> str:
        return self.query_one(f"#{field_id}", Input).value

    def number(self, field_id: str, integer: bool = False) -> float | int | None:
        label = next(_(label) for fid, label, _placeholder in self.FIELDS if fid == field_id)
        return parse_number(self.text(field_id), label, integer)

    def read(self) -> Any:
        raise NotImplementedError

    @on(Input.Changed)
    @on(Select.Changed)
    def _inputs_changed(self) -> None:
        try:
            self.post_message(self.Changed(self.read()))
        except TranslatableError as exc:  # BudgetError, WorkloadError: out-of-range values
            self.post_message(self.Invalid(exc.localized(_)))
        except ValueError as exc:  # parse_number's messages, already in the user's language
            self.post_message(self.Invalid(str(exc)))


class BudgetForm(_Form):
    """Budget inputs; runtimes, profile and the allowed patterns come from the command line."""

    class Changed(_Form.Changed):
        """The inputs form a valid budget (`value`)."""

    class Invalid(_Form.Invalid):
        """An input cannot be read as a budget; `reason` names the input and the problem."""

    FIELDS = (
        ("max-latency", N_("Max latency ms"), N_("none")),
        ("batch-size", N_("Batch size"), "1"),
        ("min-throughput", N_("Min throughput /s"), N_("none")),
        ("min-accuracy", N_("Min accuracy %"), N_("none")),
        ("max-drop", N_("Max drop (points)"), N_("none")),
        ("max-relative-drop", N_("Max relative drop %"), N_("none")),
        ("max-weight", N_("Max weight MB"), N_("none")),
        ("margin", N_("Headroom %"), "0"),
    )

    def __init__(self, budget: Budget, datasets: list[str], profiles: list[tuple[str, str]] | None = None,
                 tasks: list[str] | None = None, dataset_tasks: dict[str, str] | None = None, **kwargs: Any) -> None:
        """Keep the initial budget and the choices.

        `profiles` lists (env_key, description) for each hardware profile with timings, newest first.
        `tasks` lists the tasks with results; the task choice shows only when there is more than
        classification to choose from. `dataset_tasks` maps each dataset to its task, so the
        dataset choice offers the datasets of the chosen task.
        """
        super().__init__(**kwargs)
        self._initial = budget
        self._datasets = datasets
        self._profiles = profiles or []
        self._tasks = tasks or []
        self._dataset_tasks = dataset_tasks or {}

    def compose(self) -> ComposeResult:
        b = self._initial
        values = {"max-latency": b.max_latency_ms, "batch-size": b.batch_size, "min-throughput": b.min_throughput,
                  "min-accuracy": b.min_accuracy, "max-drop": b.max_drop, "max-relative-drop": b.max_relative_drop,
                  "max-weight": b.max_weight_mb, "margin": b.margin_pct or None}
        yield from self._inputs(values)
        yield Label(_("Latency statistic"))
        yield Select([(s, s) for s in LATENCY_STATS], value=b.latency_stat, allow_blank=False, id="latency-stat",
                     compact=True)
        yield Label(_("Objective"))
        yield Select([(_(OBJECTIVE_LABELS[o]), o) for o in OBJECTIVES], value=b.objective, allow_blank=False,
                     id="objective", compact=True)
        shown = self._task_choice_shown()
        yield Label(_("Task"), id="task-label").set_class(not shown, "-hidden")
        yield Select([(_(TASK_NAMES[t]), t) for t in TASKS], value=b.task, allow_blank=False, id="task",
                     compact=True).set_class(not shown, "-hidden")
        yield Label(_("Dataset"))
        offered = self._datasets_of(b.task)
        value = b.dataset if b.dataset in offered else ALL_DATASETS
        yield Select(self._dataset_options(b.task), value=value, allow_blank=False, id="dataset", compact=True)
        yield Label(_("Runtimes"))
        yield FieldInput(value=",".join(b.runtimes), placeholder=",".join(KNOWN_RUNTIMES[:3]), id="runtimes",
                         compact=True)
        yield Label(_("Hardware profile"))
        options = [(_("latest with timings"), LATEST_PROFILE)] + [(label, key) for key, label in self._profiles]
        keys = [key for key, _label in self._profiles]
        # A --profile prefix from the command line picks the profile it names.
        chosen = next((key for key in keys if b.profile and key.startswith(b.profile)), LATEST_PROFILE)
        yield Select(options, value=chosen, allow_blank=False, id="profile", compact=True)

    def _datasets_of(self, task: str) -> list[str]:
        return [d for d in self._datasets if self._dataset_tasks.get(d, "classification") == task]

    def _dataset_options(self, task: str) -> list[tuple[str, str]]:
        return [(_("all"), ALL_DATASETS)] + [(d, d) for d in self._datasets_of(task)]

    @on(Select.Changed, "#task")
    def _task_changed(self, event: Select.Changed) -> None:
        """Offer the datasets of the chosen task; a dataset of the other task falls back to all."""
        select = self.query_one("#dataset", Select)
        current = select.value
        offered = self._datasets_of(str(event.value))
        select.set_options(self._dataset_options(str(event.value)))
        select.value = current if current in offered else ALL_DATASETS

    def _task_choice_shown(self) -> bool:
        return any(task != "classification" for task in self._tasks) or self._initial.task != "classification"

    def set_choices(self, datasets: list[str], profiles: list[tuple[str, str]], tasks: list[str] | None = None,
                    dataset_tasks: dict[str, str] | None = None) -> None:
        """Offer the datasets, profiles and tasks the database contains now, keeping the current choices."""
        if dataset_tasks is not None:
            self._dataset_tasks = dataset_tasks
        if tasks is not None and tasks != self._tasks:
            self._tasks = tasks
            shown = self._task_choice_shown()
            self.query_one("#task-label", Label).set_class(not shown, "-hidden")
            self.query_one("#task", Select).set_class(not shown, "-hidden")
        if datasets != self._datasets:
            self._datasets = datasets
            select = self.query_one("#dataset", Select)
            current = select.value
            task = str(self.query_one("#task", Select).value)
            select.set_options(self._dataset_options(task))
            select.value = current if current in self._datasets_of(task) else ALL_DATASETS
        if profiles != self._profiles:
            self._profiles = profiles
            select = self.query_one("#profile", Select)
            current = select.value
            select.set_options([(_("latest with timings"), LATEST_PROFILE)] + [(label, key) for key, label in profiles])
            select.value = current if current in {key for key, _label in profiles} else LATEST_PROFILE

    def read(self) -> Budget:
        """Build a budget from the inputs; raises ValueError or BudgetError naming the bad field."""
        b = self._initial
        dataset = self.query_one("#dataset", Select).value
        batch = self.number("batch-size", integer=True)
        runtimes = tuple(r.strip() for r in self.text("runtimes").split(",") if r.strip())
        unknown = [r for r in runtimes if r not in KNOWN_RUNTIMES]
        if unknown:
            raise ValueError(_("{field}: unknown runtime {name!r}; use one or more of {choices}, separated by "
                               "commas.").format(field=_("Runtimes"), name=unknown[0], choices=", ".join(KNOWN_RUNTIMES)))
        profile = self.query_one("#profile", Select).value
        return Budget(
            max_latency_ms=self.number("max-latency"),
            latency_stat=str(self.query_one("#latency-stat", Select).value),
            batch_size=1 if batch is None else batch,
            min_throughput=self.number("min-throughput"),
            min_accuracy=self.number("min-accuracy"),
            max_drop=self.number("max-drop"),
            max_relative_drop=self.number("max-relative-drop"),
            max_weight_mb=self.number("max-weight"),
            margin_pct=self.number("margin") or 0.0,
            accuracy_margin=b.accuracy_margin,
            patterns=b.patterns,
            objective=str(self.query_one("#objective", Select).value),
            dataset=None if dataset == ALL_DATASETS else str(dataset),
            task=str(self.query_one("#task", Select).value),
            include_dense=b.include_dense,
            runtimes=runtimes,
            profile=None if profile == LATEST_PROFILE else str(profile),
        )


class WorkloadForm(_Form):
    """Workload inputs of the ROI what-if; empty until the peak rate and a price are given."""

    class Changed(_Form.Changed):
        """The inputs form a valid workload (`value`), or None while the peak rate or the price is empty."""

    class Invalid(_Form.Invalid):
        """An input cannot be read as a workload; `reason` names the input and the problem."""

    FIELDS = (
        ("peak-rps", N_("Peak requests/s"), N_("required")),
        ("price", N_("Price"), N_("required")),
        ("requests-per-day", N_("Requests per day"), N_("optional")),
        ("instances-today", N_("Instances today"), N_("optional")),
        ("utilisation", N_("Utilisation %"), "60"),
        ("currency", N_("Currency"), "USD"),
    )

    def __init__(self, workload: Workload | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._initial = workload

    def compose(self) -> ComposeResult:
        w = self._initial
        values = {"currency": "USD"} if w is None else {
            "peak-rps": w.peak_rps, "price": w.price, "requests-per-day": w.requests_per_day,
            "instances-today": w.instances_today, "utilisation": w.utilisation * 100, "currency": w.currency}
        fields = self._inputs(values)
        yield from (next(fields) for _ in range(4))  # peak rate and price, each a label and an input
        yield Label(_("Price is per"))
        yield Select([(_(BILLING_LABELS[b]), b) for b in BILLING], allow_blank=False, id="billing", compact=True,
                     value="device" if w is not None and w.per_device else "hour")
        yield from fields

    def read(self) -> Workload | None:
        peak, price = self.number("peak-rps"), self.number("price")
        if peak is None or price is None:
            return None
        utilisation = self.number("utilisation")
        per_device = self.query_one("#billing", Select).value == "device"
        return Workload(
            peak_rps=peak,
            price_per_hour=None if per_device else price,
            price_per_device=price if per_device else None,
            requests_per_day=self.number("requests-per-day"),
            instances_today=self.number("instances-today", integer=True),
            utilisation=(60.0 if utilisation is None else utilisation) / 100.0,
            currency=self.text("currency").strip() or "USD",
        )
