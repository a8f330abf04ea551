"""The `ptsa` command line: bench, recommend, demo, and the TUI when run without a command.

Exit codes: 0 success, 2 invalid input (bad model, weights, data, sparsity, budget, database),
3 when no candidate meets the budget, 4 when some bench jobs failed (the others are stored).

torch and timm are imported inside the commands that need them, so `ptsa recommend` and the
TUI start without paying for them.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from advisor import formatting
from advisor.i18n import _, pick_language, use_language
from advisor.labels import TASK_NAMES
from advisor.published import ensure_published
from advisor.roi import Workload
from advisor.recommend import (
    LATENCY_STATS,
    OBJECTIVES,
    Budget,
    Recommendation,
    load_timings,
)
from db import Store, TranslatableError, default_db_path

log = logging.getLogger("ptsa")

EXIT_INVALID = 2
EXIT_NO_CANDIDATE = 3
EXIT_JOBS_FAILED = 4


def _fail(message: str, code: int = EXIT_INVALID) -> None:
    """Print one error line on stderr in the user's language and exit with `code`."""
    click.echo(_("error: {message}").format(message=message), err=True)
    sys.exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn invalid-input errors from every layer into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TranslatableError as exc:  # every layer's invalid-input errors
            _fail(exc.localized(_))

    return wrapper


def _setup_logging(verbose: int) -> None:
    if verbose == 0:
        level = logging.WARNING
    elif verbose == 1:
        level = logging.INFO
    else:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    # -v and -vv name the logger, for debugging; by default a line reads like the CLI's own messages.
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s") if verbose else _PlainFormatter())
    logging.basicConfig(level=level, handlers=[handler])


class _PlainFormatter(logging.Formatter):
    """'warning: text' and 'error: text', in the user's language, without the logger's name."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            return _("error: {message}").format(message=text)
        if record.levelno >= logging.WARNING:
            return _("warning: {text}").format(text=text)
        return text


class _RecordingGroup(click.Group):
    """A click group that keeps the full argument list, to store the command with each run."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["ptsa.argv"] = list(args)
        return super().parse_args(ctx, args)


def _command_line() -> str:
    root = click.get_current_context().find_root()
    return shlex.join(["ptsa", *root.meta.get("ptsa.argv", [])])


@click.group(cls=_RecordingGroup, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="DuckDB file to read and write. Default: $PTSA_DB, else results.duckdb in the user data folder.")
@click.option("-v", "--verbose", count=True, help="Log more to stderr (-v info, -vv debug).")
@click.option("--lang", type=click.Choice(["en", "ja"]), default=None,
              help="Language of messages, errors, the TUI and the report. Default: Japanese when LC_ALL, LC_MESSAGES or LANG starts "
                   "with ja, else English.")
@click.pass_context
def main(ctx: click.Context, db_path: Path | None, verbose: int, lang: str | None) -> None:
    """PTS Advisor: which model, which post-training sparsity method, which sparsity, for your budget.

    Run without a command to open the TUI.
    """
    _setup_logging(verbose)
    use_language(pick_language(lang))
    ctx.obj = {"db": db_path or default_db_path(), "lang": lang}
    if ctx.invoked_subcommand is None:
        _open_tui(ctx.obj["db"], lang=lang)


@handle_errors
def _open_tui(db_path: Path, budget: Budget | None = None, lang: str | None = None) -> None:
    from advisor.tui.app import run_app

    run_app(db_path, budget, lang=lang)


# -- bench -------------------------------------------------------------------------------------


