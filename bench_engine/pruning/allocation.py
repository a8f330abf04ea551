"""Sparsity allocation: turn a global sparsity into a number of weights to prune per layer."""

from __future__ import annotations

import torch

from bench_engine.pruning.layers import PrunableLayer


def uniform(layers: list[PrunableLayer], sparsity: float) -> dict[str, int]:
    """Prune the same fraction of every target layer (rounded to whole weights)."""
    return {layer.name: int(round(sparsity * layer.numel)) for layer in layers}


def global_magnitude(layers: list[PrunableLayer], sparsity: float) -> dict[str, int]:
    """Prune the weights of smallest |w| across all target layers, with one global threshold.

    Returns how many of each layer's weights fall below that threshold; the total is exactly
    round(sparsity × all target weights), with ties broken by layer order and position.
    """
    magnitudes = torch.cat([layer.module.weight.detach().abs().flatten().float() for layer in layers])
    layer_ids = torch.cat(
        [torch.full((layer.numel,), i, dtype=torch.int64) for i, layer in enumerate(layers)]
    )
    total = int(round(sparsity * magnitudes.numel()))
    order = torch.argsort(magnitudes, stable=True)[:total]
    per_layer = torch.bincount(layer_ids[order], minlength=len(layers))
    return {layer.name: int(per_layer[i]) for i, layer in enumerate(layers)}


ALLOCATORS = {"uniform": uniform, "global_magnitude": global_magnitude}
