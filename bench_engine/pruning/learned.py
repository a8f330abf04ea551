"""Learned allocation (FCPTS style): per-layer thresholds trained on the calibration set.

FCPTS (Gong et al., AAAI 2024) makes each layer's sparsity a differentiable function of a
learnable threshold, through a kernel density estimate of the weight distribution, and trains
the thresholds with a reconstruction loss plus a penalty that keeps global sparsity at target.

Here the threshold of layer l lives in quantile space: t_l = sigmoid(θ_l) is the fraction of
the layer's weights, ranked by |w|, that fall below it, so the layer's sparsity is t_l itself
and is exactly differentiable (the empirical distribution of |w| plays the part of FCPTS's
density estimate). Each weight gets a soft mask sigmoid((q − t_l) / temperature), where q is its
rank quantile. Adam trains θ on

    KL(dense outputs ‖ soft-masked outputs) + penalty · (Σ n_l t_l / Σ n_l − target)²

with the weights frozen. A detector's reconstruction term is the relative squared error of its
outputs before post-processing instead of the KL divergence (`bench_engine.pruning.outputs`). The learned ratios are then shifted by one common logit offset so the
global sparsity meets the target, and rounded to exact weight counts; the configured criterion
chooses each layer's mask with those counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from bench_engine.pruning.allocation import round_to_total
from bench_engine.pruning.layers import PrunableLayer
from bench_engine.pruning.outputs import OutputComparison, select

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnedSettings:
    steps: int = 100
    learning_rate: float = 0.05
    penalty: float = 10.0
    temperature: float = 0.02  # width of the soft mask, in quantiles of |w|
    batch_size: int = 32


def _rank_quantiles(weight: torch.Tensor) -> torch.Tensor:
    """Return each weight's position in the layer's |w| order, scaled to (0, 1)."""
    flat = weight.detach().abs().flatten()
    order = torch.argsort(flat, stable=True)
    quantiles = torch.empty_like(flat)
    quantiles[order] = (torch.arange(flat.numel(), dtype=flat.dtype) + 0.5) / flat.numel()
    return quantiles.reshape(weight.shape)


def _shift_to_target(logits: torch.Tensor, numel: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Find c with Σ n_l sigmoid(θ_l + c) = target · Σ n_l by bisection; return the ratios."""
    target = sparsity * float(numel.sum())
    low, high = -40.0, 40.0
    for _ in range(100):
        middle = (low + high) / 2
        if float((numel * torch.sigmoid(logits + middle)).sum()) < target:
            low = middle
        else:
            high = middle
    return torch.sigmoid(logits + (low + high) / 2)


def learned_allocation(
    model: nn.Module,
    layers: list[PrunableLayer],
    calibration: torch.Tensor,
    sparsity: float,
    settings: LearnedSettings = LearnedSettings(),
) -> tuple[dict[str, int], list[float]]:
    """Train per-layer thresholds; return ({layer: weights to prune}, soft global sparsity per step)."""
    model.eval()
    numel = torch.tensor([layer.numel for layer in layers], dtype=torch.float64)
    weights = [layer.module.weight.detach() for layer in layers]
    quantiles = [_rank_quantiles(w) for w in weights]
    start = torch.logit(torch.tensor(sparsity, dtype=torch.float32))
    logits = torch.full((len(layers),), float(start), requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=settings.learning_rate)
    share = (numel / numel.sum()).float()
    generator = torch.Generator().manual_seed(0)
    frozen = {name: p.detach() for name, p in model.named_parameters()}
    frozen.update({name: b for name, b in model.named_buffers()})
    history: list[float] = []

    comparison = OutputComparison(model)
    reference = comparison.reference(calibration, settings.batch_size)
    for _ in range(settings.steps):
        index = torch.randint(calibration.shape[0], (min(settings.batch_size, calibration.shape[0]),), generator=generator)
        thresholds = torch.sigmoid(logits)
        masked = dict(frozen)
        for i, layer in enumerate(layers):
            soft_mask = torch.sigmoid((quantiles[i] - thresholds[i]) / settings.temperature)
            masked[f"{layer.name}.weight"] = weights[i] * soft_mask
        outputs = comparison.outputs(calibration[index], masked)
        reconstruction = comparison.loss(outputs, select(reference, index)) / len(index)
        global_sparsity = (share * thresholds).sum()
        loss = reconstruction + settings.penalty * (global_sparsity - sparsity) ** 2
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(float(global_sparsity.detach()))

    ratios = _shift_to_target(logits.detach().double(), numel, sparsity)
    counts = round_to_total(numel * ratios, numel.to(torch.int64), int(round(sparsity * float(numel.sum()))))
    log.debug("learned allocation: %s", {l.name: round(float(r), 3) for l, r in zip(layers, ratios)})
    return {layer.name: int(counts[i]) for i, layer in enumerate(layers)}, history
