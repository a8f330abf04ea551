"""Bench a model: prune it with every configuration of a plan, measure, and store the results."""

from __future__ import annotations

import copy
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench_engine import __version__
from bench_engine.data import DataSplits
from bench_engine.environment import environment_key, environment_profile
from bench_engine.errors import DataError, InvalidConfigError
from bench_engine.latency import SPREAD_WARNING, measure_latency
from bench_engine.executors import Executor, LocalExecutor, TaskOutcome
from bench_engine.features import weight_statistics
from bench_engine.jobs import ModelSource, WorkerTask, plan_to_json
from bench_engine.liveness import RunLock, close_dead_runs
from bench_engine.models import ModelBundle, architecture_features
from bench_engine.paths import data_dir
from bench_engine.pruning import LayerPolicy, PruneConfig, collect_stats, find_prunable_layers, prune_model
from bench_engine.pruning.config import CRITERIA, format_pattern
from bench_engine.pruning.correction import apply_corrections
from bench_engine.pruning.layers import rebind_layers
from bench_engine.pruning.learned import LearnedSettings, learned_allocation
from bench_engine.pruning.reconstruction import ReconstructionSettings, reconstruct
from bench_engine.pruning.recipe import resolve_recipe
from bench_engine.pruning.prune import measure_sparsity
from bench_engine.pruning.sensitivity import cached_sensitivity
from bench_engine.runtimes import check_runtime_names
from bench_engine.shards import ingest_shards
from bench_engine.storage import weight_bytes_json
from bench_engine.task_names import CLASSIFICATION
from bench_engine.tasks import evaluation_for
from bench_engine.timing import RuntimeTimer, TimedModel, usable_runtimes, warn_if_noisy
from db import DatabaseLockedError, Store


log = logging.getLogger(__name__)


