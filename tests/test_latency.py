"""The latency protocol: warm-up until stable, percentiles, spread and throughput."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from bench_engine.latency import measure_interleaved, measure_latency, percentile, warm_up


class ScriptedDelay(nn.Module):
    """Sleep for the next scripted number of milliseconds on each call, then the last one forever."""

    def __init__(self, delays_ms: list[float]):
        super().__init__()
        self.delays_ms = delays_ms
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delay = self.delays_ms[min(self.calls, len(self.delays_ms) - 1)]
        self.calls += 1
        time.sleep(delay / 1000)
        return x


def test_percentiles_interpolate():
    samples = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(samples, 50) == 3.0
    assert percentile(samples, 90) == pytest.approx(4.6)
    assert percentile([7.0], 99) == 7.0


def test_warm_up_runs_until_stable():
    model = ScriptedDelay([40, 30, 20, 10, 2, 2])
    passes = warm_up(model, torch.zeros(1), minimum=2, maximum=40, max_seconds=10.0)
    # The slow first passes must be over, and a stable window must follow them.
    assert passes >= 4 + 3
    assert passes < 40


def test_warm_up_stops_at_maximum_when_never_stable():
    model = ScriptedDelay([1, 8] * 40)
    passes = warm_up(model, torch.zeros(1), minimum=2, maximum=12, max_seconds=60.0)
    assert passes == 12


def test_measure_latency_reports_protocol_fields():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    result = measure_latency(model, (3, 16, 16), batch_size=4, warmup=3, repeats=20, max_seconds=2.0)
    assert result.p50_ms <= result.p90_ms <= result.p99_ms
    assert result.spread >= 0
    assert result.throughput == pytest.approx(4 / (result.p50_ms / 1000))
    assert 5 <= result.repeats <= 20
    assert result.warmup >= 3
    assert result.num_threads == torch.get_num_threads()


class SharedClock:
    """Counts calls across models; calls in the middle half of all calls are slowed down 4×."""

    def __init__(self, total_calls: int):
        self.calls = 0
        self.total = total_calls

    def factor(self) -> float:
        self.calls += 1
        return 4.0 if self.total / 4 <= self.calls < 3 * self.total / 4 else 1.0


class Drifting(nn.Module):
    def __init__(self, clock: SharedClock, base_ms: float):
        super().__init__()
        self.clock, self.base_ms = clock, base_ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.base_ms * self.clock.factor() / 1000)
        return x


def test_interleaved_rounds_keep_the_ratio_under_drift():
    # Warm-up passes also count on the clock; the drift window falls inside the timed rounds.
    clock = SharedClock(total_calls=2 * (6 + 30))
    models = {"dense": Drifting(clock, 2.0), "sparse": Drifting(clock, 4.0)}
    results = measure_interleaved(models, (1,), warmup=6, max_warmup=6, repeats=30, max_seconds=60.0)
    assert results["dense"].repeats == results["sparse"].repeats == 30
    # Each model had the same share of slow calls, so the ratio of medians is the true 2×.
    # Timed one after the other, dense would take most of the slow calls and the ratio would be 0.5.
    assert results["sparse"].p50_ms / results["dense"].p50_ms == pytest.approx(2.0, rel=0.15)


def test_interleaved_rounds_rotate_the_starting_model():
    order: list[str] = []

    class Named(nn.Module):
        def __init__(self, name: str):
            super().__init__()
            self.name = name

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            order.append(self.name)
            return x

    models = {name: Named(name) for name in "abc"}
    measure_interleaved(models, (1,), warmup=1, max_warmup=1, repeats=6, max_seconds=10.0)
    timed = order[-18:]  # 6 rounds of 3 models after the warm-up passes
    firsts = [timed[i] for i in range(0, 18, 3)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]
