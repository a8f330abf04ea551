"""The quick-start suite: eleven MNIST baselines and four models with real ImageNet weights, benched."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from tqdm import tqdm

from assets import read_json
from bench_engine.baselines import MNIST_BASELINES, MNIST_PREPROCESS, ensure_baseline, is_cached
from bench_engine.data import DataSplits, load_mnist
from bench_engine.pruning import parse_pattern
from bench_engine.executors import Executor
from bench_engine.jobs import ModelSource
from bench_engine.runner import BenchJob, BenchPlan, RunSummary, run_jobs

log = logging.getLogger(__name__)



@functools.lru_cache(maxsize=1)
def _mnist() -> DataSplits:
    return load_mnist(MNIST_PREPROCESS)


def _plan(settings: dict, calibration_size: int, with_techniques: bool) -> BenchPlan:
    techniques = settings["technique_recipes"]
    extra = [(recipe, techniques["sparsity"]) for recipe in techniques["recipes"]] if with_techniques else []
    return BenchPlan(
        extra_recipes=extra,
        criteria=settings["criteria"],
        sparsities=settings["sparsities"],
        allocation=settings["allocation"],
        patterns=[parse_pattern(p) for p in settings["patterns"]],
        calibration_size=calibration_size,
        seed=settings["seed"],
    )


def quickstart_jobs(include_lite0: bool = True, models: list[str] | None = None) -> list[BenchJob]:
    """Build the suite described in assets/quickstart.json."""
    settings = read_json("quickstart.json")
    plan = _plan(settings, settings["mnist"]["calibration_size"], with_techniques=True)
    names = models or list(MNIST_BASELINES)
    jobs = [BenchJob(label=name, source=ModelSource(name, "mnist"), plan=plan) for name in names]
    if include_lite0:
        # NOTE: the technique recipes are left out for EfficientNet-Lite0: at 224×224 its
        # reconstruction and learned allocation take minutes each on a 2-core CPU.
        lite_plan = _plan(settings, settings["efficientnet_lite0"]["calibration_size"], with_techniques=False)
        jobs.append(BenchJob(label="efficientnet_lite0", source=ModelSource("efficientnet_lite0", "photos"),
                             plan=lite_plan))
        photos = settings["imagenet_photos"]
        photos_plan = BenchPlan(criteria=photos["criteria"], sparsities=photos["sparsities"],
                                calibration_size=photos["calibration_size"], seed=settings["seed"])
        jobs += [BenchJob(label=name, source=ModelSource(name, photos["dataset"]), plan=photos_plan)
                 for name in photos["models"]]
    return jobs


def train_missing_baselines(models: list[str] | None = None, show_progress: bool = True) -> None:
    """Train (and cache) the MNIST baselines that are not cached yet, with a progress bar each."""
    for name in models or list(MNIST_BASELINES):
        spec = MNIST_BASELINES[name]
        if is_cached(spec):
            continue
        bar = tqdm(desc=f"train {name}", unit="step", disable=not show_progress, dynamic_ncols=True, leave=False)

        def report(step: int, total: int, bar: tqdm = bar) -> None:
            bar.total = total
            bar.update(step - bar.n)

        ensure_baseline(spec, _mnist(), report)
        bar.close()


def run_quickstart(
    db_path: str | Path,
    num_threads: int | None = None,
    show_progress: bool = True,
    models: list[str] | None = None,
    include_lite0: bool = True,
    command: str = "ptsa demo",
    force: bool = False,
    retry_failed: bool = False,
    executor: Executor | None = None,
) -> RunSummary:
    """Train missing baselines, then bench the suite as one run, skipping the jobs already stored."""
    train_missing_baselines(models, show_progress)
    return run_jobs(db_path, quickstart_jobs(include_lite0, models), command, num_threads, show_progress,
                    force=force, retry_failed=retry_failed, executor=executor)
