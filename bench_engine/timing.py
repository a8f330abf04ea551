"""Time models on runtimes and batch sizes against a dense baseline timed alongside them.

Each runtime prepares every model, and its outputs are checked against PyTorch's before any
timing counts. The models are then timed in interleaved rounds (`measure_interleaved`), so a
sparse model's speedup (the baseline's p50 divided by its own, from the same rounds) is not
skewed by drift of the machine between separate measurements. Used by `ptsa latency` and by
`ptsa bench --runtime`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bench_engine import memory
from bench_engine.latency import SPREAD_WARNING, LatencyResult, measure_interleaved
from bench_engine.runtimes import PreparedModel, Runtime, check_outputs, get_runtime, speedup_verdict
from bench_engine.storage import weight_bytes_json

log = logging.getLogger(__name__)

# Stored with each latency row: how the models of one comparison were timed.
PROTOCOL = "interleaved"


@dataclass
class TimedModel:
    """A model to time and what it is: the dense baseline or one pruned configuration."""

    model: torch.nn.Module
    criterion: str  # 'dense' for the baseline
    requested_sparsity: float
    pattern: str  # 'dense', 'unstructured' or N:M such as '2:4'
    achieved_sparsity: float
    result_id: str | None = None  # the bench result this model was evaluated as, if any


class RuntimeTimer:
    """Time models on runtimes and batch sizes, each against a dense baseline timed alongside.

    Prepared baselines are kept per runtime, so a bench that compares the dense model with one
    pruned model at a time exports the dense model to each runtime once.
    """

    def __init__(self, runtimes: Sequence[Runtime], batch_sizes: Sequence[int], input_shape: tuple[int, ...],
                 repeats: int, max_seconds: float, context: dict[str, Any]):
        self.runtimes = list(runtimes)
        self.batch_sizes = list(batch_sizes)
        self.input_shape = input_shape
        self.repeats = repeats
        self.max_seconds = max_seconds
        self.context = context  # run_id, model_key, env_key: copied into every row
        self.example = torch.randn(2, *input_shape)
        self._baselines: dict[str, tuple[PreparedModel, float]] = {}

    def _prepare(self, runtime: Runtime, timed: TimedModel) -> tuple[PreparedModel, float]:
        prepared = runtime.prepare(timed.model, self.example[:1])
        return prepared, check_outputs(timed.model, prepared, self.example)

    def time(self, baseline: TimedModel, others: Sequence[TimedModel], baseline_rows: bool = True) -> list[dict[str, Any]]:
        """Time the baseline and the other models together; return one row per model, runtime and batch.

        With `baseline_rows=False` the baseline's own rows are left out (already stored).
        """
        rows: list[dict[str, Any]] = []
        for runtime in self.runtimes:
            if runtime.name not in self._baselines:
                self._baselines[runtime.name] = self._prepare(runtime, baseline)
            entries = [(baseline, *self._baselines[runtime.name])]
            entries += [(timed, *self._prepare(runtime, timed)) for timed in others]
            for batch in self.batch_sizes:
                timings = measure_interleaved(
                    {index: prepared.run for index, (_, prepared, _) in enumerate(entries)},
                    self.input_shape, batch_size=batch, repeats=self.repeats, max_seconds=self.max_seconds,
                )
                baseline_ms, baseline_spread = timings[0].p50_ms, timings[0].spread
                for index, (timed, prepared, difference) in enumerate(entries):
                    if index == 0 and not baseline_rows:
                        continue
                    rows.append(self._row(runtime, batch, timed, prepared, difference, timings[index], baseline_ms,
                                          baseline_spread, dense=index == 0))
                log.info("%s on %s, batch %d: dense p50 %.3f ms", self.context["model_key"], runtime.name, batch,
                         baseline_ms)
        return rows

    def _row(self, runtime: Runtime, batch: int, timed: TimedModel, prepared: PreparedModel, difference: float,
             timing: LatencyResult, baseline_ms: float, baseline_spread: float, dense: bool) -> dict[str, Any]:
        peak_rss, peak_cuda = self._peak_memory(prepared, batch)
        speedup = verdict = None
        if not dense:
            speedup = baseline_ms / timing.p50_ms
            verdict = speedup_verdict(baseline_ms, timing.p50_ms, prepared.sparse_kernel,
                                      spread=max(timing.spread, baseline_spread))
        return {
            "latency_id": uuid.uuid4().hex,
            **self.context,
            "result_id": timed.result_id,
            "runtime": runtime.name,
            "batch_size": batch,
            "criterion": timed.criterion,
            "requested_sparsity": timed.requested_sparsity,
            "pattern": timed.pattern,
            "achieved_sparsity": timed.achieved_sparsity,
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
            "protocol": PROTOCOL,
            "baseline_p50_ms": baseline_ms,
            "speedup": speedup,
            "verdict": verdict,
            "weight_bytes_json": weight_bytes_json(timed.model),
            "peak_rss_bytes": peak_rss,
            "peak_cuda_bytes": peak_cuda,
        }

    @torch.inference_mode()
    def _peak_memory(self, prepared: PreparedModel, batch: int) -> tuple[int | None, int | None]:
        """Return the process (and CUDA) peak while this model alone runs two passes at this batch."""
        x = torch.randn(batch, *self.input_shape)
        memory.reset_peak()
        for _ in range(2):
            prepared.run(x)
        return memory.peak_resident_bytes(), memory.peak_cuda_bytes()


def usable_runtimes(names: Sequence[str]) -> tuple[list[Runtime], dict[str, str]]:
    """Return the named runtimes that can run here and {name: reason} for those that cannot."""
    runtimes = [get_runtime(name) for name in names]
    unavailable = {r.name: r.unavailable_reason() for r in runtimes if r.unavailable_reason()}
    return [r for r in runtimes if r.name not in unavailable], unavailable


def as_columns(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Turn latency rows into columns for `Store.insert_latency`."""
    return {name: [row[name] for row in rows] for name in rows[0]} if rows else {}


def warn_if_noisy(label: str, rows: Sequence[dict[str, Any]]) -> None:
    """Log one warning when some latency rows have a spread above SPREAD_WARNING."""
    noisy = [row for row in rows if row["spread"] > SPREAD_WARNING]
    if noisy:
        log.warning(
            "%s: %d of %d runtime measurements have a spread (IQR / median) above %.0f %%, up to %.0f %%; "
            "the machine may have been busy, so their speedups are unreliable",
            label, len(noisy), len(rows), SPREAD_WARNING * 100, max(row["spread"] for row in noisy) * 100,
        )

