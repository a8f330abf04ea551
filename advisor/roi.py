"""The cost of a candidate under a workload, next to the dense model it would replace.

One instance (a server, a VM, a GPU or an edge device) runs one copy of the model and serves
batches back to back, as the timing did, on the profiled hardware and threads. So it serves

    capacity = batch size × 1000 / p50 latency (ms)    inferences per second,

and the peak rate needs ceil(peak / (capacity × utilisation)) instances, where utilisation is
the share of capacity one plans to use at peak (headroom for bursts). With a price per
instance-hour the cost is instances × price × 730 hours a month (365 × 24 / 12). With a price
per device it is instances × price, paid once.

A sparse candidate is sized from its own timing only when interleaved rounds against its dense
model measured a change beyond 5 % (`MEASURABLE_CHANGE`): timings made apart drift by up to 45 %
on a shared machine (docs/benchmarks.md). Otherwise it is sized like its dense model, and the
saving, if any, is weight memory and storage, not compute.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from advisor.labels import Gettext
from bench_engine.runtime_names import MEASURABLE_CHANGE
from db.errors import TranslatableError

if TYPE_CHECKING:
    from advisor.recommend import Candidate

HOURS_PER_MONTH = 730.0  # 365 days × 24 hours / 12 months
DAYS_PER_MONTH = 365.0 / 12
SECONDS_PER_DAY = 86400.0


class WorkloadError(TranslatableError, ValueError):
    """A workload value is invalid (negative rate, both prices, utilisation above 100 %, ...)."""


@dataclass(frozen=True)
class Workload:
    """The traffic and prices that turn latency into instances and money."""

    peak_rps: float  # requests per second at peak; one request is one input image
    price_per_hour: float | None = None  # per instance-hour
    price_per_device: float | None = None  # per device, paid once
    requests_per_day: float | None = None
    instances_today: int | None = None  # what runs the dense model now, for the saving against today
    utilisation: float = 0.6  # share of one instance's capacity planned for at peak, 0 to 1
    currency: str = "USD"
    baseline_model: str | None = None  # the dense model deployed today; None compares each to its own dense model

    def __post_init__(self) -> None:
        if not (self.peak_rps > 0 and math.isfinite(self.peak_rps)):
            raise WorkloadError("peak rate {value!r} requests/s is invalid; give a positive number, "
                                "for example --peak-rps 50.", value=self.peak_rps)
        prices = [p for p in (self.price_per_hour, self.price_per_device) if p is not None]
        if len(prices) != 1:
            raise WorkloadError("give exactly one price: --price-per-hour for instances billed by the hour, or "
                                "--price-per-device for devices bought once.")
        if not (prices[0] > 0 and math.isfinite(prices[0])):
            raise WorkloadError("price {value!r} is invalid; give a positive amount, for example "
                                "--price-per-hour 1.2.", value=prices[0])
        if self.requests_per_day is not None:
            if not (self.requests_per_day >= 0 and math.isfinite(self.requests_per_day)):
                raise WorkloadError("requests per day {value!r} is invalid; give 0 or more.",
                                    value=self.requests_per_day)
            average = self.requests_per_day / SECONDS_PER_DAY
            if average > self.peak_rps * (1 + 1e-9):
                raise WorkloadError(
                    "{per_day:g} requests per day average {average:.2f} requests/s, above the peak of "
                    "{peak:g}/s; raise --peak-rps or check --requests-per-day.",
                    per_day=self.requests_per_day, average=average, peak=self.peak_rps,
                )
        if self.instances_today is not None and self.instances_today < 1:
            raise WorkloadError("instances today {value!r} is invalid; give 1 or more.", value=self.instances_today)
        if not (0 < self.utilisation <= 1):
            raise WorkloadError("target utilisation {percent:g} % is out of range; give a "
                                "percentage above 0 and at most 100, for example --utilisation 60.",
                                percent=self.utilisation * 100)
        if not self.currency or len(self.currency) > 8:
            raise WorkloadError("currency {value!r} is invalid; give a short label such as USD or JPY.",
                                value=self.currency)

    @property
    def per_device(self) -> bool:
        return self.price_per_device is not None

    @property
    def price(self) -> float:
        return self.price_per_device if self.per_device else self.price_per_hour  # type: ignore[return-value]

    def cost(self, instances: int) -> float:
        """Return the monthly cost of instances billed by the hour, or the price of devices bought once."""
        return instances * self.price if self.per_device else instances * self.price * HOURS_PER_MONTH

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cost_period"] = "once" if self.per_device else "month"
        return data


def capacity(latency_ms: float, batch_size: int) -> float:
    """Return the inferences per second one instance serves at this p50 latency and batch size."""
    return batch_size * 1000.0 / latency_ms


def instances_needed(peak_rps: float, capacity_rps: float, utilisation: float) -> int:
    """Return the instances that serve the peak with each one used at most at `utilisation`."""
    # The small tolerance keeps an exact fit (peak = 2 × usable capacity) at 2, not 3.
    return max(1, math.ceil(peak_rps / (capacity_rps * utilisation) - 1e-9))


@dataclass
class Costing:
    """The instances, cost and memory of one candidate and of the dense model it is compared with."""

    sized_p50_ms: float | None  # the p50 that sized it: its own, or its dense model's (see sized_by)
    capacity_rps: float | None  # one instance at full use
    instances: int | None
    cost: float | None  # per month, or once with a price per device
    sized_by: str  # 'own_timing', 'dense_timing' (no measured change) or 'none'
    speedup: float | None  # measured dense p50 / this p50 in interleaved rounds
    baseline_model: str | None
    baseline_instances: int | None
    baseline_cost: float | None
    saving: float | None  # baseline cost − cost
    saving_vs_today: float | None
    cost_per_million: float | None  # per million requests, with a price per hour and requests per day
    weight_mb: float | None
    baseline_weight_mb: float | None
    storage_mb: float | None
    baseline_storage_mb: float | None
    accuracy_given_up: float | None  # points below the baseline's accuracy
    notes: list[dict[str, str]] = field(default_factory=list)

    @property
    def compute_saving(self) -> bool:
        return self.sized_by == "own_timing" and self.speedup is not None and self.speedup > 1 + MEASURABLE_CHANGE

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "compute_saving": self.compute_saving}


def _megabytes(value: int | None) -> float | None:
    return None if value is None else value / 1e6


def _sized_latency(candidate: Candidate, own_dense: Candidate | None) -> tuple[float | None, str, float | None]:
    """Return the p50 that sizes the candidate, how it was chosen, and the measured speedup."""
    timing = candidate.timing
    if timing is None:
        return None, "none", None
    if candidate.is_dense:
        return timing.p50_ms, "own_timing", None
    speedup = timing.speedup if timing.source in ("result", "same_sparsity") else None
    if speedup is not None and abs(speedup - 1.0) > MEASURABLE_CHANGE:
        return timing.p50_ms, "own_timing", speedup
    dense_timing = own_dense.timing if own_dense is not None else None
    return (dense_timing or timing).p50_ms, "dense_timing", speedup


def _english(message: str) -> str:
    return message


def note_text(code: str, candidate: Candidate, costing: Costing, t: Gettext = _english) -> str:
    """Return the costing note `code` of a candidate as a sentence in the language of `t` (English by default).

    The English sentence is the note's `detail`; the CLI calls this again with `_` to show it translated.
    """
    runtime = candidate.runtime
    if code == "no_timing":
        return t("no timing on {runtime} at batch {batch} on this profile, so instances are unknown").format(
            runtime=runtime or t("the runtime"), batch=candidate.batch_size)
    if code == "no_compute_saving":
        return t("no speed-up measured on {runtime}: sized like the dense model; the saving is weight memory and "
                 "storage, not compute").format(runtime=runtime)
    more = costing.instances is not None and costing.baseline_instances is not None \
        and costing.instances > costing.baseline_instances
    if more:
        return t("{speedup:.2f}× the dense speed on {runtime}: needs more instances").format(
            speedup=costing.speedup, runtime=runtime)
    return t("{speedup:.2f}× the dense speed on {runtime}; the rounding to whole instances hides it").format(
        speedup=costing.speedup, runtime=runtime)


def costing(candidate: Candidate, own_dense: Candidate | None, baseline: Candidate | None,
            workload: Workload) -> Costing:
    """Size and price one candidate and its baseline (a dense model on the same runtime)."""
    latency, sized_by, speedup = _sized_latency(candidate, own_dense)
    batch = candidate.batch_size
    codes: list[str] = []  # note codes in order; their text needs the finished costing
    capacity_rps = instances = cost = None
    if latency:
        capacity_rps = capacity(latency, batch)
        instances = instances_needed(workload.peak_rps, capacity_rps, workload.utilisation)
        cost = workload.cost(instances)
    else:
        codes.append("no_timing")
    if sized_by == "dense_timing":
        codes.append("no_compute_saving")

    baseline_instances = baseline_cost = saving = None
    if baseline is not None:
        base_latency, _, _ = _sized_latency(baseline, baseline)
        if base_latency:
            baseline_instances = instances_needed(workload.peak_rps, capacity(base_latency, batch), workload.utilisation)
            baseline_cost = workload.cost(baseline_instances)
            saving = None if cost is None else baseline_cost - cost
    if speedup is not None and speedup < 1 - MEASURABLE_CHANGE and sized_by == "own_timing":
        codes.append("slower_than_dense")
    today = None if workload.instances_today is None else workload.cost(workload.instances_today)
    per_million = None
    if cost is not None and not workload.per_device and workload.requests_per_day:
        per_million = cost / (workload.requests_per_day * DAYS_PER_MONTH / 1e6)
    given_up = candidate.drop  # below its own dense model, when no other baseline is named
    if workload.baseline_model is not None:
        given_up = None
        if baseline is not None and candidate.accuracy is not None and baseline.accuracy is not None \
                and candidate.metric == baseline.metric:
            given_up = baseline.accuracy - candidate.accuracy
    result = Costing(
        sized_p50_ms=latency, capacity_rps=capacity_rps, instances=instances, cost=cost, sized_by=sized_by, speedup=speedup,
        baseline_model=None if baseline is None else baseline.row["model_key"],
        baseline_instances=baseline_instances, baseline_cost=baseline_cost, saving=saving,
        saving_vs_today=None if today is None or cost is None else today - cost,
        cost_per_million=per_million,
        weight_mb=_megabytes(candidate.weight_bytes),
        baseline_weight_mb=None if baseline is None else _megabytes(baseline.weight_bytes),
        storage_mb=_megabytes(candidate.storage_bytes),
        baseline_storage_mb=None if baseline is None else _megabytes(baseline.storage_bytes),
        accuracy_given_up=given_up,
    )
    result.notes = [{"code": code, "detail": note_text(code, candidate, result)} for code in codes]
    return result
