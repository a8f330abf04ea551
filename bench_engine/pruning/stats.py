"""Calibration statistics of each target layer's inputs, collected from the dense model.

Wanda needs the squared L2 norm of every input feature; SparseGPT needs the Hessian X Xᵀ of the
layer-wise reconstruction loss. Both are collected in forward hooks while the calibration set
runs through the dense model, and are reused for every criterion and sparsity of a run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from bench_engine.pruning.layers import PrunableLayer, input_matrix

log = logging.getLogger(__name__)


@dataclass
class LayerStats:
    """Input statistics of one layer, in the (G, K) layout of `input_matrix`."""

    sq_norms: torch.Tensor  # (G, K): sum over calibration columns of x²
    sums: torch.Tensor  # (G, K): sum over calibration columns of x
    hessian: torch.Tensor | None  # (G, K, K): sum of x xᵀ, float32
    columns: int  # calibration columns seen (tokens or patch positions times images)
    # SparseGPT's inverse-Hessian factor by damping. It does not depend on the sparsity or the
    # pattern, so every SparseGPT configuration of a bench reuses it.
    inverse_factors: dict[float, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def input_norms(self) -> torch.Tensor:
        return self.sq_norms.sqrt()

    @property
    def input_means(self) -> torch.Tensor:
        return self.sums / self.columns


@torch.inference_mode()
def collect_stats(
    model: nn.Module,
    layers: list[PrunableLayer],
    calibration: torch.Tensor,
    need_hessian: bool,
    batch_size: int = 32,
) -> dict[str, LayerStats]:
    """Run the calibration inputs through the dense model once and collect per-layer statistics.

    The Hessians are only collected when `need_hessian` is true.
    NOTE: every targeted layer's Hessian stays in memory, G·K²·4 bytes each (85 MB for a 3×3
    convolution with 512 input channels), so very wide models need several GB.
    """
    if calibration.shape[0] == 0:
        raise ValueError("calibration set is empty")
    stats: dict[str, LayerStats] = {}
    model.eval()

    def make_hook(layer: PrunableLayer):
        def hook(module: nn.Module, args: tuple) -> None:
            columns = input_matrix(module, args[0])  # (G, K, N)
            entry = stats.get(layer.name)
            if entry is None:
                groups, k, _ = columns.shape
                entry = LayerStats(
                    sq_norms=torch.zeros(groups, k, dtype=torch.float64),
                    sums=torch.zeros(groups, k, dtype=torch.float64),
                    hessian=torch.zeros(groups, k, k) if need_hessian else None,
                    columns=0,
                )
                stats[layer.name] = entry
            if entry.hessian is not None:
                batch_hessian = torch.bmm(columns, columns.transpose(1, 2))
                entry.hessian += batch_hessian
                # The squared norms are the Hessian's diagonal, so no second pass is needed.
                entry.sq_norms += batch_hessian.diagonal(dim1=1, dim2=2).double()
            else:
                entry.sq_norms += columns.square().sum(dim=2).double()
            entry.sums += columns.sum(dim=2).double()
            entry.columns += columns.shape[2]

        return hook

    handles = [layer.module.register_forward_pre_hook(make_hook(layer)) for layer in layers]
    try:
        for start in range(0, calibration.shape[0], batch_size):
            model(calibration[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    log.debug("collected statistics for %d layers", len(stats))
    return stats