def resume_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--force and --retry-failed: what a bench does with jobs an earlier run already stored; and
    --executor, --address, --resources: where its worker processes run."""
    func = click.option("--resources", default=None,
                        help="What each model's Ray task asks of its node, for example cpus=2,gpus=1,memory=8 "
                             "(memory in GiB). Default: cpus=1.")(func)
    func = click.option("--address", default=None,
                        help="Ray cluster to use with --executor ray: auto (a cluster this machine belongs to), "
                             "HOST:PORT of the head node, ray://HOST:10001, or local (a new Ray instance on this "
                             "machine only). Default: auto.")(func)
    func = click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="Run each model's worker here, one after another (local), or on a Ray cluster (ray; "
                             "needs pip install \"pts-advisor[ray]\").")(func)
    func = click.option("--retry-failed", is_flag=True,
                        help="Bench again the jobs an earlier run stored as failed (skipped by default).")(func)
    return click.option("--force", is_flag=True,
                        help="Bench every job again, even those already stored; a stored result is kept, not "
                             "duplicated.")(func)


def _parse_patterns(values: tuple[str, ...]) -> list[tuple[int, int] | None]:
    from bench_engine.pruning import parse_pattern

    return [parse_pattern(v) for v in values] or [None]


@main.command()
@click.argument("model")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="Local .safetensors or PyTorch state dict file; not needed for named models.")
@click.option("--data", "data_spec", required=True,
              help="Image directory (class folders, or loose images), or a built-in: mnist, photos.")
@click.option("--unlabelled", is_flag=True, help="Ignore class folders and score fidelity to the dense model only.")
@click.option("--task", type=click.Choice(["classification", "detection"]), default=None,
              help="What the model does. Default: detection for a detector (digits/fcos_mobilenet_v2, "
                   "torchvision:ssdlite320_mobilenet_v3_large, ...), else classification.")
@click.option("--reference-score", type=click.FloatRange(min=0, max=1, min_open=True), default=0.5,
              show_default=True,
              help="Detection fidelity: the dense model's boxes scoring at least this are the reference the "
                   "sparse model's boxes are scored against.")
@click.option("--criterion", "criteria", multiple=True, default=("magnitude", "wanda", "sparsegpt"), show_default=True,
              help="Mask criterion; repeat for several.")
@click.option("--sparsity", "sparsities", multiple=True, type=float, default=(0.5,), show_default=True,
              help="Fraction of weights set to zero in the targeted layers (0 to 1); repeat for several.")
@click.option("--allocation", default="uniform", show_default=True,
              help="uniform, erk, global_magnitude, l2_global (global magnitude after dividing each layer by its "
                   "L2 norm), owl (outlier-weighted; set its band and threshold in a --recipe), sensitivity (measured per "
                   "layer, cached) or learned (per-layer thresholds trained on the calibration set).")
@click.option("--erk-power", type=float, default=1.0, show_default=True, help="Exponent of the ERK allocation.")
@click.option("--max-layer-sparsity", type=float, default=1.0, show_default=True,
              help="Cap on any layer's sparsity under global_magnitude and l2_global.")
@click.option("--never-prune", multiple=True, help="Layer-name pattern to keep dense, such as 'blocks.0.*'; repeatable.")
@click.option("--recipe", "recipes", multiple=True,
              help="One-line recipe such as 'erk(power=0.5)+sparsegpt+bias_correction', or a .toml recipe file; "
                   "repeatable. Replaces --criterion, --allocation, --correction and --pattern.")
@click.option("--correction", "corrections", multiple=True,
              help="Error correction after pruning: weight_correction, bias_correction or bn_reestimation; repeatable.")
@click.option("--pattern", "patterns", multiple=True,
              help="unstructured (default) or N:M such as 2:4; repeat for several.")
@click.option("--calibration-size", type=click.IntRange(min=1), default=128, show_default=True, help="Calibration inputs drawn from the training side.")
@click.option("--seed", default=0, show_default=True, help="Seed of the calibration sampler and data split.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads for pruning and latency; recorded. Default: torch's default.")
@click.option("--latency-batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batch size of the torch-eager latency stored with each result.")
@click.option("--runtime", "runtimes", default=None,
              help="Also time every result on these comma-separated runtimes (torch-eager, torch-sparse-csr, "
                   "onnxruntime-cpu, ...) against the dense model, stored as latency rows with verdicts.")
@click.option("--batch", "batches", default="1", show_default=True, help="Comma-separated batch sizes for --runtime.")
@click.option("--repeats", type=click.IntRange(min=5), default=50, show_default=True, help="Timed passes at most, per latency measurement.")
@click.option("--max-seconds", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Time limit for the timed passes of one latency measurement, per model timed.")
@click.option("--prune-first-layer", is_flag=True, help="Also prune the first layer (left dense by default).")
@click.option("--prune-classifier", is_flag=True, help="Also prune the classifier (left dense by default).")
@click.option("--skip-depthwise", is_flag=True, help="Leave depthwise convolutions dense.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Override the class count read from the weights.")
@click.option("--in-chans", type=click.IntRange(min=1), default=None, help="Override the input channel count read from the weights.")
@click.option("--input-size", type=click.IntRange(min=8), default=None, help="Square input size in pixels. Default: the model's.")
@click.option("--activation-memory", type=click.FloatRange(min=0), default=4.0, show_default=True,
              help="GiB of cached activations reconstruction keeps in memory; the rest spills to a temporary folder.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--progress-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append one JSON line per step (run_id, done, total, detail) to this file, for a watching program.")
@resume_options
@click.pass_obj
@handle_errors
def bench(obj: dict[str, Any], model: str, weights: Path | None, data_spec: str, unlabelled: bool, task: str | None,
          reference_score: float, criteria: tuple[str, ...], sparsities: tuple[float, ...], allocation: str, erk_power: float,
          max_layer_sparsity: float, never_prune: tuple[str, ...], recipes: tuple[str, ...],
          corrections: tuple[str, ...], patterns: tuple[str, ...],
          calibration_size: int, seed: int, threads: int | None, latency_batch_size: int,
          runtimes: str | None, batches: str, repeats: int, max_seconds: float, prune_first_layer: bool, prune_classifier: bool, skip_depthwise: bool, num_classes: int | None,
          in_chans: int | None, input_size: int | None, activation_memory: float, no_progress: bool,
          progress_file: Path | None, force: bool, retry_failed: bool, executor: str, address: str | None,
          resources: str | None) -> None:
    """Prune MODEL with each criterion × sparsity, measure it, and store the results.

    MODEL is a named model (efficientnet_lite0, mnist/resnet10t, ...) or a timm architecture
    name with --weights.
    """
    from bench_engine.pruning import LayerPolicy
    from bench_engine.jobs import ModelSource, infer_task
    from bench_engine.runner import BenchJob, BenchPlan, run_jobs

    plan = BenchPlan(
        criteria=criteria,
        sparsities=sparsities,
        allocation=allocation,
        erk_power=erk_power,
        max_layer_sparsity=max_layer_sparsity,
        corrections=corrections,
        recipes=recipes,
        patterns=_parse_patterns(patterns),
        policy=LayerPolicy(prune_first_layer, prune_classifier, not skip_depthwise, tuple(never_prune)),
        calibration_size=calibration_size,
        seed=seed,
        latency_batch_size=latency_batch_size,
        latency_repeats=repeats,
        latency_max_seconds=max_seconds,
        runtimes=_comma_list(runtimes),
        runtime_batch_sizes=_batch_sizes(batches),
        activation_memory_gib=activation_memory,
        reference_score=reference_score,
    )
    plan.configs()  # validate before loading anything heavy
    runner = _executor(executor, address, resources)
    _report_unavailable(plan.runtimes)
    if not recipes and allocation != "uniform" and any(p is not None for p in plan.patterns):
        click.echo(_("warning: allocation {allocation!r} applies to the unstructured rows only; N:M pattern rows "
                     "use uniform, because the pattern fixes every layer's sparsity.").format(allocation=allocation),
                   err=True)
    _check_data_spec(data_spec, task or infer_task(model))  # before a baseline trains for minutes
    if model.startswith("mnist/") and weights is None:
        from bench_engine.suite import train_missing_baselines

        _check_mnist_baseline(model)
        train_missing_baselines([model], show_progress=not no_progress)
    from bench_engine.runner import check_compatible
    from bench_engine.tasks import evaluation_for

    task = task or infer_task(model)
    source = ModelSource(model, data_spec, weights=None if weights is None else str(weights), unlabelled=unlabelled,
                         num_classes=num_classes, in_chans=in_chans, input_size=input_size, task=task)
    bundle, data = source.load(seed)
    check_compatible(bundle, data)
    evaluation = evaluation_for(data, plan)
    evaluation.check_plan(plan)
    data.check_readable(calibration_size, seed)
    evaluation.check_reference(bundle.model)  # unlabelled detection: are there dense boxes to score against?
    del bundle, data  # the worker process loads them again; this process only checked them
    summary = run_jobs(obj["db"], [BenchJob(label=model, source=source, plan=plan)], _command_line(), threads,
                       not no_progress, progress_file, force=force, retry_failed=retry_failed, executor=runner)
    ensure_published(obj["db"])
    run_id = summary.run_id
    with Store.open(obj["db"], read_only=True) as store:
        rows = store.query("SELECT count(*) AS n FROM results WHERE run_id = ?", [run_id])
        timings = store.query("SELECT * FROM latency WHERE run_id = ? ORDER BY runtime, batch_size, created_at", [run_id])
    if timings:
        _print_latency(timings)
    _report_jobs(summary)
    click.echo(_("run {run_id}: results stored for {model} in {db}: {n}").format(
        run_id=run_id, n=rows[0]["n"], model=model, db=obj["db"]))
    if summary.failed or summary.skipped_failed or summary.quarantined:
        sys.exit(EXIT_JOBS_FAILED)


def _check_data_spec(spec: str, task: str) -> None:
    """Name a --data value that is neither a path nor a built-in dataset of the task, before any work."""
    from bench_engine.data import BUILTIN_DATASETS
    from bench_engine.errors import DataError

    builtins = ("digits", "photos") if task == "detection" else BUILTIN_DATASETS
    if spec in builtins or Path(spec).exists():
        return
    if task == "classification" and spec == "digits":
        raise DataError("dataset 'digits' is the detection set: bench a detector such as digits/fcos_mobilenet_v2 "
                        "on it, or pass a classification dataset: {choices}.", choices=", ".join(builtins))
    raise DataError("dataset not found: {path}. Pass a directory of images, or a built-in dataset: {choices}.",
                    path=spec, choices=", ".join(builtins))


def _executor(executor: str, address: str | None, resources: str | None) -> Any:
    """Return the executor the options ask for (None: the default local one)."""
    if executor == "local":
        if address is not None or resources is not None:
            _fail(_("--address and --resources apply to --executor ray; add --executor ray or drop them."))
        return None
    from bench_engine.ray_executor import RayExecutor, parse_resources

    runner = RayExecutor(address=address or "auto", resources=parse_resources(resources))
    runner.check_resources(runner.connect())  # before anything is written: a wrong address or request fails here
    return runner


def _report_jobs(summary: Any) -> None:
    """Say on stderr what was skipped, replaced or failed, and which shards were set aside."""
    for run_id in summary.interrupted_runs:
        click.echo(_("earlier run {run_id} had stopped without finishing; it is now marked as interrupted, and "
                     "this run goes on from where it stopped.").format(run_id=run_id), err=True)
    if summary.skipped:
        click.echo(_("jobs already stored, skipped: {n}; --force benches them again.").format(n=summary.skipped),
                   err=True)
    if summary.replaced:
        click.echo(_("jobs benched again, their stored rows replaced: {n}").format(n=summary.replaced), err=True)
    if summary.skipped_failed:
        click.echo(_("jobs that failed in an earlier run, not retried: {n}; run the same command with "
                     "--retry-failed to bench them again.").format(n=summary.skipped_failed), err=True)
    for name, reason in summary.quarantined:
        click.echo(_("result shard {name} set aside in quarantine: {reason}").format(name=name, reason=reason),
                   err=True)
    for label, error in summary.failed:
        click.echo(_("failed: {job}: {error}").format(job=label, error=error), err=True)
    if summary.failed:
        click.echo(_("jobs failed: {n}; the others are stored. Fix the cause, then run the same command with "
                     "--retry-failed.").format(n=len(summary.failed)), err=True)


def _check_mnist_baseline(model: str) -> None:
    """Exit 2 unless `model` is one of the MNIST baselines `ptsa` trains itself."""
    from bench_engine.baselines import MNIST_BASELINES

    if model not in MNIST_BASELINES:
        _fail(_("unknown MNIST baseline {model!r}; choose one of {choices}.").format(
            model=model, choices=", ".join(MNIST_BASELINES)))


def _print_latency(rows: list[dict[str, Any]]) -> None:
    from bench_engine.latency_bench import break_even

    click.echo(formatting.latency_table(rows))
    for key, sparsity in break_even(rows).items():
        if sparsity is None:
            click.echo(_("break-even with a sparse kernel, {key}: none of the timed sparsities").format(key=key))
        else:
            click.echo(_("break-even with a sparse kernel, {key}: {sparsity:.0%}").format(key=key, sparsity=sparsity))


# -- latency -----------------------------------------------------------------------------------


def _comma_list(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _batch_sizes(value: str) -> list[int]:
    from bench_engine.errors import InvalidConfigError

    try:
        return [int(b) for b in _comma_list(value)]
    except ValueError:
        raise InvalidConfigError("invalid --batch {value!r}: give comma-separated integers such as 1,16.",
                                 value=value) from None


def _report_unavailable(names: list[str]) -> None:
    """Say on stderr which requested runtimes cannot run here and will be skipped."""
    if not names:
        return
    from bench_engine.timing import usable_runtimes

    for name, reason in usable_runtimes(names)[1].items():
        _echo_skipped_runtime(name, reason)


def _echo_skipped_runtime(name: str, reason: str) -> None:
    # NOTE: `reason` comes from bench_engine in English.
    click.echo(_("runtime {name} skipped: {reason}").format(name=name, reason=reason), err=True)


@main.command()
@click.argument("model")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="Local .safetensors or PyTorch state dict file; not needed for named models.")
@click.option("--runtime", "runtimes", default="torch-eager,torch-sparse-csr,onnxruntime-cpu", show_default=True,
              help="Comma-separated runtimes: torch-eager, torch-sparse-csr, onnxruntime-cpu, torch-eager-cuda, "
                   "onnxruntime-cuda, torch-2:4-cuda.")
@click.option("--batch", "batches", default="1,16", show_default=True, help="Comma-separated batch sizes.")
@click.option("--sparsity", "sparsities", default="0.5,0.7,0.9", show_default=True,
              help="Comma-separated sparsities (fractions) or N:M patterns such as 2:4; dense is always timed too.")
@click.option("--repeats", type=click.IntRange(min=5), default=30, show_default=True, help="Timed passes at most, per measurement.")
@click.option("--max-seconds", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Time limit for the timed passes of one measurement (at least 5 passes always run).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch and ONNX Runtime threads; recorded.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Override the class count read from the weights.")
@click.option("--in-chans", type=click.IntRange(min=1), default=None, help="Override the input channel count read from the weights.")
@click.option("--input-size", type=click.IntRange(min=8), default=None, help="Square input size in pixels. Default: the model's.")
@click.option("--random-init", is_flag=True,
              help="Time a timm architecture with random weights instead of --weights; latency does not depend on "
                   "the weight values.")
@click.option("--json", "as_json", is_flag=True, help="Print the measurements as JSON on stdout.")
@click.pass_obj
@handle_errors
def latency(obj: dict[str, Any], model: str, weights: Path | None, runtimes: str, batches: str, sparsities: str,
            repeats: int, max_seconds: float, threads: int | None, num_classes: int | None, in_chans: int | None,
            input_size: int | None, random_init: bool, as_json: bool) -> None:
    """Time MODEL dense and magnitude-pruned on each runtime and batch size, with a verdict per result.

    Every runtime's outputs are checked against PyTorch's before its timings count. A runtime
    that is not installed or not supported here is reported on stderr and skipped.
    """
    from bench_engine.errors import InvalidConfigError
    from bench_engine.latency_bench import LatencyPlan, break_even, run_latency
    from bench_engine.models import load_model

    plan = LatencyPlan(runtimes=_comma_list(runtimes), batch_sizes=_batch_sizes(batches), sparsities=_comma_list(sparsities),
                       repeats=repeats, max_seconds=max_seconds)
    plan.configs()  # validate before loading anything heavy
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if random_init:
        from bench_engine.models import random_init_model

        if weights is not None:
            raise InvalidConfigError("pass either --weights or --random-init, not both.")
        bundle = random_init_model(model, num_classes=num_classes, in_chans=in_chans, input_size=input_size)
    else:
        if model.startswith("mnist/") and weights is None:
            from bench_engine.suite import train_missing_baselines

            _check_mnist_baseline(model)
            train_missing_baselines([model], show_progress=True)  # progress goes to stderr
        bundle = load_model(model, weights, num_classes=num_classes, in_chans=in_chans, input_size=input_size)
    run_id, rows, unavailable = run_latency(obj["db"], bundle, plan, _command_line())
    ensure_published(obj["db"])
    for name, reason in unavailable.items():
        _echo_skipped_runtime(name, reason)
    even = break_even(rows)
    if as_json:
        _print_json({"run_id": run_id, "unavailable": unavailable, "break_even_sparsity": even, "measurements": rows})
        return
    _print_latency(rows)
    click.echo(_("run {run_id}: stored {n} latency measurements for {model} in {db}").format(
        run_id=run_id, n=len(rows), model=bundle.model_key, db=obj["db"]))


# -- recommend ---------------------------------------------------------------------------------


def budget_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the budget options shared by `recommend`, `roi` and `report` (the TUI offers the same)."""
    options = [
        click.option("--max-latency-ms", type=float, default=None, help="Latency limit in milliseconds at --batch-size."),
        click.option("--latency-stat", type=click.Choice(LATENCY_STATS), default="p90", show_default=True,
                     help="Which latency percentile the limit applies to."),
        click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Batch size the latency and throughput refer to."),
        click.option("--min-throughput", type=float, default=None,
                     help="Minimum inferences per second of one instance at --batch-size (from the p50 latency)."),
        click.option("--min-accuracy", type=float, default=None,
                     help="Minimum top-1 in percent (top-1 agreement with the dense model on unlabelled data; box "
                          "mAP@[.5:.95] in percent for --task detection)."),
        click.option("--max-drop", type=float, default=None, help="Maximum drop from the dense model, in percentage points."),
        click.option("--max-relative-drop", type=float, default=None,
                     help="Maximum drop from the dense model, in percent of its accuracy."),
        click.option("--max-weight-mb", type=float, default=None,
                     help="Maximum weight memory in MB, in the format the runtime keeps the weights in."),
        click.option("--pattern", "patterns", multiple=True,
                     help="Allowed sparsity pattern (unstructured, 2:4, ...); repeatable. Default: all."),
        click.option("--margin", "margin_pct", type=float, default=0.0, show_default=True,
                     help="Headroom required on the latency, throughput and memory limits, in percent of each."),
        click.option("--accuracy-margin", type=float, default=0.0, show_default=True,
                     help="Headroom required on the accuracy limits, in points."),
        click.option("--dataset", default=None, help="Only consider results on this dataset (for example mnist)."),
        click.option("--task", type=click.Choice(["classification", "detection"]), default="classification",
                     show_default=True, help="Rank the results of this task; detection ranks by box mAP."),
        click.option("--objective", type=click.Choice(OBJECTIVES), default=None,
                     help="What to optimise among candidates that fit: accuracy, latency, sparsity or cost "
                          "(needs a workload). Default: accuracy; cost for `ptsa roi`."),
        click.option("--sparse-only", is_flag=True, help="Leave the dense models out of the ranking."),
        click.option("--runtime", "runtimes", default="torch-eager", show_default=True,
                     help="Runtimes whose measured latency counts, comma-separated (torch-eager, torch-sparse-csr, "
                          "onnxruntime-cpu, ...); each candidate is judged on each."),
        click.option("--profile", default=None,
                     help="Hardware profile (environment key or a unique prefix; see `ptsa profiles`) whose "
                          "timings count. Default: the one with the most recent timing on --runtime."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def workload_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the workload and price options of the ROI what-if."""
    options = [
        click.option("--peak-rps", type=float, default=None, help="Requests per second at peak (one image each)."),
        click.option("--requests-per-day", type=float, default=None, help="Requests per day, for the cost per million."),
        click.option("--price-per-hour", type=float, default=None, help="Price of one instance-hour."),
        click.option("--price-per-device", type=float, default=None, help="Price of one device, paid once (edge)."),
        click.option("--instances-today", type=int, default=None,
                     help="Instances (or devices) running the dense model today, for the saving against today."),
        click.option("--utilisation", type=float, default=60.0, show_default=True,
                     help="Share of one instance's capacity to plan for at peak, in percent."),
        click.option("--currency", default="USD", show_default=True, help="Currency label of the prices."),
        click.option("--baseline-model", default=None,
                     help="Model key of the dense model deployed today. Default: each candidate's own dense model."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


BUDGET_KEYS = ("max_latency_ms", "latency_stat", "batch_size", "min_throughput", "min_accuracy", "max_drop",
               "max_relative_drop", "max_weight_mb", "patterns", "margin_pct", "accuracy_margin", "dataset",
               "objective", "sparse_only", "runtimes", "profile")
WORKLOAD_KEYS = ("peak_rps", "requests_per_day", "price_per_hour", "price_per_device", "instances_today",
                 "utilisation", "currency", "baseline_model")


def _budget(options: dict[str, Any], default_objective: str = "accuracy") -> Budget:
    from bench_engine.runtime_names import PUBLISHED_RUNTIMES, RUNTIME_NAMES

    runtimes = tuple(dict.fromkeys(r.strip() for r in options["runtimes"].split(",") if r.strip()))
    for runtime in runtimes:
        if runtime not in RUNTIME_NAMES + PUBLISHED_RUNTIMES:
            _fail(_("unknown runtime {runtime!r}; choose from {choices}.").format(
                runtime=runtime, choices=", ".join(RUNTIME_NAMES + PUBLISHED_RUNTIMES)))
    return Budget(
        runtimes=runtimes,
        profile=options["profile"],
        max_latency_ms=options["max_latency_ms"],
        latency_stat=options["latency_stat"],
        batch_size=options["batch_size"],
        min_throughput=options["min_throughput"],
        min_accuracy=options["min_accuracy"],
        max_drop=options["max_drop"],
        max_relative_drop=options["max_relative_drop"],
        max_weight_mb=options["max_weight_mb"],
        patterns=tuple(options["patterns"]) or None,
        margin_pct=options["margin_pct"],
        accuracy_margin=options["accuracy_margin"],
        dataset=options["dataset"],
        task=options["task"],
        objective=options["objective"] or default_objective,
        include_dense=not options["sparse_only"],
    )


def _workload(options: dict[str, Any], required: bool) -> Workload | None:
    """Return the workload from the options; None when none is given and none is required."""
    given = [k for k in ("peak_rps", "requests_per_day", "price_per_hour", "price_per_device", "instances_today",
                         "baseline_model") if options[k] is not None]
    if not given and not required:
        return None
    if options["utilisation"] is not None and 0 < options["utilisation"] <= 1:
        _fail(_("--utilisation {value:g} is read as a percentage, {value:g} %; for {percent:g} % pass "
                "--utilisation {percent:g}.").format(value=options["utilisation"], percent=options["utilisation"] * 100))
    if options["peak_rps"] is None:
        _fail(_("the ROI what-if needs the peak rate: add --peak-rps (requests per second at peak), for example "
                "--peak-rps 50."))
    return Workload(
        peak_rps=options["peak_rps"], price_per_hour=options["price_per_hour"],
        price_per_device=options["price_per_device"], requests_per_day=options["requests_per_day"],
        instances_today=options["instances_today"], utilisation=options["utilisation"] / 100.0,
        currency=options["currency"], baseline_model=options["baseline_model"],
    )


def _recommendation(db_path: Path, budget: Budget, workload: Workload | None, limit: int = 10,
                    pareto_only: bool = False) -> Recommendation:
    """Rank the evidence in the database; exit 2 with the fix when it has no usable results or timings."""
    from advisor.ranking import TIMINGS_SQL, rank_store
    from bench_engine.runtime_names import PUBLISHED_RUNTIMES

    if Path(db_path).is_file():
        ensure_published(db_path)  # a database made before the published evidence shipped
    with Store.open(db_path, read_only=True) as store:
        datasets = [r["dataset"] for r in store.query(
            "SELECT DISTINCT dataset FROM results WHERE coalesce(task, 'classification') = ? ORDER BY dataset",
            [budget.task])]
        if not datasets and budget.task == "detection":
            _fail(_("database {db} has no detection results; bench a detector first, for example `ptsa bench "
                    "digits/fcos_mobilenet_v2 --data digits`.").format(db=db_path))
        if not datasets:
            _fail(_("database {db} has no results; run `ptsa demo` or `ptsa bench` first.").format(db=db_path))
        if budget.dataset is not None and budget.dataset not in datasets:
            other = store.query("SELECT DISTINCT coalesce(task, 'classification') AS task FROM results "
                                "WHERE dataset = ?", [budget.dataset])
            if other:
                _fail(_("dataset {dataset!r} has {task} results, and this ranking is for {current}; pass --task "
                        "{task}.").format(dataset=budget.dataset, task=other[0]["task"], current=budget.task))
            _fail(_("database {db} has no results for dataset {dataset!r}; it has results for {datasets}. Pass one of "
                    "them to --dataset, or bench that dataset first.").format(
                db=db_path, dataset=budget.dataset, datasets=", ".join(datasets)))
        if budget.dataset is None and len(datasets) > 1:
            log.warning("%s", _("results span datasets {datasets} with different data and metrics; pass --dataset to "
                                "compare like with like").format(datasets=", ".join(datasets)))
        result = rank_store(store, budget, workload, limit=limit, pareto_only=pareto_only)
        timed = [] if result.profile is not None else store.query(
            f"SELECT DISTINCT runtime, batch_size FROM ({TIMINGS_SQL})")
        patterns = [r["pattern"] for r in store.query(
            "SELECT DISTINCT pattern FROM results WHERE criterion <> 'dense' AND ($d IS NULL OR dataset = $d) "
            "ORDER BY pattern", {"d": budget.dataset})]
    if result.total == 0:
        _fail(_no_candidate_message(budget, patterns))
    latency_used = budget.max_latency_ms is not None or budget.objective == "latency"
    if latency_used and budget.latency_stat == "p90" and all(r in PUBLISHED_RUNTIMES for r in budget.runtimes):
        _fail(_("runtime {runtime} holds published mean step times as p50 only, so a p90 limit rules out "
                "every candidate; add --latency-stat p50.").format(runtime=budget.runtime))
    if result.profile is None:
        message = _no_latency_message(budget, timed)
        if budget.max_latency_ms is not None or budget.min_throughput is not None or \
                budget.objective in ("latency", "cost") or workload is not None:
            _fail(message)
        log.warning("%s", message)
    return result


def _no_candidate_message(budget: Budget, patterns: list[str]) -> str:
    """Say that no result has an allowed pattern, and which patterns the results have."""
    fields = {
        "dataset": budget.dataset or _("any dataset"),
        "allowed": ", ".join(budget.patterns or [_("any")]),
        "patterns": ", ".join(patterns) or _("none"),
    }
    if budget.include_dense:
        return _("no candidate to judge: no result on {dataset} has pattern {allowed}. The results have patterns "
                 "{patterns}; pass one of them to --pattern.").format(**fields)
    return _("no candidate to judge: no result on {dataset} has pattern {allowed} (and --sparse-only leaves the dense "
             "models out). The results have patterns {patterns}; pass one of them to --pattern.").format(**fields)


def _no_latency_message(budget: Budget, timed: list[dict[str, Any]]) -> str:
    """Say that the budget's runtimes have no timing at its batch size, and which runtimes and batches do."""
    from bench_engine.runtime_names import PUBLISHED_RUNTIMES

    # Runtimes the product measured come before the published ones.
    runtimes = sorted({(row["runtime"], row["batch_size"]) for row in timed},
                      key=lambda k: (k[0] in PUBLISHED_RUNTIMES, k))
    measured = ", ".join(_("{runtime} at batch {batch}").format(runtime=name, batch=batch)
                         for name, batch in runtimes[:8])
    if len(runtimes) > 8:
        measured = _("{listed} and {n} more (see `ptsa profiles`)").format(listed=measured, n=len(runtimes) - 8)
    fields = {"where": ",".join(budget.runtimes), "batch": budget.batch_size, "runtime": budget.runtime}
    if measured:
        return _("no latency measured on runtime {where!r} at batch {batch}; the database has timings for {measured}. "
                 "Pass one of those with --runtime and --batch-size, or time it with `ptsa latency MODEL --runtime "
                 "{runtime} --batch {batch}`.").format(measured=measured, **fields)
    return _("no latency measured on runtime {where!r} at batch {batch}; the database has no timings yet; time it with "
             "`ptsa latency MODEL --runtime {runtime} --batch {batch}`.").format(**fields)


@main.command(name="recommend")
@budget_options
@workload_options
@click.option("--pareto", is_flag=True, help="Show only the Pareto front over accuracy, latency and weight memory.")
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True, help="Rows to show.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout (docs/json-output.md).")
@click.pass_obj
@handle_errors
def recommend_command(obj: dict[str, Any], pareto: bool, limit: int, as_json: bool, **options: Any) -> None:
    """Rank stored candidates (model × method × sparsity × runtime) that meet a budget.

    Latency is the measured latency on one hardware profile and batch size; see `ptsa profiles`.
    It is never estimated from FLOPs or parameter counts. With a workload (--peak-rps and a
    price) each candidate also gets its instances and cost, as in `ptsa roi`.
    """
    result = _recommendation(obj["db"], _budget(options), _workload(options, required=False), limit, pareto)
    if as_json:
        _print_json(result.to_dict(limit))
    else:
        click.echo(formatting.recommendation_text(result, limit))
    if not result.found:
        sys.exit(EXIT_NO_CANDIDATE)


@main.command(name="roi")
@budget_options
@workload_options
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True, help="Rows to show.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout (docs/json-output.md).")
@click.pass_obj
@handle_errors
def roi_command(obj: dict[str, Any], limit: int, as_json: bool, **options: Any) -> None:
    """Price each candidate under a workload, against the dense model it replaces.

    Instances = ceil(peak / (capacity × utilisation)), capacity = batch × 1000 / p50 ms. A
    sparse candidate counts as faster only where interleaved timing measured it; otherwise its
    saving is weight memory and storage, not compute.
    """
    result = _recommendation(obj["db"], _budget(options, default_objective="cost"), _workload(options, required=True),
                             limit)
    if as_json:
        _print_json(result.to_dict(limit))
    else:
        click.echo(formatting.roi_text(result, limit))
    if not result.found:
        sys.exit(EXIT_NO_CANDIDATE)


