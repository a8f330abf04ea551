"""Batch latency of a model on the CPU with PyTorch eager execution."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

RUNTIME = "torch-eager"


@dataclass
class LatencyResult:
    """Wall-clock latency of one forward pass, in milliseconds, over timed repeats."""

    runtime: str
    batch_size: int
    p50_ms: float
    p90_ms: float
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


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float = 5.0,
) -> LatencyResult:
    """Time `repeats` forward passes after `warmup` untimed ones; stop early after `max_seconds`.

    The thread count is whatever torch is set to (`torch.set_num_threads`); it is recorded.
    At least 5 timed repeats are always taken, so p90 is meaningful even for slow models.
    """
    model.eval()
    x = torch.randn(batch_size, *input_shape)
    for _ in range(warmup):
        model(x)
    samples: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(samples) < repeats and (len(samples) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        model(x)
        samples.append((time.perf_counter() - start) * 1000)
    return LatencyResult(
        runtime=RUNTIME,
        batch_size=batch_size,
        p50_ms=statistics.median(samples),
        p90_ms=percentile(samples, 90),
        warmup=warmup,
        repeats=len(samples),
        num_threads=torch.get_num_threads(),
    )
