"""Detectors: torchvision builders and timm backbones behind BatchedDetector, layer roles, weights files,
boxes in image pixels, the trained digits detector's mAP, and pruning of its backbone and neck.

Fast tests train a small detector for a few steps on a small digits set. The slow tests train the
named digits detector once per session, which took about 4 minutes on two CPU cores.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from bench_engine.detection import detectors
from bench_engine.detection.coco import load_coco
from bench_engine.detection.detectors import (
    DETECTOR_ARCHITECTURES,
    BatchedDetector,
    build_detector,
    detector_layer_roles,
    detector_output_layers,
    load_detector,
    min_input_size,
    predict_boxes,
)
from bench_engine.detection.digits import EVAL_ANNOTATIONS, TRAIN_ANNOTATIONS, build_digits_detection
from bench_engine.detection.evaluate import evaluate_boxes, fidelity_boxes
from bench_engine.detection.splits import DetectionSplits, letterbox_scale, load_detection_data
from bench_engine.errors import DataError, InvalidConfigError, UnknownModelError, WeightsError
from bench_engine.pruning import LayerPolicy, PruneConfig, find_prunable_layers, prune_model
from bench_engine.pruning.layers import conv_linear_layers

SMALL_SIZE = 128
TIMM_FCOS = ("fcos:efficientnet_lite0", "fcos:resnet18")  # FCOS on timm backbones
# Faster R-CNN, RetinaNet and SSDlite on two timm backbones each, three backbones in all.
TIMM_DETECTORS = (
    "fasterrcnn:efficientnet_lite0", "fasterrcnn:resnet18",
    "retinanet:resnet18", "retinanet:mobilenetv3_large_100",
    "ssdlite:efficientnet_lite0", "ssdlite:mobilenetv3_large_100",
)
# The named detector reached mAP@[.5:.95] 0.765 (mAP@.5 0.947) on eval.json after 210 s of
# training on a 2-core CPU. A 50 % magnitude prune of its backbone and neck gave 0.518. The
# margins allow for other CPUs, whose floating-point sums may differ.
DIGITS_MIN_MAP = 0.70
PRUNED_MIN_MAP = 0.40


def small_digits(folder: Path, n_images: int = 100) -> DetectionSplits:
    """Build a small digits set under `folder` and return its train.json and eval.json splits."""
    root = build_digits_detection(folder, n_images=n_images, seed=1)
    train = load_coco(root / TRAIN_ANNOTATIONS)
    evaluation = load_coco(root / EVAL_ANNOTATIONS)
    return DetectionSplits("small-digits", True, train, evaluation, dict(evaluation.categories), SMALL_SIZE)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> DetectionSplits:
    return small_digits(tmp_path_factory.mktemp("small-digits") / "digits")


@pytest.fixture(scope="session")
def briefly_trained(small_data) -> BatchedDetector:
    """The digits detector after 30 training steps on 80 images: boxes of digit size, mAP near 0."""
    spec = dataclasses.replace(detectors.DIGITS_SPEC, epochs=3, batch_size=8)
    model, _ = detectors.train_digits_detector(spec, small_data)
    return model


@pytest.fixture(scope="session")
def digits_bundle(digits_detector_dir):
    """The named digits detector, trained once per session in its own data folder."""
    folder = digits_detector_dir
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PTSA_DATA_DIR", str(folder))
        bundle = detectors.digits_detector()
        data = load_detection_data("digits", bundle.preprocess.input_size)
    return bundle, data


# -- building ----------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", DETECTOR_ARCHITECTURES)
def test_detector_runs_on_batch(architecture):
    torch.manual_seed(0)
    size = max(SMALL_SIZE, min_input_size(architecture))
    model = build_detector(architecture, num_classes=3, input_size=size)
    with torch.inference_mode():
        outputs = model(torch.rand(2, 3, size, size))
    assert isinstance(outputs, list)
    assert len(outputs) == 2
    for output in outputs:
        assert set(output) == {"boxes", "scores", "labels"}
        assert output["boxes"].shape[1:] == (4,)
        if len(output["labels"]):
            assert int(output["labels"].min()) >= model.first_label
            assert int(output["labels"].max()) < model.first_label + 3


@pytest.mark.parametrize("architecture", [*DETECTOR_ARCHITECTURES, *TIMM_FCOS, *TIMM_DETECTORS])
def test_layer_roles_cover_every_layer(architecture):
    model = build_detector(architecture, num_classes=3, input_size=max(SMALL_SIZE, min_input_size(architecture)))
    roles = detector_layer_roles(model)
    names = [name for name, _ in conv_linear_layers(model)]
    assert sorted(roles) == sorted(names)
    assert set(roles.values()) == {"backbone", "neck", "head"}
    outputs = detector_output_layers(model)
    assert outputs
    assert all(roles[name] == "head" for name in outputs)
    assert model.pretrained_cfg["classifier"] == outputs


def test_ssd_output_layers_are_last_convolutions():
    model = build_detector("torchvision:ssdlite320_mobilenet_v3_large", num_classes=3, input_size=SMALL_SIZE)
    outputs = detector_output_layers(model)
    # SSDlite predicts from 6 feature maps, each with a class and a box predictor.
    assert len(outputs) == 12
    assert "detector.head.classification_head.module_list.0.1" in outputs


def test_background_class_convention():
    faster = build_detector("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", 4, SMALL_SIZE)
    fcos = build_detector("torchvision:fcos_resnet50_fpn", 4, SMALL_SIZE)
    assert faster.detector.roi_heads.box_predictor.cls_score.out_features == 5
    assert faster.first_label == 1
    assert fcos.detector.head.classification_head.num_classes == 4
    assert fcos.first_label == 0


def test_input_size_below_minimum():
    with pytest.raises(InvalidConfigError) as caught:
        build_detector("torchvision:ssd300_vgg16", 3, 128)
    assert "--input-size 268 or more" in str(caught.value)


def test_unknown_architecture_suggests_match():
    with pytest.raises(UnknownModelError) as caught:
        build_detector("torchvision:fcos_resnet50", 3, SMALL_SIZE)
    assert "torchvision:fcos_resnet50_fpn" in str(caught.value)


def test_unknown_architecture_lists_choices():
    with pytest.raises(UnknownModelError) as caught:
        build_detector("yolo", 3, SMALL_SIZE)
    assert "'yolo'" in str(caught.value)
    assert "torchvision:ssdlite320_mobilenet_v3_large" in str(caught.value)


# -- weights files -----------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["fcos_mobilenet_v2", "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"])
def test_load_detector_round_trip(tmp_path, architecture):
    torch.manual_seed(1)
    model = build_detector(architecture, num_classes=3, input_size=SMALL_SIZE)
    path = tmp_path / "detector.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))

    bundle = load_detector(architecture, path, None, SMALL_SIZE)
    x = torch.rand(2, 3, SMALL_SIZE, SMALL_SIZE)
    with torch.inference_mode():
        expected = model(x)
        got = bundle.model(x)
    assert bundle.num_classes == 3
    assert bundle.preprocess.mean == (0.0, 0.0, 0.0)
    assert bundle.preprocess.std == (1.0, 1.0, 1.0)
    assert bundle.model_key.startswith(f"{architecture}@detector-")
    for before, after in zip(expected, got):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(before[key], after[key])


def test_load_detector_bare_state_dict(tmp_path):
    """A state dict saved from the torchvision detector itself, without the wrapper's prefix, loads too."""
    model = build_detector("fcos_mobilenet_v2", num_classes=2, input_size=SMALL_SIZE)
    path = tmp_path / "bare.pth"
    torch.save(model.detector.state_dict(), path)
    bundle = load_detector("fcos_mobilenet_v2", path, None, SMALL_SIZE)
    assert bundle.num_classes == 2


