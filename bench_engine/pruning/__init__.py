"""Post-training sparsity techniques: layer selection, calibration statistics, allocation,
mask criteria and patterns.

A pruning run is: choose the target layers (`layers`), collect calibration statistics once
(`stats`), turn the global sparsity into per-layer prune counts (`allocation`, `sensitivity`),
then pick each layer's mask and new weights with a criterion (`criteria`). `prune.prune_model`
runs those steps, and `correction` repairs the pruned model. `recipe` parses a whole
combination written as one line or a TOML file into a `PruneConfig`.
"""

from bench_engine.pruning.config import CRITERIA, ALLOCATIONS, PruneConfig, parse_pattern
from bench_engine.pruning.layers import LayerPolicy, PrunableLayer, find_prunable_layers
from bench_engine.pruning.prune import PruneReport, prune_model
from bench_engine.pruning.stats import collect_stats

__all__ = [
    "ALLOCATIONS",
    "CRITERIA",
    "LayerPolicy",
    "PrunableLayer",
    "PruneConfig",
    "PruneReport",
    "collect_stats",
    "find_prunable_layers",
    "parse_pattern",
    "prune_model",
]
