"""Time a model dense and pruned on several runtimes and batch sizes, and store the verdicts.

For each sparsity (and always 0, the dense baseline) the model is pruned with magnitude, which
needs no calibration data. Latency depends on where the zeros are, not on how they were chosen.
Each runtime prepares every model, its outputs are checked against PyTorch's, and only then are
the models timed, at each batch size, in interleaved rounds (`measure_interleaved`). A sparse
row's speedup is the dense p50 of the same rounds divided by its own p50, so drift of the
machine during the measurement cancels out of the ratio.

The timing itself is `bench_engine.timing.RuntimeTimer`, shared with `ptsa bench --runtime`.
"""

from __future__ import annotations

import copy
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench_engine import __version__
from bench_engine.environment import environment_key, environment_profile
from bench_engine.errors import InvalidConfigError
from bench_engine.models import ModelBundle
from bench_engine.pruning import LayerPolicy, PruneConfig, find_prunable_layers, prune_model
from bench_engine.pruning.config import check_sparsity, format_pattern, parse_pattern
from bench_engine.pruning.prune import measure_sparsity
from bench_engine.runner import failure_text, model_row, open_for_write
from bench_engine.runtimes import RuntimeUnavailableError, check_runtime_names
from bench_engine.runtime_names import MEASURABLE_CHANGE
from bench_engine.timing import RuntimeTimer, TimedModel, as_columns, usable_runtimes, warn_if_noisy

log = logging.getLogger(__name__)


@dataclass
class LatencyPlan:
    """Runtimes, batch sizes and sparsities to time; a sparsity is a fraction or an N:M pattern."""

    runtimes: Sequence[str] = ("torch-eager",)
    batch_sizes: Sequence[int] = (1,)
    sparsities: Sequence[str] = ("0.5",)
    policy: LayerPolicy = field(default_factory=LayerPolicy)
    repeats: int = 30
    max_seconds: float = 5.0

    def configs(self) -> list[PruneConfig]:
        """Return the magnitude configurations to time, validated; raises InvalidConfigError."""
        if not self.runtimes:
            raise InvalidConfigError("no runtime given; pass for example --runtime torch-eager,torch-sparse-csr.")
        check_runtime_names(self.runtimes)
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise InvalidConfigError(
                "batch sizes must be at least 1, got {sizes}; for example --batch 1,16.", sizes=list(self.batch_sizes)
            )
        if self.repeats < 5:
            raise InvalidConfigError("repeats must be at least 5, got {repeats}.", repeats=self.repeats)
        configs = []
        for text in self.sparsities:
            if ":" in text:
                pattern = parse_pattern(text)
                configs.append(PruneConfig("magnitude", 1 - pattern[0] / pattern[1], pattern=pattern, policy=self.policy))
            else:
                configs.append(PruneConfig("magnitude", check_sparsity(text), policy=self.policy))
        return configs


def _pruned(model: torch.nn.Module, config: PruneConfig | None, example: torch.Tensor) -> tuple[torch.nn.Module, float]:
    clone = copy.deepcopy(model).eval()
    layers, _ = find_prunable_layers(clone, config.policy if config else LayerPolicy(), example[:1])
    if config is not None:
        prune_model(layers, config)
    return clone, measure_sparsity(clone, [layer.name for layer in layers]).targeted


def run_latency(
    db_path: str | Path, bundle: ModelBundle, plan: LatencyPlan, command: str
) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    """Time the plan and store it as one run; return (run id, rows, {unavailable runtime: reason})."""
    configs = plan.configs()
    usable, unavailable = usable_runtimes(plan.runtimes)
    if not usable:
        # NOTE: each reason is the runtime's English `unavailable_reason()`, not translated.
        reasons = "; ".join(f"{name}: {reason}" for name, reason in unavailable.items())
        raise RuntimeUnavailableError("none of the requested runtimes can run here ({reasons}).", reasons=reasons)
    preprocess = bundle.preprocess
    shape = (preprocess.in_chans, preprocess.input_size, preprocess.input_size)
    example = torch.randn(2, *shape)

    profile = environment_profile()
    env_key = environment_key(profile)
    run_id = uuid.uuid4().hex[:12]
    with open_for_write(db_path, wait_seconds=0) as store:
        store.upsert_environment(env_key, profile)
        store.start_run(run_id, command, {"latency": {"runtimes": list(plan.runtimes), "batch_sizes": list(plan.batch_sizes),
                                                      "sparsities": list(plan.sparsities)}}, env_key, __version__)
    try:
        dense, _ = _pruned(bundle.model, None, example)
        pruned = []
        for config in configs:
            model, achieved = _pruned(bundle.model, config, example)
            pruned.append(TimedModel(model, config.criterion, config.sparsity, format_pattern(config.pattern), achieved))
        timer = RuntimeTimer(usable, plan.batch_sizes, shape, plan.repeats, plan.max_seconds,
                             {"run_id": run_id, "model_key": bundle.model_key, "env_key": env_key})
        rows = timer.time(TimedModel(dense, "dense", 0.0, "dense", 0.0), pruned)
        warn_if_noisy(bundle.model_key, rows)
        with open_for_write(db_path) as store:
            store.upsert_model(model_row(bundle))
            store.insert_latency(as_columns(rows))
    except BaseException as exc:
        with open_for_write(db_path) as store:
            store.finish_run(run_id, "failed", failure_text(exc))
        raise
    with open_for_write(db_path) as store:
        store.finish_run(run_id, "finished")
    return run_id, rows, unavailable


def break_even(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Return, per 'runtime batch N', the lowest timed sparsity at which a sparse kernel was faster.

    Faster means by more than MEASURABLE_CHANGE (5 %), the margin the verdicts use. Only
    unstructured rows where a sparse kernel ran count; None means no timed sparsity was faster.
    Runtime and batch pairs that never ran a sparse kernel are left out.
    """
    found: dict[str, float | None] = {}
    for row in sorted(rows, key=lambda r: r["requested_sparsity"]):
        if row["sparse_kernel"] is None or row["pattern"] != "unstructured":
            continue
        key = f"{row['runtime']} batch {row['batch_size']}"
        found.setdefault(key, None)
        if found[key] is None and row["speedup"] >= 1 + MEASURABLE_CHANGE:
            found[key] = row["requested_sparsity"]
    return found
