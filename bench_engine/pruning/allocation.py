"""Sparsity allocation: turn a global sparsity into a number of weights to prune per layer.

Every allocator returns exact integer counts whose sum is round(sparsity × targeted weights).
"""

from __future__ import annotations

import math

import torch

from bench_engine.errors import InvalidConfigError
from bench_engine.pruning.layers import PrunableLayer, weight_matrix
from bench_engine.pruning.stats import LayerStats


def round_to_total(values: torch.Tensor, limits: torch.Tensor, total: int) -> torch.Tensor:
    """Round non-negative real counts to integers that sum to `total`, each at most its limit.

    Floors every value, then gives the missing units to the largest fractional parts.
    """
    floors = torch.minimum(values.floor(), limits.double()).to(torch.int64)
    missing = total - int(floors.sum())
    while missing > 0:
        room = floors < limits
        if not bool(room.any()):
            raise ValueError(f"cannot place {missing} more pruned weights: every layer is at its limit")
        fractions = torch.where(room, values - floors.double(), torch.full_like(values, -1.0))
        order = torch.argsort(fractions, descending=True, stable=True)[: min(missing, int(room.sum()))]
        floors[order] += 1
        missing -= len(order)
    return floors


def uniform(layers: list[PrunableLayer], sparsity: float) -> dict[str, int]:
    """Prune the same fraction of every target layer (rounded to whole weights)."""
    return {layer.name: int(round(sparsity * layer.numel)) for layer in layers}


def erk(layers: list[PrunableLayer], sparsity: float, power: float = 1.0) -> dict[str, int]:
    """Erdős–Rényi-kernel allocation (Evci et al., "Rigging the Lottery", ICML 2020).

    A layer's density is ε · (sum of its weight dimensions / their product)^power, so small and
    thin layers stay denser. ε is solved so the kept weights meet the target. A layer whose
    density would exceed 1 is kept dense, and ε is solved again for the rest.
    """
    numel = torch.tensor([layer.numel for layer in layers], dtype=torch.float64)
    raw = torch.tensor(
        [sum(layer.module.weight.shape) / math.prod(layer.module.weight.shape) for layer in layers],
        dtype=torch.float64,
    ).pow(power)
    kept_target = (1.0 - sparsity) * float(numel.sum())
    dense = torch.zeros(len(layers), dtype=torch.bool)
    while True:
        free = ~dense
        budget = kept_target - float(numel[dense].sum())
        epsilon = budget / float((raw[free] * numel[free]).sum())
        density = torch.where(dense, torch.ones_like(raw), epsilon * raw)
        newly_dense = free & (density > 1.0)
        if not bool(newly_dense.any()):
            break
        dense |= newly_dense
    prune = numel * (1.0 - density)
    total = int(round(sparsity * float(numel.sum())))
    counts = round_to_total(prune, numel.to(torch.int64), total)
    return {layer.name: int(counts[i]) for i, layer in enumerate(layers)}


def _global_by_score(
    layers: list[PrunableLayer], scores: list[torch.Tensor], sparsity: float, max_layer_sparsity: float
) -> dict[str, int]:
    """Prune the lowest scores across layers; layers that reach the cap stop there."""
    total = int(round(sparsity * sum(layer.numel for layer in layers)))
    caps = {layer.name: int(math.floor(max_layer_sparsity * layer.numel)) for layer in layers}
    if total > sum(caps.values()):
        raise InvalidConfigError(
            "sparsity {sparsity:g} cannot be reached with every layer capped at "
            "{cap:g}; raise the cap or lower the sparsity.",
            sparsity=sparsity,
            cap=max_layer_sparsity,
        )
    fixed: dict[str, int] = {}
    remaining = list(range(len(layers)))
    left = total
    while True:
        flat = torch.cat([scores[i].flatten().float() for i in remaining])
        ids = torch.cat([torch.full((layers[i].numel,), i, dtype=torch.int64) for i in remaining])
        chosen = ids[torch.argsort(flat, stable=True)[:left]]
        counts = torch.bincount(chosen, minlength=len(layers))
        over = [i for i in remaining if int(counts[i]) > caps[layers[i].name]]
        if not over:
            break
        for i in over:
            fixed[layers[i].name] = caps[layers[i].name]
            left -= caps[layers[i].name]
        remaining = [i for i in remaining if i not in over]
    result = {layers[i].name: int(counts[i]) for i in remaining}
    result.update(fixed)
    return {layer.name: result[layer.name] for layer in layers}