@dataclass
class BenchPlan:
    """Bench plan for each model: the technique grid, calibration and latency settings."""

    criteria: Sequence[str] = CRITERIA
    sparsities: Sequence[float] = (0.3, 0.5, 0.7)
    allocation: str = "uniform"
    erk_power: float = 1.0
    max_layer_sparsity: float = 1.0
    corrections: Sequence[str] = ()
    patterns: Sequence[tuple[int, int] | None] = (None,)
    # One-line recipes or TOML recipe files; when given, they replace the grid of criteria,
    # allocation, corrections and patterns above.
    recipes: Sequence[str] = ()
    # (recipe, sparsity) pairs benched in addition to the configurations above.
    extra_recipes: Sequence[tuple[str, float]] = ()
    policy: LayerPolicy = field(default_factory=LayerPolicy)
    calibration_size: int = 128
    seed: int = 0
    # Memory for cached reconstruction activations; beyond it they spill to a temporary folder.
    activation_memory_gib: float = 4.0
    latency_batch_size: int = 1
    latency_warmup: int = 10
    latency_repeats: int = 50
    latency_max_seconds: float = 5.0
    # Runtimes to time every evaluated model on, each against the dense model in interleaved
    # rounds, at each of `runtime_batch_sizes` (stored in the latency table). Runtimes that
    # cannot run here are skipped.
    runtimes: Sequence[str] = ()
    runtime_batch_sizes: Sequence[int] = (1,)
    # Detection fidelity: the dense model's boxes scoring at least this become the reference.
    reference_score: float = 0.5

    def configs(self) -> list[PruneConfig]:
        """Expand the grid into validated configurations; raises InvalidConfigError early."""
        if not self.criteria:
            raise InvalidConfigError("no criteria given; choose from {choices}.", choices=", ".join(CRITERIA))
        if self.calibration_size < 1:
            raise InvalidConfigError("calibration size must be at least 1, got {size}.", size=self.calibration_size)
        if not self.activation_memory_gib >= 0:
            raise InvalidConfigError(
                "activation memory must be at least 0 GiB, got {value}; for example 4.", value=self.activation_memory_gib
            )
        if self.latency_batch_size < 1:
            raise InvalidConfigError(
                "latency batch size must be at least 1, got {size}.", size=self.latency_batch_size
            )
        self._check_runtimes()
        extra = [resolve_recipe(recipe, sparsity, self.policy) for recipe, sparsity in self.extra_recipes]
        if self.recipes:
            return self._recipe_configs() + extra
        if self.allocation != "uniform" and all(p is not None for p in self.patterns):
            patterns = ", ".join(format_pattern(p) for p in self.patterns)
            raise InvalidConfigError(
                "allocation {allocation!r} cannot be combined with pattern {patterns}; an N:M pattern fixes "
                "every layer's sparsity, so use allocation 'uniform' or add --pattern unstructured.",
                allocation=self.allocation,
                patterns=patterns,
            )
        configs = []
        for pattern in self.patterns:
            if pattern is None:
                if not self.sparsities:
                    raise InvalidConfigError("no sparsities given; pass for example --sparsity 0.5.")
                grid = list(self.sparsities)
            else:
                grid = [1.0 - pattern[0] / pattern[1]]
            for criterion in self.criteria:
                for sparsity in grid:
                    configs.append(
                        PruneConfig(
                            criterion=criterion,
                            sparsity=sparsity,
                            allocation=self.allocation if pattern is None else "uniform",
                            pattern=pattern,
                            policy=self.policy,
                            erk_power=self.erk_power,
                            max_layer_sparsity=self.max_layer_sparsity,
                            corrections=tuple(self.corrections),
                        )
                    )
        return configs + extra

    def _check_runtimes(self) -> None:
        if not self.runtimes:
            return
        if not self.runtime_batch_sizes or min(self.runtime_batch_sizes) < 1:
            raise InvalidConfigError(
                "batch sizes must be at least 1, got {sizes}; for example --batch 1,16.",
                sizes=list(self.runtime_batch_sizes),
            )
        check_runtime_names(self.runtimes)
        usable, unavailable = usable_runtimes(self.runtimes)
        if not usable:
            # NOTE: each reason is the runtime's English `unavailable_reason()`, not translated.
            reasons = "; ".join(f"{name}: {reason}" for name, reason in unavailable.items())
            raise InvalidConfigError("none of the requested runtimes can run here ({reasons}).", reasons=reasons)

    def _recipe_configs(self) -> list[PruneConfig]:
        configs = []
        for recipe in self.recipes:
            first = resolve_recipe(recipe, self.sparsities[0] if self.sparsities else None, self.policy)
            if first.pattern is not None:
                configs.append(first)
                continue
            if not self.sparsities:
                raise InvalidConfigError(
                    "recipe {recipe!r} needs a sparsity; pass for example --sparsity 0.5.", recipe=recipe
                )
            configs.extend(resolve_recipe(recipe, sparsity, self.policy) for sparsity in self.sparsities)
        return configs

    def to_dict(self) -> dict[str, Any]:
        # With recipes, the grid options below are not used, so they are not stored.
        grid = {} if self.recipes else {
            "criteria": list(self.criteria),
            "allocation": self.allocation,
            "erk_power": self.erk_power,
            "max_layer_sparsity": self.max_layer_sparsity,
            "corrections": list(self.corrections),
            "patterns": [format_pattern(p) for p in self.patterns],
        }
        return {
            "recipes": list(self.recipes),
            "extra_recipes": [list(pair) for pair in self.extra_recipes],
            "sparsities": list(self.sparsities),
            **grid,
            "policy": self.policy.to_dict(),
            "calibration_size": self.calibration_size,
            "seed": self.seed,
            "activation_memory_gib": self.activation_memory_gib,
            "latency_batch_size": self.latency_batch_size,
            "latency_repeats": self.latency_repeats,
            "latency_max_seconds": self.latency_max_seconds,
            "runtimes": list(self.runtimes),
            "runtime_batch_sizes": list(self.runtime_batch_sizes) if self.runtimes else [],
        }


