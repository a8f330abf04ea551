"""Rank model × method × sparsity candidates from stored evidence under a budget.

This module is the headless core shared by the CLI and the TUI. It reads rows from the store,
checks each against the budget and ranks the ones that fit. When none fits, it names the
constraint that failed and the nearest candidates.

Accuracy comes from each result row. Latency comes from timings on one hardware profile (an
environment key), one runtime and one batch size, never mixed, and never estimated from FLOPs
or parameter counts: a candidate without a measured timing on that profile has no latency.
`LatencyEvidence` picks, for each candidate, the timing that applies, in this order:

1. a timing of this very result (`ptsa bench`, or `ptsa bench --runtime`);
2. a timing of the same model at the same sparsity and pattern (`ptsa latency`, magnitude
   mask), for results with uniform allocation: on a given runtime the latency depends on how
   many zeros each layer has and where, hardly on which criterion chose them;
3. the dense model's timing, when every sparse timing of this model on this runtime ran dense
   kernels only, since then the zeros are multiplied like any other weight.

Each candidate records which of these it used.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from bench_engine.runtime_names import MEASURABLE_CHANGE, PUBLISHED_RUNTIMES
from bench_engine.task_names import TASKS
from db import Store, TranslatableError

OBJECTIVES = ("accuracy", "latency", "sparsity", "cost")
LATENCY_STATS = ("p50", "p90")
# Every limit a budget can set, in the order they are checked and shown.
CONSTRAINTS = ("max_latency_ms", "min_throughput", "min_accuracy", "max_drop", "max_relative_drop", "max_weight_mb")


class BudgetError(TranslatableError, ValueError):
    """A budget value is invalid (negative latency, accuracy above 100 %, ...)."""


def _positive(value: float | None) -> bool:
    return value is None or (value > 0 and math.isfinite(value))


def parse_pattern_name(text: str) -> str:
    """Return 'unstructured' or a normalised 'N:M'; raises BudgetError for anything else."""
    text = text.strip()
    if text == "unstructured":
        return text
    n, _, m = text.partition(":")
    if n.isdigit() and m.isdigit() and 0 < int(n) < int(m):
        return f"{int(n)}:{int(m)}"
    raise BudgetError("pattern {text!r} is invalid; use unstructured or N:M with N < M, for example 2:4.", text=text)


@dataclass(frozen=True)
class Budget:
    """Limits a candidate must meet, and what to optimise among those that do.

    Accuracy limits apply to each row's primary metric: top-1 (percent) on labelled data, or
    top-1 agreement with the dense model (percent) on unlabelled data. For `task='detection'` the
    metric is box mAP@[.5:.95] (percent) on labelled data, or the box mAP of the sparse model's
    boxes scored against the dense model's on unlabelled data. Only rows of `task` compete. `margin_pct` is the
    headroom required on the latency, throughput and memory limits, in percent of each limit;
    `accuracy_margin` the headroom in points on the accuracy limits.
    """

    max_latency_ms: float | None = None
    latency_stat: str = "p90"
    batch_size: int = 1
    min_throughput: float | None = None  # inferences per second at batch_size, from the p50 latency
    min_accuracy: float | None = None
    max_drop: float | None = None  # points below the dense model
    max_relative_drop: float | None = None  # percent of the dense model's accuracy
    max_weight_mb: float | None = None  # weight memory in the runtime's format, MB (10^6 bytes)
    patterns: tuple[str, ...] | None = None  # allowed sparsity patterns; None allows all
    margin_pct: float = 0.0
    accuracy_margin: float = 0.0
    dataset: str | None = None
    task: str = "classification"
    objective: str = "accuracy"
    include_dense: bool = True
    # Latency evidence: the runtimes (each candidate is judged on each one that has a timing) and
    # the hardware profile (environment key, or a unique prefix of one). None picks the profile
    # with the most recent timing on one of the runtimes.
    runtimes: tuple[str, ...] = ("torch-eager",)
    profile: str | None = None

    def __post_init__(self) -> None:
        if not _positive(self.max_latency_ms):
            raise BudgetError(
                "max latency {value!r} ms is invalid; give a positive number of "
                "milliseconds, for example --max-latency-ms 20.", value=self.max_latency_ms
            )
        if self.latency_stat not in LATENCY_STATS:
            raise BudgetError("latency statistic {value!r} is invalid; use p50 or p90.", value=self.latency_stat)
        if self.batch_size < 1:
            raise BudgetError("batch size {value} is invalid; it must be at least 1.", value=self.batch_size)
        if not _positive(self.min_throughput):
            raise BudgetError("minimum throughput {value!r} is invalid; give a positive number of "
                              "inferences per second, for example --min-throughput 200.", value=self.min_throughput)
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 100:
            raise BudgetError(
                "minimum accuracy {value!r} is out of range; it is a percentage "
                "between 0 and 100, for example --min-accuracy 90.", value=self.min_accuracy
            )
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise BudgetError(
                "maximum drop {value!r} is out of range; it is in percentage points "
                "between 0 and 100, for example --max-drop 2.", value=self.max_drop
            )
        if self.max_relative_drop is not None and not 0 <= self.max_relative_drop <= 100:
            raise BudgetError(
                "maximum relative drop {value!r} is out of range; it is a percentage of the "
                "dense accuracy between 0 and 100, for example --max-relative-drop 1.", value=self.max_relative_drop
            )
        if not _positive(self.max_weight_mb):
            raise BudgetError("maximum weight memory {value!r} MB is invalid; give a positive number "
                              "of megabytes, for example --max-weight-mb 20.", value=self.max_weight_mb)
        if not (0 <= self.margin_pct < 100 and math.isfinite(self.margin_pct)):
            raise BudgetError("margin {value!r} % is out of range; give a percentage from 0 to below 100, "
                              "for example --margin 10.", value=self.margin_pct)
        if not 0 <= self.accuracy_margin <= 100:
            raise BudgetError("accuracy margin {value!r} is out of range; give points from 0 to 100, "
                              "for example --accuracy-margin 0.5.", value=self.accuracy_margin)
        if self.task not in TASKS:
            raise BudgetError("task {value!r} is invalid; use one of {choices}.", value=self.task,
                              choices=", ".join(TASKS))
        if self.objective not in OBJECTIVES:
            raise BudgetError("objective {value!r} is invalid; use one of {choices}.", value=self.objective,
                              choices=", ".join(OBJECTIVES))
        if not self.runtimes:
            raise BudgetError("no runtime given; name at least one, for example --runtime torch-eager.")
        if self.patterns is not None:
            if not self.patterns:
                raise BudgetError("no pattern allowed; name at least one, for example --pattern unstructured.")
            object.__setattr__(self, "patterns", tuple(parse_pattern_name(p) for p in self.patterns))

    @property
    def runtime(self) -> str:
        """The first runtime, which picks the default profile."""
        return self.runtimes[0]

    def limit(self, constraint: str) -> float | None:
        """Return the stated limit of a constraint (without the margin), or None when unset."""
        return getattr(self, constraint)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["runtimes"] = list(self.runtimes)
        data["patterns"] = None if self.patterns is None else list(self.patterns)
        return data


@dataclass
class Candidate:
    """One stored result on one runtime, judged against a budget."""

    row: dict[str, Any]
    metric: str  # 'top1', 'top1_agreement', 'box_map' or 'box_map_fidelity' (see `primary_metric`)
    accuracy: float | None
    dense_accuracy: float | None
    latency_ms: float | None
    violations: dict[str, float] = field(default_factory=dict)  # constraint -> shortfall
    margins: dict[str, float] = field(default_factory=dict)  # constraint -> headroom to the stated limit
    slack: dict[str, float] = field(default_factory=dict)  # constraint -> headroom as a share of its range
    timing: Timing | None = None  # the timing behind latency_ms
    runtime: str | None = None  # None when no runtime of the budget has a timing for it
    batch_size: int = 1
    weight_bytes: int | None = None  # weights in the runtime's format
    weight_format: str | None = None
    storage_bytes: int | None = None  # weights in the smallest format, to store or ship
    # {'code': ..., 'detail': English text, and the values the text names, for other languages}
    risks: list[dict[str, Any]] = field(default_factory=list)
    pareto: bool = False
    costing: Any = None  # advisor.roi.Costing when the workload is known

    @property
    def drop(self) -> float | None:
        if self.accuracy is None or self.dense_accuracy is None:
            return None
        return self.dense_accuracy - self.accuracy

    @property
    def relative_drop(self) -> float | None:
        """Drop as a percentage of the dense accuracy."""
        if self.drop is None or not self.dense_accuracy:
            return None
        return 100.0 * self.drop / self.dense_accuracy

    @property
    def throughput(self) -> float | None:
        """Inferences per second at the budget's batch size, from the p50 latency."""
        if self.timing is None or not self.timing.p50_ms:
            return None
        return self.batch_size * 1000.0 / self.timing.p50_ms

    @property
    def is_dense(self) -> bool:
        return self.row["criterion"] == "dense"

    @property
    def feasible(self) -> bool:
        return not self.violations

    def binding(self) -> str | None:
        """Return the constraint with the least headroom relative to its range (the one that binds)."""
        if not self.slack:
            return None
        return min(self.slack, key=self.slack.get)

    def has_risk(self, code: str) -> bool:
        return any(r["code"] == code for r in self.risks)

    def to_dict(self, rank: int | None = None) -> dict[str, Any]:
        from advisor.formatting import method_label  # formatting imports this module

        row = self.row
        recipe = json.loads(row.get("recipe_json") or "{}")
        data = {
            "rank": rank,
            "model_key": row["model_key"],
            "architecture": row.get("architecture"),
            "dataset": row["dataset"],
            "method": method_label(row),
            # The canonical recipe with every parameter; 'dense' for the dense model.
            "recipe": "dense" if self.is_dense else recipe.get("recipe"),
            "criterion": row["criterion"],
            "allocation": row["allocation"],
            "pattern": row["pattern"],
            "requested_sparsity": row["requested_sparsity"],
            "achieved_sparsity": row["achieved_sparsity"],
            "runtime": self.runtime,
            "metric": self.metric,
            "accuracy": self.accuracy,
            "dense_accuracy": self.dense_accuracy,
            "drop": self.drop,
            "relative_drop": self.relative_drop,
            "top5": row.get("top5"),
            "kl_divergence": row.get("kl_divergence"),
            "latency_ms": self.latency_ms,
            "throughput_per_s": self.throughput,
            # Where latency_ms comes from: runtime, batch size, profile, threads, source.
            "latency": None if self.timing is None else self.timing.to_dict(),
            "weight_mb": None if self.weight_bytes is None else self.weight_bytes / 1e6,
            "weight_format": self.weight_format,
            "storage_mb": None if self.storage_bytes is None else self.storage_bytes / 1e6,
            "binding_constraint": self.binding(),
            "margins": self.margins,
            "violations": self.violations,
            "risks": self.risks,
            "pareto": self.pareto,
            "next_measurement": next_measurement(self),
            "cost": None if self.costing is None else self.costing.to_dict(),
            "evidence": {
                "provenance": row["provenance"],
                "source": row.get("source"),
                # For predicted rows: retention with its 80 % interval, the fit, and what drove it.
                "prediction": json.loads(row["prediction_json"]) if row.get("prediction_json") else None,
                "env_key": row.get("env_key"),
                "cpu_model": row.get("cpu_model"),
                "run_id": row.get("run_id"),
                "result_id": row["result_id"],
                "eval_size": row.get("eval_size"),
                "calibration_size": row.get("calibration_size"),
                "created_at": str(row.get("created_at")),
            },
        }
        return data


