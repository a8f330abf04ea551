"""The recommender over a database: every candidate scored in DuckDB, the shown ones in Python.

`advisor.recommend.recommend` judges candidates one by one in Python, which takes seconds over
100,000 results. Here DuckDB scores every (result, runtime) candidate into a temporary table
with the same rules: the latency evidence of `LatencyEvidence`, the limits of `evaluate`, the
cost of `roi.costing` and the order of `_sort_key`. It counts what fails and picks the rows to
show. Only those rows go through the Python code, which adds margins, risks, costs and
citations.

tests/test_ranking.py runs both on the same databases and budgets and requires the same
rankings, counts and nearest candidates, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

from advisor import roi
from advisor.recommend import (
    Budget,
    BudgetError,
    Candidate,
    LatencyEvidence,
    Recommendation,
    TIMINGS_SQL,
    Timing,
    attach_costs,
    evaluate,
    load_profiles,
    pareto_flags,
    prefer_measured,
    resolve_profile,
)
from bench_engine.runtime_names import MEASURABLE_CHANGE
from db import Store

# One row per candidate (result × runtime) with the numbers that decide feasibility and order.
# $-names are parameters; the comments name the Python each part mirrors.
_SCORED = f"""
CREATE OR REPLACE TEMP TABLE scored AS
WITH all_timings AS ({TIMINGS_SQL}),
t AS (
    SELECT *, round(requested_sparsity, 4) AS sparsity_key FROM all_timings
    WHERE env_key = $env AND batch_size = $batch AND list_contains($runtimes, runtime)
),
-- LatencyEvidence: the latest timing of each kind wins.
by_result AS (
    SELECT * FROM t WHERE criterion <> 'dense' AND result_id IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY result_id, runtime ORDER BY created_at DESC) = 1
),
by_config AS (
    SELECT * FROM t WHERE criterion <> 'dense' AND (criterion = 'magnitude' OR result_id IS NULL)
    QUALIFY row_number() OVER (PARTITION BY model_key, runtime, pattern, sparsity_key ORDER BY created_at DESC) = 1
),
dense AS (
    SELECT * FROM t WHERE criterion = 'dense'
    QUALIFY row_number() OVER (PARTITION BY model_key, runtime ORDER BY created_at DESC) = 1
),
published_dense AS (
    SELECT * FROM t WHERE criterion = 'dense' AND provenance = 'published'
    QUALIFY row_number() OVER (PARTITION BY architecture, input_size, runtime ORDER BY created_at DESC) = 1
),
kernels AS (  -- every sparse timing on this profile (any batch size) ran dense kernels only
    SELECT model_key, runtime, bool_and(sparse_kernel IS NULL) AS dense_only
    FROM all_timings WHERE env_key = $env AND criterion <> 'dense' GROUP BY ALL
),
-- load_candidates(latest_only=True): a configuration measured again counts once.
latest AS (
    SELECT r.result_id, r.model_key, r.dataset, r.labelled, r.provenance, r.criterion, r.allocation, r.pattern,
           r.recipe_json, r.requested_sparsity, r.achieved_sparsity, r.top1, r.top1_agreement, r.dense_top1,
           coalesce(r.task, 'classification') AS task, r.box_map, r.box_map_fidelity, r.dense_box_map,
           r.weight_bytes_json, r.created_at, m.architecture, m.input_size
    FROM results r LEFT JOIN models m USING (model_key)
    WHERE ($dataset IS NULL OR r.dataset = $dataset) AND coalesce(r.task, 'classification') = $task
    QUALIFY row_number() OVER (
        PARTITION BY r.model_key, r.dataset, r.labelled, r.provenance, r.criterion, r.allocation, r.pattern,
                     r.requested_sparsity, r.recipe_json, r.layer_policy_json, r.calibration_size,
                     r.calibration_seed, r.env_key, r.latency_batch_size
        ORDER BY r.created_at DESC, r.result_id) = 1
),
-- the pattern filter, then prefer_measured: one row per model, dataset, recipe, pattern, sparsity.
rows AS (
    SELECT *, coalesce(nullif(json_extract_string(recipe_json, '$.recipe'), ''), criterion) AS recipe_name,
           CASE WHEN coalesce(len(json_keys(weight_bytes_json)), 0) > 0 THEN 1 ELSE 0 END AS counted,
           TRY_CAST(json_extract(weight_bytes_json, '$.dense') AS BIGINT) AS bytes_dense,
           TRY_CAST(json_extract(weight_bytes_json, '$.semi_structured_2_4') AS BIGINT) AS bytes_2_4,
           least(TRY_CAST(json_extract(weight_bytes_json, '$.dense') AS BIGINT),
                 TRY_CAST(json_extract(weight_bytes_json, '$.csr') AS BIGINT),
                 TRY_CAST(json_extract(weight_bytes_json, '$.bitmask') AS BIGINT),
                 TRY_CAST(json_extract(weight_bytes_json, '$.semi_structured_2_4') AS BIGINT)) AS bytes_min
    FROM latest
    WHERE $all_patterns OR criterion = 'dense' OR list_contains($patterns, pattern)
    QUALIFY row_number() OVER (
        PARTITION BY model_key, dataset, recipe_name, pattern, round(requested_sparsity, 4)
        ORDER BY CASE provenance WHEN 'measured' THEN 0 WHEN 'published' THEN 1 ELSE 2 END,
                 created_at DESC, result_id) = 1
),
sized_rows AS (  -- dense_weight_bytes: a model's dense bytes serve every result of it
    SELECT *, max(CASE WHEN counted = 1 THEN bytes_dense END) OVER (PARTITION BY model_key) AS model_dense_bytes
    FROM rows
),
pairs AS (
    SELECT r.*, rt.runtime AS pair_runtime, rt.position,
        CASE
            WHEN r.criterion = 'dense' AND d.model_key IS NOT NULL THEN 'dense'
            WHEN r.criterion = 'dense' AND pd.runtime IS NOT NULL THEN 'published_dense'
            WHEN r.criterion = 'dense' THEN NULL
            WHEN br.runtime IS NOT NULL THEN 'result'
            WHEN bc.runtime IS NOT NULL AND r.allocation = 'uniform' THEN 'same_sparsity'
            WHEN d.model_key IS NOT NULL AND k.dense_only THEN 'dense_kernels'
        END AS latency_source,
        d.p50_ms AS dense_p50, d.p90_ms AS dense_p90,
        pd.p50_ms AS pub_p50, pd.p90_ms AS pub_p90,
        br.p50_ms AS result_p50, br.p90_ms AS result_p90, br.speedup AS result_speedup,
        bc.p50_ms AS config_p50, bc.p90_ms AS config_p90, bc.speedup AS config_speedup
    FROM sized_rows r
    CROSS JOIN (SELECT unnest($runtimes) AS runtime, generate_subscripts($runtimes, 1) AS position) rt
    LEFT JOIN by_result br ON br.result_id = r.result_id AND br.runtime = rt.runtime
    LEFT JOIN by_config bc ON bc.model_key = r.model_key AND bc.runtime = rt.runtime AND bc.pattern = r.pattern
                          AND bc.sparsity_key = round(r.requested_sparsity, 4)
    LEFT JOIN dense d ON d.model_key = r.model_key AND d.runtime = rt.runtime
    LEFT JOIN published_dense pd ON pd.architecture = r.architecture AND pd.input_size = r.input_size
                                AND pd.runtime = rt.runtime
    LEFT JOIN kernels k ON k.model_key = r.model_key AND k.runtime = rt.runtime
),
timed AS (
    SELECT *,
        CASE latency_source WHEN 'dense' THEN dense_p50 WHEN 'published_dense' THEN pub_p50 WHEN 'result' THEN result_p50
                    WHEN 'same_sparsity' THEN config_p50 WHEN 'dense_kernels' THEN dense_p50 END AS p50,
        CASE latency_source WHEN 'dense' THEN dense_p90 WHEN 'published_dense' THEN pub_p90 WHEN 'result' THEN result_p90
                    WHEN 'same_sparsity' THEN config_p90 WHEN 'dense_kernels' THEN dense_p90 END AS p90,
        CASE latency_source WHEN 'result' THEN result_speedup WHEN 'same_sparsity' THEN config_speedup END AS speedup,
        bool_or(latency_source IS NOT NULL) OVER (PARTITION BY result_id) AS any_timed
    FROM pairs
),
-- A row no runtime timed appears once; with several runtimes, none is named for it.
candidates AS (
    SELECT *,
        CASE WHEN latency_source IS NOT NULL THEN pair_runtime WHEN $single_runtime THEN pair_runtime END AS runtime_name,
        -- primary_metric: top-1 or box mAP on labelled data, agreement with the dense model otherwise
        CASE WHEN task = 'detection' THEN (CASE WHEN labelled THEN box_map ELSE box_map_fidelity END)
             WHEN labelled THEN top1 ELSE top1_agreement END AS accuracy,
        CASE WHEN NOT labelled THEN 100.0 WHEN task = 'detection' THEN dense_box_map ELSE dense_top1 END
            AS dense_accuracy
    FROM timed
    WHERE latency_source IS NOT NULL OR (NOT any_timed AND position = 1)
),
measured AS (  -- evaluate: the values the limits apply to
    SELECT *,
        CASE WHEN $stat = 'p50' THEN p50 ELSE p90 END AS latency,
        CASE WHEN p50 > 0 THEN $batch * 1000.0 / p50 END AS throughput,
        dense_accuracy - accuracy AS drop_points,
        CASE WHEN counted = 1 THEN (CASE WHEN runtime_name = 'torch-2:4-cuda' THEN bytes_2_4 ELSE bytes_dense END)
             WHEN coalesce(runtime_name, '') <> 'torch-2:4-cuda' THEN model_dense_bytes END AS weight_bytes,
        -- roi._sized_latency: a sparse row keeps its own p50 only for a measured change beyond the noise
        CASE WHEN latency_source IS NULL THEN NULL
             WHEN criterion = 'dense' THEN p50
             WHEN speedup IS NOT NULL AND abs(speedup - 1.0) > $measurable THEN p50
             ELSE coalesce(max(CASE WHEN criterion = 'dense' AND latency_source IS NOT NULL THEN p50 END)
                           OVER (PARTITION BY model_key, dataset, runtime_name), p50) END AS sized_p50
    FROM candidates
),
checked AS (  -- _check: NULL when met, +inf when not measured, else the shortfall
    SELECT *,
        CASE WHEN $max_latency IS NULL THEN NULL WHEN latency IS NULL THEN 'inf'::DOUBLE
             WHEN latency - $latency_required > 1e-12 THEN latency - $latency_required END AS v_max_latency_ms,
        CASE WHEN $min_throughput IS NULL THEN NULL WHEN throughput IS NULL THEN 'inf'::DOUBLE
             WHEN $throughput_required - throughput > 1e-12 THEN $throughput_required - throughput END
             AS v_min_throughput,
        CASE WHEN $min_accuracy IS NULL THEN NULL WHEN accuracy IS NULL THEN 'inf'::DOUBLE
             WHEN $accuracy_required - accuracy > 1e-12 THEN $accuracy_required - accuracy END AS v_min_accuracy,
        CASE WHEN $max_drop IS NULL THEN NULL WHEN drop_points IS NULL THEN 'inf'::DOUBLE
             WHEN drop_points - $drop_required > 1e-12 THEN drop_points - $drop_required END AS v_max_drop,
        CASE WHEN $max_relative_drop IS NULL THEN NULL
             WHEN drop_points IS NULL OR coalesce(dense_accuracy, 0) = 0 THEN 'inf'::DOUBLE
             WHEN 100.0 * drop_points / dense_accuracy - ($max_relative_drop - 100.0 * $accuracy_margin / dense_accuracy)
                  > 1e-12
             THEN 100.0 * drop_points / dense_accuracy - ($max_relative_drop - 100.0 * $accuracy_margin / dense_accuracy)
        END AS v_max_relative_drop,
        CASE WHEN $max_weight_mb IS NULL THEN NULL WHEN weight_bytes IS NULL THEN 'inf'::DOUBLE
             WHEN weight_bytes / 1e6 - $weight_required > 1e-12 THEN weight_bytes / 1e6 - $weight_required END
             AS v_max_weight_mb,
        CASE WHEN sized_p50 IS NULL OR NOT $with_cost THEN NULL
             ELSE greatest(1, ceil($peak / (($batch * 1000.0 / sized_p50) * $utilisation) - 1e-9)) * $price_factor
        END AS cost,
        coalesce(nullif(achieved_sparsity, 0), nullif(requested_sparsity, 0), 0) AS sort_sparsity
    FROM measured
)
SELECT result_id, runtime_name, model_key, dataset, criterion, pattern, accuracy, latency, weight_bytes,
    model_dense_bytes, cost, sort_sparsity, v_max_latency_ms, v_min_throughput, v_min_accuracy, v_max_drop,
    v_max_relative_drop, v_max_weight_mb,
    ($include_dense OR criterion <> 'dense') AS eligible,  -- dense rows stay, as baselines of the costs
    ($include_dense OR criterion <> 'dense') AND v_max_latency_ms IS NULL AND v_min_throughput IS NULL
        AND v_min_accuracy IS NULL AND v_max_drop IS NULL AND v_max_relative_drop IS NULL
        AND v_max_weight_mb IS NULL AS feasible
