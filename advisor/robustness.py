"""The robustness regressor: predict how much accuracy a PTS recipe keeps on an architecture.

The target is retention, of a (recipe, sparsity, pattern) on an architecture and dataset: 100 ×
sparse top-1 / dense top-1 for classification, 100 × sparse box mAP / dense box mAP for
detection. Both tasks train one model, with the task as an input, so what a recipe does to a
backbone carries across tasks while the task can shift it. The inputs are the task, the
architecture's features (computed without weights, `bench_engine.features`; a detector's cover
its backbone, neck and head), the dataset's class count and input size, and the recipe:
criterion, allocation, pattern, reconstruction, corrections and sparsity. An unknown or
inapplicable value (a published row that does not give its calibration size, the N:M density
of an unstructured recipe) is UNKNOWN, -1, below every real value, so a tree can split it off.

Three gradient-boosted tree models (quantile loss) predict the 10th, 50th and 90th percentile
of retention: the median is the prediction, the other two an 80 % interval. The interval is then
widened by the amount that makes it cover 80 % of the held-out rows in cross-validation
(conformalised quantile regression), since quantile models fitted on few families are
overconfident about a new one. `evaluate` scores it with grouped cross-validation that holds out one whole architecture
family (timm module) at a time. Two baselines are scored the same way. The first is the same
learner with the parameter count as its only architecture feature. The second is the mean
retention of the training rows with the same recipe and sparsity, because a family's own mean
is undefined when the family is held out.

The fitted models are saved with skops, which rebuilds scikit-learn objects without running
code from the file. skops marks one type, the histogram-boosting tree
(`sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor`), as unsafe to load from
untrusted files, because out-of-range node indices can crash `predict`. So
`load_fit` trusts it only for a file inside the product's data folder whose SHA-256 equals the
one recorded in the database when it was fitted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import GroupKFold, LeaveOneGroupOut
from threadpoolctl import threadpool_limits

from advisor.errors import RegressorError
from db import Store

log = logging.getLogger(__name__)

MODEL_VERSION = 4  # raised when the inputs, targets or learner change
QUANTILES = (0.1, 0.5, 0.9)
# Feature names of the recipe part, in a fixed order.
CRITERIA = ("magnitude", "wanda", "sparsegpt")
ALLOCATIONS = ("uniform", "erk", "global_magnitude", "l2_global", "owl", "sensitivity", "learned")
CORRECTIONS = ("weight_correction", "bias_correction", "bn_reestimation")
RECIPE_FEATURES = (
    "sparsity", *(f"criterion_{c}" for c in CRITERIA), *(f"allocation_{a}" for a in ALLOCATIONS),
    "nm_pattern", "nm_density", "reconstruction_layer", "reconstruction_block", "reconstruction_sparse_input",
    "reconstruction_log10_steps", *CORRECTIONS, "log10_calibration_size",
)
# The architecture features the regressor reads: every scalar that bench_engine.features
# computes. A 7-feature subset scored better on the 7 families of the first quick-start data,
# but it had been chosen on those same folds, and on 13 families it was the worst of the sets
# tried (benchmarks/regressor_variants.py, docs/benchmarks.md).
ARCHITECTURE_FEATURES = (
    "log10_params", "log10_macs", "prunable_layers", "prunable_param_share", "linear_share", "dense_conv_share",
    "depthwise_conv_share", "grouped_conv_share", "kernel_1x1_share", "kernel_3x3_share", "kernel_large_share",
    "max_kernel", "width_min", "width_median", "width_max", "attention_modules", "residual_adds",
    "act_relu_share", "act_gelu_share", "act_silu_share", "act_hardswish_share", "norm_batchnorm_share",
    "norm_layernorm_share", "norm_groupnorm_share", "input_size", "log10_num_classes",
)
# The task: 1 for detection (retention of box mAP), 0 for classification (retention of top-1).
TASK_FEATURES = ("task_detection",)
FEATURES = ARCHITECTURE_FEATURES + TASK_FEATURES + RECIPE_FEATURES
PARAMS_ONLY = ("log10_params", *TASK_FEATURES, *RECIPE_FEATURES)
TASKS = ("classification", "detection")
WITHIN = 5.0  # points of retention counted as a close prediction
# Stands for an unknown or inapplicable input. (scikit-learn's trees accept NaN, but its binning
# fails on a column with no known value at all, such as the N:M density when no row is N:M.)
UNKNOWN = -1.0


def recipe_features(row: dict[str, Any]) -> dict[str, float]:
    """Return the recipe part of the inputs from a result row (or a row-like dict)."""
    recipe = json.loads(row.get("recipe_json") or "{}")
    pattern = row.get("pattern") or "unstructured"
    reconstruction = recipe.get("reconstruction", "none")
    steps = recipe.get("recon_steps")
    calibration = row.get("calibration_size")
    corrections = recipe.get("corrections") or []
    values = {
        "sparsity": float(row["requested_sparsity"]),
        **{f"criterion_{c}": float(row["criterion"] == c) for c in CRITERIA},
        **{f"allocation_{a}": float(row["allocation"] == a) for a in ALLOCATIONS},
        "nm_pattern": float(":" in pattern),
        "nm_density": (lambda n, m: n / m)(*map(int, pattern.split(":"))) if ":" in pattern else math.nan,
        "reconstruction_layer": float(reconstruction == "layer"),
        "reconstruction_block": float(reconstruction == "block"),
        "reconstruction_sparse_input": (
            math.nan if reconstruction == "none" or "recon_input" not in recipe else float(recipe["recon_input"] == "sparse")
        ),
        "reconstruction_log10_steps": math.log10(steps) if steps and reconstruction != "none" else math.nan,
        **{c: float(c in corrections) for c in CORRECTIONS},
        "log10_calibration_size": math.log10(calibration) if calibration else math.nan,
        "task_detection": float(row_task(row) == "detection"),
    }
    return values


def row_task(row: dict[str, Any]) -> str:
    """Return a row's task; rows stored before detection existed have none and are classification."""
    return row.get("task") or "classification"