@dataclass
class Recommendation:
    """The ranked candidates that fit, or, when none does, why and what came closest."""

    budget: Budget
    ranked: list[Candidate]
    nearest: list[Candidate]
    failing_counts: dict[str, int]  # constraint -> candidates it rules out
    total: int
    profile: Profile | None = None  # the hardware profile whose timings were used
    workload: Any = None  # advisor.roi.Workload, when costs were computed
    # Set by advisor.ranking, which returns only the shown candidates: how many meet the budget,
    # and the Pareto front among all of them (result_id@runtime).
    meeting: int | None = None
    front: list[str] | None = None

    @property
    def found(self) -> bool:
        return bool(self.ranked)

    @property
    def meeting_count(self) -> int:
        """How many candidates meet the budget (`ranked` may hold only the first of them)."""
        return len(self.ranked) if self.meeting is None else self.meeting

    def binding_constraint(self) -> str | None:
        """Return the constraint that rules out the most candidates (when none fits)."""
        if not self.failing_counts:
            return None
        return max(self.failing_counts, key=self.failing_counts.get)

    def pareto_front(self) -> list[Candidate]:
        """Return the ranked candidates that no other beats on accuracy, latency and weight memory at once."""
        return [c for c in self.ranked if c.pareto]

    def next_step(self, among: int = 10) -> tuple[Candidate, str] | None:
        """Return the shown candidate whose next measurement would remove the most doubt, and the command."""
        shown = self.ranked[:among] if self.found else self.nearest
        best: tuple[int, int, Candidate, str] | None = None
        for position, candidate in enumerate(shown):
            command = next_measurement(candidate)
            if command is None:
                continue
            weight = _uncertainty_weight(candidate)
            if best is None or (weight, -position) > (best[0], -best[1]):
                best = (weight, position, candidate, command)
        return None if best is None else (best[2], best[3])

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        ranked = self.ranked[:limit] if limit else self.ranked
        step = self.next_step(limit or 10)
        return {
            "schema_version": JSON_SCHEMA_VERSION,
            "status": "ok" if self.found else "no_candidate",
            "budget": self.budget.to_dict(),
            "workload": None if self.workload is None else self.workload.to_dict(),
            "latency_profile": None if self.profile is None else asdict(self.profile),
            "candidates_considered": self.total,
            "candidates_meeting_budget": len(self.ranked) if self.meeting is None else self.meeting,
            "candidates": [c.to_dict(rank=i + 1) for i, c in enumerate(ranked)],
            "pareto_front": self.front if self.front is not None else [
                f"{c.row['result_id']}@{c.runtime or ''}" for c in self.pareto_front()],
            "binding_constraint": None if self.found else self.binding_constraint(),
            "failing_counts": self.failing_counts,
            "nearest": [] if self.found else [c.to_dict() for c in self.nearest],
            "next_measurement": None if step is None else {"result_id": step[0].row["result_id"], "command": step[1]},
        }


