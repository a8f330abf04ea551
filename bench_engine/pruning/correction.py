"""Error correction after pruning: weight correction, bias correction and BatchNorm re-estimation.

Weight correction needs no data: it rescales each output channel's kept weights so the
channel's weight mean and standard deviation equal the dense channel's. The other two use only
the calibration set. Bias correction shifts each pruned layer's bias so that its
mean output on the calibration inputs equals the dense layer's. BatchNorm re-estimation
recomputes every BatchNorm layer's running mean and variance on the pruned model, as NNCF's
BN adaptation does.
"""

from __future__ import annotations

import torch
from torch import nn

from bench_engine.pruning.layers import PrunableLayer, matrix_to_weight, weight_matrix
from bench_engine.pruning.stats import LayerStats


@torch.no_grad()
def correct_weights(dense_layers: list[PrunableLayer], sparse_layers: list[PrunableLayer]) -> int:
    """Rescale each pruned output channel's kept weights to the dense channel's mean and std.

    Kept weights w become a·w + b, with a and b solved per output channel so that the channel's
    weights (zeros included, over all K inputs) have the dense mean μ and variance σ². Pruned
    weights stay zero. With k of K weights kept, S1 and S2 the sum and sum of squares of the
    kept weights: a² = (K(σ² + μ²) − K²μ²/k) / (S2 − S1²/k) and b = (Kμ − a·S1)/k. A channel for
    which no positive a exists (a mean too large for its spread) is left as it is. Returns the
    number of channels changed.
    """
    changed = 0
    for dense, sparse in zip(dense_layers, sparse_layers):
        original = weight_matrix(dense.module).double()  # (G, R, K)
        pruned = weight_matrix(sparse.module).double()
        kept_mask = pruned != 0
        if bool(kept_mask.all()):
            continue
        total = original.shape[2]
        kept_count = kept_mask.sum(dim=2).double()
        mean, variance = original.mean(dim=2), original.var(dim=2, unbiased=False)
        s1, s2 = pruned.sum(dim=2), pruned.square().sum(dim=2)
        spread = s2 - s1.square() / kept_count.clamp(min=1)
        numerator = total * (variance + mean.square()) - total**2 * mean.square() / kept_count.clamp(min=1)
        valid = (kept_count > 0) & (kept_count < total) & (spread > 1e-30) & (numerator > 0)
        scale = torch.where(valid, (numerator / spread.clamp(min=1e-30)).clamp(min=0).sqrt(), torch.ones_like(s1))
        shift = torch.where(valid, (total * mean - scale * s1) / kept_count.clamp(min=1), torch.zeros_like(s1))
        corrected = torch.where(kept_mask, pruned * scale.unsqueeze(2) + shift.unsqueeze(2), torch.zeros_like(pruned))
        sparse.module.weight.copy_(matrix_to_weight(sparse.module, corrected.float()))
        changed += int(valid.sum())
    return changed


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
        if correction == "weight_correction":
            correct_weights(dense_layers, sparse_layers)
        elif correction == "bias_correction":
            correct_bias(dense_layers, sparse_layers, stats)
        elif correction == "bn_reestimation":
            reestimate_batchnorm(model, calibration)
        else:
            raise ValueError(f"unknown correction {correction!r}")
