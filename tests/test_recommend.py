"""The recommender on a fixture database built by the product's own store."""

from __future__ import annotations

import pytest

from advisor.recommend import Budget, BudgetError, LatencyEvidence, load_candidates, load_profiles, load_timings, recommend
from conftest import insert_latency, make_latency
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
        ({"objective": "price"}, "objective 'price'"),
        ({"min_throughput": 0}, "positive number of inferences"),
        ({"max_relative_drop": 120}, "percentage of the dense accuracy"),
        ({"max_weight_mb": -5}, "positive number of megabytes"),
        ({"margin_pct": 100}, "below 100"),
        ({"accuracy_margin": -1}, "points from 0 to 100"),
        ({"patterns": ("4:2",)}, "N:M with N < M"),
        ({"patterns": ()}, "no pattern allowed"),
        ({"runtimes": ()}, "no runtime given"),
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


# -- latency evidence: one profile, one runtime, measured timings only ------------------------


def with_timings(path, rows):
    with Store.open(path) as store:
        insert_latency(store, rows)
        store.upsert_environment("env1", {"cpu_model": "Other CPU", "cpu_count": 64, "device": "cpu"})


def evidence_for(path, budget):
    with Store.open(path, read_only=True) as store:
        rows, timings, profiles = load_candidates(store, "mnist"), load_timings(store), load_profiles(store)
    return recommend(rows, budget, timings=timings, profiles=profiles)


def by_criterion(result, model="mnist/resnet10t"):
    return {c.row["criterion"]: c for c in result.ranked + result.nearest if c.row["model_key"] == model}


def test_latency_from_same_sparsity_timing(fixture_db):
    with_timings(fixture_db, [make_latency(criterion="dense", p50_ms=4.5, p90_ms=4.8), make_latency()])
    result = evidence_for(fixture_db, Budget(runtimes=("torch-sparse-csr",), dataset="mnist"))
    found = by_criterion(result)
    assert result.profile.env_key == "env0"
    assert result.profile.cpu_model == "Test CPU"
    # magnitude 50 %: the `ptsa latency` timing at 50 % with its interleaved speedup.
    assert found["magnitude"].latency_ms == 3.2
    assert found["magnitude"].timing.source == "same_sparsity"
    assert found["magnitude"].timing.speedup == 1.5
    assert found["dense"].latency_ms == 4.8
    # sparsegpt 70 %: no timing at 70 % and a sparse kernel ran at 50 %, so there is no latency at
    # all, rather than the dense latency scaled by the zeros.
    assert found["sparsegpt"].latency_ms is None
    assert found["sparsegpt"].timing is None
    # Another allocation spreads the zeros differently over the layers: the 50 % timing does not apply.
    rows = [dict(c.row, allocation="erk") for c in result.ranked if c.row["criterion"] == "magnitude"]
    with Store.open(fixture_db, read_only=True) as store:
        evidence = LatencyEvidence(load_timings(store))
    assert evidence.lookup(rows[0], "env0", "torch-sparse-csr", 1) is None
    # A model never timed on this runtime has no latency either.
    assert all(c.latency_ms is None for c in result.ranked if c.row["model_key"] == "mnist/convnext_atto")


def test_latency_prefers_result_timing(fixture_db):
    with Store.open(fixture_db, read_only=True) as store:
        sparsegpt = store.query("SELECT result_id FROM results WHERE criterion = 'sparsegpt' AND dataset = 'mnist'")[0]
    with_timings(fixture_db, [
        make_latency(criterion="dense", p50_ms=4.5, p90_ms=4.8),
        make_latency(criterion="magnitude", requested_sparsity=0.7, p90_ms=2.9),
        make_latency(criterion="sparsegpt", requested_sparsity=0.7, p90_ms=2.5, speedup=1.9,
                     result_id=sparsegpt["result_id"]),
    ])
    found = by_criterion(evidence_for(fixture_db, Budget(runtimes=("torch-sparse-csr",))))
    assert found["sparsegpt"].latency_ms == 2.5
    assert found["sparsegpt"].timing.source == "result"
    assert found["sparsegpt"].timing.speedup == 1.9