# Raised when a field of the JSON output changes meaning or goes away (docs/json-output.md).
JSON_SCHEMA_VERSION = 1


def _uncertainty_weight(candidate: Candidate) -> int:
    """Rank how much a candidate's evidence is in doubt: higher means measure it first."""
    if candidate.has_risk("interval_crosses_limit"):
        return 5
    if candidate.row["provenance"] == "predicted":
        return 4
    if candidate.timing is None and candidate.runtime is not None:
        return 3
    if candidate.has_risk("latency_inferred"):
        return 2
    if candidate.row["provenance"] == "published":
        return 1
    return 0


# Data sets `ptsa bench --data` has built in; any other needs a folder of images.
BUILT_IN_DATA = ("mnist", "photos")


def _loadable(model_key: str) -> bool:
    """True for a model `ptsa` loads by name (MNIST baselines, named weights), not one that needs --weights."""
    return "@" not in model_key and (model_key.startswith("mnist/") or model_key.startswith("efficientnet_lite"))


def _bench_command(row: dict[str, Any], runtime: str | None, batch_size: int) -> str:
    """Return `ptsa bench` for this row's recipe and sparsity; WEIGHTS and DATA_DIR stand for what only the user has."""
    recipe = json.loads(row.get("recipe_json") or "{}").get("recipe")
    what = f"--recipe {shlex.quote(recipe)}" if recipe else f"--criterion {row['criterion']}"
    model = row["model_key"]
    if not _loadable(model):
        model = f"{row.get('architecture') or model.split('@')[0]} --weights WEIGHTS"
    data = row["dataset"] if row["dataset"] in BUILT_IN_DATA else "DATA_DIR"
    command = f"ptsa bench {model} --data {data} {what} --sparsity {row['requested_sparsity']:g}"
    if runtime is not None and runtime not in PUBLISHED_RUNTIMES:
        command += f" --runtime {runtime} --batch {batch_size}"
    return command