def check_compatible(bundle: ModelBundle, data: DataSplits) -> None:
    """Reject a dataset of another task, and labelled data whose classes cannot be compared with the model's outputs."""
    model_task = bundle.extra.get("task", CLASSIFICATION)
    data_task = getattr(data, "task", CLASSIFICATION)
    if model_task != data_task:
        raise DataError(
            "model {model} is a {model_task} model but dataset {dataset!r} is a {data_task} dataset; pass "
            "--task {model_task} with a {model_task} dataset, or a {data_task} model.",
            model=bundle.model_key, model_task=model_task, dataset=data.name, data_task=data_task)
    if data.labelled and data.num_classes != bundle.num_classes and data_task != CLASSIFICATION:
        raise DataError(
            "detector {model} predicts {outputs} classes but dataset {dataset!r} has {classes} categories, so box "
            "mAP would compare unrelated categories. Use a detector trained on these categories, or pass "
            "--unlabelled to score fidelity to the dense model instead.",
            model=bundle.model_key, outputs=bundle.num_classes, dataset=data.name, classes=data.num_classes)
    if data.labelled and data.num_classes != bundle.num_classes:
        raise DataError(
            "model {model} has {outputs} outputs but dataset {dataset!r} has "
            "{classes} classes, so top-1 would compare unrelated class indices. Use a "
            "dataset with the model's classes, or pass --unlabelled to score fidelity to the dense "
            "model instead.",
            model=bundle.model_key,
            outputs=bundle.num_classes,
            dataset=data.name,
            classes=data.num_classes,
        )


# on_result(config or None for the dense row, the row or None, its latency rows, the error or None)
ResultCallback = Callable[[PruneConfig | None, dict[str, Any] | None, list[dict[str, Any]], Exception | None], None]