def recipe_key(row: dict[str, Any]) -> str:
    """Return the recipe without its sparsity, to group rows of the same technique."""
    recipe = json.loads(row.get("recipe_json") or "{}")
    return f"{row_task(row)}|{recipe.get('recipe') or row['criterion']}|{row.get('pattern')}"


# `score` and `dense_score` are each row's metric for its task: top-1 or box mAP@[.5:.95].
_TRAINING_SQL = """
SELECT * FROM (
  SELECT r.result_id, r.model_key, r.dataset, r.provenance, r.criterion, r.allocation, r.pattern, r.recipe_json,
         r.requested_sparsity, r.calibration_size, coalesce(r.task, 'classification') AS task,
         CASE WHEN r.task = 'detection' THEN r.box_map ELSE r.top1 END AS score,
         CASE WHEN r.task = 'detection' THEN r.dense_box_map ELSE r.dense_top1 END AS dense_score,
         m.architecture, m.family, m.num_classes, m.in_chans, m.input_size
  FROM results r JOIN models m USING (model_key)
  WHERE r.provenance IN ('measured', 'published') AND r.labelled AND r.criterion <> 'dense'
)
WHERE score IS NOT NULL AND dense_score > 0
ORDER BY result_id
"""


@dataclass
class TrainingData:
    """The rows the regressor learns from, with their inputs, targets and families."""

    rows: list[dict[str, Any]]
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray

    def sha256(self) -> str:
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.X).tobytes())
        digest.update(np.ascontiguousarray(self.y).tobytes())
        digest.update("|".join(self.groups.tolist()).encode())
        return digest.hexdigest()


def shape_key(row: dict[str, Any]) -> tuple[str, int, int, int]:
    return (row["architecture"], int(row["num_classes"] or 1000), int(row["in_chans"] or 3), int(row["input_size"] or 224))


def stored_features(store: Store, keys: set[tuple[str, int, int, int]], feature_version: int) -> dict[tuple, dict]:
    """Return stored architecture features by (architecture, classes, channels, size)."""
    rows = store.query(
        "SELECT architecture, num_classes, in_chans, input_size, features_json FROM architectures "
        "WHERE feature_version = ? ORDER BY computed_at", [feature_version]
    )
    found = {}
    for row in rows:
        key = (row["architecture"], row["num_classes"], row["in_chans"], row["input_size"])
        if key in keys:
            found[key] = json.loads(row["features_json"])
    return found


