"""Model and data sources of a detection bench: the names `ptsa bench --task detection` accepts.

A detector is a named detector with weights PTS Advisor makes itself (`digits/...`, trained once
on the digits detection set and cached) or a detection architecture with a local weights file:
a torchvision builder written `torchvision:<builder>`, or a torchvision detector around a timm
backbone written `<kind>:<timm architecture>` (kinds fcos, fasterrcnn, retinanet, ssdlite). Data
is a built-in set (`digits`, `photos`), a COCO instances JSON, or a folder of unlabelled images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench_engine.task_names import DETECTION


def named_detectors() -> dict[str, Any]:
    """Return {name: loader} of the detectors PTS Advisor finds or makes weights for on its own."""
    from functools import partial

    from bench_engine.detection.detectors import NAMED_DIGITS_SPECS, digits_detector

    return {name: partial(digits_detector, name=name) for name in NAMED_DIGITS_SPECS}


def is_detector_name(name: str) -> bool:
    """True for a named detector or a detection architecture.

    The architectures are `torchvision:<builder>`, fcos_mobilenet_v2 and `<kind>:<timm architecture>`.
    """
    from bench_engine.detection.detectors import looks_like_detector

    return name in named_detectors() or looks_like_detector(name)


def load_detection_model(name: str, weights: str | Path | None, num_classes: int | None = None,
                         input_size: int | None = None) -> Any:
    """Load a detector as a ModelBundle whose `extra['task']` is 'detection'."""
    from bench_engine.detection.detectors import check_architecture, load_detector
    from bench_engine.errors import WeightsError

    named = named_detectors()
    if name in named and weights is None:
        bundle = named[name]()
    else:
        check_architecture(name)
        if weights is None:
            raise WeightsError(
                "model {name!r} needs weights: pass --weights with a local .safetensors or PyTorch "
                "state dict file (model hubs are not contacted).", name=name)
        bundle = load_detector(name, Path(weights), num_classes, input_size or DEFAULT_INPUT_SIZE)
    bundle.extra = {**bundle.extra, "task": DETECTION}
    return bundle


def load_detection_data(spec: str, input_size: int, seed: int = 0, unlabelled: bool = False) -> Any:
    """Load detection splits at the detector's input size; `unlabelled` scores fidelity only."""
    from bench_engine.detection.splits import load_detection_data as load

    data = load(spec, input_size, seed)
    if unlabelled and data.labelled:  # stored apart from the labelled results, as image folders are
        data.labelled = False
        data.name = f"{data.name} (unlabelled)"
    return data


DEFAULT_INPUT_SIZE = 320
