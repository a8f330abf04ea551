"""Rank model × method × sparsity candidates from stored evidence under a budget.

This module is the headless core shared by the CLI and the TUI. It reads rows from the store,
checks each against the budget and ranks the ones that fit. When none fits, it names the
constraint that failed and the nearest candidates.
"""

from __future__ import annotations

import json

import math
from dataclasses import asdict, dataclass, field
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
            "binding_constraint": self.binding(),
            "margins": self.margins,
            "violations": self.violations,
            "evidence": {
                "provenance": row["provenance"],
                "source": row.get("source"),
                "env_key": row.get("env_key"),
                "cpu_model": row.get("cpu_model"),
                "run_id": row.get("run_id"),
                "result_id": row["result_id"],
                "eval_size": row.get("eval_size"),
                "calibration_size": row.get("calibration_size"),
                "runtime": row.get("runtime"),
                "latency_batch_size": row.get("latency_batch_size"),
                "num_threads": row.get("num_threads"),
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
            "candidates_considered": self.total,
            "candidates_meeting_budget": len(self.ranked),
            "candidates": [c.to_dict(rank=i + 1) for i, c in enumerate(ranked)],
            "binding_constraint": None if self.found else self.binding_constraint(),
            "failing_counts": self.failing_counts,
            "nearest": [] if self.found else [c.to_dict() for c in self.nearest],
        }


_CANDIDATE_SQL = """
SELECT r.*, m.architecture, m.family, e.cpu_model
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


def evaluate(row: dict[str, Any], budget: Budget) -> Candidate:
    """Check one row against the budget: fill in its violations and margins."""
    labelled = bool(row.get("labelled"))
    metric = "top1" if labelled else "top1_agreement"
    accuracy = row.get(metric)
    dense_accuracy = row.get("dense_top1") if labelled else 100.0
    latency = None
    if row.get("latency_batch_size") == budget.batch_size:
        latency = row.get(f"latency_{budget.latency_stat}_ms")
    candidate = Candidate(row, metric, accuracy, dense_accuracy, latency)

    if budget.max_latency_ms is not None:
        if latency is None:
            candidate.violations["max_latency_ms"] = math.inf
        elif latency > budget.max_latency_ms:
            candidate.violations["max_latency_ms"] = latency - budget.max_latency_ms
        else:
            candidate.margins["max_latency_ms"] = budget.max_latency_ms - latency
    if budget.min_accuracy is not None:
        if accuracy is None:
            candidate.violations["min_accuracy"] = math.inf
        elif accuracy < budget.min_accuracy:
            candidate.violations["min_accuracy"] = budget.min_accuracy - accuracy
        else:
            candidate.margins["min_accuracy"] = accuracy - budget.min_accuracy
    if budget.max_drop is not None:
        drop = candidate.drop
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
    sparsity = candidate.row.get("achieved_sparsity") or 0.0
    # Full ties fall back to identifiers, so the order never depends on how rows were read.
    identity = (candidate.row["model_key"], candidate.row["criterion"], candidate.row["pattern"], candidate.row["result_id"])
    if objective == "latency":
        return (latency, -accuracy, -sparsity, *identity)
    if objective == "sparsity":
        return (-sparsity, -accuracy, latency, *identity)
    return (-accuracy, latency, -sparsity, *identity)


def recommend(rows: list[dict[str, Any]], budget: Budget, nearest: int = 3) -> Recommendation:
    """Rank the rows that meet the budget by the budget's objective."""
    if not budget.include_dense:
        rows = [r for r in rows if r["criterion"] != "dense"]
    if budget.dataset is not None:
        rows = [r for r in rows if r["dataset"] == budget.dataset]
    candidates = [evaluate(row, budget) for row in rows]
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
    return Recommendation(budget, feasible, closest, failing, len(candidates))
