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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from db import Store

OBJECTIVES = ("accuracy", "latency", "sparsity")
LATENCY_STATS = ("p50", "p90")


class BudgetError(ValueError):
    """A budget value is invalid (negative latency, accuracy above 100 %, ...)."""


@dataclass(frozen=True)
class Budget:
    """Limits a candidate must meet, and what to optimise among those that do.

    Accuracy limits apply to each row's primary metric: top-1 (percent) on labelled data, or
    top-1 agreement with the dense model (percent) on unlabelled data.
    """

    max_latency_ms: float | None = None
    latency_stat: str = "p90"
    batch_size: int = 1
    min_accuracy: float | None = None
    max_drop: float | None = None
    dataset: str | None = None
    objective: str = "accuracy"
    include_dense: bool = True
    # Latency evidence: the runtime, and the hardware profile (environment key, or a unique
    # prefix of one). None picks the profile with the most recent timing on this runtime.
    runtime: str = "torch-eager"
    profile: str | None = None

    def __post_init__(self) -> None:
        if self.max_latency_ms is not None and not (self.max_latency_ms > 0 and math.isfinite(self.max_latency_ms)):
            raise BudgetError(
                f"max latency {self.max_latency_ms!r} ms is invalid; give a positive number of "
                "milliseconds, for example --max-latency-ms 20."
            )
        if self.latency_stat not in LATENCY_STATS:
            raise BudgetError(f"latency statistic {self.latency_stat!r} is invalid; use p50 or p90.")
        if self.batch_size < 1:
            raise BudgetError(f"batch size {self.batch_size} is invalid; it must be at least 1.")
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 100:
            raise BudgetError(
                f"minimum accuracy {self.min_accuracy!r} is out of range; it is a percentage "
                "between 0 and 100, for example --min-accuracy 90."
            )
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise BudgetError(
                f"maximum drop {self.max_drop!r} is out of range; it is in percentage points "
                "between 0 and 100, for example --max-drop 2."
            )
        if self.objective not in OBJECTIVES:
            raise BudgetError(f"objective {self.objective!r} is invalid; use one of {', '.join(OBJECTIVES)}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Candidate:
    """One stored result judged against a budget."""

    row: dict[str, Any]
    metric: str  # 'top1' or 'top1_agreement'
    accuracy: float | None
    dense_accuracy: float | None
    latency_ms: float | None
    violations: dict[str, float] = field(default_factory=dict)  # constraint -> shortfall
    margins: dict[str, float] = field(default_factory=dict)  # constraint -> headroom
    timing: Timing | None = None  # the timing behind latency_ms

    @property
    def drop(self) -> float | None:
        if self.accuracy is None or self.dense_accuracy is None:
            return None
        return self.dense_accuracy - self.accuracy

    @property
    def feasible(self) -> bool:
        return not self.violations

    def binding(self) -> str | None:
        """Return the constraint with the least headroom (the one that binds), if any."""
        if not self.margins:
            return None
        return min(self.margins, key=self.margins.get)

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
            "recipe": "dense" if row["criterion"] == "dense" else recipe.get("recipe"),
            "criterion": row["criterion"],
            "allocation": row["allocation"],
            "pattern": row["pattern"],
            "requested_sparsity": row["requested_sparsity"],
            "achieved_sparsity": row["achieved_sparsity"],
            "metric": self.metric,
            "accuracy": self.accuracy,
            "dense_accuracy": self.dense_accuracy,
            "drop": self.drop,
            "top5": row.get("top5"),
            "kl_divergence": row.get("kl_divergence"),
            "latency_ms": self.latency_ms,
            # Where latency_ms comes from: runtime, batch size, profile, threads, source.
            "latency": None if self.timing is None else self.timing.to_dict(),
            "binding_constraint": self.binding(),
            "margins": self.margins,
            "violations": self.violations,
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

    @property
    def found(self) -> bool:
        return bool(self.ranked)

    def binding_constraint(self) -> str | None:
        """Return the constraint that rules out the most candidates (when none fits)."""
        if not self.failing_counts:
            return None
        return max(self.failing_counts, key=self.failing_counts.get)

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        ranked = self.ranked[:limit] if limit else self.ranked
        return {
            "status": "ok" if self.found else "no_candidate",
            "budget": self.budget.to_dict(),
            "latency_profile": None if self.profile is None else asdict(self.profile),
            "candidates_considered": self.total,
            "candidates_meeting_budget": len(self.ranked),
            "candidates": [c.to_dict(rank=i + 1) for i, c in enumerate(ranked)],
            "binding_constraint": None if self.found else self.binding_constraint(),
            "failing_counts": self.failing_counts,
            "nearest": [] if self.found else [c.to_dict() for c in self.nearest],
        }


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


_TIMINGS_SQL = """
SELECT l.model_key, l.env_key, l.runtime, l.batch_size, l.criterion, l.pattern, l.requested_sparsity, l.p50_ms,
       l.p90_ms, l.sparse_kernel, l.speedup, l.result_id, m.architecture, m.input_size,
       coalesce(l.provenance, 'measured') AS provenance, l.source AS citation, l.created_at
FROM latency l LEFT JOIN models m USING (model_key)
UNION ALL
SELECT r.model_key, r.env_key, r.runtime, r.latency_batch_size, r.criterion, r.pattern, r.requested_sparsity,
       r.latency_p50_ms, r.latency_p90_ms, NULL, NULL, r.result_id, m.architecture, m.input_size, 'measured', NULL,
       r.created_at
FROM results r LEFT JOIN models m USING (model_key)
WHERE r.provenance = 'measured' AND r.latency_p50_ms IS NOT NULL AND r.env_key IS NOT NULL
ORDER BY created_at
"""


def load_timings(store: Store) -> list[Timing]:
    """Read every measured timing: the latency table and each bench result's own latency."""
    rows = store.query(_TIMINGS_SQL)
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
            row["result_id"],
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

    def profiles(self, runtime: str, batch_size: int) -> list[str]:
        """Return the profiles with timings on this runtime and batch size, most recent first."""
        seen: list[str] = []
        for t in reversed(self.timings):
            if t.runtime == runtime and t.batch_size == batch_size and t.env_key not in seen:
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
        measured = evidence.profiles(budget.runtime, budget.batch_size)
        return measured[0] if measured else None
    matches = [key for key in known if key.startswith(budget.profile)]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(sorted(known)) or "none"
    if not matches:
        raise BudgetError(
            f"profile {budget.profile!r} is not in the database; known profiles: {listed}. "
            "Run `ptsa profiles` to see what each one is."
        )
    raise BudgetError(f"profile {budget.profile!r} matches {len(matches)} profiles ({', '.join(sorted(matches))}); "
                      "give more characters.")


_CANDIDATE_SQL = """
SELECT r.*, m.architecture, m.family, m.input_size, e.cpu_model
FROM results r
LEFT JOIN models m USING (model_key)
LEFT JOIN environments e USING (env_key)
WHERE (? IS NULL OR r.dataset = ?)
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


def load_candidates(store: Store, dataset: str | None = None, latest_only: bool = True) -> list[dict[str, Any]]:
    """Read stored results (optionally of one dataset) with their model and environment.

    With `latest_only`, a configuration benched several times in one environment appears once.
    """
    return store.query(_LATEST_SQL if latest_only else _CANDIDATE_SQL, [dataset, dataset])


EVIDENCE_RANK = {"measured": 0, "published": 1, "predicted": 2}


def prefer_measured(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep one row per model, dataset, recipe and sparsity: measured before published before predicted."""
    best: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        recipe = json.loads(row.get("recipe_json") or "{}").get("recipe") or row["criterion"]
        key = (row["model_key"], row["dataset"], recipe, row["pattern"], round(float(row["requested_sparsity"]), 4))
        current = best.get(key)
        if current is None or EVIDENCE_RANK[row["provenance"]] < EVIDENCE_RANK[current["provenance"]]:
            best[key] = row
    chosen = {id(row) for row in best.values()}
    return [row for row in rows if id(row) in chosen]


def evaluate(row: dict[str, Any], budget: Budget, timing: Timing | None = None) -> Candidate:
    """Check one row, with the timing that applies to it, against the budget."""
    labelled = bool(row.get("labelled"))
    metric = "top1" if labelled else "top1_agreement"
    accuracy = row.get(metric)
    dense_accuracy = row.get("dense_top1") if labelled else 100.0
    latency = None if timing is None else timing.stat(budget.latency_stat)
    candidate = Candidate(row, metric, accuracy, dense_accuracy, latency, timing=timing)
    # A prediction meets an accuracy limit only if the low end of its 80 % interval does.
    checked = accuracy
    if row.get("provenance") == "predicted" and row.get("prediction_json"):
        checked = json.loads(row["prediction_json"]).get("top1_low")
    checked_drop = None if checked is None or dense_accuracy is None else dense_accuracy - checked

    if budget.max_latency_ms is not None:
        if latency is None:
            candidate.violations["max_latency_ms"] = math.inf
        elif latency > budget.max_latency_ms:
            candidate.violations["max_latency_ms"] = latency - budget.max_latency_ms
        else:
            candidate.margins["max_latency_ms"] = budget.max_latency_ms - latency
    if budget.min_accuracy is not None:
        if checked is None:
            candidate.violations["min_accuracy"] = math.inf
        elif checked < budget.min_accuracy:
            candidate.violations["min_accuracy"] = budget.min_accuracy - checked
        else:
            candidate.margins["min_accuracy"] = checked - budget.min_accuracy
    if budget.max_drop is not None:
        drop = checked_drop
        if drop is None:
            candidate.violations["max_drop"] = math.inf
        elif drop > budget.max_drop:
            candidate.violations["max_drop"] = drop - budget.max_drop
        else:
            candidate.margins["max_drop"] = budget.max_drop - drop
    return candidate


def _scale(constraint: str, budget: Budget) -> float:
    """Return the size of the budget value, to compare shortfalls of different units."""
    if constraint == "max_latency_ms":
        return budget.max_latency_ms or 1.0
    if constraint == "min_accuracy":
        return max(budget.min_accuracy or 1.0, 1.0)
    return max(budget.max_drop or 1.0, 1.0)


def _sort_key(candidate: Candidate, objective: str) -> tuple:
    accuracy = candidate.accuracy if candidate.accuracy is not None else -math.inf
    latency = candidate.latency_ms if candidate.latency_ms is not None else math.inf
    # Published rows may give only the requested sparsity.
    sparsity = candidate.row.get("achieved_sparsity") or candidate.row.get("requested_sparsity") or 0.0
    # Full ties fall back to identifiers, so the order never depends on how rows were read.
    identity = (candidate.row["model_key"], candidate.row["criterion"], candidate.row["pattern"], candidate.row["result_id"])
    if objective == "latency":
        return (latency, -accuracy, -sparsity, *identity)
    if objective == "sparsity":
        return (-sparsity, -accuracy, latency, *identity)
    return (-accuracy, latency, -sparsity, *identity)


def recommend(rows: list[dict[str, Any]], budget: Budget, nearest: int = 3, timings: list[Timing] | None = None,
              profiles: dict[str, Profile] | None = None) -> Recommendation:
    """Rank the rows that meet the budget by the budget's objective.

    `timings` are the latency measurements to draw on (`load_timings`); without them, each
    row's own bench latency is used. `profiles` describe the environment keys (`load_profiles`).
    """
    evidence = LatencyEvidence(timings_from_rows(rows) if timings is None else timings)
    profiles = profiles or {}
    env_key = resolve_profile(evidence, budget, profiles or {t.env_key: Profile(t.env_key, None, None, None)
                                                             for t in evidence.timings})
    if not budget.include_dense:
        rows = [r for r in rows if r["criterion"] != "dense"]
    if budget.dataset is not None:
        rows = [r for r in rows if r["dataset"] == budget.dataset]
    rows = prefer_measured(rows)
    candidates = [
        evaluate(row, budget, None if env_key is None else evidence.lookup(row, env_key, budget.runtime, budget.batch_size))
        for row in rows
    ]
    feasible = [c for c in candidates if c.feasible]
    feasible.sort(key=lambda c: _sort_key(c, budget.objective))

    failing: dict[str, int] = {}
    for candidate in candidates:
        for constraint in candidate.violations:
            failing[constraint] = failing.get(constraint, 0) + 1
    closest: list[Candidate] = []
    if not feasible:
        closest = sorted(
            candidates,
            key=lambda c: sum(min(v, 1e9) / _scale(k, budget) for k, v in c.violations.items()),
        )[:nearest]
    profile = None if env_key is None else profiles.get(env_key, Profile(env_key, None, None, None))
    return Recommendation(budget, feasible, closest, failing, len(candidates), profile)
