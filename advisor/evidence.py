"""The evidence about one model: accuracy against sparsity per method, latency against sparsity per runtime.

The TUI's Evidence tab plots these series. They come straight from the database, each point
with its provenance, so measured, published and predicted points can be drawn differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from advisor.formatting import method_label
from advisor.recommend import primary_metric
from db import Store


@dataclass
class AccuracyPoint:
    """One result: its sparsity (0 to 1), accuracy in percent, provenance and, if predicted, its 80 % interval."""

    sparsity: float
    accuracy: float
    provenance: str
    low: float | None = None
    high: float | None = None


@dataclass
class ModelEvidence:
    """Accuracy series by method and latency series by runtime for one model on one dataset."""

    model_key: str
    dataset: str
    metric: str  # 'top1', 'top1_agreement', 'box_map' or 'box_map_fidelity' (see recommend.primary_metric)
    dense_accuracy: float | None
    accuracy: dict[str, list[AccuracyPoint]] = field(default_factory=dict)
    latency: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # runtime -> (sparsity, p50 ms)
    latency_profile: str | None = None
    layers: dict[str, float] = field(default_factory=dict)  # layer -> sparsity of the chosen result


def _accuracy(row: dict[str, Any]) -> float | None:
    return row[primary_metric(row)[0]]


def model_evidence(store: Store, model_key: str, dataset: str, env_key: str | None = None, batch_size: int = 1,
                   result_id: str | None = None, max_series: int = 6) -> ModelEvidence:
    """Read the accuracy and latency series of a model; `result_id` picks the result whose layers are listed.

    Only the `max_series` methods with the most points are kept, so a plot stays readable.
    """
    rows = store.query(
        "SELECT result_id, criterion, allocation, pattern, recipe_json, requested_sparsity, achieved_sparsity, "
        "labelled, top1, top1_agreement, dense_top1, coalesce(task, 'classification') AS task, box_map, "
        "box_map_fidelity, dense_box_map, provenance, prediction_json, layer_sparsity_json "
        "FROM results WHERE model_key = ? AND dataset = ? ORDER BY requested_sparsity, created_at",
        [model_key, dataset])
    metric = primary_metric(rows[0])[0] if rows else "top1"
    references = [primary_metric(r)[1] for r in rows]
    evidence = ModelEvidence(model_key, dataset, metric, next((value for value in references if value is not None), None))
    series: dict[str, list[AccuracyPoint]] = {}
    for row in rows:
        value = _accuracy(row)
        if value is None or row["criterion"] == "dense":
            continue
        point = AccuracyPoint(row["achieved_sparsity"] if row["achieved_sparsity"] is not None
                              else row["requested_sparsity"], value, row["provenance"])
        if row["provenance"] == "predicted" and row.get("prediction_json"):
            prediction = json.loads(row["prediction_json"])
            metric = primary_metric(row)[0]  # top1 or box_map: predictions are labelled
            point.low, point.high = prediction.get(f"{metric}_low"), prediction.get(f"{metric}_high")
        series.setdefault(method_label(row), []).append(point)
        if row["result_id"] == result_id and row.get("layer_sparsity_json"):
            evidence.layers = json.loads(row["layer_sparsity_json"])
    keep = sorted(series, key=lambda name: (-len(series[name]), name))[:max_series]
    evidence.accuracy = {name: series[name] for name in sorted(keep)}

    if env_key is not None:
        timings = store.query(
            "SELECT runtime, criterion, requested_sparsity, p50_ms FROM latency WHERE model_key = ? AND env_key = ? "
            "AND batch_size = ? AND (criterion IN ('dense', 'magnitude')) AND pattern IN ('dense', 'unstructured') "
            "ORDER BY runtime, requested_sparsity, created_at", [model_key, env_key, batch_size])
        latest: dict[tuple[str, float], float] = {}
        for t in timings:  # the latest timing of each sparsity wins
            latest[(t["runtime"], round(float(t["requested_sparsity"] or 0.0), 4))] = t["p50_ms"]
        for (runtime, sparsity), p50 in sorted(latest.items()):
            evidence.latency.setdefault(runtime, []).append((sparsity, p50))
        evidence.latency_profile = env_key
    return evidence
