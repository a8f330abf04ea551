"""Reconstruction: fit the kept weights of a pruned model so each layer or block matches the dense one.

The model is walked block by block (see `blocks`). For each block the dense model's inputs are
cached once, the dense block's outputs become the targets, and the pruned copy is fitted:

- granularity 'block' (BRECQ style) fits every pruned layer of the block together so the block's
  output matches the dense block's output;
- granularity 'layer' (AdaPrune style) fits each pruned layer of the block alone so its output
  matches the dense layer's output on the dense layer's inputs.

The inputs fed to the pruned weights are the dense model's (`input="dense"`) or the pruned
model's own (`input="sparse"`, which also repairs the error of earlier blocks). The outputs of
one block are the next block's inputs, so the calibration set runs through each model once.
Only for a block that does not follow the previous one directly (the first block after the
stem, a classifier after pooling) is the model run again, up to that block.

Adam updates the weights of the pruned layers with the mask held fixed, so pruned weights stay
zero; biases and normalisation layers are not changed. A fit that does not lower the error on
the whole calibration set is undone. Cached activations are kept within a `MemoryBudget` and
spill to disk beyond it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bench_engine.pruning.activations import DEFAULT_BUDGET_BYTES, ActivationStore, MemoryBudget
from bench_engine.pruning.blocks import find_units
from bench_engine.pruning.layers import PrunableLayer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconstructionSettings:
    """Reconstruction settings; the defaults are sized for a CPU (msbench uses 20k steps on GPUs)."""

    granularity: str = "layer"  # 'layer' or 'block'
    input: str = "dense"  # 'dense' or 'sparse'
    steps: int = 200  # Adam steps per layer or block
    learning_rate: float = 1e-4
    batch_size: int = 32  # calibration images per step
    # Stop once a step's loss falls below this fraction of the first step's loss.
    early_stop: float = 1e-3
    memory_budget_bytes: int = DEFAULT_BUDGET_BYTES


@dataclass
class ReconstructionReport:
    """Mean squared error before and after fitting, per fitted layer or block, and memory use."""

    errors: dict[str, tuple[float, float]] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)
    peak_memory_bytes: int = 0
    spilled_bytes: int = 0


class _Stop(Exception):
    """Raised in a forward pre-hook to end a forward pass once the wanted input is captured."""


def _capture_inputs(
    model: nn.Module, module: nn.Module, inputs: torch.Tensor | ActivationStore, batch_size: int, budget: MemoryBudget
) -> ActivationStore:
    """Run `model` on each batch until `module` is called; store the input `module` receives."""
    store = ActivationStore(budget)

    def hook(_module, args):
        store.append(args[0])
        raise _Stop

    batches = (
        [inputs[s : s + batch_size] for s in range(0, inputs.shape[0], batch_size)]
        if isinstance(inputs, torch.Tensor)
        else inputs
    )
    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for expected, batch in enumerate(batches, start=1):
                try:
                    model(batch)
                except _Stop:
                    pass
                if len(store) != expected:
                    raise RuntimeError(f"module {type(module).__name__} was not called in the forward pass")
    finally:
        handle.remove()
    return store


def _run(module: nn.Module, inputs: ActivationStore, budget: MemoryBudget) -> ActivationStore:
    outputs = ActivationStore(budget)
    with torch.no_grad():
        for batch in inputs:
            outputs.append(module(batch))
    return outputs


def _mean_error(module: nn.Module, inputs: ActivationStore, targets: ActivationStore) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in zip(inputs, targets):
            total += float(F.mse_loss(module(x), y, reduction="sum"))
            count += y.numel()
    return total / max(count, 1)


def fit_masked(
    module: nn.Module,
    layers: list[nn.Module],
    inputs: ActivationStore,
    targets: ActivationStore,
    settings: ReconstructionSettings,
    generator: torch.Generator,
) -> tuple[float, float]:
    """Fit the weights of `layers` (inside `module`) so module(inputs) matches targets.

    Zero weights stay zero. Returns the mean squared error on all batches (before, after); the
    weights are restored when the error did not fall.
    """
    weights = [layer.weight for layer in layers]
    masks = [w.detach() != 0 for w in weights]
    originals = [w.detach().clone() for w in weights]
    before = _mean_error(module, inputs, targets)
    if before == 0.0:
        return before, before
    saved_flags = {p: p.requires_grad for p in module.parameters()}
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    for weight in weights:
        weight.requires_grad_(True)
    optimiser = torch.optim.Adam(weights, lr=settings.learning_rate)
    first_loss = None
    try:
        for _ in range(settings.steps):
            index = int(torch.randint(len(inputs), (1,), generator=generator))
            loss = F.mse_loss(module(inputs[index]), targets[index])
            optimiser.zero_grad()
            loss.backward()
            with torch.no_grad():
                for weight, mask in zip(weights, masks):
                    weight.grad.mul_(mask)
            optimiser.step()
            with torch.no_grad():
                for weight, mask in zip(weights, masks):
                    weight.mul_(mask)
            value = float(loss.detach())
            first_loss = value if first_loss is None else first_loss
            if value < settings.early_stop * first_loss:
                break
    finally:
        for parameter, flag in saved_flags.items():
            parameter.requires_grad_(flag)
            parameter.grad = None
    after = _mean_error(module, inputs, targets)
    if not after < before:
        with torch.no_grad():
            for weight, original in zip(weights, originals):
                weight.copy_(original)
        after = before
    return before, after


def reconstruct(
    dense_model: nn.Module,
    sparse_model: nn.Module,
    dense_layers: list[PrunableLayer],
    sparse_layers: list[PrunableLayer],
    calibration: torch.Tensor,
    settings: ReconstructionSettings,
) -> ReconstructionReport:
    """Reconstruct the pruned model `sparse_model` block by block against `dense_model`.

    `dense_layers` and `sparse_layers` are the same target layers in the two models.
    """
    if settings.granularity not in ("layer", "block"):
        raise ValueError(f"unknown reconstruction granularity {settings.granularity!r}")
    dense_model.eval()
    sparse_model.eval()
    units, left_out = find_units(dense_model, dense_layers, calibration[:2])
    if left_out:
        log.warning("not reconstructed (called more than once or with several inputs): %s", ", ".join(left_out))
    sparse_modules = dict(sparse_model.named_modules())
    dense_modules = dict(dense_model.named_modules())
    pruned = {l.name for l in sparse_layers if not bool((l.module.weight != 0).all())}
    report = ReconstructionReport(left_out=left_out)
    generator = torch.Generator().manual_seed(0)
    use_sparse = settings.input == "sparse"
    step = settings.batch_size

    with MemoryBudget(settings.memory_budget_bytes) as budget:
        dense_in: ActivationStore | None = None
        sparse_in: ActivationStore | None = None
        for position, unit in enumerate(units):
            if not any(layer.name in pruned for layer in unit.layers):
                if dense_in is not None:
                    dense_in.clear()
                if sparse_in is not None:
                    sparse_in.clear()
                dense_in = sparse_in = None
                continue
            sparse_unit = sparse_modules[unit.name]
            if dense_in is None or not unit.chained:
                if dense_in is not None:
                    dense_in.clear()
                dense_in = _capture_inputs(dense_model, unit.module, calibration, step, budget)
                if use_sparse:
                    if sparse_in is not None:
                        sparse_in.clear()
                    sparse_in = _capture_inputs(sparse_model, sparse_unit, calibration, step, budget)
            source = sparse_in if use_sparse else dense_in
            dense_out = _run(unit.module, dense_in, budget)

            if settings.granularity == "block":
                fitted = [sparse_modules[l.name] for l in unit.layers if l.name in pruned]
                report.errors[unit.name] = fit_masked(sparse_unit, fitted, source, dense_out, settings, generator)
            else:
                for layer in unit.layers:
                    if layer.name not in pruned:
                        continue
                    dense_layer, sparse_layer = dense_modules[layer.name], sparse_modules[layer.name]
                    layer_in = _capture_inputs(unit.module, dense_layer, dense_in, step, budget)
                    target = _run(dense_layer, layer_in, budget)
                    if use_sparse:
                        layer_source = _capture_inputs(sparse_unit, sparse_layer, source, step, budget)
                    else:
                        layer_source = layer_in
                    report.errors[layer.name] = fit_masked(
                        sparse_layer, [sparse_layer], layer_source, target, settings, generator
                    )
                    for store in {id(s): s for s in (layer_in, target, layer_source)}.values():
                        store.clear()

            next_chained = position + 1 < len(units) and units[position + 1].chained
            if use_sparse and next_chained:
                sparse_out = _run(sparse_unit, sparse_in, budget)
                sparse_in.clear()
                sparse_in = sparse_out
            dense_in.clear()
            dense_in = dense_out if next_chained else None
            if not next_chained:
                dense_out.clear()
            log.debug("reconstructed %s", unit.name)
        for store in (dense_in, sparse_in):
            if store is not None:
                store.clear()
        report.peak_memory_bytes = budget.peak_bytes
        report.spilled_bytes = budget.spilled_bytes
    return report
