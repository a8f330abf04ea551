"""Reconstruction units: the residual or transformer blocks of a model, found from one forward pass.

Block-wise reconstruction fits one block at a time. Both granularities of reconstruction walk
the model block by block, so each block's calibration inputs come from the previous block's
outputs, computed once per pass, instead of from a new run of the whole model.

A unit is a module called exactly once per forward pass with one tensor in and one tensor out.
The units are found by walking the module tree from the root:

- a child that is itself a Conv2d or Linear target layer is a unit of one layer;
- a child that merely chains its own children (each child's output is the next child's input,
  as in nn.Sequential or timm's stage modules) is walked into, unless it holds a bare Conv2d or
  Linear directly (a small block such as conv + norm) or is a chain of such small blocks (an
  inverted residual without its skip); then it is a unit itself;
- any other child holding target layers (a ResNet bottleneck, an inverted residual, a ViT
  block) is a unit, because its inner data flow is not a chain: it has a residual connection.

Units are listed in execution order. A unit is `chained` when its input is the very tensor the
previous unit returned, with the same values (no in-place operation in between), so its input can be computed from the previous unit alone; otherwise
(the stem before the first block, the pooling before a classifier) the inputs are captured by
running the model up to the unit and stopping there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench_engine.pruning.layers import PrunableLayer


@dataclass
class Unit:
    """A module reconstructed as a whole, with the target layers it contains in execution order."""

    name: str
    module: nn.Module
    layers: list[PrunableLayer]
    chained: bool  # its input is the previous unit's output tensor


@dataclass
class _Call:
    order: int
    count: int
    single_tensor: bool
    input: torch.Tensor | None
    output: torch.Tensor | None
    # Copies taken at call time: an in-place operation later (`x += shortcut`, ReLU(inplace=True))
    # changes the recorded tensors' values but not their identity.
    input_value: torch.Tensor | None = None
    output_value: torch.Tensor | None = None


def _keeps_values(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.Linear)) or any(True for _ in module.children())


def _trace_calls(model: nn.Module, example: torch.Tensor) -> dict[str, _Call]:
    """Run `example` through the model once and record every module's call, input and output."""
    calls: dict[str, _Call] = {}
    counter = [0]
    handles = []

    def pre_hook(name, keep):
        def hook(_module, args, kwargs):
            call = calls.get(name)
            single = len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)
            if call is None:
                calls[name] = _Call(counter[0], 1, single, args[0] if single else None, None)
                if single and keep:
                    calls[name].input_value = args[0].detach().clone()
                counter[0] += 1
            else:
                call.count += 1

        return hook

    def post_hook(name, keep):
        def hook(_module, _args, output):
            call = calls[name]
            if call.count == 1:
                if isinstance(output, torch.Tensor):
                    call.output = output
                    if keep:
                        call.output_value = output.detach().clone()
                else:
                    call.single_tensor = False

        return hook

    for name, module in model.named_modules():
        if name:
            keep = _keeps_values(module)
            handles.append(module.register_forward_pre_hook(pre_hook(name, keep), with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook(name, keep)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _is_chain(name: str, module: nn.Module, calls: dict[str, _Call]) -> bool:
    """True when the module's forward only passes a tensor through its children one after another."""
    own = calls.get(name)
    if own is None or own.count != 1 or not own.single_tensor or own.output is None:
        return False
    children = []
    for child_name, child in module.named_children():
        call = calls.get(f"{name}.{child_name}" if name else child_name)
        if call is None:
            continue  # not executed, for example an unused head
        if call.count != 1 or not call.single_tensor or call.output is None:
            return False
        children.append((call, child))
    if not children:
        return False
    children.sort(key=lambda pair: pair[0].order)
    current = own.input
    for call, _ in children:
        if call.input is not current:
            return False
        current = call.output
    if current is not own.output:
        return False
    # The same tensor passing through is not enough: `x += shortcut` keeps its identity. Run the
    # children one after another on the recorded input and compare with the recorded output.
    value = own.input_value.clone()
    with torch.no_grad():
        for _, child in children:
            value = child(value)
    return _same(value, own.output_value)


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def _holds_bare_layer(module: nn.Module) -> bool:
    return any(isinstance(child, (nn.Conv2d, nn.Linear)) for child in module.children())


def find_units(model: nn.Module, layers: list[PrunableLayer], example: torch.Tensor) -> tuple[list[Unit], list[str]]:
    """Group the target layers into block units; return (units in execution order, layers left out).

    Layers left out are called more than once per forward pass (shared weights) or sit inside a
    module whose input is not a single tensor. They cannot be reconstructed one unit at a time.
    """
    calls = _trace_calls(model, example)
    targets = {layer.name: layer for layer in layers}
    units: list[Unit] = []
    left_out: list[str] = []

    def holds_target(prefix: str) -> list[str]:
        return [n for n in targets if n == prefix or n.startswith(prefix + ".")]

    def callable_once(name: str) -> bool:
        call = calls.get(name)
        return call is not None and call.count == 1 and call.single_tensor and call.output is not None

    def _chain_of_small(name: str, module: nn.Module) -> bool:
        # A chain of two or more conv + norm pieces with no residual (an inverted residual
        # without its skip) is one block, not several one-layer units.
        names = [n for n, c in module.named_children() if holds_target(f"{name}.{n}")]
        return len(names) >= 2 and all(
            isinstance(getattr(module, n), (nn.Conv2d, nn.Linear))
            or (_holds_bare_layer(getattr(module, n)) and _is_chain(f"{name}.{n}", getattr(module, n), calls))
            for n in names
        )

    def walk(prefix: str, module: nn.Module) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            inside = holds_target(name)
            if not inside:
                continue
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                if callable_once(name):
                    units.append(Unit(name, child, [targets[name]], chained=False))
                else:
                    left_out.append(name)
                continue
            if _is_chain(name, child, calls) and not _holds_bare_layer(child) and not _chain_of_small(name, child):
                walk(name, child)
            elif callable_once(name):
                contained = sorted((targets[n] for n in inside), key=lambda l: calls[l.name].order)
                units.append(Unit(name, child, contained, chained=False))
            else:
                walk(name, child)

    walk("", model)
    units.sort(key=lambda u: calls[u.name].order)
    for previous, unit in zip(units, units[1:]):
        current, before = calls[unit.name], calls[previous.name]
        unit.chained = current.input is before.output and _same(current.input_value, before.output_value)
    return units, left_out
