"""Time a model dense and pruned on several runtimes and batch sizes, and store the verdicts.

For each sparsity (and always 0, the dense baseline) the model is pruned with magnitude, which
needs no calibration data. Latency depends on where the zeros are, not on how they were chosen.
Each runtime prepares the model, its outputs are checked against PyTorch's, and only then is it
timed at each batch size. A sparse row's speedup is the dense row's p50 on the same runtime and
batch size divided by its own p50.
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

from bench_engine import __version__, memory
from bench_engine.environment import environment_key, environment_profile
from bench_engine.errors import InvalidConfigError
from bench_engine.latency import measure_latency
from bench_engine.models import ModelBundle
from bench_engine.pruning import LayerPolicy, PruneConfig, find_prunable_layers, prune_model
from bench_engine.pruning.config import check_sparsity, format_pattern, parse_pattern
from bench_engine.pruning.prune import measure_sparsity
from bench_engine.runner import failure_text, model_row, open_for_write, weight_bytes_json
from bench_engine.runtimes import RuntimeUnavailableError, check_outputs, get_runtime, speedup_verdict

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
        for name in self.runtimes:
            try:
                get_runtime(name)
            except RuntimeUnavailableError as exc:
                raise InvalidConfigError(str(exc)) from None
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise InvalidConfigError(f"batch sizes must be at least 1, got {list(self.batch_sizes)}; for example --batch 1,16.")
        if self.repeats < 5:
            raise InvalidConfigError(f"repeats must be at least 5, got {self.repeats}.")
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
    runtimes = [get_runtime(name) for name in plan.runtimes]
    unavailable = {r.name: r.unavailable_reason() for r in runtimes if r.unavailable_reason()}
    usable = [r for r in runtimes if r.name not in unavailable]
    if not usable:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in unavailable.items())
        raise RuntimeUnavailableError(f"none of the requested runtimes can run here ({reasons}).")
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
    rows: list[dict[str, Any]] = []
    dense_p50: dict[tuple[str, int], float] = {}
    try:
        for config in [None, *configs]:
            model, achieved = _pruned(bundle.model, config, example)
            for runtime in usable:
                prepared = runtime.prepare(model, example[:1])
                difference = check_outputs(model, prepared, example)
                for batch in plan.batch_sizes:
                    memory.reset_peak()
                    timing = measure_latency(prepared.run, shape, batch_size=batch, repeats=plan.repeats,
                                             max_seconds=plan.max_seconds)
                    peak_rss, peak_cuda = memory.peak_resident_bytes(), memory.peak_cuda_bytes()
                    key = (runtime.name, batch)
                    speedup = verdict = None
                    if config is None:
                        dense_p50[key] = timing.p50_ms
                    else:
                        speedup = dense_p50[key] / timing.p50_ms
                        verdict = speedup_verdict(dense_p50[key], timing.p50_ms, prepared.sparse_kernel)
                    rows.append({
                        "latency_id": uuid.uuid4().hex,
                        "run_id": run_id,
                        "model_key": bundle.model_key,
                        "env_key": env_key,
                        "runtime": runtime.name,
                        "batch_size": batch,
                        "criterion": "dense" if config is None else config.criterion,
                        "requested_sparsity": 0.0 if config is None else config.sparsity,
                        "pattern": "dense" if config is None else format_pattern(config.pattern),
                        "achieved_sparsity": achieved,
                        "sparse_kernel": prepared.sparse_kernel,
                        "sparse_layers": prepared.sparse_layers,
                        "max_abs_diff": difference,
                        "p50_ms": timing.p50_ms,
                        "p90_ms": timing.p90_ms,
                        "p99_ms": timing.p99_ms,
                        "spread": timing.spread,
                        "throughput_per_s": timing.throughput,
                        "warmup": timing.warmup,
                        "repeats": timing.repeats,
                        "num_threads": timing.num_threads,
                        "speedup": speedup,
                        "verdict": verdict,
                        "weight_bytes_json": weight_bytes_json(model),
                        "peak_rss_bytes": peak_rss,
                        "peak_cuda_bytes": peak_cuda,
                    })
                    log.info("%s %s batch %d: p50 %.3f ms", bundle.model_key, runtime.name, batch, timing.p50_ms)
        with open_for_write(db_path) as store:
            store.upsert_model(model_row(bundle))
            store.insert_latency({name: [row[name] for row in rows] for name in rows[0]})
    except BaseException as exc:
        with open_for_write(db_path) as store:
            store.finish_run(run_id, "failed", failure_text(exc))
        raise
    with open_for_write(db_path) as store:
        store.finish_run(run_id, "finished")
    return run_id, rows, unavailable


def break_even(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Return, per 'runtime batch N', the lowest timed sparsity at which a sparse kernel beat dense.

    Only unstructured rows where a sparse kernel ran count; None means no timed sparsity did.
    Runtime and batch pairs that never ran a sparse kernel are left out.
    """
    found: dict[str, float | None] = {}
    for row in sorted(rows, key=lambda r: r["requested_sparsity"]):
        if row["sparse_kernel"] is None or row["pattern"] != "unstructured":
            continue
        key = f"{row['runtime']} batch {row['batch_size']}"
        found.setdefault(key, None)
        if found[key] is None and row["speedup"] >= 1.0:
            found[key] = row["requested_sparsity"]
    return found