def next_measurement(candidate: Candidate) -> str | None:
    """Return the `ptsa` command that would replace this candidate's weakest evidence, or None.

    Latency does not depend on the weights' values, so `ptsa latency` runs on random weights
    where the model is not one `ptsa` loads by name. A bench needs the real weights and data;
    the command then names them WEIGHTS and DATA_DIR.
    """
    row = candidate.row
    runtime = candidate.runtime
    if row["provenance"] in ("predicted", "published") and not candidate.is_dense:
        return _bench_command(row, runtime, candidate.batch_size)
    if runtime is None or runtime in PUBLISHED_RUNTIMES:
        return None
    timing = candidate.timing
    if timing is not None and timing.source in ("result", "dense"):
        return None
    if candidate.is_dense and timing is None:
        model = row["model_key"] if _loadable(row["model_key"]) else \
            f"{row.get('architecture') or row['model_key'].split('@')[0]} --random-init"
        return f"ptsa latency {model} --runtime {runtime} --batch {candidate.batch_size} --sparsity 0.5"
    # A timing of the same sparsity, or of the dense model, is used in its place, so time this result itself.
    return _bench_command(row, runtime, candidate.batch_size)


LATENCY_SOURCES = {
    "result": "measured for this result",
    "same_sparsity": "measured for the same model, sparsity and pattern (magnitude mask)",
    "dense_kernels": "the dense model's timing: this runtime ran dense kernels only, so zeros do not change it",
    "dense": "measured for the dense model",
    "published_dense": "published for the same architecture and input size, dense",
}


@dataclass(frozen=True)
class Timing:
    """One latency measurement of a model on a profile, runtime and batch size."""

    model_key: str
    env_key: str
    runtime: str
    batch_size: int
    criterion: str
    pattern: str
    requested_sparsity: float
    p50_ms: float
    p90_ms: float
    sparse_kernel: str | None
    # Dense p50 / this p50 from interleaved rounds; None for dense rows and for timings made
    # alone (a bench's own latency), since two separate timings drift by up to 45 % on a shared
    # machine (docs/benchmarks.md).
    speedup: float | None
    result_id: str | None
    architecture: str | None = None
    input_size: int | None = None
    provenance: str = "measured"
    citation: str | None = None  # where a published timing comes from
    spread: float | None = None  # interquartile range / median of the timed passes
    source: str = "result"  # a key of LATENCY_SOURCES, set when a candidate takes it

    def stat(self, name: str) -> float | None:
        """Return p50 or p90; a published timing has no p90 (None)."""
        return self.p50_ms if name == "p50" else self.p90_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "batch_size": self.batch_size,
            "profile": self.env_key,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "sparse_kernel": self.sparse_kernel,
            "speedup_vs_dense": self.speedup,
            "source": LATENCY_SOURCES[self.source],
            "provenance": self.provenance,
            "citation": self.citation,
        }


@dataclass(frozen=True)
class Profile:
    """A hardware profile: the environment key and what it describes."""

    env_key: str
    cpu_model: str | None
    num_threads: int | None
    device: str | None


# Every timing: the latency table, and the latency each bench result measured itself.
TIMINGS_SQL = """
SELECT l.model_key, l.env_key, l.runtime, l.batch_size, l.criterion, l.pattern, l.requested_sparsity, l.p50_ms,
       l.p90_ms, l.sparse_kernel, l.speedup, l.result_id, m.architecture, m.input_size,
       coalesce(l.provenance, 'measured') AS provenance, l.source AS citation, l.spread, l.created_at
FROM latency l LEFT JOIN models m USING (model_key)
UNION ALL
SELECT r.model_key, r.env_key, r.runtime, r.latency_batch_size, r.criterion, r.pattern, r.requested_sparsity,
       r.latency_p50_ms, r.latency_p90_ms, NULL, NULL, r.result_id, m.architecture, m.input_size, 'measured', NULL,
       r.latency_spread, r.created_at
FROM results r LEFT JOIN models m USING (model_key)
WHERE r.provenance = 'measured' AND r.latency_p50_ms IS NOT NULL AND r.env_key IS NOT NULL
"""


def load_timings(store: Store) -> list[Timing]:
    """Read every measured timing: the latency table and each bench result's own latency."""
    rows = store.query(f"SELECT * FROM ({TIMINGS_SQL}) ORDER BY created_at")
    return [Timing(**{k: v for k, v in row.items() if k != "created_at"}) for row in rows]


def load_profiles(store: Store) -> dict[str, Profile]:
    rows = store.query("SELECT env_key, cpu_model, num_threads, device FROM environments")
    return {row["env_key"]: Profile(**row) for row in rows}


def timings_from_rows(rows: list[dict[str, Any]]) -> list[Timing]:
    """Return the timings held in result rows themselves (when no latency table was read)."""
    timings = []
    for row in sorted(rows, key=lambda r: str(r.get("created_at"))):
        if row.get("latency_p50_ms") is None or row.get("env_key") is None or row.get("provenance") != "measured":
            continue
        timings.append(Timing(
            row["model_key"], row["env_key"], row["runtime"], row["latency_batch_size"], row["criterion"],
            row["pattern"], row["requested_sparsity"], row["latency_p50_ms"], row["latency_p90_ms"], None, None,
            row["result_id"], spread=row.get("latency_spread"),
        ))
    return timings


def _sparsity_key(value: float) -> float:
    return round(float(value), 4)


