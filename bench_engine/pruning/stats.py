"""Calibration statistics of each target layer's inputs, collected from the dense model.

Wanda needs the squared L2 norm of every input feature; SparseGPT needs the Hessian X Xᵀ of the
layer-wise reconstruction loss. Both are collected in forward hooks while the calibration set
runs through the dense model, and are reused for every criterion and sparsity of a run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from bench_engine.pruning.layers import PrunableLayer, input_matrix

log = logging.getLogger(__name__)

# Hessians of one calibration pass are kept below this many bytes; more layers mean more passes.
DEFAULT_MAX_HESSIAN_BYTES = 2 << 30


@dataclass
class LayerStats:
    """Input statistics of one layer, in the (G, K) layout of `input_matrix`."""

    sq_norms: torch.Tensor  # (G, K): sum over calibration columns of x²
    hessian: torch.Tensor | None  # (G, K, K): sum of x xᵀ, float32
    columns: int  # calibration columns seen (tokens or patch positions times images)

    @property
    def input_norms(self) -> torch.Tensor:
        return self.sq_norms.sqrt()


def _hessian_bytes(layer: PrunableLayer) -> int:
    k = layer.inputs_per_row
    return layer.groups * k * k * 4


def _chunks(layers: list[PrunableLayer], need_hessian: bool, max_bytes: int) -> Iterable[list[PrunableLayer]]:
    if not need_hessian:
        yield layers
        return
    chunk: list[PrunableLayer] = []
    used = 0
    for layer in layers:
        size = _hessian_bytes(layer)
        if chunk and used + size > max_bytes:
            yield chunk
            chunk, used = [], 0
        chunk.append(layer)
        used += size
    if chunk:
        yield chunk


@torch.inference_mode()
def collect_stats(
    model: nn.Module,
    layers: list[PrunableLayer],
    calibration: torch.Tensor,
    need_hessian: bool,
    batch_size: int = 32,
    max_hessian_bytes: int = DEFAULT_MAX_HESSIAN_BYTES,
) -> dict[str, LayerStats]:
    """Run the calibration inputs through the dense model and collect per-layer statistics.

    The Hessians are only collected when `need_hessian` is true. Layers are processed in as many
    calibration passes as it takes to keep the Hessians of one pass under `max_hessian_bytes`.
    """
    if calibration.shape[0] == 0:
        raise ValueError("calibration set is empty")
    stats: dict[str, LayerStats] = {}
    model.eval()
    for chunk in _chunks(layers, need_hessian, max_hessian_bytes):
        partial: dict[str, LayerStats] = {}

        def make_hook(layer: PrunableLayer):
            def hook(module: nn.Module, args: tuple) -> None:
                columns = input_matrix(module, args[0])  # (G, K, N)
                entry = partial.get(layer.name)
                if entry is None:
                    groups, k, _ = columns.shape
                    entry = LayerStats(
                        sq_norms=torch.zeros(groups, k, dtype=torch.float64),
                        hessian=torch.zeros(groups, k, k) if need_hessian else None,
                        columns=0,
                    )
                    partial[layer.name] = entry
                if entry.hessian is not None:
                    batch_hessian = torch.bmm(columns, columns.transpose(1, 2))
                    entry.hessian += batch_hessian
                    # The squared norms are the Hessian's diagonal, so no second pass is needed.
                    entry.sq_norms += batch_hessian.diagonal(dim1=1, dim2=2).double()
                else:
                    entry.sq_norms += columns.square().sum(dim=2).double()
                entry.columns += columns.shape[2]

            return hook

        handles = [layer.module.register_forward_pre_hook(make_hook(layer)) for layer in chunk]
        try:
            for start in range(0, calibration.shape[0], batch_size):
                model(calibration[start : start + batch_size])
        finally:
            for handle in handles:
                handle.remove()
        stats.update(partial)
        log.debug("collected statistics for %d layers", len(partial))
    return stats
