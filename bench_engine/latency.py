"""Batch latency of a model on the CPU with PyTorch eager execution.

The protocol: untimed warm-up passes until the pass time is stable, then timed repeats bounded
by a count and by a time limit. It reports the median (p50), p90 and p99, the spread (IQR
divided by the median) and the throughput at the median. Callers warn when the spread is above
SPREAD_WARNING.

To compare models (dense against pruned), `measure_interleaved` times them in rounds, one pass
of each per round in a rotating order. A slow drift of the machine (another tenant, the CPU
clock) then falls on every model alike instead of on whichever was timed during it, so the
ratio of their medians stays meaningful even when each median moves.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

RUNTIME = "torch-eager"
# Above this spread (IQR / median) the timings are too noisy for small differences to count.
SPREAD_WARNING = 0.10


@dataclass
class LatencyResult:
    """Wall-clock latency of one forward pass, in milliseconds, over timed repeats."""

    runtime: str
    batch_size: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    spread: float  # interquartile range divided by the median
    throughput: float  # inputs per second at the median latency
    warmup: int
    repeats: int
    num_threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(samples: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _timed(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return (time.perf_counter() - start) * 1000


def warm_up(model: nn.Module, x: torch.Tensor, minimum: int, maximum: int, max_seconds: float,
            tolerance: float = 0.05, window: int = 3) -> int:
    """Run untimed passes until the median of the last `window` passes moves by less than
    `tolerance` from the window before; return the passes run.

    At least `minimum` and at most `maximum` passes run, and no more once `max_seconds` have
    passed (after `minimum`).
    """
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < maximum:
        times.append(_timed(model, x))
        if len(times) < max(minimum, 2 * window):
            continue
        current = statistics.median(times[-window:])
        previous = statistics.median(times[-2 * window : -window])
        if abs(current - previous) <= tolerance * previous or time.perf_counter() >= deadline:
            break
    return len(times)


def _result(samples: list[float], batch_size: int, warmup_passes: int) -> LatencyResult:
    median = statistics.median(samples)
    spread = (percentile(samples, 75) - percentile(samples, 25)) / median if median > 0 else 0.0
    log.debug("latency p50 %.3f ms, spread %.1f %% over %d repeats", median, spread * 100, len(samples))
    return LatencyResult(
        runtime=RUNTIME,
        batch_size=batch_size,
        p50_ms=median,
        p90_ms=percentile(samples, 90),
        p99_ms=percentile(samples, 99),
        spread=spread,
        throughput=batch_size / (median / 1000) if median > 0 else 0.0,
        warmup=warmup_passes,
        repeats=len(samples),
        num_threads=torch.get_num_threads(),
    )


@torch.inference_mode()
def measure_latency(
    model: nn.Module | Callable[[torch.Tensor], object],
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float = 5.0,
    max_warmup: int = 50,
) -> LatencyResult:
    """Warm up until stable, then time up to `repeats` forward passes within `max_seconds`.

    `model` is a module or any callable taking one input batch, such as a prepared runtime.
    `warmup` is the minimum number of warm-up passes and `max_warmup` the maximum. The thread
    count is whatever torch is set to (`torch.set_num_threads`); it is recorded. At least 5
    timed repeats are always taken, so p90 is meaningful even for slow models.
    """
    # One model timed alone is the one-model case of the interleaved rounds.
    return measure_interleaved({0: model}, input_shape, batch_size=batch_size, warmup=warmup, repeats=repeats,
                               max_seconds=max_seconds, max_warmup=max_warmup)[0]


@torch.inference_mode()
def measure_interleaved(
    models: Mapping[Hashable, Callable[[torch.Tensor], object]],
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float = 5.0,
    max_warmup: int = 50,
) -> dict[Hashable, LatencyResult]:
    """Time several models on the same input in rounds; return each model's result by its key.

    Each model is warmed up until stable, as in `measure_latency`. Then every round times one
    pass of each model, starting one model later than the round before. Rounds stop when each
    model has `repeats` passes or when `max_seconds` per model have passed in total (after at
    least 5 rounds).
    """
    if not models:
        return {}
    for model in models.values():
        if isinstance(model, nn.Module):
            model.eval()
    x = torch.randn(batch_size, *input_shape)
    keys = list(models)
    warmups = {
        key: warm_up(models[key], x, minimum=warmup, maximum=max(warmup, max_warmup), max_seconds=max_seconds / 4)
        for key in keys
    }
    samples: dict[Hashable, list[float]] = {key: [] for key in keys}
    deadline = time.perf_counter() + max_seconds * len(keys)
    rounds = 0
    while rounds < repeats and (rounds < 5 or time.perf_counter() < deadline):
        start = rounds % len(keys)
        for key in keys[start:] + keys[:start]:
            samples[key].append(_timed(models[key], x))
        rounds += 1
    return {key: _result(samples[key], batch_size, warmups[key]) for key in keys}
