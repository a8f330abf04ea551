"""Layer selection for pruning, and the matrix view of weights that every criterion uses.

Every Conv2d and Linear weight is viewed as a batch of matrices of shape (G, R, K): G groups,
R output channels per group and K inputs per output. For a convolution, K is ordered as
(kernel row, kernel column, input channel), so N:M groups of consecutive K entries run along
the input channels at one kernel position, the layout sparse tensor cores expect.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

# timm pads some convolutions at run time ('SAME' padding as in TensorFlow).
from timm.layers import Conv2dSame
from timm.layers.padding import pad_same


@dataclass(frozen=True)
class LayerPolicy:
    """Policy for the Conv2d and Linear layers a pruning run may touch; stored with every result."""

    prune_first_layer: bool = False
    prune_classifier: bool = False
    prune_depthwise: bool = True
    # Shell-style patterns of layer names that stay dense, for example 'blocks.0.*'.
    never_prune: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["never_prune"] = list(self.never_prune)
        return data


@dataclass
class PrunableLayer:
    """A Conv2d or Linear layer with its role in the network."""

    name: str
    module: nn.Module
    kind: str  # 'linear', 'conv' or 'depthwise'
    groups: int
    numel: int

    @property
    def rows_per_group(self) -> int:
        return self.module.weight.shape[0] // self.groups

    @property
    def inputs_per_row(self) -> int:
        return self.numel // self.module.weight.shape[0]

    @property
    def in_channels_per_group(self) -> int:
        """Input channels seen by one output (in_features for Linear)."""
        return self.module.weight.shape[1]


def rebind_layers(layers: list[PrunableLayer], model: nn.Module) -> list[PrunableLayer]:
    """Return copies of `layers` that point at the same-named modules of `model` (a deep copy)."""
    modules = dict(model.named_modules())
    return [replace(layer, module=modules[layer.name]) for layer in layers]


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    return "depthwise" if is_depthwise(module) else "conv"


def conv_linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return every Conv2d and Linear layer of the model, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def execution_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Return Conv2d/Linear layer names in the order one forward pass on `example` calls them."""
    order: list[str] = []
    handles = []
    for name, module in conv_linear_layers(model):
        handles.append(module.register_forward_pre_hook(lambda _m, _a, n=name: order.append(n)))
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    seen: set[str] = set()
    return [n for n in order if not (n in seen or seen.add(n))]


def classifier_names(model: nn.Module) -> set[str]:
    """Return names of the classifier layers, from timm's model metadata when available."""
    names: set[str] = set()
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        for name, module in model.named_modules():
            if module is head:
                names.add(name)
                names.update(f"{name}.{sub}" if sub else name for sub, _ in module.named_modules())
    cfg = getattr(model, "pretrained_cfg", None) or {}
    declared = cfg.get("classifier")
    if declared:
        for name in (declared if isinstance(declared, (list, tuple)) else [declared]):
            names.add(name)
    return names


def find_prunable_layers(
    model: nn.Module, policy: LayerPolicy, example: torch.Tensor
) -> tuple[list[PrunableLayer], dict[str, str]]:
    """Choose the layers to prune. Returns (targets in execution order, {excluded name: reason})."""
    executed = execution_order(model, example)
    modules = dict(conv_linear_layers(model))
    heads = classifier_names(model)
    first = executed[0] if executed else None

    targets: list[PrunableLayer] = []
    excluded: dict[str, str] = {}
    for name in modules:
        if name not in executed:
            excluded[name] = "not executed in the forward pass"
    for name in executed:
        module = modules[name]
        if name == first and not policy.prune_first_layer:
            excluded[name] = "first layer (policy prune_first_layer=false)"
        elif name in heads and not policy.prune_classifier:
            excluded[name] = "classifier (policy prune_classifier=false)"
        elif is_depthwise(module) and not policy.prune_depthwise:
            excluded[name] = "depthwise convolution (policy prune_depthwise=false)"
        elif any(fnmatch.fnmatchcase(name, pattern) for pattern in policy.never_prune):
            excluded[name] = "matches the never-prune list"
        else:
            groups = module.groups if isinstance(module, nn.Conv2d) else 1
            targets.append(
                PrunableLayer(name, module, layer_kind(module), groups, module.weight.numel())
            )
    return targets, excluded


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """Return the weight as a (G, R, K) float32 tensor (a copy), K ordered (kh, kw, cin)."""
    weight = module.weight.detach().float()
    if isinstance(module, nn.Linear):
        return weight.unsqueeze(0).clone()
    groups = module.groups
    c_out, c_in_g, kh, kw = weight.shape
    grouped = weight.reshape(groups, c_out // groups, c_in_g, kh, kw)
    return grouped.permute(0, 1, 3, 4, 2).reshape(groups, c_out // groups, kh * kw * c_in_g).clone()


def matrix_to_weight(module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
    """Invert `weight_matrix`: return a tensor shaped and typed like `module.weight`."""
    weight = module.weight
    if isinstance(module, nn.Linear):
        return matrix.reshape(weight.shape).to(weight.dtype)
    groups = module.groups
    c_out, c_in_g, kh, kw = weight.shape
    grouped = matrix.reshape(groups, c_out // groups, kh, kw, c_in_g).permute(0, 1, 4, 2, 3)
    return grouped.reshape(weight.shape).to(weight.dtype).contiguous()


def input_matrix(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Return a layer's inputs as (G, K, N) columns matching `weight_matrix`'s K order.

    For a convolution, each column is one receptive-field patch after the layer's own padding
    (static, string 'same', non-zero padding modes and timm's dynamic 'SAME' padding), so
    `weight_matrix(m) @ input_matrix(m, x)` reproduces the layer's output without its bias.
    """
    x = x.detach().float()
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).t().unsqueeze(0)

    padding = module.padding
    if isinstance(module, Conv2dSame):
        x = pad_same(x, module.weight.shape[-2:], module.stride, module.dilation)
        padding = (0, 0)
    elif isinstance(padding, str) or module.padding_mode != "zeros":
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        padding = (0, 0)

    groups = module.groups
    c_in = x.shape[1]
    kh, kw = module.kernel_size
    patches = F.unfold(x, (kh, kw), dilation=module.dilation, padding=padding, stride=module.stride)
    batch, _, positions = patches.shape
    patches = patches.reshape(batch, groups, c_in // groups, kh * kw, positions)
    patches = patches.permute(1, 3, 2, 0, 4)  # (G, kh*kw, cin/G, B, L)
    return patches.reshape(groups, kh * kw * (c_in // groups), batch * positions)
