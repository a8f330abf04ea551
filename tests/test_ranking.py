"""The database recommender (advisor.ranking) against the Python one (advisor.recommend).

Both judge the same databases under many budgets; the rankings, counts, nearest candidates,
costs and Pareto fronts must agree.
"""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest

from advisor.ranking import rank_store
from advisor.recommend import Budget, load_candidates, load_profiles, load_timings, recommend
from advisor.roi import Workload
from conftest import insert_latency, insert_rows, make_latency, make_result
from db import Store


def python_path(path, budget, workload=None):
    with Store.open(path, read_only=True) as store:
        rows = load_candidates(store, budget.dataset, task=budget.task)
        timings, profiles = load_timings(store), load_profiles(store)
    return recommend(rows, budget, timings=timings, profiles=profiles, workload=workload)


def database_path(path, budget, workload=None, limit=10_000):
    with Store.open(path, read_only=True) as store:
        return rank_store(store, budget, workload, limit=limit)


def summary(result):
    def key(c):
        cost = None if c.costing is None else (c.costing.instances, c.costing.cost, c.costing.baseline_instances)
        return (c.row["result_id"], c.runtime, c.latency_ms, c.weight_bytes, cost, c.pareto,
                sorted(c.violations.items()))
    return {
        "ranked": [key(c) for c in result.ranked],
        "nearest": [key(c) for c in result.nearest],
        "meeting": result.meeting_count,
        "failing": result.failing_counts,
        "total": result.total,
        "profile": None if result.profile is None else result.profile.env_key,
    }


@pytest.fixture
def mixed_db(tmp_path):
    """Three models, several recipes, predicted and published rows, timings of every kind, two profiles."""
    rng = random.Random(7)
    path = tmp_path / "mixed.duckdb"
    rows, latency = [], []
    start = dt.datetime(2026, 1, 1)
    for m, model in enumerate(("mnist/resnet10t", "mnist/convnext_atto", "mnist/vit_tiny")):
        dense_top1 = 95.0 - m
        weights = json.dumps({"dense": 10_000_000 * (m + 1), "csr": 9_000_000 * (m + 1),
                              "bitmask": 8_000_000 * (m + 1), "semi_structured_2_4": 6_000_000 * (m + 1)})
        rows.append(make_result(result_id=f"{m}-dense", model_key=model, criterion="dense", allocation="none",
                                pattern="dense", requested_sparsity=0.0, achieved_sparsity=0.0, top1=dense_top1,
                                dense_top1=dense_top1, weight_bytes_json=weights, latency_p50_ms=None,
                                latency_p90_ms=None, created_at=start))
        latency.append(make_latency(model_key=model, criterion="dense", runtime="torch-eager", p50_ms=4.0 + m,
                                    p90_ms=4.4 + m, created_at=start))
        latency.append(make_latency(model_key=model, criterion="dense", runtime="torch-sparse-csr", p50_ms=4.2 + m,
                                    p90_ms=4.6 + m, created_at=start))
        for i, (criterion, allocation, pattern, sparsity) in enumerate([
            ("magnitude", "uniform", "unstructured", 0.5), ("wanda", "uniform", "unstructured", 0.7),
            ("sparsegpt", "erk", "unstructured", 0.7), ("wanda", "uniform", "2:4", 0.5),
            ("magnitude", "uniform", "unstructured", 0.9),
        ]):
            result_id = f"{m}-{i}"
            top1 = dense_top1 - rng.uniform(0, 6) * sparsity
            rows.append(make_result(
                result_id=result_id, model_key=model, criterion=criterion, allocation=allocation, pattern=pattern,
                requested_sparsity=sparsity, achieved_sparsity=sparsity - 0.01, top1=top1, dense_top1=dense_top1,
                weight_bytes_json=weights if i % 2 == 0 else None, latency_p50_ms=5.0 + m if i == 1 else None,
                latency_p90_ms=5.5 + m if i == 1 else None, created_at=start + dt.timedelta(hours=i),
                eval_size=500 if i == 2 else 5000))
            if i in (0, 2):  # timed with the result, interleaved
                latency.append(make_latency(model_key=model, criterion=criterion, pattern=pattern,
                                            requested_sparsity=sparsity, runtime="torch-sparse-csr", result_id=result_id,
                                            p50_ms=3.0 + m, p90_ms=3.3 + m, speedup=rng.choice([0.6, 1.02, 1.4]),
                                            created_at=start + dt.timedelta(hours=i)))
            if i == 3:  # a magnitude timing at the same sparsity and pattern, without a result
                latency.append(make_latency(model_key=model, criterion="magnitude", pattern="2:4",
                                            requested_sparsity=0.5, runtime="torch-eager", sparse_kernel=None,
                                            speedup=1.0, p50_ms=4.1 + m, p90_ms=4.5 + m, created_at=start))
        # A prediction and a published row that a measurement replaces, and one it does not.
        rows.append(dict(make_result(result_id=f"{m}-pred", model_key=model, criterion="magnitude",
                                     requested_sparsity=0.8, top1=dense_top1 - 4, dense_top1=dense_top1, created_at=start,
                                     latency_p50_ms=None, latency_p90_ms=None),
                         provenance="predicted", prediction_json=json.dumps({"top1_low": dense_top1 - 9})))
        rows.append(dict(make_result(result_id=f"{m}-pub", model_key=model, criterion="magnitude",
                                     requested_sparsity=0.5, top1=dense_top1 - 3, dense_top1=dense_top1, created_at=start,
                                     latency_p50_ms=None, latency_p90_ms=None), provenance="published"))
    # An older timing on a second profile, which must never mix with the first.
    latency.append(make_latency(env_key="env1", model_key="mnist/resnet10t", criterion="dense", runtime="torch-eager",
                                p50_ms=1.0, p90_ms=1.1, created_at=start - dt.timedelta(days=1)))
    with Store.open(path) as store:
        insert_rows(store, rows)
        insert_latency(store, latency)
        store.upsert_environment("env0", {"cpu_model": "Test CPU", "cpu_count": 2, "device": "cpu"})
        store.upsert_environment("env1", {"cpu_model": "Other CPU", "cpu_count": 8, "device": "cpu"})
    return path


