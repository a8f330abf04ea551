"""Overhead per job of the local and Ray executors against benching in this process.

Usage: python benchmarks/executor_overhead.py [--configs N] [--no-ray]

Benches a small ResNet (random weights, 32×32 inputs, 30 images) with N magnitude configurations
three ways: `bench_model` in this process (no jobs, no shards: the work itself), `run_jobs` with
the local executor (a worker process, a shard per job, the ingester), and `run_jobs` with the Ray
executor on a one-machine Ray instance started here. It also times a rerun where every job is
already stored, which still loads the model to compute the job keys. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from test_inputs import save_tiny_resnet, write_images  # noqa: E402  (the tests' fixture builders)

from bench_engine.data import load_dataset  # noqa: E402
from bench_engine.environment import environment_key, environment_profile  # noqa: E402
from bench_engine.jobs import ModelSource  # noqa: E402
from bench_engine.models import load_model  # noqa: E402
from bench_engine.runner import BenchJob, BenchPlan, bench_model, run_jobs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=int, default=12)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ptsa-executors-"))
    weights = folder / "w.safetensors"
    save_tiny_resnet(weights, num_classes=3)
    for index, name in enumerate(("a", "b", "c")):
        write_images(folder / "data" / name, 10, seed=index)
    sparsities = [round(0.05 + 0.9 * i / max(args.configs - 1, 1), 4) for i in range(args.configs)]
    plan = BenchPlan(criteria=["magnitude"], sparsities=sparsities, calibration_size=8)
    source = ModelSource("resnet10t", str(folder / "data"), weights=str(weights), input_size=32)
    jobs = args.configs + 1  # and the dense model

    started = time.perf_counter()
    bundle = load_model(source.model, source.weights, input_size=source.input_size)
    data = load_dataset(source.data, bundle.preprocess)
    bench_model(bundle, data, plan, "bench", environment_key(environment_profile()))
    in_process = time.perf_counter() - started

    rows = [("in this process (load + bench_model)", in_process, None)]
    executors = [("local executor", None)]
    if not args.no_ray:
        from bench_engine.ray_executor import RayExecutor

        executors.append(("Ray executor (one-machine instance)", RayExecutor(
            address="local", init_options={"num_cpus": 2, "include_dashboard": False})))
    for label, executor in executors:
        db_path = folder / f"{label.split()[0]}.duckdb"
        if executor is not None:
            executor.connect()  # the cluster's start-up is not counted per job
        started = time.perf_counter()
        summary = run_jobs(db_path, [BenchJob("tiny", source, plan)], "benchmark", show_progress=False,
                           executor=executor)
        total = time.perf_counter() - started
        assert summary.finished == jobs, summary
        rows.append((label, total, (total - in_process) / jobs))
        started = time.perf_counter()
        rerun = run_jobs(db_path, [BenchJob("tiny", source, plan)], "benchmark", show_progress=False,
                         executor=executor)
        rows.append((f"{label}, rerun with every job stored", time.perf_counter() - started, None))
        assert rerun.skipped == jobs, rerun

    print(f"{jobs} jobs (dense + {args.configs} magnitude sparsities), resnet10t at 32×32, 30 images")
    print(f"{'path':<52} {'total s':>8} {'overhead per job s':>19}")
    for label, total, per_job in rows:
        print(f"{label:<52} {total:>8.2f} {'' if per_job is None else f'{per_job:.3f}':>19}")


if __name__ == "__main__":
    main()