def global_magnitude(layers: list[PrunableLayer], sparsity: float, max_layer_sparsity: float = 1.0) -> dict[str, int]:
    """Prune the weights of smallest |w| across all target layers, with one global threshold.

    Ties are broken by layer order and position. With `max_layer_sparsity` below 1, a layer
    stops at that sparsity and the threshold moves on to the others.
    """
    scores = [layer.module.weight.detach().abs() for layer in layers]
    return _global_by_score(layers, scores, sparsity, max_layer_sparsity)


def l2_normalised_global(layers: list[PrunableLayer], sparsity: float, max_layer_sparsity: float = 1.0) -> dict[str, int]:
    """Global magnitude after dividing each layer's weights by the layer's L2 norm.

    Plain global magnitude prunes the layers with the smallest weights hardest. Dividing by the
    norm puts every layer on one scale.
    """
    scores = []
    for layer in layers:
        weight = layer.module.weight.detach().abs().float()
        norm = float(weight.norm())
        scores.append(weight / norm if norm > 0 else weight)
    return _global_by_score(layers, scores, sparsity, max_layer_sparsity)


def outlier_ratio(layer: PrunableLayer, stats: LayerStats, threshold: float) -> float:
    """Share of a layer's Wanda scores |w|·‖x‖ above `threshold` times their mean."""
    weights = weight_matrix(layer.module).abs()
    scores = weights * stats.input_norms.float().unsqueeze(1)
    return float((scores > threshold * scores.mean()).float().mean())


def owl(
    layers: list[PrunableLayer],
    sparsity: float,
    stats: dict[str, LayerStats],
    band: float = 0.08,
    threshold: float = 5.0,
) -> dict[str, int]:
    """Outlier-weighted layerwise sparsity (OWL, Yin et al., ICML 2024).

    Layers with a larger share of outlier scores get lower sparsity. The outlier ratios are
    scaled to a spread of 2·`band` around the target, then shifted by a common offset (found by
    bisection) so that the weight-weighted sparsity meets the target exactly.
    """
    missing = [layer.name for layer in layers if layer.name not in stats]
    if missing:
        raise ValueError(f"OWL needs calibration statistics; none for {missing[0]!r}")
    ratios = torch.tensor([outlier_ratio(l, stats[l.name], threshold) for l in layers], dtype=torch.float64)
    spread = float(ratios.max() - ratios.min())
    scaled = (ratios - ratios.min()) / spread * 2 * band if spread > 0 else torch.zeros_like(ratios)
    base = sparsity - (scaled - scaled.mean())  # more outliers -> lower sparsity
    numel = torch.tensor([layer.numel for layer in layers], dtype=torch.float64)
    target = sparsity * float(numel.sum())

    def pruned(offset: float) -> float:
        return float((numel * (base + offset).clamp(0.0, 1.0)).sum())

    low, high = -1.0, 1.0
    for _ in range(100):
        middle = (low + high) / 2
        if pruned(middle) < target:
            low = middle
        else:
            high = middle
    per_layer = (base + high).clamp(0.0, 1.0)
    total = int(round(target))
    counts = round_to_total(numel * per_layer, numel.to(torch.int64), total)
    return {layer.name: int(counts[i]) for i, layer in enumerate(layers)}


ALLOCATORS = {
    "uniform": uniform,
    "erk": erk,
    "global_magnitude": global_magnitude,
    "l2_global": l2_normalised_global,
    "owl": owl,
}