def input_vector(architecture: dict[str, float], recipe: dict[str, float]) -> list[float]:
    values = {**architecture, **recipe}
    vector = [float(values.get(name, math.nan)) for name in FEATURES]
    return [UNKNOWN if math.isnan(v) else v for v in vector]


def build_training(rows: list[dict[str, Any]], features: dict[tuple, dict]) -> TrainingData:
    featured, vectors, targets, groups = [], [], [], []
    for row in rows:
        architecture = features.get(shape_key(row))
        if architecture is None:
            continue
        featured.append(row)
        vectors.append(input_vector(architecture, recipe_features(row)))
        targets.append(100.0 * row["score"] / row["dense_score"])
        groups.append(row["family"])
    return TrainingData(featured, np.array(vectors, dtype=float).reshape(-1, len(FEATURES)),
                        np.array(targets, dtype=float), np.array(groups, dtype=object))


def _learner(quantile: float, names: tuple[str, ...] | None = None) -> HistGradientBoostingRegressor:
    """Return a quantile model whose prediction can only fall as sparsity rises.

    More zeros never restore accuracy, and the constraint keeps predictions between and beyond
    the measured sparsities from bending upwards. Fit it under `threadpool_limits(1)`: on a few
    hundred rows one thread is as fast, and OpenMP threads took 16 s per fit on a busy
    2-core machine.
    """
    names = FEATURES if names is None else names
    return HistGradientBoostingRegressor(
        loss="quantile", quantile=quantile, max_iter=200, learning_rate=0.05, max_leaf_nodes=8, min_samples_leaf=5,
        monotonic_cst=[-1 if name == "sparsity" else 0 for name in names], random_state=0)


def _columns(names: tuple[str, ...]) -> list[int]:
    return [FEATURES.index(name) for name in names]


def _recipe_mean(train_rows: list[dict], y_train: np.ndarray, test_rows: list[dict]) -> np.ndarray:
    by_recipe: dict[tuple, list[float]] = {}
    by_sparsity: dict[float, list[float]] = {}
    for row, target in zip(train_rows, y_train):
        sparsity = round(float(row["requested_sparsity"]), 3)
        by_recipe.setdefault((recipe_key(row), sparsity), []).append(target)
        by_sparsity.setdefault(sparsity, []).append(target)
    overall = float(np.mean(y_train))
    predictions = []
    for row in test_rows:
        sparsity = round(float(row["requested_sparsity"]), 3)
        same = by_recipe.get((recipe_key(row), sparsity)) or by_sparsity.get(sparsity)
        predictions.append(float(np.mean(same)) if same else overall)
    return np.array(predictions)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    return float(spearmanr(a, b).statistic)