BUDGETS = [
    Budget(),
    Budget(dataset="mnist", max_latency_ms=6.0),
    Budget(max_latency_ms=5.0, latency_stat="p50", runtimes=("torch-eager", "torch-sparse-csr")),
    Budget(min_accuracy=92, objective="latency", runtimes=("torch-sparse-csr", "torch-eager")),
    Budget(max_drop=2.0, objective="sparsity", include_dense=False),
    Budget(max_relative_drop=3.0, accuracy_margin=0.5, min_throughput=150),
    Budget(max_weight_mb=15, runtimes=("torch-eager", "torch-2:4-cuda")),
    Budget(patterns=("2:4",), runtimes=("torch-eager", "torch-sparse-csr")),
    Budget(max_latency_ms=4.5, margin_pct=5, runtimes=("torch-eager",)),
    Budget(max_latency_ms=0.5, min_accuracy=99),  # nothing fits: nearest candidates
    Budget(profile="env1"),
    Budget(min_accuracy=90, runtimes=("onnxruntime-cpu",)),  # no timing on this runtime
]


@pytest.mark.parametrize("budget", BUDGETS, ids=range(len(BUDGETS)))
def test_database_path_matches_python_path(mixed_db, budget):
    assert summary(database_path(mixed_db, budget)) == summary(python_path(mixed_db, budget))


@pytest.mark.parametrize("workload", [
    Workload(peak_rps=800, price_per_hour=0.4, utilisation=0.5),
    Workload(peak_rps=50, price_per_device=200.0, baseline_model="mnist/convnext_atto"),
])
@pytest.mark.parametrize("runtimes", [("torch-eager",), ("torch-sparse-csr", "torch-eager")])
def test_costs_match(mixed_db, workload, runtimes):
    budget = Budget(objective="cost", runtimes=runtimes, max_drop=5)
    assert summary(database_path(mixed_db, budget, workload)) == summary(python_path(mixed_db, budget, workload))


