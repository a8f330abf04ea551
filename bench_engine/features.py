"""Architecture features of timm models, computed without weights, for the robustness regressor.

`featurize(architecture)` builds the model on PyTorch's meta device, so no weight is allocated
or initialised, and runs one forward pass on a meta input. Meta tensors carry shapes and no
data, so that pass costs milliseconds while it counts:

- MACs, with `torch.utils.flop_counter.FlopCounterMode` (convolutions, matrix products and
  attention);
- residual connections, counted as additions of two activations of the same shape
  (`x + f(x)`). Other such additions count too (EVA's rotary embeddings add two per block), so
  it is an upper bound. The input batch has 2 images, so a broadcast addition such as a
  position embedding (batch 1) does not count.

The rest is read from the modules: parameter counts, the Conv2d and Linear layers a PTS method
prunes (their share of weights by kind, kernel size and width), normalisation and activation
types, and attention. `weight_statistics(model)` adds statistics of real weights when they are
at hand. Every value is a float, so the features go straight into a regressor.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Iterable
from typing import Any

import timm
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from bench_engine.errors import InvalidConfigError
from bench_engine.models import TORCHVISION_PREFIX, build_torchvision_model, model_family
from bench_engine.pruning.layers import conv_linear_layers, is_depthwise
from bench_engine.task_names import CLASSIFICATION, DETECTION

log = logging.getLogger(__name__)

# Raised whenever a feature is added, removed or computed differently: stored features of an
# older version are recomputed. Version 2 counts linear-attention modules (EfficientViT's LiteMLA)
# in `attention_modules`.
FEATURE_VERSION = 2

ACTIVATION_KINDS = ("relu", "gelu", "silu", "hardswish", "other")
NORM_KINDS = ("batchnorm", "layernorm", "groupnorm", "other")

_ADD_OPS = (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)
_ATTENTION_OPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten.scaled_dot_product_attention.default,
    torch.ops.aten._scaled_dot_product_attention_math.default,
}


class _OpCounter(TorchDispatchMode):
    """Counts residual additions and attention calls during one forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.residual_adds = 0
        self.attention_calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _ADD_OPS and len(args) >= 2:
            left, right = args[0], args[1]
            if isinstance(left, torch.Tensor) and isinstance(right, torch.Tensor) and left.dim() >= 3 \
                    and left.shape == right.shape:
                self.residual_adds += 1
        elif func in _ATTENTION_OPS:
            self.attention_calls += 1
        return func(*args, **(kwargs or {}))


def similar_architectures(name: str) -> list[str]:
    """Return up to three timm architectures whose names resemble `name`."""
    import difflib

    return difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)


def close_matches(name: str) -> str:
    """Suggest timm architectures whose names resemble `name`, as an English phrase for a message."""
    matches = similar_architectures(name)
    if matches:
        return f"did you mean {', '.join(matches)}?"
    return "see the names with `python -c \"import timm; print(timm.list_models('resnet*'))\"`."


def _activation_kind(module: nn.Module) -> str | None:
    name = type(module).__name__.lower()
    if "gelu" in name:
        return "gelu"
    if "hardswish" in name or "hard_swish" in name:
        return "hardswish"
    if "silu" in name or name == "swish":
        return "silu"
    if "relu" in name:
        return "relu"
    if name in ("mish", "hardsigmoid", "tanh", "prelu", "elu", "quickgelu", "starrelu", "hardmish"):
        return "other"
    return None


def _norm_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if isinstance(module, nn.LayerNorm) or "layernorm" in type(module).__name__.lower():
        return "layernorm"
    if isinstance(module, nn.GroupNorm):
        return "groupnorm"
    if "norm" in type(module).__name__.lower() and not list(module.children()):
        return "other"
    return None


def _shares(counts: dict[str, float], kinds: Iterable[str], prefix: str) -> dict[str, float]:
    total = sum(counts.values())
    return {f"{prefix}_{kind}_share": (counts.get(kind, 0.0) / total if total else 0.0) for kind in kinds}