class LatencyEvidence:
    """Timings indexed for lookup; later timings replace earlier ones of the same configuration."""

    def __init__(self, timings: list[Timing]):
        self.timings = timings
        self._by_result: dict[tuple, Timing] = {}
        self._by_config: dict[tuple, Timing] = {}
        self._dense: dict[tuple, Timing] = {}
        self._published_dense: dict[tuple, Timing] = {}
        self._kernels: dict[tuple, set[bool]] = {}
        for t in timings:  # oldest first
            where = (t.model_key, t.env_key, t.runtime, t.batch_size)
            if t.criterion == "dense":
                self._dense[where] = t
                if t.provenance == "published":
                    self._published_dense[(t.architecture, t.input_size, *where[1:])] = t
                continue
            if t.result_id is not None:
                self._by_result[(t.result_id, *where[1:])] = t
            if t.criterion == "magnitude" or t.result_id is None:
                self._by_config[(*where, t.pattern, _sparsity_key(t.requested_sparsity))] = t
            self._kernels.setdefault(where[:3], set()).add(t.sparse_kernel is not None)

    def profiles(self, runtimes: tuple[str, ...], batch_size: int) -> list[str]:
        """Return the profiles with timings on these runtimes and batch size, most recent first."""
        seen: list[str] = []
        for t in reversed(self.timings):
            if t.runtime in runtimes and t.batch_size == batch_size and t.env_key not in seen:
                seen.append(t.env_key)
        return seen

    def lookup(self, row: dict[str, Any], env_key: str, runtime: str, batch_size: int) -> Timing | None:
        """Return the timing that applies to a result row on this profile, runtime and batch."""
        where = (row["model_key"], env_key, runtime, batch_size)
        dense = self._dense.get(where)
        if row["criterion"] == "dense":
            if dense is not None:
                return replace(dense, source="dense")
            # A published accuracy row (one timm weight) and a published timing (its architecture).
            published = self._published_dense.get((row.get("architecture"), row.get("input_size"), *where[1:]))
            return None if published is None else replace(published, source="published_dense")
        found = self._by_result.get((row["result_id"], env_key, runtime, batch_size))
        if found is not None:
            return replace(found, source="result")
        # Another allocation puts the zeros in other layers, so a sparse kernel's time would differ.
        same_layout = row.get("allocation") == "uniform"
        found = self._by_config.get((*where, row["pattern"], _sparsity_key(row["requested_sparsity"])))
        if found is not None and same_layout:
            return replace(found, source="same_sparsity")
        if dense is not None and self._kernels.get(where[:3]) == {False}:
            return replace(dense, source="dense_kernels", speedup=1.0, criterion=row["criterion"])
        return None


def resolve_profile(evidence: LatencyEvidence, budget: Budget, known: dict[str, Profile]) -> str | None:
    """Return the environment key whose timings the budget uses; raises BudgetError for an unknown profile."""
    if budget.profile is None:
        measured = evidence.profiles(budget.runtimes, budget.batch_size)
        return measured[0] if measured else None
    matches = [key for key in known if key.startswith(budget.profile)]
    if len(matches) == 1:
        return matches[0]
    if not matches and not known:
        raise BudgetError(
            "profile {profile!r} is not in the database; known profiles: none. "
            "Run `ptsa profiles` to see what each one is.", profile=budget.profile
        )
    if not matches:
        raise BudgetError(
            "profile {profile!r} is not in the database; known profiles: {listed}. "
            "Run `ptsa profiles` to see what each one is.", profile=budget.profile, listed=", ".join(sorted(known))
        )
    raise BudgetError("profile {profile!r} matches {n} profiles ({matches}); give more characters.",
                      profile=budget.profile, n=len(matches), matches=", ".join(sorted(matches)))


_CANDIDATE_SQL = """
SELECT r.*, m.architecture, m.family, m.input_size, e.cpu_model
FROM results r
LEFT JOIN models m USING (model_key)
LEFT JOIN environments e USING (env_key)
WHERE (? IS NULL OR r.dataset = ?) AND coalesce(r.task, 'classification') = ?
"""

# A configuration measured again in the same environment counts once: its latest measurement.
_LATEST_SQL = _CANDIDATE_SQL + """
QUALIFY row_number() OVER (
    PARTITION BY r.model_key, r.dataset, r.labelled, r.provenance, r.criterion, r.allocation, r.pattern,
                 r.requested_sparsity, r.recipe_json, r.layer_policy_json, r.calibration_size,
                 r.calibration_seed, r.env_key, r.latency_batch_size
    ORDER BY r.created_at DESC, r.result_id
) = 1
"""


def load_candidates(store: Store, dataset: str | None = None, latest_only: bool = True,
                    task: str = "classification") -> list[dict[str, Any]]:
    """Read stored results of one task (optionally of one dataset) with their model and environment.

    With `latest_only`, a configuration benched several times in one environment appears once.
    """
    return store.query(_LATEST_SQL if latest_only else _CANDIDATE_SQL, [dataset, dataset, task])


def primary_metric(row: dict[str, Any]) -> tuple[str, float | None]:
    """Return (metric column, dense reference) of a row: what its accuracy limits apply to.

    On unlabelled data the metric compares the sparse model with the dense one, so the dense
    model's own value is 100.
    """
    labelled = bool(row.get("labelled"))
    if (row.get("task") or "classification") == "detection":
        return ("box_map", row.get("dense_box_map")) if labelled else ("box_map_fidelity", 100.0)
    return ("top1", row.get("dense_top1")) if labelled else ("top1_agreement", 100.0)


EVIDENCE_RANK = {"measured": 0, "published": 1, "predicted": 2}


def _preference(row: dict[str, Any]) -> tuple:
    created = row.get("created_at")
    stamp = -created.timestamp() if hasattr(created, "timestamp") else 0.0
    return (EVIDENCE_RANK[row["provenance"]], stamp, row["result_id"])


