"""Sensitivity-driven allocation: measure each layer alone, then spread sparsity by tolerance.

For every target layer and every sparsity of a grid, the layer is really pruned (magnitude
criterion) in the otherwise dense model. Its loss is the mean KL divergence of the model's
outputs from the dense outputs on the calibration set; for a detector, the mean relative squared
error of its outputs before post-processing (`bench_engine.pruning.outputs`). The table is cached in the data folder,
keyed by the weights, the layers, the calibration draw and the grid, so later runs reuse it.

Allocation then finds, by bisection, the largest accepted loss τ at which the sum over layers
of "the highest sparsity whose loss stays ≤ τ" (interpolated linearly on the grid) meets the
global target, and rounds to exact weight counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from bench_engine.pruning.allocation import round_to_total
from bench_engine.pruning.criteria import magnitude
from bench_engine.pruning.layers import PrunableLayer, matrix_to_weight, weight_matrix
from bench_engine.pruning.outputs import OutputComparison, select

log = logging.getLogger(__name__)

SENSITIVITY_GRID = (0.0, 0.25, 0.5, 0.7, 0.85, 0.95)


def _mean_loss(comparison: OutputComparison, calibration: torch.Tensor, reference: list[torch.Tensor],
               batch_size: int) -> float:
    total = 0.0
    for start in range(0, calibration.shape[0], batch_size):
        window = slice(start, start + batch_size)
        total += float(comparison.loss(comparison.outputs(calibration[window]), select(reference, window)))
    return total / calibration.shape[0]


@torch.no_grad()
def measure_sensitivity(
    model: nn.Module,
    layers: list[PrunableLayer],
    calibration: torch.Tensor,
    grid: tuple[float, ...] = SENSITIVITY_GRID,
    batch_size: int = 64,
) -> dict[str, list[float]]:
    """Return {layer name: loss at each grid sparsity}, pruning one layer at a time for real."""
    model.eval()
    comparison = OutputComparison(model)
    reference = comparison.reference(calibration, batch_size)
    table: dict[str, list[float]] = {}
    for layer in layers:
        original = layer.module.weight.detach().clone()
        matrix = weight_matrix(layer.module)
        losses = []
        for sparsity in grid:
            if sparsity == 0.0:
                losses.append(0.0)
                continue
            count = int(round(sparsity * layer.numel))
            pruned, _ = magnitude(matrix, count, None)
            layer.module.weight.copy_(matrix_to_weight(layer.module, pruned))
            # Layers coupled by a residual sum are pruned like any other: a tool that cannot
            # prune them reports them as insensitive, so check that the zeros are really there.
            zeros = int((layer.module.weight == 0).sum())
            if zeros < count:
                raise RuntimeError(f"sensitivity of {layer.name}: asked for {count} zeros, the layer has {zeros}")
            losses.append(max(_mean_loss(comparison, calibration, reference, batch_size), 0.0))
        layer.module.weight.copy_(original)
        table[layer.name] = losses
    return table


def cache_key(weights_sha256: str | None, layers: list[PrunableLayer], calibration: torch.Tensor,
              grid: tuple[float, ...], kind: str = "") -> str:
    digest = hashlib.sha256()
    digest.update(kind.encode())  # empty for classifiers, whose keys predate detectors
    digest.update((weights_sha256 or "no-weights-hash").encode())
    digest.update(json.dumps([layer.name for layer in layers]).encode())
    digest.update(json.dumps(list(grid)).encode())
    digest.update(calibration.contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def cached_sensitivity(
    cache_dir: Path,
    weights_sha256: str | None,
    model: nn.Module,
    layers: list[PrunableLayer],
    calibration: torch.Tensor,
    grid: tuple[float, ...] = SENSITIVITY_GRID,
) -> dict[str, list[float]]:
    """Return the sensitivity table from the cache, measuring and caching it when absent."""
    kind = OutputComparison(model).kind
    path = cache_dir / f"sensitivity-{cache_key(weights_sha256, layers, calibration, grid, kind)}.json"
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            if stored.get("grid") == list(grid) and set(stored.get("table", {})) == {l.name for l in layers}:
                return stored["table"]
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable sensitivity cache %s: %s", path, exc)
    table = measure_sensitivity(model, layers, calibration, grid)
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
    temporary.write_text(json.dumps({"grid": list(grid), "table": table}))
    os.replace(temporary, path)
    return table


def _sparsity_at(losses: list[float], grid: tuple[float, ...], tolerance: float) -> float:
    """Return the highest sparsity whose interpolated loss stays at or below `tolerance`."""
    best = 0.0
    for i in range(1, len(grid)):
        low, high = losses[i - 1], losses[i]
        if high <= tolerance:
            best = grid[i]
            continue
        if low <= tolerance < high:
            best = grid[i - 1] + (grid[i] - grid[i - 1]) * (tolerance - low) / (high - low)
        break
    return best


def sensitivity_allocation(
    layers: list[PrunableLayer],
    sparsity: float,
    table: dict[str, list[float]],
    grid: tuple[float, ...] = SENSITIVITY_GRID,
) -> dict[str, int]:
    """Spread the global target over layers by one accepted loss, found by bisection.

    A target beyond what the grid allows (every layer at its highest grid sparsity) is met by
    raising all layers proportionally, so the count is always exact.
    """
    numel = torch.tensor([layer.numel for layer in layers], dtype=torch.float64)
    target = sparsity * float(numel.sum())

    def per_layer(tolerance: float) -> torch.Tensor:
        return torch.tensor([_sparsity_at(table[l.name], grid, tolerance) for l in layers], dtype=torch.float64)

    high = max(max(losses) for losses in table.values()) + 1.0
    if float((numel * per_layer(high)).sum()) < target:
        ratios = per_layer(high)
        scale = (target - float((numel * ratios).sum())) / float((numel * (1 - ratios)).sum())
        ratios = ratios + (1 - ratios) * scale
    else:
        low = 0.0
        for _ in range(60):
            middle = (low + high) / 2
            if float((numel * per_layer(middle)).sum()) < target:
                low = middle
            else:
                high = middle
        # Equal losses on the grid make the total jump; blend the two bracketing allocations
        # so the weighted sparsity meets the target exactly.
        below, above = per_layer(low), per_layer(high)
        if float((numel * below).sum()) >= target:
            # Layers with zero loss already exceed the target at τ = 0; scale down from dense.
            below = torch.zeros_like(above)
        pruned_below = float((numel * below).sum())
        pruned_above = float((numel * above).sum())
        blend = 0.0 if pruned_above <= pruned_below else (target - pruned_below) / (pruned_above - pruned_below)
        ratios = below + (above - below) * min(max(blend, 0.0), 1.0)
    counts = round_to_total(numel * ratios, numel.to(torch.int64), int(round(target)))
    return {layer.name: int(counts[i]) for i, layer in enumerate(layers)}
