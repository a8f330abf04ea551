"""Every architecture the database has features for, with its predicted robustness: the TUI's Models tab.

The rows come from the `architectures` table (`ptsa features`, `ptsa fit`; `ptsa features --all`
adds every timm architecture). When a regressor has been fitted, each row also gets the
predicted retention of one reference recipe, uniform magnitude pruning at 50 %, with its 80 %
interval, so architectures can be compared before any is benched. A detector's retention is of
box mAP, a classifier's of top-1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from db import Store

REFERENCE_SPARSITY = 0.5
REFERENCE_RECIPE = {
    "requested_sparsity": REFERENCE_SPARSITY, "criterion": "magnitude", "allocation": "uniform",
    "pattern": "unstructured", "recipe_json": json.dumps({"recipe": "uniform+magnitude+unstructured"}),
    "calibration_size": 128,
}


def architecture_rows(store: Store) -> list[dict[str, Any]]:
    """Return one row per stored architecture and shape, with how many results each has."""
    return store.query("""
        SELECT a.architecture, coalesce(a.task, 'classification') AS task, a.family, a.params, a.gmacs,
               a.num_classes, a.in_chans, a.input_size,
               a.features_json, coalesce(n.results, 0) AS results
        FROM architectures a
        LEFT JOIN (SELECT m.architecture, count(*) AS results FROM results r JOIN models m USING (model_key)
                   WHERE r.provenance <> 'predicted' GROUP BY ALL) n USING (architecture)
        QUALIFY row_number() OVER (PARTITION BY a.architecture, a.num_classes, a.in_chans, a.input_size
                                   ORDER BY a.computed_at DESC) = 1
        ORDER BY a.architecture, a.input_size
    """)


def add_predictions(store: Store, rows: list[dict[str, Any]], data_folder: Path) -> str | None:
    """Add `retention`, `retention_low` and `retention_high` to each row from the latest fit.

    Returns the fit id, or None when no regressor is fitted (the rows are left as they are).
    Imports scikit-learn, so call it off the TUI's event loop.
    """
    import numpy as np

    from advisor.errors import RegressorError
    from advisor.robustness import input_vector, latest_fit_row, load_fit, recipe_features

    try:
        fitted = load_fit(latest_fit_row(store), data_folder)
    except RegressorError:
        return None
    vectors = [input_vector(json.loads(row["features_json"]), recipe_features({**REFERENCE_RECIPE, "task": row["task"]}))
               for row in rows]
    if vectors:
        low, median, high = fitted.predict(np.array(vectors))
        for row, lo, mid, hi in zip(rows, low, median, high):
            row["retention"], row["retention_low"], row["retention_high"] = (
                float(max(mid, 0.0)), float(max(lo, 0.0)), float(max(hi, 0.0)))
    return fitted.fit_id
