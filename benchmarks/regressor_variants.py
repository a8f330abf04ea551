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

ALL_26 = (
    "log10_params", "log10_macs", "prunable_layers", "prunable_param_share", "linear_share", "dense_conv_share",
    "depthwise_conv_share", "grouped_conv_share", "kernel_1x1_share", "kernel_3x3_share", "kernel_large_share",
    "max_kernel", "width_min", "width_median", "width_max", "attention_modules", "residual_adds",
    "act_relu_share", "act_gelu_share", "act_silu_share", "act_hardswish_share", "norm_batchnorm_share",
    "norm_layernorm_share", "norm_groupnorm_share", "input_size", "log10_num_classes",
)
SETS = {
    "26 features": ALL_26,
    "10 features": ("log10_params", "log10_macs", "prunable_layers", "linear_share", "depthwise_conv_share",
                    "residual_adds", "attention_modules", "norm_batchnorm_share", "input_size", "log10_num_classes"),
    "8 features": ("log10_params", "depthwise_conv_share", "linear_share", "residual_adds", "attention_modules",
                   "width_min", "input_size", "log10_num_classes"),
    "7 features (the product's)": R.ARCHITECTURE_FEATURES,
}


def shallow(quantile: float) -> GradientBoostingRegressor:
    return GradientBoostingRegressor(loss="quantile", alpha=quantile, n_estimators=150, learning_rate=0.05,
                                     max_depth=2, min_samples_leaf=10, subsample=0.8, random_state=0)


class FallingWithSparsity(HistGradientBoostingRegressor):
    """Histogram boosting whose prediction can only fall as sparsity rises."""

    def fit(self, X, y):
        names = R.FEATURES if X.shape[1] == len(R.FEATURES) else R.PARAMS_ONLY
        self.monotonic_cst = [-1 if name == "sparsity" else 0 for name in names]
        return super().fit(X, y)


def monotone(quantile: float) -> FallingWithSparsity:
    return FallingWithSparsity(loss="quantile", quantile=quantile, max_iter=200, learning_rate=0.05,
                               max_leaf_nodes=8, min_samples_leaf=5, random_state=0)


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
    variants += [("26 features, shallower trees", shallow, ALL_26), ("26 features, falling with sparsity", monotone, ALL_26)]
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