def test_latency_dense_kernel_inference(fixture_db):
    dense_kernel = {"runtime": "onnxruntime-cpu", "sparse_kernel": None, "speedup": 0.98, "verdict": "no sparse kernel"}
    with_timings(fixture_db, [make_latency(criterion="dense", runtime="onnxruntime-cpu", p50_ms=2.0, p90_ms=2.2),
                              make_latency(**dense_kernel, p90_ms=2.3)])
    found = by_criterion(evidence_for(fixture_db, Budget(runtimes=("onnxruntime-cpu",))))
    assert found["sparsegpt"].latency_ms == 2.2  # the dense timing: zeros run through dense kernels
    assert found["sparsegpt"].timing.source == "dense_kernels"
    assert found["sparsegpt"].timing.speedup == 1.0
    assert found["magnitude"].latency_ms == 2.3  # its own sparsity was timed: that measurement counts


def test_profiles_never_mix_and_default_to_the_latest(fixture_db):
    with_timings(fixture_db, [make_latency(criterion="dense", p90_ms=4.8), make_latency(p90_ms=3.2)])
    with_timings(fixture_db, [make_latency(criterion="dense", env_key="env1", p90_ms=1.1),
                              make_latency(env_key="env1", p90_ms=0.6)])
    latest = evidence_for(fixture_db, Budget(runtimes=("torch-sparse-csr",)))
    assert latest.profile.env_key == "env1"
    assert by_criterion(latest)["magnitude"].latency_ms == 0.6
    chosen = evidence_for(fixture_db, Budget(runtimes=("torch-sparse-csr",), profile="env0"))
    assert by_criterion(chosen)["magnitude"].latency_ms == 3.2
    assert by_criterion(chosen)["dense"].latency_ms == 4.8
    # torch-eager timings exist on env0 only (the bench rows), so env1's CPU never mixes in.
    eager = evidence_for(fixture_db, Budget(runtimes=("torch-eager",), profile="env1"))
    assert all(c.latency_ms is None for c in eager.ranked)
    with pytest.raises(BudgetError, match="profile 'env9' is not in the database; known profiles: env0, env1"):
        evidence_for(fixture_db, Budget(profile="env9"))
    with pytest.raises(BudgetError, match="matches 2 profiles"):
        evidence_for(fixture_db, Budget(profile="env"))


def test_measured_row_replaces_prediction(fixture_db):
    rows = candidates(fixture_db, "mnist")
    magnitude = next(r for r in rows if r["criterion"] == "magnitude")
    predicted = dict(magnitude, result_id="p1", provenance="predicted", top1=99.9,
                     prediction_json='{"retention": 103.0, "retention_low": 90.0, "retention_high": 110.0}')
    other = dict(predicted, result_id="p2", requested_sparsity=0.9)  # no measurement at 90 %
    result = recommend(rows + [predicted, other], Budget(dataset="mnist"))
    ranked = {(c.row["criterion"], c.row["requested_sparsity"]): c for c in result.ranked}
    assert ranked[("magnitude", 0.5)].row["provenance"] == "measured"
    assert ranked[("magnitude", 0.9)].row["provenance"] == "predicted"
    evidence = ranked[("magnitude", 0.9)].to_dict()["evidence"]
    assert evidence["prediction"]["retention_low"] == 90.0


def test_interval_crossing_limit_is_flagged(fixture_db):
    rows = candidates(fixture_db, "mnist")
    magnitude = next(r for r in rows if r["criterion"] == "magnitude")
    wide = dict(magnitude, result_id="p3", provenance="predicted", requested_sparsity=0.8, top1=96.0,
                prediction_json='{"retention": 99.0, "top1_low": 60.0, "top1_high": 97.0}')
    narrow = dict(wide, result_id="p4", requested_sparsity=0.85, prediction_json='{"top1_low": 95.5}')
    low = dict(wide, result_id="p5", requested_sparsity=0.9, top1=94.0, prediction_json='{"top1_low": 90.0}')
    result = recommend(rows + [wide, narrow, low], Budget(dataset="mnist", min_accuracy=95))
    ranked = {c.row["result_id"]: c for c in result.ranked}
    assert ranked["p3"].has_risk("interval_crosses_limit")  # median 96 meets 95, low end 60 does not
    assert not ranked["p4"].has_risk("interval_crosses_limit")  # low end 95.5 meets 95
    assert ranked["p4"].has_risk("accuracy_predicted")
    assert "p5" not in ranked  # its median, 94, misses
    # The next measurement to make is the one whose interval crosses the limit.
    candidate, command = result.next_step()
    assert candidate.row["result_id"] == "p3"
    assert command.startswith("ptsa bench mnist/resnet10t --data mnist --recipe")
    assert "--sparsity 0.8" in command
