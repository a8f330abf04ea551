"""Time a recommendation query over a database of many candidate rows.

Usage: python benchmarks/recommend_scale.py [--rows 100000] [--db PATH] [--repeats 5]

Builds (once) a database with the product's own store: `--rows` measured results spread over
200 models, each result a distinct configuration with a timing on one profile and runtime,
and a dense model each. Then times a ranking under a latency and accuracy budget with a workload (the
ROI what-if) as `ptsa recommend` runs it (advisor.ranking, in DuckDB), with `--python` also
the row-by-row Python recommender, and the whole command in a fresh process.
docs/benchmarks.md records the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from advisor.ranking import rank_store  # noqa: E402
from advisor.recommend import Budget, load_candidates, load_profiles, load_timings, recommend  # noqa: E402
from advisor.roi import Workload  # noqa: E402
from db import Store  # noqa: E402

MODELS, SPARSITIES = 200, 20


def build(path: Path, rows: int) -> None:
    """Insert `rows` results (dense rows included) and one timing per result."""
    per_model = rows // MODELS
    results: dict[str, list] = {}
    latency: dict[str, list] = {}

    def add(table: dict[str, list], row: dict) -> None:
        for key, value in row.items():
            table.setdefault(key, []).append(value)

    weights = json.dumps({"dense": 40_000_000, "csr": 30_000_000, "bitmask": 25_000_000, "semi_structured_2_4": 40_000_000})
    for m in range(MODELS):
        model = f"bench/model{m:03d}"
        for i in range(per_model):
            dense = i == 0
            criterion = "dense" if dense else ("magnitude", "wanda", "sparsegpt")[i % 3]
            sparsity = 0.0 if dense else 0.05 * (1 + i % SPARSITIES) * 0.95
            recipe = "dense" if dense else f"uniform+{criterion}+variant{i}"  # every row a candidate of its own
            result_id = uuid.uuid4().hex
            top1 = 80.0 - (0 if dense else 10 * sparsity**2) - m * 0.01
            add(results, {
                "result_id": result_id, "run_id": "scale", "model_key": model, "dataset": "imagenet", "labelled": True,
                "provenance": "measured", "source": "benchmarks/recommend_scale.py", "env_key": "scale-env",
                "criterion": criterion, "allocation": "none" if dense else "uniform",
                "pattern": "dense" if dense else "unstructured",
                "recipe_json": json.dumps({"recipe": recipe, "variant": i}), "layer_policy_json": "{}",
                "requested_sparsity": sparsity, "achieved_sparsity": sparsity, "achieved_sparsity_targeted": sparsity,
                "layer_sparsity_json": "{}", "skipped_layers_json": "{}", "calibration_size": 128,
                "calibration_seed": 0, "eval_size": 10000, "top1": top1, "top5": 95.0, "dense_top1": 80.0 - m * 0.01,
                "dense_top5": 95.0, "top1_agreement": 99.0, "kl_divergence": 0.01, "runtime": "torch-eager",
                "latency_batch_size": 1, "latency_p50_ms": None, "latency_p90_ms": None, "num_threads": 2,
                "weight_bytes_json": weights,
            })
            p50 = 5.0 + m * 0.05
            add(latency, {
                "latency_id": uuid.uuid4().hex, "run_id": "scale", "model_key": model, "env_key": "scale-env",
                "runtime": "torch-eager", "batch_size": 1, "criterion": criterion, "requested_sparsity": sparsity,
                "pattern": "dense" if dense else "unstructured", "achieved_sparsity": sparsity, "sparse_kernel": None,
                "sparse_layers": 0, "max_abs_diff": 0.0, "p50_ms": p50 * (1 - 0.1 * sparsity), "p90_ms": p50 * 1.1,
                "p99_ms": p50 * 1.2, "spread": 0.02, "throughput_per_s": 1000 / p50, "warmup": 5, "repeats": 20,
                "num_threads": 2, "speedup": None if dense else 1 / (1 - 0.1 * sparsity),
                "verdict": None, "weight_bytes_json": weights, "protocol": "interleaved", "baseline_p50_ms": p50,
                "result_id": result_id,
            })
    with Store.open(path) as store:
        store.insert_results(results)
        store.insert_latency(latency)
        store.upsert_environment("scale-env", {"cpu_model": "benchmark", "cpu_count": 2, "device": "cpu"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--db", type=Path, default=Path("/tmp/ptsa-scale.duckdb"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--python", action="store_true", help="Also time the row-by-row Python recommender.")
    args = parser.parse_args()
    if not args.db.exists():
        started = time.perf_counter()
        build(args.db, args.rows)
        print(f"built {args.db} with {args.rows} results in {time.perf_counter() - started:.0f} s")
    budget = Budget(dataset="imagenet", max_latency_ms=12.0, max_drop=1.0, objective="cost")
    workload = Workload(peak_rps=500, price_per_hour=1.0)
    database, python = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        with Store.open(args.db, read_only=True) as store:
            result = rank_store(store, budget, workload, limit=10)
        database.append(time.perf_counter() - started)
    print(f"{result.total} candidates, {result.meeting_count} meet the budget")
    print(f"  advisor.ranking.rank_store (in DuckDB): median {statistics.median(database) * 1000:.0f} ms over "
          f"{args.repeats}")
    if args.python:
        for _ in range(max(1, args.repeats // 2)):
            started = time.perf_counter()
            with Store.open(args.db, read_only=True) as store:
                rows, timings, profiles = load_candidates(store, "imagenet"), load_timings(store), load_profiles(store)
            recommend(rows, budget, timings=timings, profiles=profiles, workload=workload)
            python.append(time.perf_counter() - started)
        print(f"  advisor.recommend.recommend (row by row in Python): median {statistics.median(python) * 1000:.0f} ms")
    command = [sys.executable, "-m", "advisor.cli", "--db", str(args.db), "recommend", "--dataset", "imagenet",
               "--max-latency-ms", "12", "--max-drop", "1", "--objective", "cost", "--peak-rps", "500",
               "--price-per-hour", "1", "--json"]
    walls = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        walls.append(time.perf_counter() - started)
    print(f"  ptsa recommend --json (fresh process) median {statistics.median(walls) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
