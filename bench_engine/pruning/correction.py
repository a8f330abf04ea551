"""Error correction after pruning: bias correction and BatchNorm re-estimation.

Both use only the calibration set. Bias correction shifts each pruned layer's bias so that its
mean output on the calibration inputs equals the dense layer's. BatchNorm re-estimation
recomputes every BatchNorm layer's running mean and variance on the pruned model, as NNCF's
BN adaptation does.
"""

from __future__ import annotations

import torch
from torch import nn

from bench_engine.pruning.layers import PrunableLayer, weight_matrix
from bench_engine.pruning.stats import LayerStats


@torch.no_grad()
def correct_bias(dense_layers: list[PrunableLayer], sparse_layers: list[PrunableLayer], stats: dict[str, LayerStats]) -> None:
    """Add (W − Ŵ)·E[x] to each pruned layer's bias, creating the bias where there is none.

    E[x] is the mean calibration input of the dense model, per input of the (G, K) layout, so
    the corrected layer's mean output on those inputs equals the dense layer's.
    """
    for dense, sparse in zip(dense_layers, sparse_layers):
        difference = weight_matrix(dense.module) - weight_matrix(sparse.module)  # (G, R, K)
        if not bool(difference.any()):
            continue
        means = stats[dense.name].input_means.float()  # (G, K)
        shift = torch.bmm(difference, means.unsqueeze(2)).reshape(-1)  # (G·R,)
        module = sparse.module
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros(module.weight.shape[0], dtype=module.weight.dtype))
        module.bias.add_(shift.to(module.bias.dtype))


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, calibration: torch.Tensor, batch_size: int = 32) -> int:
    """Recompute BatchNorm running statistics on the calibration set; return the layers updated.

    Running statistics become the plain average over the calibration batches (momentum None),
    and every other module stays in eval mode, so dropout and the like are not switched on.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    saved = [(m, m.momentum) for m in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        for start in range(0, calibration.shape[0], batch_size):
            model(calibration[start : start + batch_size])
    finally:
        for norm, momentum in saved:
            norm.momentum = momentum
        model.eval()
    return len(norms)


def apply_corrections(
    corrections: tuple[str, ...],
    model: nn.Module,
    dense_layers: list[PrunableLayer],
    sparse_layers: list[PrunableLayer],
    stats: dict[str, LayerStats],
    calibration: torch.Tensor,
) -> None:
    """Apply the named corrections to a pruned model, in the order given."""
    for correction in corrections:
        if correction == "bias_correction":
            correct_bias(dense_layers, sparse_layers, stats)
        elif correction == "bn_reestimation":
            reestimate_batchnorm(model, calibration)
        else:
            raise ValueError(f"unknown correction {correction!r}")
