"""`ptsa predict`: the regressor's retention for a model and recipe, stored as 'predicted' rows."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from advisor.robustness import (
    MODEL_VERSION,
    RegressorError,
    drivers,
    input_vector,
    latest_fit_row,
    load_fit,
    recipe_features,
)
from db import Store


def _resolve_model(store: Store, model: str, num_classes: int | None, input_size: int | None,
                   dataset: str | None) -> dict[str, Any]:
    """Return the architecture, shape, task and dataset to predict for."""
    import timm

    from bench_engine.detection.detectors import check_architecture, is_detector_architecture, looks_like_detector
    from bench_engine.task_names import CLASSIFICATION, DETECTION

    stored = store.query("SELECT * FROM models WHERE model_key = ?", [model])
    if stored:
        row = stored[0]
        if dataset is None:
            benched = store.query("SELECT dataset FROM results WHERE model_key = ? AND provenance <> 'predicted' "
                                  "ORDER BY created_at DESC LIMIT 1", [model])
            dataset = benched[0]["dataset"] if benched else "imagenet"
        task = row.get("task") or (DETECTION if is_detector_architecture(row["architecture"]) else CLASSIFICATION)
        return {"model_key": model, "architecture": row["architecture"], "family": row["family"],
                "num_classes": num_classes or row["num_classes"] or 1000, "in_chans": row["in_chans"] or 3,
                "input_size": input_size or row["input_size"], "dataset": dataset, "stored": True, "task": task}
    if timm.is_model(model):
        return {"model_key": model, "architecture": model, "family": None, "num_classes": num_classes or 1000,
                "in_chans": 3, "input_size": input_size, "dataset": dataset or "imagenet", "stored": False,
                "task": CLASSIFICATION}
    if looks_like_detector(model):
        check_architecture(model)  # an unknown or misspelt detector is named, with suggestions
        if dataset is None or num_classes is None:
            raise RegressorError(
                "detector {model!r} is not in the database, so its dataset and class count are unknown; pass "
                "--dataset NAME and --num-classes N (foreground classes), for example --dataset coco --num-classes 80.",
                model=model)
        return {"model_key": model, "architecture": model, "family": None, "num_classes": num_classes,
                "in_chans": 3, "input_size": input_size, "dataset": dataset, "stored": False, "task": DETECTION}
    from bench_engine.features import similar_architectures

    matches = similar_architectures(model)
    if matches:
        raise RegressorError(
            "unknown model {model!r}: it is neither a model in the database (`ptsa models`) nor a timm "
            "architecture; did you mean {matches}?", model=model, matches=", ".join(matches)
        )
    raise RegressorError(
        "unknown model {model!r}: it is neither a model in the database (`ptsa models`) nor a timm "
        "architecture; see the names with `python -c \"import timm; print(timm.list_models('resnet*'))\"`.",
        model=model,
    )


# The accuracy column of each task, and the column of its dense model's value.
METRICS = {"classification": ("top1", "dense_top1"), "detection": ("box_map", "dense_box_map")}


def _dense_score(store: Store, model_key: str, dataset: str, task: str) -> float | None:
    """Return the dense top-1 (or box mAP) of a stored model on a dataset, from any measured or published row."""
    dense = METRICS[task][1]
    rows = store.query(f"SELECT {dense} AS dense FROM results WHERE model_key = ? AND dataset = ? "
                       f"AND {dense} IS NOT NULL AND provenance <> 'predicted' AND labelled "
                       "ORDER BY created_at DESC LIMIT 1", [model_key, dataset])
    return rows[0]["dense"] if rows else None


def _warnings(store: Store, fitted: Any, target: dict[str, Any], recipe_row: dict[str, Any]) -> list[str]:
    """Say when a prediction extrapolates, or when the configuration was measured or published."""
    notes = []
    low, high = fitted.metrics.get("sparsity_range", (None, None))
    sparsity = recipe_row["requested_sparsity"]
    if low is not None and not low <= sparsity <= high:
        notes.append(f"sparsity {sparsity:.0%} is outside the training data's {low:.0%} to {high:.0%}; trees do not "
                     "extrapolate, so this is the prediction at the nearest trained sparsity")
    recipe = json.loads(recipe_row["recipe_json"]).get("recipe")
    metric, dense = METRICS[target["task"]]
    for row in store.query(
        f"SELECT provenance, {metric} AS score, {dense} AS dense, recipe_json FROM results WHERE model_key = ? "
        "AND dataset = ? AND provenance <> 'predicted' AND labelled AND abs(requested_sparsity - ?) < 1e-6 "
        "AND pattern = ?",
        [target["model_key"], target["dataset"], sparsity, recipe_row["pattern"]],
    ):
        if json.loads(row["recipe_json"]).get("recipe") == recipe and row["score"] is not None and row["dense"]:
            notes.append(f"this configuration was {row['provenance']}: retention "
                         f"{100 * row['score'] / row['dense']:.1f} %, which the recommender uses instead")
            break
    return notes


def _default_weight_top1(store: Store, architecture: str, input_size: int) -> tuple[float, str] | None:
    """Return the published dense top-1 of timm's default weight for an architecture, with its key."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(architecture)
    tag = getattr(cfg, "tag", None) if cfg is not None else None
    if not tag:
        return None
    weight = f"{architecture}.{tag}"
    rows = store.query("SELECT model_key, top1 FROM results WHERE provenance = 'published' AND criterion = 'dense' "
                       "AND model_key IN (?, ?)", [weight, f"{weight}@{input_size}px"])
    return (rows[0]["top1"], rows[0]["model_key"]) if rows else None