FROM checked
"""

CONSTRAINT_COLUMNS = {
    "max_latency_ms": "v_max_latency_ms",
    "min_throughput": "v_min_throughput",
    "min_accuracy": "v_min_accuracy",
    "max_drop": "v_max_drop",
    "max_relative_drop": "v_max_relative_drop",
    "max_weight_mb": "v_max_weight_mb",
}
IDENTITY = "model_key, criterion, pattern, result_id, coalesce(runtime_name, '')"
ORDER = {  # _sort_key
    "accuracy": f"accuracy DESC NULLS LAST, latency ASC NULLS LAST, sort_sparsity DESC, {IDENTITY}",
    "latency": f"latency ASC NULLS LAST, accuracy DESC NULLS LAST, sort_sparsity DESC, {IDENTITY}",
    "sparsity": f"sort_sparsity DESC, accuracy DESC NULLS LAST, latency ASC NULLS LAST, {IDENTITY}",
    "cost": f"cost ASC NULLS LAST, accuracy DESC NULLS LAST, latency ASC NULLS LAST, {IDENTITY}",
}


def _parameters(budget: Budget, env_key: str, workload: roi.Workload | None) -> dict[str, Any]:
    stretch = budget.margin_pct / 100.0
    margin = budget.accuracy_margin
    price_factor = 0.0
    if workload is not None:
        price_factor = workload.price if workload.per_device else workload.price * roi.HOURS_PER_MONTH
    return {
        "env": env_key, "batch": budget.batch_size, "runtimes": list(budget.runtimes),
        "single_runtime": len(budget.runtimes) == 1, "dataset": budget.dataset, "task": budget.task,
        "all_patterns": budget.patterns is None, "patterns": list(budget.patterns or ["-"]),
        "stat": budget.latency_stat, "measurable": MEASURABLE_CHANGE,
        "max_latency": budget.max_latency_ms,
        "latency_required": None if budget.max_latency_ms is None else budget.max_latency_ms * (1 - stretch),
        "min_throughput": budget.min_throughput,
        "throughput_required": None if budget.min_throughput is None else budget.min_throughput * (1 + stretch),
        "min_accuracy": budget.min_accuracy,
        "accuracy_required": None if budget.min_accuracy is None else budget.min_accuracy + margin,
        "max_drop": budget.max_drop, "drop_required": None if budget.max_drop is None else budget.max_drop - margin,
        "max_relative_drop": budget.max_relative_drop, "accuracy_margin": margin,
        "max_weight_mb": budget.max_weight_mb,
        "weight_required": None if budget.max_weight_mb is None else budget.max_weight_mb * (1 - stretch),
        "with_cost": workload is not None, "peak": workload.peak_rps if workload else 1.0,
        "utilisation": workload.utilisation if workload else 1.0, "price_factor": price_factor,
        "include_dense": budget.include_dense,
    }


def _scale_sql(constraint: str, budget: Budget) -> float:
    value = budget.limit(constraint)
    return max(value or 1.0, 1.0) if constraint in ("min_accuracy", "max_drop", "max_relative_drop") else (value or 1.0)


class _MostRecent:
    """The one method of LatencyEvidence that resolve_profile needs, computed by a query."""

    def __init__(self, store: Store):
        self.store = store

    def profiles(self, runtimes: tuple[str, ...], batch_size: int) -> list[str]:
        rows = self.store.query(
            f"SELECT env_key, max(created_at) AS latest FROM ({TIMINGS_SQL}) "
            "WHERE list_contains($runtimes, runtime) AND batch_size = $batch GROUP BY env_key ORDER BY latest DESC",
            {"runtimes": list(runtimes), "batch": batch_size})
        return [row["env_key"] for row in rows]


def _full_rows(store: Store, result_ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = store.query(
        "SELECT r.*, m.architecture, m.family, m.input_size, e.cpu_model FROM results r "
        "LEFT JOIN models m USING (model_key) LEFT JOIN environments e USING (env_key) "
        "WHERE list_contains($ids, r.result_id)", {"ids": result_ids})
    return {row["result_id"]: row for row in rows}


def _timings_for(store: Store, env_key: str, models: list[str], architectures: list[str]) -> list[Timing]:
    rows = store.query(
        f"SELECT * FROM ({TIMINGS_SQL}) WHERE env_key = $env AND (list_contains($models, model_key) OR "
        "(criterion = 'dense' AND provenance = 'published' AND list_contains($architectures, architecture))) "
        "ORDER BY created_at", {"env": env_key, "models": models, "architectures": architectures})
    return [Timing(**{k: v for k, v in row.items() if k != "created_at"}) for row in rows]


def rank_store(store: Store, budget: Budget, workload: roi.Workload | None = None, limit: int = 10,
               nearest: int = 3, pareto_only: bool = False) -> Recommendation:
    """Rank every candidate in the database; return the first `limit` (or the Pareto front) in full.

    The returned recommendation's `ranked` holds only those rows; `meeting` counts all that fit.
    """
    if budget.objective == "cost" and workload is None:
        raise BudgetError("objective cost needs a workload: give --peak-rps and --price-per-hour (or "
                          "--price-per-device).")
    profiles = load_profiles(store)
    evidence = _MostRecent(store)
    known = profiles or {row["env_key"]: None for row in store.query(f"SELECT DISTINCT env_key FROM ({TIMINGS_SQL})")}
    env_key = resolve_profile(evidence, budget, known)  # type: ignore[arg-type]
    store.query(_SCORED, _parameters(budget, env_key or "", workload))

    counts = store.query("SELECT count(*) AS total, count(*) FILTER (WHERE feasible) AS meeting, "
                         + ", ".join(f"count({column}) AS {name}" for name, column in CONSTRAINT_COLUMNS.items())
                         + " FROM scored WHERE eligible")[0]
    failing = {name: counts[name] for name in CONSTRAINT_COLUMNS if counts[name]}
    order = ORDER[budget.objective]
    front_keys = _pareto_keys(store)
    if pareto_only:
        chosen = store.query(f"SELECT result_id, runtime_name FROM scored WHERE feasible AND "
                             f"list_contains($keys, result_id || '@' || coalesce(runtime_name, '')) ORDER BY {order}",
                             {"keys": sorted(front_keys)})
    else:
        chosen = store.query(f"SELECT result_id, runtime_name FROM scored WHERE feasible ORDER BY {order} LIMIT $n",
                             {"n": limit})
    closest = []
    if counts["meeting"] == 0:
        # least() skips NULLs in DuckDB, so a met constraint (NULL) is turned into 0 first.
        distance = " + ".join(f"least(coalesce({column}, 0), 1e9) / {_scale_sql(name, budget)!r}"
                              for name, column in CONSTRAINT_COLUMNS.items())
        closest = store.query(f"SELECT result_id, runtime_name FROM scored WHERE eligible ORDER BY {distance}, {order} "
                              "LIMIT $n",
                              {"n": nearest})
    shown = _candidates(store, budget, workload, env_key, chosen + closest)
    ranked = shown[:len(chosen)]
    for candidate in ranked:
        candidate.pareto = f"{candidate.row['result_id']}@{candidate.runtime or ''}" in front_keys
    profile = None if env_key is None else profiles.get(env_key)
    if env_key is not None and profile is None:
        from advisor.recommend import Profile

        profile = Profile(env_key, None, None, None)
    result = Recommendation(budget, ranked, shown[len(chosen):], failing, counts["total"], profile, workload)
    result.meeting = counts["meeting"]
    result.front = sorted(front_keys)
    return result


def _pareto_keys(store: Store) -> set[str]:
    """Return result_id@runtime of the feasible candidates on the Pareto front, as mark_pareto finds it."""
    # A candidate beaten by one of the same memory is off the front, so only those on the front of
    # latency and accuracy within their memory value (or tied with it) go to the exact sweep.
    columns = store.query_columns("""
        SELECT result_id, runtime, latency, accuracy, weight_bytes FROM (
            SELECT result_id, coalesce(runtime_name, '') AS runtime, latency, accuracy, weight_bytes,
                   max(accuracy) OVER (PARTITION BY weight_bytes ORDER BY latency, accuracy DESC
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS best_before
            FROM scored
            WHERE feasible AND accuracy IS NOT NULL AND latency IS NOT NULL AND weight_bytes IS NOT NULL)
        WHERE best_before IS NULL OR accuracy >= best_before""")
    flags = pareto_flags(list(zip(columns["latency"], columns["accuracy"], columns["weight_bytes"])))
    return {f"{result_id}@{runtime}" for result_id, runtime, on_front
            in zip(columns["result_id"], columns["runtime"], flags) if on_front}


def _candidates(store: Store, budget: Budget, workload: roi.Workload | None, env_key: str | None,
                keys: list[dict[str, Any]]) -> list[Candidate]:
    """Judge the chosen (result, runtime) pairs with the Python rules, in the given order."""
    if not keys:
        return []
    ids = list(dict.fromkeys(k["result_id"] for k in keys))
    extra = store.query(
        "SELECT DISTINCT result_id, model_dense_bytes, model_key, dataset FROM scored WHERE list_contains($ids, result_id)",
        {"ids": ids})
    dense_bytes = {r["model_key"]: r["model_dense_bytes"] for r in extra if r["model_dense_bytes"]}
    # The dense rows the costs compare with: each shown model's own, and the named baseline model's.
    dense_ids = []
    if workload is not None:
        dense_ids = [r["result_id"] for r in store.query(
            "SELECT DISTINCT result_id FROM scored WHERE criterion = 'dense' AND "
            "(list_contains($models, model_key) OR model_key = $baseline)",
            {"models": [r["model_key"] for r in extra], "baseline": workload.baseline_model})]
    rows = _full_rows(store, ids + dense_ids)
    models = sorted({r["model_key"] for r in rows.values()})
    architectures = sorted({r["architecture"] for r in rows.values() if r.get("architecture")})
    evidence = LatencyEvidence([] if env_key is None else _timings_for(store, env_key, models, architectures))

    def judge(result_id: str, runtime: str | None) -> Candidate:
        row = rows[result_id]
        timing = None if runtime is None or env_key is None else evidence.lookup(row, env_key, runtime,
                                                                                 budget.batch_size)
        if runtime is None and len(budget.runtimes) == 1:
            runtime = budget.runtime
        return evaluate(row, budget, timing, runtime, dense_bytes)

    chosen = [judge(k["result_id"], k["runtime_name"]) for k in keys]
    if workload is not None:
        dense = []
        for row in prefer_measured([rows[i] for i in dense_ids]):
            timed = [rt for rt in budget.runtimes if env_key is not None
                     and evidence.lookup(row, env_key, rt, budget.batch_size) is not None]
            dense += [judge(row["result_id"], rt) for rt in timed] or [judge(row["result_id"], None)]
        known = [r["model_key"] for r in store.query("SELECT DISTINCT model_key FROM scored WHERE criterion = 'dense'")]
        attach_costs(chosen, dense, workload, known)
    return chosen