def structure_features(model: nn.Module) -> dict[str, float]:
    """Features read from the modules alone: works on the meta device."""
    layers = conv_linear_layers(model)
    weights = {name: float(m.weight.numel()) for name, m in layers}
    total = sum(weights.values()) or 1.0
    kinds = {"linear": 0.0, "dense_conv": 0.0, "depthwise_conv": 0.0, "grouped_conv": 0.0}
    kernels = {"1x1": 0.0, "3x3": 0.0, "large": 0.0}
    conv_total = 0.0
    max_kernel = 1
    widths = []
    for name, module in layers:
        count = weights[name]
        if isinstance(module, nn.Linear):
            kinds["linear"] += count
            widths.append(module.out_features)
            continue
        widths.append(module.out_channels)
        if is_depthwise(module):
            kinds["depthwise_conv"] += count
        elif module.groups > 1:
            kinds["grouped_conv"] += count
        else:
            kinds["dense_conv"] += count
        kernel = max(module.kernel_size)
        max_kernel = max(max_kernel, kernel)
        conv_total += count
        if kernel == 1:
            kernels["1x1"] += count
        elif kernel <= 3:
            kernels["3x3"] += count
        else:
            kernels["large"] += count

    activations: dict[str, float] = {}
    norms: dict[str, float] = {}
    attention_modules = 0
    for module in model.modules():
        if (kind := _activation_kind(module)) is not None:
            activations[kind] = activations.get(kind, 0.0) + 1
        if (kind := _norm_kind(module)) is not None:
            norms[kind] = norms.get(kind, 0.0) + 1
        name = type(module).__name__.lower()
        # Attention, WindowAttention, ClassAttn, LiteMLA (multi-scale linear attention), ...
        if "attention" in name or name.endswith(("attn", "mla")):
            attention_modules += 1

    params = float(sum(p.numel() for p in model.parameters()))
    features = {
        "params": params,
        "log10_params": math.log10(max(params, 1.0)),
        "prunable_layers": float(len(layers)),
        "prunable_param_share": sum(weights.values()) / max(params, 1.0),
        **{f"{kind}_share": value / total for kind, value in kinds.items()},
        **{f"kernel_{kind}_share": (value / conv_total if conv_total else 0.0) for kind, value in kernels.items()},
        "max_kernel": float(max_kernel),
        "width_min": float(min(widths)) if widths else 0.0,
        "width_median": float(statistics.median(widths)) if widths else 0.0,
        "width_max": float(max(widths)) if widths else 0.0,
        "attention_modules": float(attention_modules),
        **_shares(activations, ACTIVATION_KINDS, "act"),
        **_shares(norms, NORM_KINDS, "norm"),
        "norm_layers_per_prunable_layer": sum(norms.values()) / max(len(layers), 1),
    }
    return features


@torch.no_grad()
def forward_features(model: nn.Module, input_shape: tuple[int, int, int], device: str = "meta") -> dict[str, float]:
    """MACs per image, residual additions and attention calls from one forward pass of 2 images."""
    x = torch.zeros(2, *input_shape, device=device)  # black images off the meta device, so runs repeat
    flops = FlopCounterMode(display=False)
    ops = _OpCounter()
    with flops, ops:
        model(x)
    macs = flops.get_total_flops() / 2 / 2  # two images; a MAC is two FLOPs
    return {
        "gmacs": macs / 1e9,
        "log10_macs": math.log10(max(macs, 1.0)),
        "residual_adds": float(ops.residual_adds),
        "attention_calls": float(ops.attention_calls),
    }


def featurize(architecture: str, num_classes: int | None = None, in_chans: int | None = None,
              input_size: int | None = None) -> dict[str, Any]:
    """Return the features of a timm or 'torchvision:<architecture>' architecture, built on the meta device.

    A detector architecture (`torchvision:fasterrcnn_...`, `fcos:<timm architecture>`, ...) is
    built on the CPU instead; see `_featurize_detector`.

    Raises InvalidConfigError for an unknown timm architecture, or one that cannot be built or
    run on the meta device (a few timm models and torchvision's RegNet read tensor values while
    they are built), and UnknownModelError for an unknown torchvision architecture.
    """
    from bench_engine.detection.detectors import looks_like_detector

    if looks_like_detector(architecture):
        return _featurize_detector(architecture, num_classes, input_size)
    torchvision_name = architecture.startswith(TORCHVISION_PREFIX)
    if not torchvision_name and not timm.is_model(architecture):
        matches = similar_architectures(architecture)
        if matches:
            raise InvalidConfigError(
                "unknown timm architecture {name!r}; did you mean {matches}?",
                name=architecture,
                matches=", ".join(matches),
            )
        raise InvalidConfigError(
            "unknown timm architecture {name!r}; see the names with "
            "`python -c \"import timm; print(timm.list_models('resnet*'))\"`.",
            name=architecture,
        )
    kwargs: dict[str, Any] = {"pretrained": False}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if input_size is not None:
        kwargs["img_size"] = input_size
    try:
        with torch.device("meta"):
            if torchvision_name:
                model = build_torchvision_model(architecture, num_classes or 1000, in_chans, input_size).eval()
            else:
                try:
                    model = timm.create_model(architecture, **kwargs).eval()
                except TypeError:
                    if "img_size" not in kwargs:
                        raise
                    kwargs.pop("img_size")  # convolutional networks take any input size
                    model = timm.create_model(architecture, **kwargs).eval()
        # The FLOP counter tracks modules for backward too; without gradients it needs none.
        model.requires_grad_(False)
        cfg = model.pretrained_cfg or {}
        default = tuple(cfg.get("input_size", (3, 224, 224)))
        shape = (in_chans or default[0], input_size or default[1], input_size or default[2])
        features = {**structure_features(model), **forward_features(model, shape)}
    except (RuntimeError, NotImplementedError, ValueError, AssertionError, TypeError) as exc:
        raise _not_featurisable(architecture, exc) from None
    return _featurized(architecture, CLASSIFICATION, model, num_classes, shape, features)


