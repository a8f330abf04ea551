"""Layer-wise reconstruction: optimise each pruned layer's kept weights to match the dense layer.

Each pruned layer is handled in execution order. The target is the dense layer's output on the
dense model's inputs. Adam fits the pruned layer to it, fed either the same dense inputs
(`input="dense"`) or the inputs the pruned model now produces (`input="sparse"`, which also
repairs the error of earlier layers). The mask stays fixed, so pruned weights get no update and
stay zero. Biases are not changed.

Calibration inputs are turned into columns (patches or tokens) and at most `max_columns` of
them, drawn with a fixed seed, are kept per layer, so memory stays bounded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from bench_engine.pruning.layers import PrunableLayer, input_matrix, matrix_to_weight, weight_matrix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconstructionSettings:
    """Reconstruction settings for one layer; the defaults are sized for a CPU."""

    input: str = "dense"  # 'dense' or 'sparse'
    steps: int = 200
    learning_rate: float = 1e-4
    batch_columns: int = 1024
    max_columns: int = 32768
    # Stop once the loss falls below this fraction of the loss before the first step.
    early_stop: float = 1e-3


def _layer_input(model: nn.Module, module: nn.Module, calibration: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    captured: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            for start in range(0, calibration.shape[0], batch_size):
                model(calibration[start : start + batch_size])
    finally:
        handle.remove()
    return captured


def _columns(module: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([input_matrix(module, x) for x in inputs], dim=2)  # (G, K, N)


def reconstruct_layers(
    dense_model: nn.Module,
    sparse_model: nn.Module,
    dense_layers: list[PrunableLayer],
    sparse_layers: list[PrunableLayer],
    calibration: torch.Tensor,
    settings: ReconstructionSettings,
    batch_size: int = 32,
) -> dict[str, tuple[float, float]]:
    """Reconstruct every pruned layer; return {layer: (loss before, loss after)} on its columns."""
    generator = torch.Generator().manual_seed(0)
    report: dict[str, tuple[float, float]] = {}
    sparse_model.eval()
    for dense, sparse in zip(dense_layers, sparse_layers):
        mask = weight_matrix(sparse.module) != 0
        if bool(mask.all()):
            continue  # nothing pruned in this layer
        dense_columns = _columns(dense.module, _layer_input(dense_model, dense.module, calibration, batch_size))
        if settings.input == "sparse":
            source = _columns(sparse.module, _layer_input(sparse_model, sparse.module, calibration, batch_size))
        else:
            source = dense_columns
        count = dense_columns.shape[2]
        if count > settings.max_columns:
            keep = torch.randperm(count, generator=generator)[: settings.max_columns]
            dense_columns, source = dense_columns[:, :, keep], source[:, :, keep]
        target = torch.bmm(weight_matrix(dense.module), dense_columns)  # (G, R, N)

        weights = weight_matrix(sparse.module).requires_grad_(True)
        optimiser = torch.optim.Adam([weights], lr=settings.learning_rate)
        columns = source.shape[2]

        def loss_on(index: torch.Tensor | None) -> torch.Tensor:
            inputs = source if index is None else source[:, :, index]
            expected = target if index is None else target[:, :, index]
            return (torch.bmm(weights, inputs) - expected).square().mean()

        with torch.no_grad():
            before = float(loss_on(None))
        for _ in range(settings.steps):
            index = torch.randint(columns, (min(settings.batch_columns, columns),), generator=generator)
            loss = loss_on(index)
            optimiser.zero_grad()
            loss.backward()
            weights.grad.mul_(mask)
            optimiser.step()
            with torch.no_grad():
                weights.mul_(mask)
            if float(loss.detach()) < settings.early_stop * before:
                break
        with torch.no_grad():
            after = float(loss_on(None))
            if after < before:
                sparse.module.weight.copy_(matrix_to_weight(sparse.module, weights.detach()))
            else:
                after = before  # keep the pruned weights when optimisation did not help
        report[sparse.name] = (before, after)
        log.debug("reconstructed %s: %.4g -> %.4g", sparse.name, before, after)
    return report