def test_load_detector_wrong_architecture(tmp_path):
    model = build_detector("fcos_mobilenet_v2", num_classes=3, input_size=SMALL_SIZE)
    path = tmp_path / "fcos.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    with pytest.raises(WeightsError):
        load_detector("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", path, 3, SMALL_SIZE)


# -- data --------------------------------------------------------------------------------------


def test_calibration_batch_shape(small_data):
    batch = small_data.calibration(4, seed=0)
    assert batch.shape == (4, 3, SMALL_SIZE, SMALL_SIZE)
    assert float(batch.min()) >= 0.0
    assert float(batch.max()) <= 1.0
    assert torch.equal(batch, small_data.calibration(4, seed=0))


@pytest.mark.parametrize("size", [0, 10_000])
def test_calibration_size_invalid(small_data, size):
    with pytest.raises(DataError) as caught:
        small_data.calibration(size, seed=0)
    assert str(size) in str(caught.value)


def test_calibration_too_large_names_fix(small_data):
    with pytest.raises(DataError) as caught:
        small_data.calibration(len(small_data.train) + 1, seed=0)
    assert f"--calibration-size {len(small_data.train)} or less" in str(caught.value)


def test_unknown_spec_names_choices():
    with pytest.raises(DataError) as caught:
        load_detection_data("no-such-dataset", SMALL_SIZE)
    assert "'no-such-dataset'" in str(caught.value)
    assert "digits, photos" in str(caught.value)