@main.command(name="report")
@budget_options
@workload_options
@click.option("--out", "out_path", required=True,
              help="Markdown file to write.")
@click.option("--lang", type=click.Choice(["en", "ja"]), default=None,
              help="Language of the report. Default: Japanese when LC_ALL, LC_MESSAGES or LANG starts with ja.")
@click.option("--limit", type=click.IntRange(min=1), default=5, show_default=True, help="Candidates in the table.")
@click.pass_obj
@handle_errors
def report_command(obj: dict[str, Any], out_path: str, lang: str | None, limit: int, **options: Any) -> None:
    """Write the recommendation, its evidence, its risks and the ROI as Markdown for a meeting."""
    from advisor import report
    from advisor.i18n import pick_language

    budget = _budget(options, default_objective="cost" if options["peak_rps"] is not None else "accuracy")
    result = _recommendation(obj["db"], budget, _workload(options, required=False), limit)
    text = report.markdown(result, pick_language(lang or obj["lang"]), limit=limit, command=_command_line(), database=str(obj["db"]))
    try:
        report.write_atomic(out_path, text)
    except OSError as exc:
        _fail(_("cannot write {path}: {reason}; pick another --out path.").format(
            path=out_path, reason=exc.strerror or exc))
    click.echo(_("wrote {path}").format(path=out_path), err=True)
    if not result.found:
        sys.exit(EXIT_NO_CANDIDATE)