def bench_model(
    bundle: ModelBundle,
    data: DataSplits,
    plan: BenchPlan,
    run_id: str,
    env_key: str,
    progress: tqdm | None = None,
    skip: Callable[[PruneConfig | None], bool] | None = None,
    on_result: ResultCallback | None = None,
) -> tuple[dict[str, list[Any]], list[dict[str, Any]]]:
    """Prune and measure one model with every configuration of the plan.

    Returns the result rows column-wise (dense row first), ready for `Store.insert_results`,
    and the latency rows of the plan's runtimes (empty without runtimes), each naming its result.

    For resumable runs (`bench_engine.jobs`): `skip(config)` (None for the dense row) leaves out a
    configuration whose job is already stored; the dense model is still evaluated, since every
    row's drop is measured against it. `on_result(config, row, latency_rows, error)` is called
    as each row is finished, or with the error of a configuration that failed, which then does
    not stop the others.
    """
    check_compatible(bundle, data)
    configs = plan.configs()
    dense = bundle.model.eval()
    input_shape = (bundle.preprocess.in_chans, bundle.preprocess.input_size, bundle.preprocess.input_size)

    evaluation = evaluation_for(data, plan)
    evaluation.check_plan(plan)
    dense_outputs = evaluation.run(dense)
    dense_scores = evaluation.score(dense_outputs, dense_outputs)
    calibration = evaluation.calibration(plan.calibration_size, plan.seed)
    layers, excluded = find_prunable_layers(dense, plan.policy, calibration[:1])
    if not layers:
        raise InvalidConfigError(
            "model {model} has no layers to prune under policy {policy}; "
            "allow more layers (for example --prune-first-layer or --prune-classifier).",
            model=bundle.model_key,
            policy=plan.policy.to_dict(),
        )
    need_hessian = any(c.criterion == "sparsegpt" for c in configs)
    need_stats = any(
        c.criterion != "magnitude" or c.allocation == "owl" or "bias_correction" in c.corrections for c in configs
    )
    stats = collect_stats(dense, layers, calibration, need_hessian=need_hessian) if need_stats else {}

    sensitivity_table = None
    if any(c.allocation == "sensitivity" for c in configs):
        sensitivity_table = cached_sensitivity(
            data_dir() / "sensitivity", bundle.weights_sha256, dense, layers, calibration
        )

    rows: list[dict[str, Any]] = []
    base = {
        "run_id": run_id,
        "model_key": bundle.model_key,
        "dataset": evaluation.name,
        "labelled": evaluation.labelled,
        "provenance": "measured",
        "source": f"ptsa {__version__}",
        "env_key": env_key,
        "layer_policy_json": json.dumps(plan.policy.to_dict(), sort_keys=True),
        "calibration_size": plan.calibration_size,
        "calibration_seed": plan.seed,
        "eval_size": evaluation.eval_size,
        **evaluation.dense_columns(dense_scores),
    }

    def latency_columns(model: torch.nn.Module) -> dict[str, Any]:
        result = measure_latency(
            model,
            input_shape,
            batch_size=plan.latency_batch_size,
            warmup=plan.latency_warmup,
            repeats=plan.latency_repeats,
            max_seconds=plan.latency_max_seconds,
        )
        return {
            "runtime": result.runtime,
            "latency_batch_size": result.batch_size,
            "latency_p50_ms": result.p50_ms,
            "latency_p90_ms": result.p90_ms,
            "latency_p99_ms": result.p99_ms,
            "latency_spread": result.spread,
            "throughput_per_s": result.throughput,
            "latency_warmup": result.warmup,
            "latency_repeats": result.repeats,
            "num_threads": result.num_threads,
        }

    timer = None
    latency_rows: list[dict[str, Any]] = []
    if plan.runtimes:
        usable, _ = usable_runtimes(plan.runtimes)
        timer = RuntimeTimer(usable, plan.runtime_batch_sizes, input_shape, plan.latency_repeats,
                             plan.latency_max_seconds, {"run_id": run_id, "model_key": bundle.model_key, "env_key": env_key})

    target_names = [layer.name for layer in layers]
    dense_sparsity = measure_sparsity(dense, target_names)
    dense_timed = TimedModel(dense, "dense", 0.0, "dense", 0.0, result_id=uuid.uuid4().hex)
    dense_latency = timer.time(dense_timed, []) if timer is not None else []
    latency_rows += dense_latency
    rows.append(
        {
            **base,
            **dense_scores,
            **latency_columns(dense),
            "result_id": dense_timed.result_id,
            "criterion": "dense",
            "allocation": "none",
            "pattern": "dense",
            "recipe_json": json.dumps({"criterion": "dense"}),
            "requested_sparsity": 0.0,
            "achieved_sparsity": dense_sparsity.overall,
            "achieved_sparsity_targeted": dense_sparsity.targeted,
            "layer_sparsity_json": json.dumps(dense_sparsity.per_layer),
            "skipped_layers_json": json.dumps(excluded),
            "weight_bytes_json": weight_bytes_json(dense),
            "prune_seconds": 0.0,
        }
    )

    if on_result is not None and not (skip is not None and skip(None)):
        on_result(None, rows[-1], dense_latency, None)
    if progress is not None:
        progress.update(1)  # the dense job, benched or found stored

    learned_counts: dict[tuple[float, LearnedSettings], dict[str, int]] = {}

    def bench_config(config: PruneConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Prune a copy of the dense model with one configuration and measure it."""
        if progress is not None:
            progress.set_postfix_str(f"{bundle.model_key} · {config.criterion} · {config.pattern_name} · {config.sparsity:.0%}")
        sparse = copy.deepcopy(dense)
        sparse_layers = rebind_layers(layers, sparse)
        started = time.perf_counter()
        counts = None
        if config.allocation == "learned":
            # The learned counts depend on the sparsity and settings only, not on the criterion.
            learned = LearnedSettings(steps=config.learned_steps, learning_rate=config.learned_lr, penalty=config.learned_penalty)
            key = (config.sparsity, learned)
            if key not in learned_counts:
                learned_counts[key], _ = learned_allocation(dense, layers, calibration, config.sparsity, learned)
            counts = learned_counts[key]
        report = prune_model(sparse_layers, config, stats, sensitivity_table, counts=counts)
        if config.reconstruction != "none":
            settings = ReconstructionSettings(
                granularity=config.reconstruction,
                input=config.recon_input,
                steps=config.recon_steps,
                learning_rate=config.recon_lr,
                batch_size=config.recon_batch,
                early_stop=config.recon_early_stop,
                memory_budget_bytes=int(plan.activation_memory_gib * 1024**3),
            )
            reconstruct(dense, sparse, layers, sparse_layers, calibration, settings)
        apply_corrections(config.corrections, sparse, layers, sparse_layers, stats, calibration)
        technique_seconds = time.perf_counter() - started
        counted = measure_sparsity(sparse, target_names)
        outputs = evaluation.run(sparse)
        result_id = uuid.uuid4().hex
        timed_rows: list[dict[str, Any]] = []
        if timer is not None:
            timed = TimedModel(sparse, config.criterion, config.sparsity, config.pattern_name, counted.targeted, result_id)
            timed_rows = timer.time(dense_timed, [timed], baseline_rows=False)
        row = (
            {
                **base,
                **evaluation.score(outputs, dense_outputs),
                **latency_columns(sparse),
                "result_id": result_id,
                "criterion": config.criterion,
                "allocation": config.allocation,
                "pattern": config.pattern_name,
                "recipe_json": json.dumps(config.to_dict(), sort_keys=True),
                "requested_sparsity": config.sparsity,
                "achieved_sparsity": counted.overall,
                "achieved_sparsity_targeted": counted.targeted,
                "layer_sparsity_json": json.dumps(counted.per_layer),
                "skipped_layers_json": json.dumps({**excluded, **report.skipped}),
                "weight_bytes_json": weight_bytes_json(sparse),
                "prune_seconds": technique_seconds,
            }
        )
        del sparse
        return row, timed_rows


    for config in configs:
        if skip is not None and skip(config):
            if progress is not None:
                progress.update(1)
            continue
        if on_result is None:
            row, timed_rows = bench_config(config)
        else:
            try:
                row, timed_rows = bench_config(config)
            except Exception as exc:  # one configuration failing must not stop the others
                log.error("%s: %s failed: %s", bundle.model_key, config.to_dict().get("recipe"), failure_text(exc))
                on_result(config, None, [], exc)
                if progress is not None:
                    progress.update(1)
                continue
        rows.append(row)
        latency_rows += timed_rows
        if on_result is not None:
            on_result(config, row, timed_rows, None)
        if progress is not None:
            progress.update(1)

    noisy = [row for row in rows if row["latency_spread"] > SPREAD_WARNING]
    if noisy:
        worst = max(row["latency_spread"] for row in noisy)
        log.warning(
            "%s: %d of %d latency measurements have a spread (IQR / median) above %.0f %%, up to %.0f %%; "
            "the machine may have been busy, so small latency differences between these rows are noise",
            bundle.model_key, len(noisy), len(rows), SPREAD_WARNING * 100, worst * 100,
        )
    warn_if_noisy(bundle.model_key, latency_rows)
    names = list(rows[0])
    return {name: [row[name] for row in rows] for name in names}, latency_rows


def failure_text(exc: BaseException) -> str:
    """Return the error stored with a failed run; an interrupt has no message of its own."""
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt: interrupted by the user (Ctrl-C)"
    return f"{type(exc).__name__}: {exc}"


def model_row(bundle: ModelBundle) -> dict[str, Any]:
    return {
        "model_key": bundle.model_key,
        "task": bundle.extra.get("task", CLASSIFICATION),
        "architecture": bundle.architecture,
        "family": bundle.family,
        "weights_source": bundle.weights_source,
        "weights_sha256": bundle.weights_sha256,
        "num_classes": bundle.num_classes,
        "in_chans": bundle.preprocess.in_chans,
        "input_size": bundle.preprocess.input_size,
        **architecture_features(bundle.model),
        # Statistics of real weights only: a random initialisation (`ptsa latency --random-init`)
        # has no weights file and describes no trained model.
        "weight_stats_json": json.dumps(weight_statistics(bundle.model)) if bundle.weights_sha256 else None,
    }


# How long a bench waits for another process (a TUI or `ptsa recommend` reading) to release the
# database before it gives up on writing results it has already measured.
LOCK_WAIT_SECONDS = 120.0
# How long a bench waits at its start for readers to release the database.
START_WAIT_SECONDS = 15.0


def open_for_write(db_path: str | Path, wait_seconds: float = LOCK_WAIT_SECONDS) -> Store:
    """Open the database for writing, retrying while another process holds its lock."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.2
    while True:
        try:
            return Store.open(db_path)
        except DatabaseLockedError:
            if time.monotonic() >= deadline:
                raise
            log.info("database %s is locked; retrying in %.1f s", db_path, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@dataclass
class BenchJob:
    """One model on one dataset with its plan; a worker process loads and benches it."""

    label: str
    source: ModelSource
    plan: BenchPlan


class ProgressFile:
    """A progress bar that also appends each step to a file as a JSON line."""

    def __init__(self, bar: tqdm, path: Path, run_id: str, total: int):
        self.bar, self.path, self.run_id, self.total = bar, path, run_id, total
        self.done, self.detail = 0, ""
        self._write()

    def _write(self) -> None:
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps({"run_id": self.run_id, "done": self.done, "total": self.total,
                                     "detail": self.detail}) + "\n")

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.done += n
        self._write()

    def set_postfix_str(self, text: str) -> None:
        self.bar.set_postfix_str(text)
        self.detail = text
        self._write()

    def close(self) -> None:
        self.bar.close()


def shard_folder(db_path: str | Path) -> Path:
    """Return the folder where workers leave result shards for the database at `db_path`."""
    path = Path(db_path)
    return path.with_name(path.name + ".shards")


@dataclass
class RunSummary:
    """The outcome of a run, job by job. `failed` lists (label, error) of the jobs that failed."""

    run_id: str
    finished: int = 0  # jobs stored by this run, replaced ones included
    replaced: int = 0  # jobs whose earlier rows this run's measurement replaced (--force)
    skipped: int = 0  # jobs already stored as finished
    skipped_failed: int = 0  # jobs an earlier run stored as failed, not retried (no --retry-failed)
    failed: list[tuple[str, str]] = field(default_factory=list)
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    interrupted_runs: list[str] = field(default_factory=list)  # earlier runs found dead at the start
    results: int = 0


def run_jobs(
    db_path: str | Path,
    jobs: Sequence[BenchJob],
    command: str,
    num_threads: int | None = None,
    show_progress: bool = True,
    progress_file: str | Path | None = None,
    force: bool = False,
    retry_failed: bool = False,
    executor: Executor | None = None,
) -> RunSummary:
    """Run bench jobs as one run, each model in a worker process, resuming where earlier runs stopped.

    Jobs already stored as finished are skipped unless `force`; jobs stored as failed are skipped
    unless `retry_failed` (or `force`). Workers write result shards; this process ingests them,
    each with its job record in one transaction, so a kill at any moment loses at most the jobs
    in flight. Shards left by a killed run are ingested first. A worker that dies has its
    unfinished jobs recorded as failed, and the run goes on with the next model.

    With `progress_file`, one JSON line per step goes to that file (`run_id`, `done`, `total`,
    `detail`), for a program that watches the run, such as the TUI's Runs tab.

    The database is opened only for short transactions, because DuckDB lets no other process
    read the file while one has it open for writing. The run is recorded as 'finished', or
    'failed' with the errors of its failed jobs or the interruption.
    """
    for job in jobs:
        job.plan.configs()  # validate every plan before any work starts
    if num_threads is not None and num_threads < 1:
        raise InvalidConfigError("thread count must be at least 1, got {count}.", count=num_threads)
    executor = executor or LocalExecutor()
    spool = shard_folder(db_path)
    if spool.exists() and not spool.is_dir():
        raise InvalidConfigError(
            "{path} is a file, but a bench keeps its result shards in a folder of that name beside the "
            "database; move the file away, then run the command again.", path=str(spool))
    profile = environment_profile()
    env_key = environment_key(profile)
    run_id = uuid.uuid4().hex[:12]
    summary = RunSummary(run_id)
    with RunLock(spool, run_id):  # the kernel releases it when this process ends, however it ends
        return _run_locked(db_path, jobs, command, num_threads, show_progress, progress_file, force, retry_failed,
                           executor, profile, env_key, run_id, spool, summary)


def _run_locked(db_path: str | Path, jobs: Sequence[BenchJob], command: str, num_threads: int | None,
                show_progress: bool, progress_file: str | Path | None, force: bool, retry_failed: bool,
                executor: Executor, profile: dict[str, Any], env_key: str, run_id: str, spool: Path,
                summary: RunSummary) -> RunSummary:
    """Run the body of `run_jobs` while this run has its lock file."""
    # Readers (the TUI, `ptsa recommend`) hold the file for a moment at a time, so wait them out.
    # A writer that keeps it longer (another bench) fails this run before anything is measured.
    with open_for_write(db_path, wait_seconds=START_WAIT_SECONDS) as store:
        summary.interrupted_runs = close_dead_runs(store, spool)
        recovered = ingest_shards(store, spool)  # what a killed run left behind
        if recovered.finished or recovered.failed:
            log.warning("stored %d jobs that an interrupted run had finished", len(recovered.finished))
        summary.quarantined += recovered.quarantined
        store.upsert_environment(env_key, profile)
        store.start_run(
            run_id,
            command,
            {"jobs": [{"label": j.label, "source": asdict(j.source), "plan": j.plan.to_dict()} for j in jobs],
             "force": force, "retry_failed": retry_failed, "executor": executor.name},
            env_key,
            __version__,
        )
        stored = {r["job_key"]: r["status"] for r in store.query("SELECT job_key, status FROM jobs")}
    if force:
        skip_keys: list[str] = []
    else:
        skip_keys = [key for key, status in stored.items() if status == "finished" or not retry_failed]
    total = sum(len(job.plan.configs()) + 1 for job in jobs)  # each model's dense job, then its configurations
    bar = tqdm(total=total, desc="bench", unit="job", disable=not show_progress, dynamic_ncols=True)
    if progress_file is not None:
        bar = ProgressFile(bar, Path(progress_file), run_id, total)

    def ingest() -> None:
        with open_for_write(db_path) as store:
            report = ingest_shards(store, spool)
        summary.finished += len(report.finished)
        summary.replaced += len(report.replaced)
        summary.failed += report.failed_kept
        summary.results += report.results
        summary.quarantined += report.quarantined
        for name, reason in report.quarantined:
            log.info("shard %s quarantined: %s", name, reason)

    tasks = [WorkerTask(source=job.source, plan=plan_to_json(job.plan), run_id=run_id, env_key=env_key,
                        shard_folder=str(spool), skip_keys=skip_keys, replace=force, threads=num_threads)
             for job in jobs]
    try:
        for outcome in executor.run(tasks, bar, ingest):
            summary.skipped_failed += sum(stored.get(key) == "failed" for key in outcome.skipped_keys)
            summary.skipped += sum(stored.get(key) == "finished" for key in outcome.skipped_keys)
            if outcome.crashed_before_manifest:  # it could not load the model or the data
                summary.failed.append((outcome.label, outcome.error or ""))
            elif outcome.returncode != 0:
                _record_lost_jobs(db_path, run_id, outcome)
    except BaseException as exc:
        try:
            ingest()
            with open_for_write(db_path) as store:
                store.finish_run(run_id, "failed", failure_text(exc))
        except DatabaseLockedError:
            log.error("could not mark run %s as failed: database %s stayed locked", run_id, db_path)
        raise
    finally:
        bar.close()
    with open_for_write(db_path) as store:
        summary.failed += [(r["label"], r["error"]) for r in store.query(
            "SELECT label, error FROM jobs WHERE run_id = ? AND status = 'failed' ORDER BY updated_at", [run_id])
            if (r["label"], r["error"]) not in summary.failed]
        if summary.failed:
            store.finish_run(run_id, "failed", f"jobs failed: {len(summary.failed)}; first: {summary.failed[0][1]}")
        else:
            store.finish_run(run_id, "finished")
    return summary


def _record_lost_jobs(db_path: str | Path, run_id: str, outcome: TaskOutcome) -> None:
    """Store the jobs a dead worker attempted but did not finish as failed, with how it ended."""
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    with open_for_write(db_path) as store, store.transaction():
        for key, job in outcome.jobs.items():
            previous = store.query("SELECT run_id, status, attempts FROM jobs WHERE job_key = ?", [key])
            if previous and (previous[0]["run_id"] == run_id or previous[0]["status"] == "finished"):
                continue  # its shard was ingested
            store.upsert_job({
                "job_key": key, "run_id": run_id, "model_key": outcome.model_key, "label": job["label"],
                "spec_json": json.dumps(job["spec"], sort_keys=True), "status": "failed", "error": outcome.error,
                "attempts": (previous[0]["attempts"] if previous else 0) + 1, "result_count": 0, "updated_at": now,
            })