def prefer_measured(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep one row per model, dataset, recipe and sparsity: measured before published before predicted."""
    best: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        recipe = json.loads(row.get("recipe_json") or "{}").get("recipe") or row["criterion"]
        key = (row["model_key"], row["dataset"], recipe, row["pattern"], round(float(row["requested_sparsity"]), 4))
        current = best.get(key)
        # Among rows of the same kind, the newest wins, then the smallest id (as advisor.ranking does).
        if current is None or _preference(row) < _preference(current):
            best[key] = row
    chosen = {id(row) for row in best.values()}
    return [row for row in rows if id(row) in chosen]


# The weight format each runtime keeps pruned weights in. The 2:4 runtime stores the layers
# that fit the pattern semi-structured and the rest dense, as `semi_structured_2_4` counts
# them. The CSR runtime converts only Linear layers, so its bytes are counted dense: an upper
# bound. The others run dense kernels on dense weights.
RUNTIME_WEIGHT_FORMAT = {"torch-2:4-cuda": "semi_structured_2_4"}
# Above this spread (IQR / median) a timing is reported as unreliable, as `ptsa latency` warns.
NOISY_SPREAD = 0.10
# Below this share of a limit's range, a margin is reported as thin.
THIN_SLACK = 0.05
# Above this half-width of the 95 % interval of a top-1 on the evaluation set, in points, the
# evaluation set is reported as small.
WIDE_EVAL_INTERVAL = 1.0
# A detection result on fewer evaluation images is flagged (COCO val2017 has 5,000).
FEW_DETECTION_IMAGES = 500


def weight_bytes(row: dict[str, Any], runtime: str | None, dense_bytes: dict[str, int]) -> tuple[int | None, str, int | None]:
    """Return the weight bytes in the runtime's format, that format, and the smallest format's bytes."""
    storage_format = RUNTIME_WEIGHT_FORMAT.get(runtime or "", "dense")
    counted = json.loads(row["weight_bytes_json"]) if row.get("weight_bytes_json") else None
    if counted:
        return counted.get(storage_format), storage_format, min(counted.values())
    # Dense bytes do not depend on the mask, so the dense model's count serves every result.
    dense = dense_bytes.get(row["model_key"])
    return (dense if storage_format == "dense" else None), storage_format, (dense if row["criterion"] == "dense" else None)


def dense_weight_bytes(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Return each model's dense weight bytes from its rows that counted them (the largest count)."""
    found: dict[str, int] = {}
    for row in rows:
        if row.get("weight_bytes_json"):
            dense = json.loads(row["weight_bytes_json"]).get("dense")
            if dense:
                found[row["model_key"]] = max(dense, found.get(row["model_key"], 0))
    return found


def _check(candidate: Candidate, constraint: str, value: float | None, limit: float | None, required: float,
           span: float, lower_is_better: bool) -> None:
    """Record the margin or the shortfall of one constraint; `required` is the limit with the margin applied."""
    if limit is None:
        return
    if value is None:
        candidate.violations[constraint] = math.inf
        return
    shortfall = value - required if lower_is_better else required - value
    if shortfall > 1e-12:
        candidate.violations[constraint] = shortfall
        return
    headroom = limit - value if lower_is_better else value - limit
    candidate.margins[constraint] = headroom
    candidate.slack[constraint] = headroom / span if span > 0 else math.inf


def _accuracy_checks(candidate: Candidate, budget: Budget, accuracy: float | None) -> dict[str, tuple]:
    """Return the accuracy constraints as (value, limit, required, span, lower_is_better) for one accuracy."""
    dense = candidate.dense_accuracy
    drop = None if accuracy is None or dense is None else dense - accuracy
    margin = budget.accuracy_margin
    checks = {}
    if budget.min_accuracy is not None:
        checks["min_accuracy"] = (accuracy, budget.min_accuracy, budget.min_accuracy + margin,
                                  max(100.0 - budget.min_accuracy, 1.0), False)
    if budget.max_drop is not None:
        checks["max_drop"] = (drop, budget.max_drop, budget.max_drop - margin, max(budget.max_drop, 1.0), True)
    if budget.max_relative_drop is not None:
        relative = None if drop is None or not dense else 100.0 * drop / dense
        # The margin is in points of accuracy, so it is converted to a share of the dense accuracy.
        required = budget.max_relative_drop - (100.0 * margin / dense if dense else 0.0)
        checks["max_relative_drop"] = (relative, budget.max_relative_drop, required,
                                       max(budget.max_relative_drop, 1.0), True)
    return checks


def evaluate(row: dict[str, Any], budget: Budget, timing: Timing | None = None, runtime: str | None = None,
             dense_bytes: dict[str, int] | None = None) -> Candidate:
    """Check one row on one runtime, with the timing that applies to it, against the budget."""
    metric, dense_accuracy = primary_metric(row)
    accuracy = row.get(metric)
    latency = None if timing is None else timing.stat(budget.latency_stat)
    if runtime is None:
        runtime = timing.runtime if timing is not None else budget.runtime
    weights, weight_format, storage = weight_bytes(row, runtime, dense_bytes or {})
    candidate = Candidate(row, metric, accuracy, dense_accuracy, latency, timing=timing, runtime=runtime,
                          batch_size=budget.batch_size, weight_bytes=weights, weight_format=weight_format,
                          storage_bytes=storage)
    stretch = budget.margin_pct / 100.0
    if budget.max_latency_ms is not None:
        _check(candidate, "max_latency_ms", latency, budget.max_latency_ms, budget.max_latency_ms * (1 - stretch),
               budget.max_latency_ms, True)
    if budget.min_throughput is not None:
        _check(candidate, "min_throughput", candidate.throughput, budget.min_throughput,
               budget.min_throughput * (1 + stretch), budget.min_throughput, False)
    for constraint, args in _accuracy_checks(candidate, budget, accuracy).items():
        _check(candidate, constraint, *args)
    if budget.max_weight_mb is not None:
        megabytes = None if weights is None else weights / 1e6
        _check(candidate, "max_weight_mb", megabytes, budget.max_weight_mb, budget.max_weight_mb * (1 - stretch),
               budget.max_weight_mb, True)
    _add_risks(candidate, budget)
    return candidate


def _add_risks(candidate: Candidate, budget: Budget) -> None:
    """Flag what could make this candidate worse in production than it looks here."""
    row = candidate.row
    risks = candidate.risks
    if row["provenance"] == "predicted":
        risks.append({"code": "accuracy_predicted", "detail": "accuracy is predicted by the regressor, not measured"})
        low = json.loads(row.get("prediction_json") or "{}").get(f"{candidate.metric}_low")
        if low is not None and candidate.feasible:
            crossed = [name for name, args in _accuracy_checks(candidate, budget, low).items()
                       if args[0] is not None and (args[0] > args[2] if args[4] else args[0] < args[2])]
            if crossed:
                risks.append({"code": "interval_crosses_limit", "low": low, "constraints": crossed,
                              "detail": f"the 80 % interval's low end ({low:.1f}) misses {', '.join(crossed)}"})
    elif row["provenance"] == "published":
        risks.append({"code": "accuracy_published", "source": row.get("source") or "published",
                      "detail": f"accuracy measured elsewhere: {row.get('source') or 'published'}"})
    timing = candidate.timing
    if timing is None and candidate.runtime is not None:
        risks.append({"code": "latency_missing", "runtime": candidate.runtime, "batch_size": candidate.batch_size,
                      "detail": f"no timing on {candidate.runtime} at batch {candidate.batch_size} on this profile"})
    elif timing is not None and timing.source in ("same_sparsity", "dense_kernels"):
        risks.append({"code": "latency_inferred", "source": timing.source, "detail": LATENCY_SOURCES[timing.source]})
    elif timing is not None and timing.provenance == "published":
        risks.append({"code": "latency_published", "citation": timing.citation or "",
                      "detail": f"latency published by {timing.citation or 'a third party'}"})
    if timing is not None and timing.spread is not None and timing.spread > NOISY_SPREAD:
        risks.append({"code": "unreliable_timing", "spread": timing.spread,
                      "detail": f"the timing varied by {timing.spread:.0%} (IQR / median) while it was measured, so "
                                "its latency is unreliable; time it again on an idle machine"})
    if not candidate.is_dense and timing is not None and not has_measured_speedup(timing):
        risks.append({"code": "no_measured_speedup", "runtime": timing.runtime,
                      "detail": f"no speed-up over dense measured on {timing.runtime}: the saving is memory or "
                                "storage, not compute"})
    eval_size = row.get("eval_size")
    if candidate.metric in ("box_map", "box_map_fidelity"):
        # Box mAP averages precision over recall levels, IoU thresholds and classes, so the
        # binomial interval of a share of correct images does not apply to it.
        if eval_size and eval_size < FEW_DETECTION_IMAGES and row["provenance"] == "measured":
            risks.append({"code": "few_detection_images", "eval_size": eval_size, "minimum": FEW_DETECTION_IMAGES,
                          "detail": f"box mAP from {eval_size} evaluation images, fewer than {FEW_DETECTION_IMAGES}: "
                                    "it moves with the sample of images, and no interval is computed for it"})
    elif eval_size and candidate.accuracy is not None and row["provenance"] == "measured":
        p = min(max(candidate.accuracy / 100.0, 0.0), 1.0)
        half_width = 196.0 * math.sqrt(p * (1 - p) / eval_size)
        if half_width > WIDE_EVAL_INTERVAL:
            risks.append({"code": "small_eval_set", "eval_size": eval_size, "half_width": half_width,
                          "detail": f"{eval_size} evaluation images: the 95 % interval of the accuracy is "
                                    f"±{half_width:.1f} points"})
    for constraint, slack in candidate.slack.items():
        if slack < THIN_SLACK:
            risks.append({"code": "thin_margin", "constraint": constraint, "headroom": candidate.margins[constraint],
                          "detail": f"{constraint}: headroom {candidate.margins[constraint]:.2f} is under "
                                    f"{THIN_SLACK:.0%} of the limit's range"})


def has_measured_speedup(timing: Timing) -> bool:
    """True when interleaved timing against dense showed this result faster beyond measurement noise."""
    return timing.speedup is not None and timing.source in ("result", "same_sparsity") \
        and timing.speedup > 1 + MEASURABLE_CHANGE


def _scale(constraint: str, budget: Budget) -> float:
    """Return the size of the budget value, to compare shortfalls of different units."""
    value = budget.limit(constraint)
    return max(value or 1.0, 1.0) if constraint in ("min_accuracy", "max_drop", "max_relative_drop") else (value or 1.0)


def _sort_key(candidate: Candidate, objective: str) -> tuple:
    accuracy = candidate.accuracy if candidate.accuracy is not None else -math.inf
    latency = candidate.latency_ms if candidate.latency_ms is not None else math.inf
    # Published rows may give only the requested sparsity.
    sparsity = candidate.row.get("achieved_sparsity") or candidate.row.get("requested_sparsity") or 0.0
    # Full ties fall back to identifiers, so the order never depends on how rows were read.
    identity = (candidate.row["model_key"], candidate.row["criterion"], candidate.row["pattern"],
                candidate.row["result_id"], candidate.runtime or "")
    if objective == "latency":
        return (latency, -accuracy, -sparsity, *identity)
    if objective == "sparsity":
        return (-sparsity, -accuracy, latency, *identity)
    if objective == "cost":
        cost = candidate.costing.cost if candidate.costing is not None and candidate.costing.cost is not None else math.inf
        return (cost, -accuracy, latency, *identity)
    return (-accuracy, latency, -sparsity, *identity)


def pareto_flags(points: list[tuple[float, float, float]]) -> list[bool]:
    """Return, for each (latency, accuracy, memory) point, whether no other point beats it on all three.

    Equal points do not beat each other. Sorted by latency, then accuracy (descending), then
    memory, every point that beats one comes before it. So a sweep in that order checks, for each
    group of equal points, whether one already seen has at most its memory and at least its
    accuracy: a prefix maximum of accuracy over memory ranks (a Fenwick tree), O(n log n).
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], points[i][2]))
    ranks = {value: i + 1 for i, value in enumerate(sorted({p[2] for p in points}))}
    tree = [-math.inf] * (len(ranks) + 1)  # tree[i]: max accuracy seen over a range of memory ranks
    flags = [False] * len(points)

    def best_up_to(rank: int) -> float:
        best = -math.inf
        while rank > 0:
            best = max(best, tree[rank])
            rank -= rank & -rank
        return best

    def add(rank: int, accuracy: float) -> None:
        while rank < len(tree):
            tree[rank] = max(tree[rank], accuracy)
            rank += rank & -rank

    start = 0
    while start < len(order):
        end = start
        while end < len(order) and points[order[end]] == points[order[start]]:
            end += 1
        _latency, accuracy, memory = points[order[start]]
        if best_up_to(ranks[memory]) < accuracy:
            for i in order[start:end]:
                flags[i] = True
        add(ranks[memory], accuracy)
        start = end
    return flags


def mark_pareto(candidates: list[Candidate]) -> None:
    """Mark the candidates on the Pareto front of accuracy, latency and weight memory (all three known)."""
    known = [c for c in candidates if c.accuracy is not None and c.latency_ms is not None and c.weight_bytes is not None]
    for candidate, on_front in zip(known, pareto_flags([(c.latency_ms, c.accuracy, c.weight_bytes) for c in known])):
        candidate.pareto = on_front


def attach_costs(candidates: list[Candidate], dense: list[Candidate], workload: Any,
                 known_dense_models: list[str] | None = None) -> None:
    """Set each candidate's `costing` against its own dense model, or against the workload's baseline model.

    `dense` holds the dense candidates to compare with; `known_dense_models` lists the models a
    missing baseline could have named, for the error (default: those in `dense`).
    """
    from advisor import roi

    own = {(c.row["model_key"], c.row["dataset"], c.runtime): c for c in dense}
    reference = None
    if workload.baseline_model is not None:
        reference = {c.runtime: c for c in dense if c.row["model_key"] == workload.baseline_model}
        if not reference:
            known = sorted(set(known_dense_models or [c.row["model_key"] for c in dense]))
            if not known:
                raise BudgetError("baseline model {model!r} has no dense result in this selection; choose one of none.",
                                  model=workload.baseline_model)
            raise BudgetError("baseline model {model!r} has no dense result in this selection; choose one of {known}.",
                              model=workload.baseline_model,
                              known=", ".join(known[:12]) + (" …" if len(known) > 12 else ""))
    for c in candidates:
        mine = own.get((c.row["model_key"], c.row["dataset"], c.runtime))
        c.costing = roi.costing(c, mine, mine if reference is None else reference.get(c.runtime), workload)


def recommend(rows: list[dict[str, Any]], budget: Budget, nearest: int = 3, timings: list[Timing] | None = None,
              profiles: dict[str, Profile] | None = None, workload: Any = None) -> Recommendation:
    """Rank the (row, runtime) candidates that meet the budget by the budget's objective.

    `timings` are the latency measurements to draw on (`load_timings`); without them, each
    row's own bench latency is used. `profiles` describe the environment keys (`load_profiles`).
    `workload` (`advisor.roi.Workload`) adds the instances and cost of each candidate, which the
    'cost' objective needs.
    """
    if budget.objective == "cost" and workload is None:
        raise BudgetError("objective cost needs a workload: give --peak-rps and --price-per-hour (or "
                          "--price-per-device).")
    evidence = LatencyEvidence(timings_from_rows(rows) if timings is None else timings)
    profiles = profiles or {}
    env_key = resolve_profile(evidence, budget, profiles or {t.env_key: Profile(t.env_key, None, None, None)
                                                             for t in evidence.timings})
    rows = [r for r in rows if (r.get("task") or "classification") == budget.task]
    if budget.dataset is not None:
        rows = [r for r in rows if r["dataset"] == budget.dataset]
    if budget.patterns is not None:
        rows = [r for r in rows if r["criterion"] == "dense" or r["pattern"] in budget.patterns]
    rows = prefer_measured(rows)
    dense_bytes = dense_weight_bytes(rows)
    candidates: list[Candidate] = []
    for row in rows:
        found = []
        if env_key is not None:
            for runtime in budget.runtimes:
                timing = evidence.lookup(row, env_key, runtime, budget.batch_size)
                if timing is not None:
                    found.append((runtime, timing))
        # A row no runtime timed appears once; with several runtimes, none is named for it.
        found = found or [(budget.runtime if len(budget.runtimes) == 1 else None, None)]
        candidates.extend(evaluate(row, budget, timing, runtime, dense_bytes) for runtime, timing in found)
    if workload is not None:
        attach_costs(candidates, [c for c in candidates if c.is_dense], workload)
    if not budget.include_dense:
        candidates = [c for c in candidates if not c.is_dense]
    feasible = [c for c in candidates if c.feasible]
    feasible.sort(key=lambda c: _sort_key(c, budget.objective))
    mark_pareto(feasible)

    failing: dict[str, int] = {}
    for candidate in candidates:
        for constraint in candidate.violations:
            failing[constraint] = failing.get(constraint, 0) + 1
    closest: list[Candidate] = []
    if not feasible:
        closest = sorted(
            candidates,
            key=lambda c: (sum(min(v, 1e9) / _scale(k, budget) for k, v in c.violations.items()),
                           *_sort_key(c, budget.objective)),
        )[:nearest]
    profile = None if env_key is None else profiles.get(env_key, Profile(env_key, None, None, None))
    return Recommendation(budget, feasible, closest, failing, len(candidates), profile, workload)