def test_limit_keeps_the_count_and_the_front(mixed_db):
    budget = Budget(runtimes=("torch-eager", "torch-sparse-csr"))
    full, short = database_path(mixed_db, budget), database_path(mixed_db, budget, limit=3)
    assert [c.row["result_id"] for c in short.ranked] == [c.row["result_id"] for c in full.ranked[:3]]
    assert short.meeting_count == full.meeting_count == len(full.ranked)
    assert short.to_dict()["pareto_front"] == full.to_dict()["pareto_front"]


def test_fixture_db_matches(fixture_db):
    for budget in (Budget(max_latency_ms=5.0), Budget(dataset="photos", min_accuracy=85),
                   Budget(max_latency_ms=1.0, min_accuracy=90)):
        assert summary(database_path(fixture_db, budget)) == summary(python_path(fixture_db, budget))


def test_each_task_is_ranked_on_its_own_metric(tmp_path):
    """Detection rows compete only under task='detection', by box mAP; classification rows never see them."""
    path = tmp_path / "tasks.duckdb"
    rows = [make_result(result_id="c-dense", criterion="dense", allocation="none", pattern="dense",
                        requested_sparsity=0.0, achieved_sparsity=0.0, top1=97.0, dense_top1=97.0),
            make_result(result_id="c-50", top1=96.0, dense_top1=97.0)]
    for labelled, dataset in ((True, "digits"), (False, "photos")):
        detection = dict(task="detection", model_key="digits/detector", dataset=dataset, labelled=labelled,
                         top1=None, top5=None, dense_top1=None, dense_top5=None, top1_agreement=None,
                         kl_divergence=None, dense_box_map=80.0 if labelled else None)
        rows += [make_result(result_id=f"{dataset}-dense", criterion="dense", allocation="none", pattern="dense",
                             requested_sparsity=0.0, achieved_sparsity=0.0, box_map=80.0 if labelled else None,
                             box_map_fidelity=100.0, **detection),
                 make_result(result_id=f"{dataset}-50", requested_sparsity=0.5, box_map=78.5 if labelled else None,
                             box_map_fidelity=91.0, **detection),
                 make_result(result_id=f"{dataset}-70", requested_sparsity=0.7, box_map=70.0 if labelled else None,
                             box_map_fidelity=60.0, **detection)]
    with Store.open(path) as store:
        insert_rows(store, rows)
        insert_latency(store, [make_latency(model_key="digits/detector", criterion="dense", runtime="torch-eager"),
                               make_latency(model_key="mnist/resnet10t", criterion="dense", runtime="torch-eager")])
    for budget in (Budget(task="detection", dataset="digits", max_drop=2.0),
                   Budget(task="detection", dataset="photos", max_drop=10.0),
                   Budget(task="detection", objective="sparsity", min_accuracy=65.0),
                   Budget(max_drop=2.0)):
        assert summary(python_path(path, budget)) == summary(database_path(path, budget)), budget
    digits = database_path(path, Budget(task="detection", dataset="digits", max_drop=2.0, include_dense=False))
    assert [c.row["result_id"] for c in digits.ranked] == ["digits-50"]
    assert (digits.ranked[0].metric, digits.ranked[0].accuracy, digits.ranked[0].dense_accuracy) == ("box_map", 78.5, 80.0)
    photos = database_path(path, Budget(task="detection", dataset="photos", max_drop=10.0, include_dense=False))
    assert [(c.row["result_id"], c.metric) for c in photos.ranked] == [("photos-50", "box_map_fidelity")]
    classification = database_path(path, Budget(max_drop=2.0))
    assert {c.row["result_id"] for c in classification.ranked} == {"c-dense", "c-50"}
