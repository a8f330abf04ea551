"""Sensitivity and learned allocation on detectors: the outputs they compare, and a bench on the digits detector."""

from __future__ import annotations

import json

import pytest
import torch

from bench_engine.detection.detectors import build_detector
from bench_engine.detection.raw import REGION_GRID, REGION_SIDES, discrepancy, fixed_regions, raw_outputs
from bench_engine.pruning import LayerPolicy
from bench_engine.pruning.layers import find_prunable_layers
from bench_engine.pruning.learned import LearnedSettings, learned_allocation
from bench_engine.pruning.outputs import OutputComparison
from bench_engine.pruning.sensitivity import measure_sensitivity, sensitivity_allocation
from db import Store
from test_detection_bench import ptsa


def _detector(architecture: str, size: int = 64):
    torch.manual_seed(0)
    return build_detector(architecture, 3, size).eval()


def test_fixed_regions_cover_the_image():
    boxes = fixed_regions(64, 96, torch.device("cpu"))
    assert boxes.shape == (REGION_GRID**2 * len(REGION_SIDES), 4)
    assert float(boxes[:, 0].min()) >= 0
    assert float(boxes[:, 2].max()) <= 96
    assert float(boxes[:, 1].min()) >= 0
    assert float(boxes[:, 3].max()) <= 64
    assert bool(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all())


@pytest.mark.parametrize("architecture", [
    "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", "torchvision:ssdlite320_mobilenet_v3_large", "fcos:resnet18",
    "fasterrcnn:resnet18", "retinanet:efficientnet_lite0", "ssdlite:mobilenetv3_large_100"])
def test_raw_outputs_reach_every_layer(architecture):
    """Each output has the batch first, and every targeted layer is in the graph of the outputs."""
    model = _detector(architecture)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        reference = raw_outputs(model, x)
    assert all(t.shape[0] == 2 for t in reference)
    assert float(discrepancy(reference, reference)) == 0.0
    layers, _ = find_prunable_layers(model, LayerPolicy(), x[:1])
    model.zero_grad()
    sum((t.float() ** 2).sum() for t in raw_outputs(model, x)).backward()
    unreached = [layer.name for layer in layers if layer.module.weight.grad is None]
    assert unreached == []


def test_faster_rcnn_fixed_regions():
    model = _detector("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        outputs = raw_outputs(model, x)
    regions = REGION_GRID**2 * len(REGION_SIDES)
    # Class scores (3 classes + background) and box offsets (4 per class) for each fixed region.
    assert outputs[-2].shape == (2, regions * 4)
    assert outputs[-1].shape == (2, regions * 16)
    head = dict(model.named_modules())["detector.roi_heads.box_head.fc6"]
    with torch.no_grad():
        head.weight.mul_(0.5)
        assert float(discrepancy(raw_outputs(model, x), outputs)) > 0


def test_detector_allocations_meet_target():
    model = _detector("torchvision:ssdlite320_mobilenet_v3_large")
    calibration = torch.rand(4, 3, 64, 64)
    layers, _ = find_prunable_layers(model, LayerPolicy(), calibration[:1])
    grid = (0.0, 0.5, 0.9)
    table = measure_sensitivity(model, layers, calibration, grid=grid, batch_size=4)
    assert set(table) == {layer.name for layer in layers}
    assert all(losses[0] == 0.0 and losses[-1] >= 0.0 for losses in table.values())
    assert any(losses[-1] > 0 for losses in table.values())
    total = sum(layer.numel for layer in layers)
    counts = sensitivity_allocation(layers, 0.5, table, grid=grid)
    assert sum(counts.values()) == round(0.5 * total)

    learned, history = learned_allocation(model, layers, calibration, 0.5, LearnedSettings(steps=3, batch_size=2))
    assert sum(learned.values()) == round(0.5 * total)
    assert len(history) == 3
    # The model is left as it was: learned allocation trains thresholds, never the weights.
    assert all(int((layer.module.weight == 0).sum()) == 0 for layer in layers)


def test_comparison_of_a_classifier_is_the_kl_divergence():
    import timm

    model = timm.create_model("resnet10t", pretrained=False, num_classes=5, in_chans=1).eval()
    comparison = OutputComparison(model)
    assert not comparison.detector
    assert comparison.kind == ""
    x = torch.rand(3, 1, 32, 32)
    reference = comparison.reference(x, batch_size=2)
    assert reference[0].shape == (3, 5)
    with torch.no_grad():
        assert float(comparison.loss(comparison.outputs(x), reference)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_digits_detector_allocation_bench(digits_detector_dir, tmp_path):
    db = tmp_path / "alloc.duckdb"
    result = ptsa(digits_detector_dir, "--db", str(db), "bench", "digits/fcos_mobilenet_v2", "--data", "digits",
                  "--recipe", "sensitivity+magnitude", "--recipe", "learned(steps=5)+magnitude", "--recipe",
                  "uniform+magnitude", "--sparsity", "0.6", "--calibration-size", "2", "--no-progress")
    assert result.returncode == 0, result.stderr
    with Store.open(db, read_only=True) as store:
        rows = store.query("SELECT allocation, task, box_map, achieved_sparsity_targeted, layer_sparsity_json "
                           "FROM results WHERE criterion = 'magnitude' AND provenance = 'measured' ORDER BY allocation")
    assert [r["allocation"] for r in rows] == ["learned", "sensitivity", "uniform"]
    for row in rows:
        assert row["task"] == "detection"
        assert 0 <= row["box_map"] <= 100
        assert row["achieved_sparsity_targeted"] == pytest.approx(0.6, abs=0.002)
    spreads = []
    for row in rows:
        # The pruned layers' sparsities (skipped layers are listed at 0).
        per_layer = [value["sparsity"] if isinstance(value, dict) else value
                     for value in json.loads(row["layer_sparsity_json"]).values()]
        pruned = [value for value in per_layer if value > 0]
        spreads.append(max(pruned) - min(pruned))
    learned, sensitivity, uniform = spreads
    assert learned > 0.05  # both allocations spread the sparsity unevenly over the layers
    assert sensitivity > 0.05
    assert uniform < 0.01
