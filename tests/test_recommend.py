"""The recommender on a fixture database built by the product's own store."""

from __future__ import annotations

import pytest

from advisor.recommend import Budget, BudgetError, load_candidates, recommend
from db import Store


def candidates(path, dataset=None):
    with Store.open(path, read_only=True) as store:
        return load_candidates(store, dataset)


def keys(result):
    return [(c.row["model_key"], c.row["criterion"]) for c in result.ranked]


def test_accuracy_objective_ranks_by_primary_metric(fixture_db):
    result = recommend(candidates(fixture_db, "mnist"), Budget(max_latency_ms=5.0))
    assert keys(result) == [
        ("mnist/resnet10t", "dense"),
        ("mnist/resnet10t", "magnitude"),
        ("mnist/resnet10t", "sparsegpt"),
    ]
    best = result.ranked[0]
    assert best.binding() == "max_latency_ms"
    assert best.margins["max_latency_ms"] == pytest.approx(0.5)
    assert best.row["cpu_model"] == "Test CPU"


def test_sparsity_objective_prefers_sparser_within_drop(fixture_db):
    result = recommend(candidates(fixture_db), Budget(max_drop=1.5, objective="sparsity", dataset="mnist"))
    assert keys(result)[0] == ("mnist/resnet10t", "sparsegpt")
    assert result.ranked[0].drop == pytest.approx(1.5)


def test_latency_objective_and_sparse_only(fixture_db):
    result = recommend(candidates(fixture_db, "mnist"), Budget(objective="latency", include_dense=False))
    assert keys(result)[0] == ("mnist/resnet10t", "sparsegpt")
    assert all(c.row["criterion"] != "dense" for c in result.ranked)
    # A row without latency ranks last under the latency objective.
    assert result.ranked[-1].row["model_key"] == "mnist/vit_tiny"


def test_missing_latency_fails_a_latency_budget(fixture_db):
    result = recommend(candidates(fixture_db, "mnist"), Budget(max_latency_ms=100))
    assert "mnist/vit_tiny" not in {c.row["model_key"] for c in result.ranked}
    assert result.failing_counts == {"max_latency_ms": 1}


def test_latency_at_other_batch_size_counts_as_missing(fixture_db):
    result = recommend(candidates(fixture_db), Budget(max_latency_ms=100, batch_size=8))
    assert not result.found
    assert result.binding_constraint() == "max_latency_ms"


def test_unlabelled_rows_use_agreement(fixture_db):
    result = recommend(candidates(fixture_db, "photos"), Budget(min_accuracy=85))
    only = result.ranked[0]
    assert only.metric == "top1_agreement"
    assert only.accuracy == 88.0
    assert only.drop == pytest.approx(12.0)


def test_impossible_budget_names_binding_constraint_and_nearest(fixture_db):
    result = recommend(candidates(fixture_db, "mnist"), Budget(max_latency_ms=1.0, min_accuracy=90))
    assert not result.found
    assert result.binding_constraint() == "max_latency_ms"
    assert result.failing_counts["max_latency_ms"] == 6
    assert result.failing_counts["min_accuracy"] == 1
    nearest = result.nearest[0]
    assert (nearest.row["model_key"], nearest.row["criterion"]) == ("mnist/resnet10t", "sparsegpt")
    assert nearest.violations["max_latency_ms"] == pytest.approx(3.4)
    payload = result.to_dict()
    assert payload["status"] == "no_candidate"
    assert payload["binding_constraint"] == "max_latency_ms"
    assert len(payload["nearest"]) == 3


def test_repeated_configuration_counts_once(fixture_db):
    import datetime as dt

    from conftest import insert_rows, make_result

    later = dt.datetime(2100, 1, 1)
    with Store.open(fixture_db) as store:
        insert_rows(store, [make_result(model_key="mnist/resnet10t", criterion="magnitude", requested_sparsity=0.5,
                                        achieved_sparsity=0.49, top1=96.2, latency_p90_ms=4.1, created_at=later)])
    rows = candidates(fixture_db, "mnist")
    magnitude = [r for r in rows if r["model_key"] == "mnist/resnet10t" and r["criterion"] == "magnitude"]
    assert len(magnitude) == 1
    assert magnitude[0]["top1"] == 96.2  # the latest measurement
    with Store.open(fixture_db, read_only=True) as store:
        assert len(load_candidates(store, "mnist", latest_only=False)) == len(rows) + 1


def test_ties_do_not_depend_on_row_order(fixture_db):
    rows = candidates(fixture_db, "mnist")
    tied = [dict(r, top1=90.0, latency_p90_ms=5.0, achieved_sparsity=0.5) for r in rows]
    first = [c.row["result_id"] for c in recommend(tied, Budget()).ranked]
    second = [c.row["result_id"] for c in recommend(list(reversed(tied)), Budget()).ranked]
    assert first == second
    assert len(first) == 6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_latency_ms": -1}, "positive number of milliseconds"),
        ({"max_latency_ms": float("inf")}, "positive number"),
        ({"min_accuracy": 101}, "between 0 and 100"),
        ({"max_drop": -2}, "between 0 and 100"),
        ({"batch_size": 0}, "at least 1"),
        ({"objective": "cost"}, "objective 'cost'"),
        ({"latency_stat": "p99"}, "p50 or p90"),
    ],
)
def test_invalid_budgets(kwargs, message):
    with pytest.raises(BudgetError, match=message):
        Budget(**kwargs)


def test_method_label_full_recipe():
    import json

    from advisor.formatting import method_label

    recipe = {"criterion": "magnitude", "reconstruction": "block", "recon_input": "sparse",
              "corrections": ["weight_correction", "bias_correction"]}
    row = {"criterion": "magnitude", "pattern": "unstructured", "allocation": "learned", "recipe_json": json.dumps(recipe)}
    assert method_label(row) == "magnitude+block_recon(sparse)+weight_correction+bias_correction (learned)"
    assert method_label({**row, "recipe_json": json.dumps({"criterion": "magnitude"}), "allocation": "uniform",
                         "pattern": "2:4"}) == "magnitude 2:4"