def _json_default(value: Any) -> Any:
    return str(value)  # dates and other values JSON has no type for


def _finite(value: Any) -> Any:
    """Replace infinite and NaN floats by null: JSON has no such numbers (a missing value is inf inside)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _print_json(payload: Any) -> None:
    click.echo(json.dumps(_finite(payload), indent=2, default=_json_default, allow_nan=False))


# -- db: move results between machines -----------------------------------------------------------


@main.group(name="db")
def db_group() -> None:
    """Move results between machines as Parquet, with their provenance and hardware profiles."""


@db_group.command(name="export")
@click.option("--out", "out_path", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="New folder to write: one Parquet file per table and manifest.json.")
@click.pass_obj
@handle_errors
def db_export(obj: dict[str, Any], out_path: Path) -> None:
    """Export results, runs, jobs, models, timings and hardware profiles of the database."""
    from bench_engine import __version__
    from db.transfer import export_parquet

    with Store.open(obj["db"], read_only=True) as store:
        counts = export_parquet(store, out_path, __version__)
    click.echo(_("exported {results} results, {latency} timings and {jobs} jobs from {db} to {out}").format(
        results=counts["results"], latency=counts["latency"], jobs=counts["jobs"], db=obj["db"], out=out_path))


@db_group.command(name="import")
@click.argument("folder", type=click.Path(path_type=Path))
@click.pass_obj
@handle_errors
def db_import(obj: dict[str, Any], folder: Path) -> None:
    """Add the rows of an export that the database lacks; importing twice adds nothing."""
    from db.transfer import check_files, import_parquet, read_manifest

    check_files(folder, read_manifest(folder))  # a bad folder fails before the database is created or locked
    with Store.open(obj["db"]) as store:
        added = import_parquet(store, folder)
    click.echo(_("imported {results} results, {latency} timings and {jobs} jobs into {db}; rows already there "
                 "were kept, and published rows were left out because every installation imports its own "
                 "copy").format(results=added["results"], latency=added["latency"], jobs=added["jobs"],
                                db=obj["db"]))


# -- demo --------------------------------------------------------------------------------------


@main.command()
@click.option("--no-tui", is_flag=True, help="Print the ranked table instead of opening the TUI.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads for training, pruning and latency.")
@click.option("--skip-lite0", is_flag=True,
              help="Leave out the models with ImageNet weights (EfficientNet-Lite0/1/2, MobileNetV2) scored on photos.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@resume_options
@click.pass_obj
@handle_errors
def demo(obj: dict[str, Any], no_tui: bool, threads: int | None, skip_lite0: bool, no_progress: bool, force: bool,
         retry_failed: bool, executor: str, address: str | None, resources: str | None) -> None:
    """Run the quick-start suite on real data, then show the recommendations.

    Trains eleven small timm baselines on the bundled MNIST subset (cached after the first run),
    prunes each with magnitude, Wanda and SparseGPT at 30/50/70 % and 2:4, and prunes the real
    ImageNet weights of EfficientNet-Lite0/1/2 and MobileNetV2, scored by fidelity on bundled photos.
    """
    from bench_engine.suite import run_quickstart

    runner = _executor(executor, address, resources)
    summary = run_quickstart(obj["db"], threads, show_progress=not no_progress, include_lite0=not skip_lite0,
                             command=_command_line(), force=force, retry_failed=retry_failed, executor=runner)
    run_id = summary.run_id
    _report_jobs(summary)
    ensure_published(obj["db"])
    with Store.open(obj["db"], read_only=True) as store:
        count = store.query("SELECT count(*) AS n FROM results WHERE run_id = ?", [run_id])[0]["n"]
    click.echo(_("run {run_id}: stored {n} measured results in {db}").format(run_id=run_id, n=count, db=obj["db"]),
               err=True)
    budget = Budget(dataset="mnist", max_drop=2.0, objective="sparsity")
    if no_tui or not sys.stdout.isatty():
        from advisor.ranking import rank_store

        with Store.open(obj["db"], read_only=True) as store:
            click.echo(formatting.recommendation_text(rank_store(store, budget, limit=10), 10))
    else:
        _open_tui(obj["db"], budget, lang=obj["lang"])
    if summary.failed or summary.skipped_failed or summary.quarantined:
        sys.exit(EXIT_JOBS_FAILED)


# -- features ----------------------------------------------------------------------------------


@main.command()
@click.argument("architectures", nargs=-1)
@click.option("--all", "all_models", is_flag=True, help="Featurise every architecture timm lists (a few minutes).")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Class count. Default: timm's.")
@click.option("--input-size", type=click.IntRange(min=8), default=None, help="Square input size. Default: timm's.")
@click.option("--json", "as_json", is_flag=True, help="Print the features as JSON on stdout.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.pass_obj
@handle_errors
def features(obj: dict[str, Any], architectures: tuple[str, ...], all_models: bool, num_classes: int | None,
             input_size: int | None, as_json: bool, no_progress: bool) -> None:
    """Compute and store the architecture features of ARCHITECTURES, without weights.

    An architecture is a timm name, torchvision:<builder>, or a detector such as
    torchvision:retinanet_resnet50_fpn or fcos:resnet18. Classifiers are built on PyTorch's meta
    device, so nothing is downloaded or allocated; a detector runs once with random weights on the
    CPU (at --input-size, default 320).
    """
    import timm
    from tqdm import tqdm

    from bench_engine.errors import InvalidConfigError
    from bench_engine.features import featurize_many
    from bench_engine.runner import open_for_write

    names = list(architectures)
    if all_models:
        names += [name for name in timm.list_models() if name not in names]
    if not names:
        raise InvalidConfigError("give one or more timm architectures, for example `ptsa features resnet18`, or --all.")
    from bench_engine.detection.detectors import looks_like_detector
    from bench_engine.models import TORCHVISION_PREFIX

    # featurize names an unknown torchvision classifier or detector itself; timm names are checked here at once.
    unknown = [name for name in names if not timm.is_model(name) and not name.startswith(TORCHVISION_PREFIX)
               and not looks_like_detector(name)]
    if unknown:
        from bench_engine.features import similar_architectures

        matches = similar_architectures(unknown[0])
        if matches:
            raise InvalidConfigError("unknown timm architecture {name!r}; did you mean {matches}?",
                                     name=unknown[0], matches=", ".join(matches))
        raise InvalidConfigError("unknown timm architecture {name!r}; see the names with "
                                 "`python -c \"import timm; print(timm.list_models('resnet*'))\"`.", name=unknown[0])
    bar = tqdm(total=len(names), desc="features", unit="model", disable=no_progress or len(names) < 5)
    rows, failures = featurize_many(names, progress=bar, num_classes=num_classes, input_size=input_size)
    bar.close()
    if rows:
        with open_for_write(obj["db"]) as store:
            store.upsert_architectures(rows)
        ensure_published(obj["db"])
    for name, reason in failures.items():
        click.echo(_("skipped {reason}").format(reason=reason), err=True)
    if as_json:
        _print_json([dict(row, features=json.loads(row.pop("features_json"))) for row in rows])
    elif len(rows) <= 20:
        click.echo(formatting.features_table(rows))
    click.echo(_("stored features of {n} architectures in {db}; {failed} could not be built without weights").format(
        n=len(rows), db=obj["db"], failed=len(failures)), err=as_json)
    if not rows:
        sys.exit(EXIT_INVALID)


# -- robustness regressor ----------------------------------------------------------------------


def _missing_features(store: Store, keys: set[tuple[str, int, int, int]]) -> list[str]:
    """Compute and store the architecture features the given model shapes lack; return failures."""
    from bench_engine.features import FEATURE_VERSION, architecture_row, featurize
    from bench_engine.errors import InvalidConfigError
    from advisor.robustness import stored_features

    have = stored_features(store, keys, FEATURE_VERSION)
    rows, failed = [], []
    for architecture, num_classes, in_chans, input_size in sorted(keys - set(have)):
        try:
            rows.append(architecture_row(featurize(architecture, num_classes=num_classes, in_chans=in_chans,
                                                   input_size=input_size)))
        except InvalidConfigError as exc:
            failed.append(exc.localized(_))
    store.upsert_architectures(rows)
    return failed


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the fit and its metrics as JSON on stdout.")
@click.pass_obj
@handle_errors
def fit(obj: dict[str, Any], as_json: bool) -> None:
    """Fit the robustness regressor on the measured and published results in the database.

    Prints its held-out-family cross-validation metrics next to two baselines'.
    """
    from advisor import robustness
    from bench_engine import __version__
    from bench_engine.features import FEATURE_VERSION
    from bench_engine.paths import data_dir
    from bench_engine.runner import open_for_write

    if not Path(obj["db"]).is_file():
        _fail(_("database not found: {db}. Run `ptsa demo` or `ptsa bench` first, or pass --db with an "
                "existing database (an empty one fits on the published evidence alone).").format(db=obj["db"]))
    ensure_published(obj["db"])
    with open_for_write(obj["db"], wait_seconds=0) as store:
        keys = {robustness.shape_key(r) for r in robustness.training_rows(store)}
        for reason in _missing_features(store, keys):
            click.echo(_("skipped {reason}").format(reason=reason), err=True)
        row = robustness.fit(store, data_dir(), FEATURE_VERSION, __version__)
    metrics = json.loads(row["metrics_json"])
    if as_json:
        payload = {k: v for k, v in row.items() if k not in ("metrics_json", "feature_names_json")}
        payload.update(metrics=metrics, feature_names=json.loads(row["feature_names_json"]))
        _print_json(payload)
        return
    click.echo(formatting.fit_text(row, metrics))


@main.command()
@click.argument("model")
@click.option("--recipe", default="magnitude", show_default=True, help="Recipe, as for `ptsa bench --recipe`.")
@click.option("--sparsity", "sparsities", multiple=True, type=float, default=(0.5,), show_default=True,
              help="Sparsity to predict; repeatable. Ignored for an N:M recipe.")
@click.option("--dataset", default=None,
              help="Dataset the prediction is for. Default: imagenet, or the dataset MODEL was benched on.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Class count. Default: the model's.")
@click.option("--input-size", type=click.IntRange(min=8), default=None, help="Square input size. Default: the model's.")
@click.option("--dense-top1", type=click.FloatRange(0, 100), default=None,
              help="Dense top-1 to turn retention into top-1. Default: a stored dense result, if any.")
@click.option("--dense-box-map", type=click.FloatRange(0, 100), default=None,
              help="For a detector: dense box mAP@[.5:.95] in %, to turn retention into box mAP. Default: a stored "
                   "dense result, if any.")
@click.option("--no-store", is_flag=True, help="Print only; do not store the prediction.")
@click.option("--json", "as_json", is_flag=True, help="Print the prediction as JSON on stdout.")
@click.pass_obj
@handle_errors
def predict(obj: dict[str, Any], model: str, recipe: str, sparsities: tuple[float, ...], dataset: str | None,
            num_classes: int | None, input_size: int | None, dense_top1: float | None, dense_box_map: float | None,
            no_store: bool, as_json: bool) -> None:
    """Predict the retention of MODEL under a recipe, with an 80 % interval and what drove it.

    MODEL is a timm architecture (it need not have been benched), a detector architecture such as
    torchvision:retinanet_resnet50_fpn (with --dataset and --num-classes), or a stored model key
    such as mnist/resnet10t or digits/fcos_mobilenet_v2. A detector's retention is of box mAP. Predictions
    are stored with provenance 'predicted'.
    """
    from advisor.prediction import predict_rows
    from bench_engine.paths import data_dir
    from bench_engine.runner import open_for_write

    if not Path(obj["db"]).is_file():
        _fail(_("database not found: {db}. Run `ptsa demo`, then `ptsa fit`, or pass --db.").format(db=obj["db"]))
    with open_for_write(obj["db"], wait_seconds=0) as store:
        predictions = predict_rows(store, data_dir(), model, recipe, list(sparsities), dataset=dataset,
                                   num_classes=num_classes, input_size=input_size, dense_top1=dense_top1,
                                   dense_box_map=dense_box_map, store_rows=not no_store)
    if as_json:
        _print_json(predictions)
        return
    click.echo(formatting.prediction_text(predictions))


# -- profiles ----------------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
@click.pass_obj
@handle_errors
def profiles(obj: dict[str, Any], as_json: bool) -> None:
    """List the hardware profiles in the database and the timings each one holds.

    A profile is the environment a measurement ran in (CPU, GPU, threads, library versions);
    `ptsa recommend --profile KEY` uses one profile's timings only.
    """
    if Path(obj["db"]).is_file():
        ensure_published(obj["db"])  # the published profiles, as `ptsa recommend` uses them
    with Store.open(obj["db"], read_only=True) as store:
        known = store.query("SELECT * FROM environments ORDER BY first_seen, env_key")
        timings = load_timings(store)
    per_key: dict[str, dict[tuple[str, int], int]] = {}
    for timing in timings:
        per_runtime = per_key.setdefault(timing.env_key, {})
        key = (timing.runtime, timing.batch_size)
        per_runtime[key] = per_runtime.get(key, 0) + 1
    counts = {env: {f"{runtime} batch {batch}": n for (runtime, batch), n in sorted(keys.items())}
              for env, keys in per_key.items()}
    entries = []
    for env in known:
        profile = json.loads(env.get("profile_json") or "{}")
        entries.append({
            "profile": env["env_key"],
            "cpu_model": env["cpu_model"],
            "num_threads": env["num_threads"],
            "device": env["device"],
            "gpu": profile.get("gpu_name"),
            "torch_version": env["torch_version"],
            "timings": counts.get(env["env_key"], {}),
        })
    if as_json:
        _print_json(entries)
        return
    if not entries:
        click.echo(_("database {db} has no profiles yet; `ptsa bench` or `ptsa latency` records one.").format(
            db=obj["db"]))
        return
    for entry in entries:
        parts = [entry["cpu_model"], entry["device"] if entry["device"] not in (None, "cpu") else None,
                 entry["gpu"] and f"GPU {entry['gpu']}",
                 entry["num_threads"] and _("{n} threads").format(n=entry["num_threads"]),
                 entry["torch_version"] and f"torch {entry['torch_version']}"]
        click.echo(f"{entry['profile']}  " + ", ".join(str(part) for part in parts if part))
        for label, n in entry["timings"].items():
            click.echo("    " + _("{label}: {n} timings").format(label=label, n=n))


# -- models ------------------------------------------------------------------------------------


@main.command()
@click.pass_obj
@handle_errors
def models(obj: dict[str, Any]) -> None:
    """List the named models and the models the database has results for."""
    from bench_engine.detection.sources import named_detectors
    from bench_engine.models import named_models

    click.echo(_("Named models (no --weights needed):"))
    for name in named_models():
        click.echo(f"  {name}")
    for name in named_detectors():
        click.echo("  " + _("{name} (detection)").format(name=name))
    db_path = obj["db"]
    if not Path(db_path).exists():
        click.echo(_("No database at {db} yet; `ptsa demo` or `ptsa bench` creates it.").format(db=db_path))
    else:
        with Store.open(db_path, read_only=True) as store:
            rows = store.query(
                "SELECT model_key, family, coalesce(results.task, 'classification') AS task, count(*) AS results "
                "FROM results LEFT JOIN models USING (model_key) GROUP BY ALL ORDER BY model_key, task"
            )
        click.echo(_("Models with results in {db}:").format(db=db_path))
        for row in rows:
            click.echo("  " + _("{model:<32} {family:<20} {task:<14} {n} results").format(
                model=row["model_key"], family=row["family"] or "", task=_(TASK_NAMES[row["task"]]), n=row["results"]))


if __name__ == "__main__":  # pragma: no cover
    main()
