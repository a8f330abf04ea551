"""Score feature sets and learners for the robustness regressor on one database, held-out-family.

Usage: python benchmarks/regressor_variants.py --db results.duckdb

Reads the training rows and stored architecture features as `ptsa fit` does, so run `ptsa fit`
once first to store the features. Then runs the leave-one-family-out evaluation of
`advisor.robustness.evaluate` for each variant and prints MAE, RMSE and Spearman of the
regressor next to the two baselines. docs/benchmarks.md records the result on the quick-start
database.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sklearn.ensemble import GradientBoostingRegressor, HistGradientBoostingRegressor  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from advisor import robustness as R  # noqa: E402
from db import Store  # noqa: E402

ALL_26 = R.ARCHITECTURE_FEATURES  # every scalar feature; the product reads them all
SETS = {
    "26 features, falling with sparsity (the product's)": ALL_26,
    "10 features": ("log10_params", "log10_macs", "prunable_layers", "linear_share", "depthwise_conv_share",
                    "residual_adds", "attention_modules", "norm_batchnorm_share", "input_size", "log10_num_classes"),
    "8 features": ("log10_params", "depthwise_conv_share", "linear_share", "residual_adds", "attention_modules",
                   "width_min", "input_size", "log10_num_classes"),
    "7 features": ("log10_params", "log10_macs", "depthwise_conv_share", "linear_share", "width_median", "input_size",
                   "log10_num_classes"),
}


def unconstrained(quantile: float, names: tuple[str, ...] | None = None) -> GradientBoostingRegressor:
    """Plain gradient boosting without the monotonic constraint (the learner before model version 3)."""
    return GradientBoostingRegressor(loss="quantile", alpha=quantile, n_estimators=200, learning_rate=0.05,
                                     max_depth=3, min_samples_leaf=5, random_state=0)


def shallow(quantile: float, names: tuple[str, ...] | None = None) -> HistGradientBoostingRegressor:
    return HistGradientBoostingRegressor(loss="quantile", quantile=quantile, max_iter=150, learning_rate=0.05,
                                         max_depth=2, min_samples_leaf=10, random_state=0,
                                         monotonic_cst=[-1 if n == "sparsity" else 0 for n in names or R.FEATURES])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    args = parser.parse_args()
    with Store.open(args.db, read_only=True) as store:
        rows = R.training_rows(store)
        features = R.stored_features(store, {R.shape_key(r) for r in rows}, 1)
    # Rebuild the training matrix with all 26 features, then select columns per variant.
    R.ARCHITECTURE_FEATURES, R.FEATURES = ALL_26, ALL_26 + R.RECIPE_FEATURES
    full = R.build_training(rows, features)
    variants = [(name, R._learner, names) for name, names in SETS.items()]
    variants += [("26 features, shallower trees", shallow, ALL_26), ("26 features, not monotonic", unconstrained, ALL_26)]
    print(f"{len(full.y)} rows, {len(set(full.groups))} families")
    print("| variant | regressor MAE | RMSE | Spearman | parameter count MAE | recipe mean MAE |")
    print("| --- | --- | --- | --- | --- | --- |")
    learner = R._learner
    for name, make, names in variants:
        columns = [ALL_26.index(n) for n in names] + [len(ALL_26) + i for i in range(len(R.RECIPE_FEATURES))]
        R._learner, R.FEATURES = make, tuple(names) + R.RECIPE_FEATURES
        with threadpool_limits(1):
            metrics = R.evaluate(R.TrainingData(full.rows, full.X[:, columns], full.y, full.groups))["models"]
        R._learner = learner
        print(f"| {name} | {metrics['regressor']['mae']:.2f} | {metrics['regressor']['rmse']:.2f} | "
              f"{metrics['regressor']['spearman']:.2f} | {metrics['params_only']['mae']:.2f} | "
              f"{metrics['recipe_mean']['mae']:.2f} |")


if __name__ == "__main__":
    main()