def _metrics(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    errors = predicted - y
    return {
        "mae": float(np.mean(np.abs(errors))),
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "spearman": _spearman(y, predicted),
        "within_5": float(np.mean(np.abs(errors) <= WITHIN)),
    }


def evaluate(data: TrainingData) -> dict[str, Any]:
    """Score the regressor and both baselines by cross-validation that holds out whole families."""
    families = sorted(set(data.groups.tolist()))
    if len(families) < 3:
        raise RegressorError(
            "the training rows come from {n} architecture families ({families}); "
            "holding one out needs at least 3. Bench more architectures (`ptsa demo` benches eleven) first.",
            n=len(families), families=", ".join(families),
        )

    splitter = LeaveOneGroupOut() if len(families) <= 12 else GroupKFold(n_splits=8)
    n = len(data.y)
    predicted = {name: np.zeros(n) for name in ("regressor", "params_only", "recipe_mean")}
    low, high = np.zeros(n), np.zeros(n)
    params_columns = _columns(PARAMS_ONLY)
    for train, test in splitter.split(data.X, data.y, data.groups):
        X_train, y_train = data.X[train], data.y[train]
        with threadpool_limits(1):
            quantile_models = [_learner(q).fit(X_train, y_train) for q in QUANTILES]
            low[test], predicted["regressor"][test], high[test] = (m.predict(data.X[test]) for m in quantile_models)
            predicted["params_only"][test] = _learner(0.5, PARAMS_ONLY).fit(
                X_train[:, params_columns], y_train).predict(data.X[test][:, params_columns])
        predicted["recipe_mean"][test] = _recipe_mean([data.rows[i] for i in train], y_train,
                                                      [data.rows[i] for i in test])

    metrics = {name: _metrics(data.y, values) for name, values in predicted.items()}
    low, high = np.minimum(low, high), np.maximum(low, high)
    metrics["regressor"]["interval_80_coverage"] = float(np.mean((data.y >= low) & (data.y <= high)))

    # Conformalised quantile regression: widen both ends by the score that 80 % of held-out rows
    # stay within, so the interval covers 80 % of the held-out families' rows.
    scores = np.maximum(low - data.y, data.y - high)
    level = min(1.0, 0.8 * (1 + 1 / n))
    adjustment = float(np.quantile(scores, level))
    metrics["regressor"]["interval_adjustment"] = adjustment
    metrics["regressor"]["interval_80_coverage_adjusted"] = float(np.mean(
        (data.y >= low - adjustment) & (data.y <= high + adjustment)))

    per_family = {}
    for family in families:
        mask = data.groups == family
        per_family[family] = {"rows": int(mask.sum()), "regressor_mae": float(np.mean(np.abs(
            predicted["regressor"][mask] - data.y[mask]))), "recipe_mean_mae": float(np.mean(np.abs(
                predicted["recipe_mean"][mask] - data.y[mask])))}

    tasks = np.array([row_task(row) for row in data.rows], dtype=object)
    per_task = {}
    for task in TASKS:
        mask = tasks == task
        if mask.any():
            per_task[task] = {"rows": int(mask.sum()),
                              "families": sorted(set(data.groups[mask].tolist())),
                              **{f"{name}_mae": float(np.mean(np.abs(values[mask] - data.y[mask])))
                                 for name, values in predicted.items()}}

    sparsities = [float(row["requested_sparsity"]) for row in data.rows]
    return {"split": type(splitter).__name__, "families": families, "rows": n, "models": metrics,
            "per_family": per_family, "per_task": per_task, "sparsity_range": [min(sparsities), max(sparsities)]}


def beats_baselines(metrics: dict[str, Any]) -> bool:
    models = metrics["models"]
    return all(models["regressor"][m] < models[b][m] for b in ("params_only", "recipe_mean") for m in ("mae", "rmse"))


@dataclass
class Fit:
    """A fitted regressor: the three quantile models and what they were trained on."""

    fit_id: str
    models: list[HistGradientBoostingRegressor]
    feature_medians: list[float]
    metrics: dict[str, Any]

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the 80 % interval's ends and the median, the ends widened by the conformal adjustment."""
        low, median, high = (m.predict(X) for m in self.models)
        adjustment = self.metrics["models"]["regressor"].get("interval_adjustment", 0.0)
        return np.minimum(low, median) - adjustment, median, np.maximum(high, median) + adjustment


def regressor_folder(data_folder: Path) -> Path:
    return data_folder / "regressor"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def training_rows(store: Store) -> list[dict[str, Any]]:
    """Return the labelled pruned results (measured and published) with their model's shape."""
    return store.query(_TRAINING_SQL)


def fit(store: Store, data_folder: Path, feature_version: int, product_version: str) -> dict[str, Any]:
    """Evaluate and fit the regressor on the rows of `store`; save and record it; return the fit row.

    The architecture features of the training rows must be stored already (`ptsa fit` computes
    the missing ones first).
    """
    import skops.io

    rows = training_rows(store)
    features = stored_features(store, {shape_key(r) for r in rows}, feature_version)
    data = build_training(rows, features)
    if len(data.y) < 30:
        raise RegressorError(
            "the database has {n} labelled pruned results with architecture features; the regressor "
            "needs at least 30. Run `ptsa demo` or bench more models first.", n=len(data.y)
        )
    metrics = evaluate(data)
    with threadpool_limits(1):
        quantile_models = [_learner(q).fit(data.X, data.y) for q in QUANTILES]
    fit_id = uuid.uuid4().hex[:12]
    folder = regressor_folder(data_folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"fit-{fit_id}.skops"
    medians = np.median(data.X, axis=0)
    partial = path.with_suffix(".partial")
    # Compressed: 2.6 MB instead of 18 MB for the quick-start fit.
    skops.io.dump({"models": quantile_models, "feature_names": list(FEATURES),
                   "feature_medians": [float(v) for v in medians]}, partial, compression=zipfile.ZIP_DEFLATED)
    partial.replace(path)  # a crash never leaves a half-written model under the final name
    row = {
        "fit_id": fit_id,
        "product_version": product_version,
        "sklearn_version": sklearn.__version__,
        "feature_version": feature_version,
        "training_sha256": data.sha256(),
        "n_rows": len(data.y),
        "n_architectures": len({r["architecture"] for r in data.rows}),
        "n_families": len(metrics["families"]),
        "feature_names_json": json.dumps(list(FEATURES)),
        "metrics_json": json.dumps({**metrics, "model_version": MODEL_VERSION}),
        "model_path": str(path),
        "model_sha256": file_sha256(path),
        "created_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
    }
    store.insert_fit(row)
    _remove_old_files(folder, keep=3)
    return row


def _remove_old_files(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` fitted-model files (each is several MB)."""
    files = sorted(folder.glob("fit-*.skops"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)


def latest_fit_row(store: Store) -> dict[str, Any]:
    rows = store.query("SELECT * FROM regressor_fits ORDER BY created_at DESC LIMIT 1")
    if not rows:
        raise RegressorError("database {path} has no fitted regressor; run `ptsa fit` first.", path=store.path)
    return rows[0]


TRUSTED_TYPES = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


def load_fit(row: dict[str, Any], data_folder: Path) -> Fit:
    """Load a recorded fit after checking its file's place and checksum."""
    import skops.io

    path = Path(row["model_path"])
    folder = regressor_folder(data_folder).resolve()
    if folder not in path.resolve().parents:
        raise RegressorError("regressor file {path} is outside {folder}, so it is not loaded. Run `ptsa fit` again.",
                             path=path, folder=folder)
    if not path.is_file():
        raise RegressorError("regressor file {path} is missing; run `ptsa fit` again.", path=path)
    actual = file_sha256(path)
    if actual != row["model_sha256"]:
        raise RegressorError(
            "regressor file {path} was changed after it was fitted (SHA-256 {actual}…, recorded "
            "{recorded}…), so it is not loaded. Delete it and run `ptsa fit` again.",
            path=path, actual=actual[:12], recorded=row["model_sha256"][:12],
        )
    try:
        content = skops.io.load(path, trusted=TRUSTED_TYPES)
    except Exception as exc:  # skops raises several types for a broken file
        raise RegressorError("regressor file {path} cannot be read ({kind}: {reason}); run `ptsa fit` again.",
                             path=path, kind=type(exc).__name__, reason=str(exc)) from None
    if content.get("feature_names") != list(FEATURES):
        raise RegressorError("regressor file {path} was fitted on other features; run `ptsa fit` again.", path=path)
    return Fit(row["fit_id"], content["models"], content["feature_medians"], json.loads(row["metrics_json"]))


def drivers(fit_result: Fit, vector: list[float], top: int = 3) -> list[dict[str, Any]]:
    """Return the architecture features that move this prediction most when set to the training median."""
    base = fit_result.models[1].predict(np.array([vector]))[0]
    effects = []
    for name in ARCHITECTURE_FEATURES:
        index = FEATURES.index(name)
        median = fit_result.feature_medians[index]
        if vector[index] == UNKNOWN or vector[index] == median:
            continue
        changed = list(vector)
        changed[index] = median
        effect = base - fit_result.models[1].predict(np.array([changed]))[0]
        effects.append({"feature": name, "value": vector[index], "training_median": median, "effect": float(effect)})
    effects.sort(key=lambda e: -abs(e["effect"]))
    return [e for e in effects[:top] if abs(e["effect"]) > 1e-9]