def predict_rows(store: Store, data_folder: Path, model: str, recipe: str, sparsities: list[float],
                 dataset: str | None = None, num_classes: int | None = None, input_size: int | None = None,
                 dense_top1: float | None = None, store_rows: bool = True,
                 dense_box_map: float | None = None) -> list[dict[str, Any]]:
    """Predict retention for each sparsity; store the predictions unless `store_rows` is False.

    A classifier's retention turns into top-1 with its dense top-1 (`dense_top1`, else a stored
    dense result), a detector's into box mAP with its dense box mAP (`dense_box_map`, else a
    stored one). Each prediction names its task and metric.
    """
    from bench_engine.features import architecture_row, featurize
    from bench_engine.pruning import LayerPolicy
    from bench_engine.pruning.recipe import resolve_recipe

    fit_row = latest_fit_row(store)
    fitted = load_fit(fit_row, data_folder)
    target = _resolve_model(store, model, num_classes, input_size, dataset)
    task = target["task"]
    metric, dense_column = METRICS[task]
    dense_option, other_option = (dense_box_map, dense_top1) if task == "detection" else (dense_top1, dense_box_map)
    if other_option is not None and task == "detection":
        raise RegressorError("{model} is a detector, so its dense box mAP is given with --dense-box-map, not "
                             "--dense-top1.", model=target["model_key"])
    if other_option is not None:
        raise RegressorError("{model} is a classifier, so its dense top-1 is given with --dense-top1, not "
                             "--dense-box-map.", model=target["model_key"])
    featurized = featurize(target["architecture"], num_classes=target["num_classes"], in_chans=target["in_chans"],
                           input_size=target["input_size"])
    store.upsert_architectures([architecture_row(featurized)])
    architecture = featurized["features"]
    dense = dense_option if dense_option is not None else _dense_score(store, target["model_key"], target["dataset"], task)
    dense_source = None
    if dense_option is not None:
        dense_source = "--" + dense_column.replace("_", "-")
    elif dense is not None:
        dense_source = "stored result"
    if (dense is None and task == "classification" and not target["stored"] and target["dataset"] == "imagenet"
            and featurized["num_classes"] == 1000):
        published = _default_weight_top1(store, target["architecture"], featurized["input_size"])
        if published is not None:
            dense, dense_source = published[0], f"published top-1 of {published[1]}"
    configs = {}
    for sparsity in sparsities:
        config = resolve_recipe(recipe, sparsity, LayerPolicy())
        configs[(config.pattern_name, round(config.sparsity, 6))] = config  # an N:M recipe gives one row
    predictions, rows = [], []
    for config in configs.values():
        recipe_row = {"criterion": config.criterion, "allocation": config.allocation, "pattern": config.pattern_name,
                      "recipe_json": json.dumps(config.to_dict(), sort_keys=True),
                      "requested_sparsity": config.sparsity, "calibration_size": 128, "task": task}
        vector = input_vector(architecture, recipe_features(recipe_row))
        low, median, high = (float(max(v[0], 0.0)) for v in fitted.predict(np.array([vector])))
        prediction = {
            "model_key": target["model_key"],
            "architecture": target["architecture"],
            "dataset": target["dataset"],
            "task": task,
            "metric": metric,
            "recipe": config.to_dict()["recipe"],
            "sparsity": config.sparsity,
            "retention": median,
            "retention_low": low,
            "retention_high": high,
            # top1, top1_low, top1_high and dense_top1 for a classifier; box_map, ... for a detector.
            dense_column: dense,
            metric: None if dense is None else min(median * dense / 100, 100.0),
            f"{metric}_low": None if dense is None else min(low * dense / 100, 100.0),
            f"{metric}_high": None if dense is None else min(high * dense / 100, 100.0),
            "drivers": drivers(fitted, vector),
            "dense_source": dense_source,
            "warnings": _warnings(store, fitted, target, recipe_row),
            "fit_id": fitted.fit_id,
            # The error on this task's held-out rows; a fit from before per-task metrics has the overall one.
            "held_out_family_mae": (fitted.metrics.get("per_task", {}).get(task) or {}).get(
                "regressor_mae", fitted.metrics["models"]["regressor"]["mae"]),
        }
        predictions.append(prediction)
        rows.append({
            "result_id": uuid.uuid4().hex,
            "run_id": None,
            "model_key": target["model_key"],
            "dataset": target["dataset"],
            "task": task,
            "labelled": True,
            "provenance": "predicted",
            "source": f"ptsa regressor fit {fitted.fit_id} (model version {MODEL_VERSION})",
            **{k: v for k, v in recipe_row.items() if k not in ("calibration_size", "task")},
            "layer_policy_json": json.dumps(LayerPolicy().to_dict(), sort_keys=True),
            metric: prediction[metric],
            dense_column: dense,
            "prediction_json": json.dumps({k: prediction[k] for k in (
                "task", "metric", "retention", "retention_low", "retention_high", f"{metric}_low", f"{metric}_high",
                "drivers", "fit_id", "held_out_family_mae", "dense_source", "warnings")}),
        })
    if store_rows:
        with store.transaction():
            if not target["stored"]:
                store.upsert_models([{
                    "model_key": target["model_key"], "architecture": target["architecture"],
                    "family": featurized["family"], "num_classes": featurized["num_classes"],
                    "in_chans": featurized["in_chans"], "input_size": featurized["input_size"],
                    "param_count": int(architecture["params"]), "task": task,
                    "weights_source": "none: predicted from architecture features",
                }])
            names = list(rows[0])
            store.insert_results({name: [row[name] for row in rows] for name in names})
    return predictions