def _not_featurisable(architecture: str, exc: Exception) -> InvalidConfigError:
    return InvalidConfigError(
        "architecture {name!r} cannot be featurised without weights: {error}: {reason}",
        name=architecture,
        error=type(exc).__name__,
        reason=str(exc).splitlines()[0][:200],
    )


def _featurized(architecture: str, task: str, model: nn.Module, num_classes: int | None,
                shape: tuple[int, int, int], features: dict[str, float]) -> dict[str, Any]:
    """Return `featurize`'s result for a built model and its computed features."""
    return {
        "architecture": architecture,
        "task": task,
        "family": model_family(model),
        "num_classes": int(getattr(model, "num_classes", num_classes or 0) or 0),
        "in_chans": shape[0],
        "input_size": shape[1],
        "timm_version": timm.__version__,
        "feature_version": FEATURE_VERSION,
        "features": {**features, "input_size": float(shape[1]),
                     "log10_num_classes": math.log10(max(getattr(model, "num_classes", 1) or 1, 1))},
    }


DETECTOR_INPUT_SIZE = 320  # as `ptsa bench` builds a detector without --input-size


def _featurize_detector(architecture: str, num_classes: int | None, input_size: int | None) -> dict[str, Any]:
    """Return the features of a detector architecture, built with random weights on the CPU.

    A detector's post-processing (score threshold, NMS) selects boxes by value, which the meta
    device cannot do, so the detector runs once on two black images with seeded random weights.
    The MACs include the post-processing's box heads for the boxes those weights propose, up to
    the detector's limits. MACs depend on the input size, so the size is part of the key.
    """
    from bench_engine.detection.detectors import build_detector, check_architecture

    check_architecture(architecture)  # UnknownModelError with close matches
    classes = num_classes or 1
    size = input_size or DETECTOR_INPUT_SIZE
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_detector(architecture, classes, size).eval()
        model.requires_grad_(False)
        features = {**structure_features(model), **forward_features(model, (3, size, size), device="cpu")}
    except (RuntimeError, NotImplementedError, ValueError, AssertionError, TypeError) as exc:
        raise _not_featurisable(architecture, exc) from None
    return _featurized(architecture, DETECTION, model, classes, (3, size, size), features)


@torch.no_grad()
def weight_statistics(model: nn.Module) -> dict[str, float]:
    """Statistics of real weights, the median over prunable layers of each.

    - magnitude spread: the standard deviation of |w| divided by its mean;
    - excess kurtosis of w (0 for a normal distribution; heavy tails give more);
    - outlier share: the share of weights farther than 3 standard deviations from the mean.
    """
    spreads, kurtoses, outliers = [], [], []
    for _, module in conv_linear_layers(model):
        w = module.weight.detach().float().flatten()
        if w.numel() < 8 or w.device.type == "meta":
            continue
        magnitude = w.abs()
        mean_abs = float(magnitude.mean())
        std = float(w.std())
        if mean_abs == 0 or std == 0:
            continue
        centred = w - w.mean()
        spreads.append(float(magnitude.std()) / mean_abs)
        kurtoses.append(float((centred**4).mean()) / std**4 - 3.0)
        outliers.append(float((centred.abs() > 3 * std).double().mean()))
    if not spreads:
        return {}
    return {
        "weight_magnitude_spread": statistics.median(spreads),
        "weight_kurtosis": statistics.median(kurtoses),
        "weight_outlier_share": statistics.median(outliers),
    }


def architecture_row(featurized: dict[str, Any]) -> dict[str, Any]:
    """Turn `featurize` output into a row of the `architectures` table."""
    import datetime as dt
    import json

    features = featurized["features"]
    return {
        "architecture": featurized["architecture"],
        "task": featurized.get("task", CLASSIFICATION),
        "num_classes": featurized["num_classes"],
        "in_chans": featurized["in_chans"],
        "input_size": featurized["input_size"],
        "timm_version": featurized["timm_version"],
        "feature_version": featurized["feature_version"],
        "family": featurized["family"],
        "params": int(features["params"]),
        "gmacs": features["gmacs"],
        "features_json": json.dumps(features, sort_keys=True),
        "computed_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
    }


def featurize_many(architectures: Iterable[str], progress: Any = None, **shape: Any) -> tuple[list[dict], dict[str, str]]:
    """Featurise several architectures; return (rows for the database, {architecture: why it failed})."""
    rows, failures = [], {}
    for architecture in architectures:
        try:
            rows.append(architecture_row(featurize(architecture, **shape)))
        except InvalidConfigError as exc:
            failures[architecture] = str(exc)
            log.info("%s", exc)
        if progress is not None:
            progress.update(1)
    return rows, failures
