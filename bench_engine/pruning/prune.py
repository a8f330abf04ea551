"""Apply one pruning configuration to a model, and count the sparsity it really has."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from bench_engine.pruning import criteria
from bench_engine.pruning.allocation import ALLOCATORS
from bench_engine.pruning.config import PruneConfig
from bench_engine.pruning.layers import PrunableLayer, conv_linear_layers, matrix_to_weight, weight_matrix
from bench_engine.pruning.sensitivity import sensitivity_allocation
from bench_engine.pruning.stats import LayerStats

log = logging.getLogger(__name__)


@dataclass
class SparsityCount:
    """Zeros counted in the weights of a model's Conv2d and Linear layers."""

    overall: float  # over every Conv2d and Linear weight
    targeted: float  # over the layers the policy targeted (0 when there were none)
    per_layer: dict[str, float] = field(default_factory=dict)


@dataclass
class PruneReport:
    """Outcome of a pruning call: per-layer prune counts, skipped layers and its duration."""

    prune_counts: dict[str, int]
    skipped: dict[str, str]
    seconds: float


def allocate(
    layers: list[PrunableLayer],
    config: PruneConfig,
    stats: dict[str, LayerStats] | None = None,
    sensitivity: dict[str, list[float]] | None = None,
) -> dict[str, int]:
    """Return how many weights of each layer to prune, from the configured allocation."""
    if config.allocation == "learned":
        raise ValueError("learned allocation is trained on a model; pass its counts (see pruning.learned)")
    if config.allocation == "sensitivity":
        if sensitivity is None:
            raise ValueError("sensitivity allocation needs a sensitivity table; see pruning.sensitivity")
        return sensitivity_allocation(layers, config.sparsity, sensitivity)
    allocator = ALLOCATORS[config.allocation]
    if config.allocation == "owl":
        return allocator(layers, config.sparsity, stats or {}, band=config.owl_band, threshold=config.owl_threshold)
    if config.allocation == "erk":
        return allocator(layers, config.sparsity, power=config.erk_power)
    if config.allocation in ("global_magnitude", "l2_global"):
        return allocator(layers, config.sparsity, max_layer_sparsity=config.max_layer_sparsity)
    return allocator(layers, config.sparsity)


def pattern_incompatibility(layer: PrunableLayer, pattern: tuple[int, int]) -> str | None:
    """Return why an N:M pattern cannot be applied to this layer, or None if it can."""
    _, m = pattern
    channels = layer.in_channels_per_group
    if channels % m:
        what = "input features" if layer.kind == "linear" else "input channels per group"
        return f"{what} ({channels}) not divisible by M={m}; left dense"
    return None


@torch.no_grad()
def prune_model(
    layers: list[PrunableLayer],
    config: PruneConfig,
    stats: dict[str, LayerStats] | None = None,
    sensitivity: dict[str, list[float]] | None = None,
    counts: dict[str, int] | None = None,
) -> PruneReport:
    """Prune the given layers in place according to `config`.

    `stats` are the calibration statistics from `collect_stats` (needed by Wanda and SparseGPT;
    SparseGPT also needs the Hessians). `counts` (weights to prune per layer) replaces the
    configured allocation; learned allocation passes its trained counts this way. Layers an N:M pattern does not fit are left dense and
    reported in `PruneReport.skipped`.
    """
    started = time.perf_counter()
    stats = stats or {}
    skipped: dict[str, str] = {}
    if config.pattern is not None:
        eligible = []
        for layer in layers:
            reason = pattern_incompatibility(layer, config.pattern)
            if reason:
                skipped[layer.name] = reason
            else:
                eligible.append(layer)
        n, m = config.pattern
        counts = {layer.name: layer.numel // m * (m - n) for layer in eligible}
    else:
        eligible = list(layers)
        counts = counts if counts is not None else allocate(eligible, config, stats, sensitivity)

    for layer in eligible:
        count = counts[layer.name]
        if count == 0:
            continue
        if config.criterion != "magnitude" and layer.name not in stats:
            raise ValueError(f"no calibration statistics for layer {layer.name!r}")
        matrix = weight_matrix(layer.module)
        if config.criterion == "magnitude":
            new_matrix, _ = criteria.magnitude(matrix, count, config.pattern)
        elif config.criterion == "wanda":
            new_matrix, _ = criteria.wanda(matrix, stats[layer.name], count, config.pattern)
        else:
            new_matrix, _ = criteria.sparsegpt(
                matrix,
                stats[layer.name],
                count,
                config.pattern,
                blocksize=config.sparsegpt_blocksize,
                damping=config.sparsegpt_damping,
            )
        layer.module.weight.copy_(matrix_to_weight(layer.module, new_matrix))

    seconds = time.perf_counter() - started
    log.debug("pruned %d layers with %s in %.2f s", len(eligible), config.criterion, seconds)
    return PruneReport(prune_counts=counts, skipped=skipped, seconds=seconds)


def measure_sparsity(model: nn.Module, targeted: list[str]) -> SparsityCount:
    """Count zeros in the weights of every Conv2d and Linear layer of the model."""
    per_layer: dict[str, float] = {}
    zeros_all = total_all = zeros_targeted = total_targeted = 0
    targeted_set = set(targeted)
    for name, module in conv_linear_layers(model):
        weight = module.weight.detach()
        zeros = int((weight == 0).sum())
        numel = weight.numel()
        per_layer[name] = zeros / numel
        zeros_all += zeros
        total_all += numel
        if name in targeted_set:
            zeros_targeted += zeros
            total_targeted += numel
    return SparsityCount(
        overall=zeros_all / total_all if total_all else 0.0,
        targeted=zeros_targeted / total_targeted if total_targeted else 0.0,
        per_layer=per_layer,
    )