def test_evaluation_images_batches(small_data):
    batches = list(small_data.evaluation_images(5))
    ids = [image_id for batch_ids, _ in batches for image_id in batch_ids]
    assert ids == small_data.evaluation.image_ids
    assert all(batch.shape[1:] == (3, SMALL_SIZE, SMALL_SIZE) for _, batch in batches)


def test_letterbox_keeps_aspect_ratio(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index, size in enumerate([(200, 100), (60, 90), (64, 64)]):
        Image.new("RGB", size, (255, 255, 255)).save(folder / f"{index}.png")
    data = load_detection_data(str(folder), 64, seed=0)
    assert not data.labelled
    assert len(data.train) + len(data.evaluation) == 3
    image = next(image for image in data.train.images + data.evaluation.images if image.width == 200)
    assert data.scale(image) == (0.32, 0.32)
    tensor = data.image_tensor(image)
    # 200x100 scales to 64x32: white on top, black padding below.
    assert float(tensor[:, :32].min()) == 1.0
    assert float(tensor[:, 32:].max()) == 0.0


def test_letterbox_scale_rounds_each_side():
    assert letterbox_scale(128, 128, 128) == (1.0, 1.0)
    assert letterbox_scale(300, 200, 64) == (64 / 300, 43 / 200)


def test_coco_file_split(tmp_path, small_data):
    data = load_detection_data(str(small_data.evaluation.source), SMALL_SIZE, seed=3)
    assert data.labelled
    assert len(data.evaluation) == round(len(small_data.evaluation) * 0.2)
    assert not set(data.train.image_ids) & set(data.evaluation.image_ids)
    assert data.categories == small_data.categories


def test_photos_split_in_halves():
    data = load_detection_data("photos", 96, seed=0)
    assert not data.labelled
    assert len(data.train) - len(data.evaluation) in (0, 1)
    assert not {image.path for image in data.train.images} & {image.path for image in data.evaluation.images}


def test_check_readable_rejects_broken_image(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (32, 32)).save(folder / f"{index}.png")
    data = load_detection_data(str(folder), 32, seed=0)
    broken = data.evaluation.images[0].path
    broken.write_bytes(b"not an image")
    with pytest.raises(DataError) as caught:
        data.check_readable(1, seed=0)
    assert str(broken) in str(caught.value)


# -- predictions -------------------------------------------------------------------------------


def test_predict_boxes_inside_images(briefly_trained, small_data):
    detections = predict_boxes(briefly_trained, small_data)
    assert detections
    for detection in detections:
        image = small_data.evaluation.image(detection["image_id"])
        x, y, width, height = detection["bbox"]
        assert detection["category_id"] in small_data.categories
        assert 0 <= x <= x + width <= image.width
        assert 0 <= y <= y + height <= image.height
        assert 0.05 <= detection["score"] <= 1.0
    metrics = evaluate_boxes(small_data.evaluation, detections)
    assert 0.0 <= metrics["map"] <= 1.0


def test_predict_boxes_restores_thresholds(briefly_trained, small_data):
    before = briefly_trained.detector.score_thresh
    predict_boxes(briefly_trained, small_data, score_threshold=0.3, max_detections=5)
    assert briefly_trained.detector.score_thresh == before


def test_predict_boxes_maps_to_original_pixels(tmp_path, briefly_trained, small_data):
    """The same digits canvas at twice the size gives the same boxes, doubled."""
    source = small_data.evaluation.images[0]
    document = json.loads(Path(small_data.evaluation.source).read_text())
    (tmp_path / "images").mkdir()
    for image in document["images"]:
        big = Image.open(small_data.evaluation.image(image["id"]).path).resize((256, 256), Image.Resampling.BILINEAR)
        big.save(tmp_path / "images" / image["file_name"])
        image["width"] = image["height"] = 256
    for annotation in document["annotations"]:
        annotation["bbox"] = [value * 2 for value in annotation["bbox"]]
    (tmp_path / "eval.json").write_text(json.dumps(document))
    big_eval = load_coco(tmp_path / "eval.json")
    big_data = DetectionSplits("big", True, big_eval, big_eval, dict(big_eval.categories), SMALL_SIZE)

    small_boxes = [d["bbox"] for d in predict_boxes(briefly_trained, small_data) if d["image_id"] == source.id]
    big_boxes = [d["bbox"] for d in predict_boxes(briefly_trained, big_data) if d["image_id"] == source.id]
    assert small_boxes
    assert big_boxes
    # Resizing the enlarged canvas back to 128 pixels gives nearly the same input, so each of the
    # highest-scoring boxes has a counterpart of twice its coordinates.
    for small in small_boxes[:3]:
        distance = min(max(abs(2 * a - b) for a, b in zip(small, big)) for big in big_boxes)
        assert distance < 4.0


def test_predict_boxes_rejects_bare_detector(briefly_trained, small_data):
    with pytest.raises(InvalidConfigError) as caught:
        predict_boxes(briefly_trained.detector, small_data)
    assert "BatchedDetector" in str(caught.value)


def test_fidelity_of_detector_to_itself(briefly_trained, small_data):
    detections = predict_boxes(briefly_trained, small_data)
    threshold = max(d["score"] for d in detections) / 2
    metrics = fidelity_boxes(detections, detections, small_data.evaluation, score_threshold=threshold)
    assert metrics["map"] == pytest.approx(1.0)


# -- pruning -----------------------------------------------------------------------------------


def backbone_neck_policy(model: nn.Module) -> LayerPolicy:
    heads = tuple(name for name, role in detector_layer_roles(model).items() if role == "head")
    return LayerPolicy(never_prune=heads)


def prune_half(model: BatchedDetector, calibration: torch.Tensor) -> tuple[BatchedDetector, list[str]]:
    pruned = copy.deepcopy(model)
    policy = backbone_neck_policy(pruned)
    layers, _ = find_prunable_layers(pruned, policy, calibration[:1])
    prune_model(layers, PruneConfig(criterion="magnitude", sparsity=0.5, policy=policy))
    return pruned, [layer.name for layer in layers]


def test_prune_backbone_and_neck_only(briefly_trained, small_data):
    pruned, targeted = prune_half(briefly_trained, small_data.calibration(4, seed=0))
    roles = detector_layer_roles(pruned)
    modules = dict(pruned.named_modules())
    assert targeted
    assert {roles[name] for name in targeted} == {"backbone", "neck"}
    zeros = sum(int((modules[name].weight == 0).sum()) for name in targeted)
    total = sum(modules[name].weight.numel() for name in targeted)
    assert zeros / total == pytest.approx(0.5, abs=0.01)
    for name in detector_output_layers(pruned):
        assert int((modules[name].weight == 0).sum()) == 0
    assert isinstance(predict_boxes(pruned, small_data), list)


# -- the named digits detector -----------------------------------------------------------------


@pytest.mark.slow
def test_digits_detector_map(digits_bundle):
    bundle, data = digits_bundle
    metrics = evaluate_boxes(data.evaluation, predict_boxes(bundle.model, data))
    assert bundle.model_key == "digits/fcos_mobilenet_v2"
    assert bundle.num_classes == 10
    assert metrics["map"] >= DIGITS_MIN_MAP
    assert metrics["map"] == pytest.approx(bundle.extra["eval_metrics"]["map"], abs=1e-6)


@pytest.mark.slow
def test_digits_detector_pruned_map(digits_bundle):
    bundle, data = digits_bundle
    dense = evaluate_boxes(data.evaluation, predict_boxes(bundle.model, data))
    pruned, _ = prune_half(bundle.model, data.calibration(8, seed=0))
    sparse = evaluate_boxes(data.evaluation, predict_boxes(pruned, data))
    assert sparse["map"] <= dense["map"] + 0.01
    assert sparse["map"] >= PRUNED_MIN_MAP
    assert sparse["images"] == dense["images"]


# -- FCOS on timm backbones ---------------------------------------------------------------------


@pytest.mark.parametrize("architecture", TIMM_FCOS)
def test_timm_fcos_runs_and_round_trips(architecture, tmp_path):
    torch.manual_seed(0)
    model = build_detector(architecture, num_classes=3, input_size=SMALL_SIZE).eval()
    batch = torch.rand(2, 3, SMALL_SIZE, SMALL_SIZE)
    with torch.inference_mode():
        outputs = model(batch)
    assert len(outputs) == 2
    path = tmp_path / "fcos.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    loaded = load_detector(architecture, path, None, SMALL_SIZE)
    assert loaded.num_classes == 3
    with torch.inference_mode():
        again = loaded.model(batch)
    assert torch.equal(outputs[0]["boxes"], again[0]["boxes"])


def test_timm_fcos_starts_from_real_lite0_weights():
    from bench_engine.models import load_efficientnet_lite0

    detector = detectors._pretrained_detector("fcos:efficientnet_lite0", 10, SMALL_SIZE)
    stem = detector.backbone.body.conv_stem.weight
    assert torch.equal(stem, load_efficientnet_lite0().model.conv_stem.weight)


def test_timm_fcos_rejects_backbones_without_strides():
    with pytest.raises(InvalidConfigError, match="no stride-8 and stride-16 features"):
        build_detector("fcos:vit_tiny_patch16_224", num_classes=3, input_size=SMALL_SIZE)
    with pytest.raises(UnknownModelError, match="Did you mean fcos:resnet18"):
        build_detector("fcos:resnet19", num_classes=3, input_size=SMALL_SIZE)


# -- Faster R-CNN, RetinaNet and SSDlite on timm backbones --------------------------------------


@pytest.mark.parametrize("size", [SMALL_SIZE, 320])
@pytest.mark.parametrize("architecture", TIMM_DETECTORS)
def test_timm_detector_runs_on_batch(architecture, size):
    torch.manual_seed(0)
    model = build_detector(architecture, num_classes=3, input_size=size)
    # With random weights RetinaNet scores every box near its 0.01 prior, under the default
    # threshold, so every box is kept here and the shapes are checked on real boxes.
    detectors._set_postprocess(model.detector, score_threshold=0.0, max_detections=10)
    with torch.inference_mode():
        outputs = model(torch.rand(2, 3, size, size))
    assert len(outputs) == 2
    for output in outputs:
        count = len(output["boxes"])
        assert set(output) == {"boxes", "scores", "labels"}
        assert 1 <= count <= 10
        assert output["boxes"].shape == (count, 4)
        assert output["scores"].shape == (count,)
        assert output["labels"].shape == (count,)
        assert int(output["labels"].min()) >= model.first_label
        assert int(output["labels"].max()) < model.first_label + 3
        assert float(output["boxes"].min()) >= 0.0
        assert float(output["boxes"].max()) <= size


@pytest.mark.parametrize("architecture", ["fasterrcnn:resnet18", "retinanet:efficientnet_lite0",
                                          "ssdlite:resnet18"])
def test_timm_detector_runs_at_minimum_size(architecture):
    size = min_input_size(architecture)
    model = build_detector(architecture, num_classes=2, input_size=size)
    with torch.inference_mode():
        outputs = model(torch.rand(2, 3, size, size))
    assert size == 32
    assert len(outputs) == 2


@pytest.mark.parametrize(("architecture", "expected"), [
    ("fasterrcnn:efficientnet_lite0", ["detector.rpn.head.cls_logits", "detector.rpn.head.bbox_pred",
                                       "detector.roi_heads.box_predictor.cls_score",
                                       "detector.roi_heads.box_predictor.bbox_pred"]),
    ("retinanet:resnet18", ["detector.head.classification_head.cls_logits",
                            "detector.head.regression_head.bbox_reg"]),
])
def test_timm_detector_output_layers(architecture, expected):
    model = build_detector(architecture, num_classes=3, input_size=SMALL_SIZE)
    assert detector_output_layers(model) == expected


def test_timm_ssdlite_output_layers_per_map():
    model = build_detector("ssdlite:mobilenetv3_large_100", num_classes=3, input_size=SMALL_SIZE)
    outputs = detector_output_layers(model)
    # The stride-16 and stride-32 backbone maps and 4 extra blocks, each with a class and a box predictor.
    assert len(outputs) == 12
    assert "detector.head.classification_head.module_list.5.1" in outputs
    assert "detector.head.regression_head.module_list.0.1" in outputs


def test_timm_detector_roles_by_part():
    roles = detector_layer_roles(build_detector("fasterrcnn:resnet18", num_classes=3, input_size=SMALL_SIZE))
    assert roles["detector.backbone.body.conv1"] == "backbone"
    assert roles["detector.backbone.fpn.inner_blocks.0.0"] == "neck"
    assert roles["detector.rpn.head.conv.0.0"] == "head"
    assert roles["detector.roi_heads.box_head.fc6"] == "head"
    ssd_roles = detector_layer_roles(build_detector("ssdlite:resnet18", num_classes=3, input_size=SMALL_SIZE))
    assert ssd_roles["detector.backbone.extra.0.1.0"] == "neck"
    assert ssd_roles["detector.head.classification_head.module_list.0.0.0"] == "head"


@pytest.mark.parametrize(("architecture", "family"), [
    ("fasterrcnn:efficientnet_lite0", "faster_rcnn+efficientnet"),
    ("fasterrcnn:resnet18", "faster_rcnn+resnet"),
    ("retinanet:mobilenetv3_large_100", "retinanet+mobilenetv3"),
    ("ssdlite:efficientnet_lite0", "ssd+efficientnet"),
    ("fcos:resnet18", "fcos+resnet"),
])
def test_timm_detector_family(architecture, family):
    assert detectors.detector_family(architecture) == family


def test_timm_detector_family_on_model():
    model = build_detector("ssdlite:mobilenetv3_large_100", num_classes=2, input_size=SMALL_SIZE)
    assert model.family == "ssd+mobilenetv3"


def test_timm_detector_background_class():
    faster = build_detector("fasterrcnn:resnet18", 4, SMALL_SIZE)
    retina = build_detector("retinanet:resnet18", 4, SMALL_SIZE)
    ssd = build_detector("ssdlite:resnet18", 4, SMALL_SIZE)
    assert faster.first_label == 1
    assert faster.detector.roi_heads.box_predictor.cls_score.out_features == 5
    assert retina.first_label == 0
    assert retina.detector.head.classification_head.num_classes == 4
    assert ssd.first_label == 1
    assert ssd.detector.head.classification_head.num_columns == 5


def test_timm_retinanet_anchors_per_location():
    model = build_detector("retinanet:resnet18", 3, SMALL_SIZE)
    anchors = model.detector.anchor_generator.num_anchors_per_location()
    # P3 to P7, with 3 sizes and 3 aspect ratios at each location.
    assert anchors == [detectors.RETINANET_ANCHORS] * 5
    assert detectors.RETINANET_ANCHORS == 9
    assert model.detector.head.classification_head.num_anchors == 9


def test_timm_anchors_scale_with_input_size():
    small = build_detector("fasterrcnn:resnet18", 3, SMALL_SIZE).detector.rpn.anchor_generator.sizes
    large = build_detector("fasterrcnn:resnet18", 3, 320).detector.rpn.anchor_generator.sizes
    assert len(small) == 4  # FPN levels at strides 8, 16, 32 and the max-pooled stride 64
    assert small[0] == (10.2,)  # 64 / 800 of 128 pixels
    assert large[0] == (25.6,)
    assert large[-1] == (204.8,)


@pytest.mark.parametrize("architecture", TIMM_DETECTORS)
def test_timm_detector_round_trip(architecture, tmp_path):
    torch.manual_seed(1)
    model = build_detector(architecture, num_classes=3, input_size=SMALL_SIZE)
    detectors._set_postprocess(model.detector, score_threshold=0.0, max_detections=10)
    path = tmp_path / "detector.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))

    bundle = load_detector(architecture, path, None, SMALL_SIZE)
    detectors._set_postprocess(bundle.model.detector, score_threshold=0.0, max_detections=10)
    batch = torch.rand(2, 3, SMALL_SIZE, SMALL_SIZE)
    with torch.inference_mode():
        expected = model(batch)
        got = bundle.model(batch)
    assert bundle.num_classes == 3
    assert bundle.model.family == model.family
    for before, after in zip(expected, got):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(before[key], after[key])


@pytest.mark.parametrize("architecture", ["fasterrcnn:resnet18", "retinanet:resnet18", "ssdlite:resnet18"])
def test_timm_detector_classes_from_bare_state_dict(architecture, tmp_path):
    model = build_detector(architecture, num_classes=5, input_size=SMALL_SIZE)
    path = tmp_path / "bare.pth"
    torch.save(model.detector.state_dict(), path)
    assert load_detector(architecture, path, None, SMALL_SIZE).num_classes == 5


@pytest.mark.parametrize(("architecture", "strides"), [
    ("fasterrcnn:vit_small_patch16_224", "8, 16, 32"),
    ("retinanet:vit_small_patch16_224", "8, 16, 32"),
    ("ssdlite:vit_small_patch16_224", "16, 32"),
])
def test_timm_detector_rejects_backbone_without_strides(architecture, strides):
    with pytest.raises(InvalidConfigError) as caught:
        build_detector(architecture, num_classes=3, input_size=SMALL_SIZE)
    assert f"needs backbone features at strides {strides}" in str(caught.value)
    assert "vit_small_patch16_224 has features at strides 16;" in str(caught.value)
    assert "efficientnet_lite0 or resnet18" in str(caught.value)


@pytest.mark.parametrize(("architecture", "suggestion"), [
    ("fasterrcnn:resnet19", "Did you mean fasterrcnn:resnet18"),
    ("retinanet:efficentnet_lite0", "Did you mean retinanet:efficientnet_lite0"),
    ("ssdlite:mobilenetv3_large_10", "Did you mean ssdlite:mobilenetv3_large_100"),
    ("faster_rcnn:resnet18", "Did you mean fasterrcnn:resnet18"),
    ("retinannet:resnet18", "Did you mean retinanet:resnet18"),
])
def test_timm_detector_misspelt_name_suggests_match(architecture, suggestion):
    with pytest.raises(UnknownModelError) as caught:
        build_detector(architecture, num_classes=3, input_size=SMALL_SIZE)
    assert f"{architecture!r}" in str(caught.value)
    assert suggestion in str(caught.value)


def test_unknown_architecture_lists_timm_forms():
    with pytest.raises(UnknownModelError) as caught:
        detectors.check_architecture("yolo")
    for kind in ("fcos", "fasterrcnn", "retinanet", "ssdlite"):
        assert f"{kind}:<timm architecture>" in str(caught.value)


def test_timm_detector_names_recognised():
    for architecture in TIMM_DETECTORS:
        assert detectors.is_detector_architecture(architecture)
        detectors.check_architecture(architecture)
    assert not detectors.is_detector_architecture("resnet18")
    assert not detectors.is_detector_architecture("yolo:resnet18")
    with pytest.raises(UnknownModelError):
        detectors.check_architecture("ssdlite:resnet19")
