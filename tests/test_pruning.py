"""Pruning techniques on small real timm models: exact sparsity, valid N:M, SparseGPT's error."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
from torch import nn

from bench_engine.errors import InvalidConfigError
from bench_engine.pruning import LayerPolicy, PruneConfig, collect_stats, find_prunable_layers, parse_pattern, prune_model
from bench_engine.pruning.allocation import global_magnitude, uniform
from bench_engine.pruning.criteria import magnitude, select_lowest, split_count, sparsegpt
from bench_engine.pruning.layers import input_matrix, matrix_to_weight, weight_matrix
from bench_engine.pruning.prune import measure_sparsity

torch.manual_seed(0)


def small_model(name: str = "efficientnet_lite0", **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()


@pytest.fixture(scope="module")
def lite0_calibration():
    model = small_model()
    x = torch.randn(16, 3, 64, 64)
    layers, _ = find_prunable_layers(model, LayerPolicy(), x[:1])
    stats = collect_stats(model, layers, x, need_hessian=True)
    return model, x, stats


def pruned_copy(model, x, stats, config):
    clone = copy.deepcopy(model)
    layers, _ = find_prunable_layers(clone, config.policy, x[:1])
    report = prune_model(layers, config, stats)
    return clone, layers, report


# -- layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.Conv2d(8, 16, 3, padding=2, dilation=2, bias=False),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.Conv2d(8, 16, 3, padding=1, groups=4),  # grouped
        nn.Conv2d(8, 16, 5, padding="same"),
        nn.Conv2d(8, 16, 3, padding=1, padding_mode="reflect"),
        timm.layers.Conv2dSame(8, 16, 3, stride=2),  # TensorFlow-style dynamic padding
        nn.Linear(12, 6),
    ],
    ids=["strided", "dilated", "depthwise", "grouped", "same", "reflect", "timm-same", "linear"],
)
def test_matrix_views_reproduce_layer_output(layer):
    x = torch.randn(2, 7, 12) if isinstance(layer, nn.Linear) else torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        expected = layer(x)
        if layer.bias is not None:
            shape = (1, 1, -1) if isinstance(layer, nn.Linear) else (1, -1, 1, 1)
            expected = expected - layer.bias.view(shape)
    product = torch.bmm(weight_matrix(layer), input_matrix(layer, x))  # (G, R, N)
    if isinstance(layer, nn.Linear):
        got = product[0].t().reshape(expected.shape)
    else:
        batch, channels, height, width = expected.shape
        got = product.reshape(channels, batch, height, width).permute(1, 0, 2, 3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(matrix_to_weight(layer, weight_matrix(layer)), layer.weight.detach())


# -- exact counts ------------------------------------------------------------------------------


def test_split_count_adds_up_exactly():
    counts = split_count(1001, [3, 5, 7, 11, 13])
    assert int(counts.sum()) == 1001
    assert all(c >= 0 for c in counts.tolist())


def test_ties_never_prune_more_than_requested():
    # All weights equal: a threshold rule would prune everything (or nothing).
    weights = torch.ones(1, 3, 4)
    new, mask = magnitude(weights, prune_count=6, pattern=None)
    assert int(mask.sum()) == 6
    assert int((new == 0).sum()) == 6


def test_select_lowest_exact_per_row():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    mask = select_lowest(scores, torch.tensor([2, 1]))
    assert mask.sum(dim=1).tolist() == [2, 1]
    assert mask[1].tolist() == [False, False, False, True]


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("sparsity", [0.3, 0.7])
def test_uniform_sparsity_exact_per_layer(lite0_calibration, criterion, sparsity):
    model, x, stats = lite0_calibration
    config = PruneConfig(criterion=criterion, sparsity=sparsity)
    clone, layers, report = pruned_copy(model, x, stats, config)
    counted = measure_sparsity(clone, [layer.name for layer in layers])
    for layer in layers:
        zeros = int((layer.module.weight == 0).sum())
        assert zeros == round(sparsity * layer.numel), layer.name
        assert report.prune_counts[layer.name] == round(sparsity * layer.numel)
    total = sum(layer.numel for layer in layers)
    expected = sum(round(sparsity * layer.numel) for layer in layers) / total
    assert counted.targeted == pytest.approx(expected, abs=1e-12)
    assert abs(counted.targeted - sparsity) < 1e-3


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
def test_global_magnitude_hits_global_target(lite0_calibration, criterion):
    model, x, stats = lite0_calibration
    config = PruneConfig(criterion=criterion, sparsity=0.6, allocation="global_magnitude")
    clone, layers, report = pruned_copy(model, x, stats, config)
    total = sum(layer.numel for layer in layers)
    zeros = sum(int((layer.module.weight == 0).sum()) for layer in layers)
    assert zeros == round(0.6 * total)
    ratios = [report.prune_counts[l.name] / l.numel for l in layers]
    assert max(ratios) - min(ratios) > 0.1  # allocation really differs between layers


def test_global_magnitude_allocation_matches_threshold():
    model = small_model("resnet10t")
    layers, _ = find_prunable_layers(model, LayerPolicy(), torch.randn(1, 3, 32, 32))
    counts = global_magnitude(layers, 0.5)
    threshold = torch.cat([l.module.weight.detach().abs().flatten() for l in layers]).kthvalue(
        round(0.5 * sum(l.numel for l in layers))
    ).values
    for layer in layers:
        below = int((layer.module.weight.detach().abs() <= threshold).sum())
        assert abs(counts[layer.name] - below) <= 1
    assert sum(counts.values()) == round(0.5 * sum(l.numel for l in layers))
    assert uniform(layers, 0.5)[layers[0].name] == round(0.5 * layers[0].numel)


# -- N:M ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
def test_two_four_pattern_is_valid(lite0_calibration, criterion):
    model, x, stats = lite0_calibration
    config = PruneConfig(criterion=criterion, sparsity=0.5, pattern=(2, 4))
    clone, layers, report = pruned_copy(model, x, stats, config)
    checked = 0
    for layer in layers:
        matrix = weight_matrix(layer.module)
        if layer.name in report.skipped:
            assert "not divisible by M=4" in report.skipped[layer.name]
            assert int((matrix == 0).sum()) == 0  # left dense, and reported as skipped
            continue
        groups = matrix.reshape(-1, 4)
        assert bool(((groups == 0).sum(dim=1) == 2).all()), layer.name
        checked += 1
    assert checked > 10
    assert any(layer.kind == "depthwise" for layer in layers if layer.name in report.skipped)


def test_two_four_groups_run_along_input_channels():
    conv = nn.Conv2d(8, 4, 3, padding=1)
    layers, _ = find_prunable_layers(nn.Sequential(nn.Conv2d(3, 8, 1), conv), LayerPolicy(), torch.randn(1, 3, 5, 5))
    prune_model(layers, PruneConfig(criterion="magnitude", sparsity=0.5, pattern=(2, 4)))
    weight = conv.weight.detach()  # (out, in, kh, kw)
    groups = weight.permute(0, 2, 3, 1).reshape(4, 3, 3, 2, 4)  # 4 input channels per group
    assert bool(((groups == 0).sum(dim=-1) == 2).all())


def test_pattern_parsing():
    assert parse_pattern("2:4") == (2, 4)
    assert parse_pattern("unstructured") is None
    for bad in ("4:2", "2-4", "0:4", "dense"):
        with pytest.raises(InvalidConfigError, match="pattern"):
            parse_pattern(bad)


# -- SparseGPT ---------------------------------------------------------------------------------


def layer_output_error(original: nn.Module, pruned_weight: torch.Tensor, x: torch.Tensor) -> float:
    columns = input_matrix(original, x)
    dense = torch.bmm(weight_matrix(original), columns)
    clone = copy.deepcopy(original)
    with torch.no_grad():
        clone.weight.copy_(pruned_weight)
    sparse = torch.bmm(weight_matrix(clone), columns)
    return float((dense - sparse).square().sum())


@pytest.mark.parametrize("pattern", [None, (2, 4)])
def test_sparsegpt_beats_magnitude_on_layer_error(pattern):
    """On real EfficientNet-Lite0 weights and real photos, per layer, at equal sparsity."""
    from bench_engine.data import load_photos
    from bench_engine.models import load_efficientnet_lite0

    bundle = load_efficientnet_lite0()
    data = load_photos(bundle.preprocess)
    calibration = data.calibration(16, seed=0)
    layers, _ = find_prunable_layers(bundle.model, LayerPolicy(prune_depthwise=False), calibration[:1])
    chosen = [l for l in layers if l.name in ("blocks.2.0.conv_pw", "blocks.4.1.conv_pwl", "blocks.6.0.conv_pw")]
    assert len(chosen) == 3
    captured = {}
    hooks = [l.module.register_forward_pre_hook(lambda m, a, n=l.name: captured.setdefault(n, a[0].detach().clone())) for l in chosen]
    with torch.no_grad():
        bundle.model(calibration)
    for h in hooks:
        h.remove()
    stats = collect_stats(bundle.model, chosen, calibration, need_hessian=True)
    for layer in chosen:
        matrix = weight_matrix(layer.module)
        count = round(0.5 * layer.numel)
        mag, _ = magnitude(matrix, count, pattern)
        gpt, gpt_mask = sparsegpt(matrix, stats[layer.name], count, pattern)
        assert int(gpt_mask.sum()) == count
        x = captured[layer.name]
        mag_error = layer_output_error(layer.module, matrix_to_weight(layer.module, mag), x)
        gpt_error = layer_output_error(layer.module, matrix_to_weight(layer.module, gpt), x)
        assert gpt_error < mag_error, (layer.name, gpt_error, mag_error)


# -- policy ------------------------------------------------------------------------------------


def test_policy_excludes_first_classifier_and_depthwise():
    model = small_model()
    x = torch.randn(1, 3, 64, 64)
    layers, excluded = find_prunable_layers(model, LayerPolicy(prune_depthwise=False), x)
    names = {l.name for l in layers}
    assert "conv_stem" not in names
    assert "conv_stem" in excluded
    assert "classifier" not in names
    assert "classifier" in excluded
    assert not any(l.kind == "depthwise" for l in layers)
    everything, none_excluded = find_prunable_layers(model, LayerPolicy(True, True, True), x)
    assert {"conv_stem", "classifier"} <= {l.name for l in everything}
    assert none_excluded == {}


def test_vit_prunes_token_linear_layers():
    model = small_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2)
    x = torch.randn(8, 3, 32, 32)
    layers, excluded = find_prunable_layers(model, LayerPolicy(), x[:1])
    assert {"patch_embed.proj", "head"} <= set(excluded)
    assert all(l.kind == "linear" for l in layers)
    stats = collect_stats(model, layers, x, need_hessian=True)
    assert stats["blocks.0.attn.qkv"].columns == 8 * 17  # 16 patches + class token per image
    clone, cloned_layers, _ = pruned_copy(model, x, stats, PruneConfig(criterion="sparsegpt", sparsity=0.5))
    counted = measure_sparsity(clone, [l.name for l in cloned_layers])
    assert counted.targeted == pytest.approx(0.5, abs=1e-9)


# -- allocations beyond uniform ------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_layers():
    model = small_model("resnet10t")
    layers, _ = find_prunable_layers(model, LayerPolicy(), torch.randn(1, 3, 32, 32))
    return layers


@pytest.mark.parametrize("power", [0.5, 1.0])
def test_erk_hits_target_and_keeps_thin_layers_denser(resnet_layers, power):
    from bench_engine.pruning.allocation import erk

    counts = erk(resnet_layers, 0.8, power=power)
    total = sum(layer.numel for layer in resnet_layers)
    assert sum(counts.values()) == round(0.8 * total)
    for layer in resnet_layers:
        assert 0 <= counts[layer.name] <= layer.numel
    ratios = {l.name: counts[l.name] / l.numel for l in resnet_layers}
    smallest = min(resnet_layers, key=lambda l: l.numel)
    largest = max(resnet_layers, key=lambda l: l.numel)
    assert ratios[smallest.name] < ratios[largest.name]
    # Density = ε · (sum of dims / product of dims)^power with one ε for every layer not kept
    # dense; rounding to whole weights moves each layer's density by less than 1/numel.
    epsilons = []
    for layer in resnet_layers:
        density = 1 - ratios[layer.name]
        if counts[layer.name] > 0:
            shape = layer.module.weight.shape
            raw = (sum(shape) / math.prod(shape)) ** power
            epsilons.append((density / raw, 1 / layer.numel / raw))
    reference = epsilons[-1][0]
    assert all(abs(eps - reference) <= tolerance + 1e-9 + epsilons[-1][1] for eps, tolerance in epsilons)


def test_l2_global_respects_cap(resnet_layers):
    from bench_engine.pruning.allocation import l2_normalised_global

    total = sum(layer.numel for layer in resnet_layers)
    free = l2_normalised_global(resnet_layers, 0.7)
    capped = l2_normalised_global(resnet_layers, 0.7, max_layer_sparsity=0.75)
    assert sum(free.values()) == round(0.7 * total)
    assert sum(capped.values()) == round(0.7 * total)
    assert max(free[l.name] / l.numel for l in resnet_layers) > 0.75
    for layer in resnet_layers:
        assert capped[layer.name] <= int(0.75 * layer.numel)


def test_unreachable_cap_is_rejected(resnet_layers):
    from bench_engine.pruning.allocation import global_magnitude

    with pytest.raises(InvalidConfigError, match="cannot be reached"):
        global_magnitude(resnet_layers, 0.8, max_layer_sparsity=0.5)


def test_never_prune_patterns_keep_layers_dense():
    model = small_model("resnet10t")
    policy = LayerPolicy(never_prune=("layer4.*",))
    layers, excluded = find_prunable_layers(model, policy, torch.randn(1, 3, 32, 32))
    assert not any(l.name.startswith("layer4.") for l in layers)
    assert excluded["layer4.0.conv1"] == "matches the never-prune list"


# -- error correction ----------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.Linear(12, 6)], ids=["conv", "linear"])
def test_bias_correction_restores_mean_output(layer):
    from bench_engine.pruning.correction import correct_bias

    model = nn.Sequential(nn.Identity(), layer)
    x = torch.randn(64, 8, 6, 6).abs() if isinstance(layer, nn.Conv2d) else torch.randn(64, 5, 12).abs()
    policy = LayerPolicy(prune_first_layer=True, prune_classifier=True)
    layers, _ = find_prunable_layers(model, policy, x[:1])
    stats = collect_stats(model, layers, x, need_hessian=False)
    sparse_model = copy.deepcopy(model)
    sparse_layers, _ = find_prunable_layers(sparse_model, policy, x[:1])
    prune_model(sparse_layers, PruneConfig(criterion="magnitude", sparsity=0.7))
    channel_dims = (0, 2, 3) if isinstance(layer, nn.Conv2d) else (0, 1)
    with torch.no_grad():
        dense_mean = model(x).mean(dim=channel_dims)
        before = sparse_model(x).mean(dim=channel_dims)
        correct_bias(layers, sparse_layers, stats)
        after = sparse_model(x).mean(dim=channel_dims)
    assert float((before - dense_mean).abs().max()) > 1e-2
    torch.testing.assert_close(after, dense_mean, rtol=1e-4, atol=1e-4)


def test_bn_reestimation_matches_calibration_statistics():
    from bench_engine.pruning.correction import reestimate_batchnorm

    model = small_model("resnet10t")
    x = torch.randn(32, 3, 32, 32)
    layers, _ = find_prunable_layers(model, LayerPolicy(), x[:1])
    prune_model(layers, PruneConfig(criterion="magnitude", sparsity=0.5))
    seen = {}
    # The BatchNorm's input during re-estimation: one batch of all 32 images.
    hook = model.layer1[0].bn1.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach().clone()))
    updated = reestimate_batchnorm(model, x, batch_size=32)
    hook.remove()
    assert updated == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    norm = model.layer1[0].bn1
    torch.testing.assert_close(norm.running_mean, seen["x"].mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not norm.training
    assert norm.momentum == 0.1  # restored


def test_owl_favours_layers_with_outliers(lite0_calibration):
    from bench_engine.pruning.allocation import outlier_ratio, owl

    model, x, stats = lite0_calibration
    layers, _ = find_prunable_layers(model, LayerPolicy(), x[:1])
    counts = owl(layers, 0.5, stats, band=0.1)
    total = sum(layer.numel for layer in layers)
    assert sum(counts.values()) == round(0.5 * total)
    sparsities = {l.name: counts[l.name] / l.numel for l in layers}
    rounding = 2 / min(l.numel for l in layers)  # whole weights move a small layer's ratio
    assert max(sparsities.values()) - min(sparsities.values()) <= 0.2 + rounding
    ratios = {l.name: outlier_ratio(l, stats[l.name], 5.0) for l in layers}
    most = max(layers, key=lambda l: ratios[l.name])
    least = min(layers, key=lambda l: ratios[l.name])
    assert sparsities[most.name] < sparsities[least.name]


def test_owl_prunes_through_the_config(lite0_calibration):
    model, x, stats = lite0_calibration
    config = PruneConfig(criterion="wanda", sparsity=0.5, allocation="owl")
    clone, layers, report = pruned_copy(model, x, stats, config)
    total = sum(layer.numel for layer in layers)
    zeros = sum(int((layer.module.weight == 0).sum()) for layer in layers)
    assert zeros == round(0.5 * total)
    with pytest.raises(ValueError, match="OWL needs calibration statistics"):
        prune_model(layers, config, {})


# -- sensitivity-driven allocation ---------------------------------------------------------------


def test_sensitivity_table_cached_and_allocation_exact(tmp_path, monkeypatch):
    from bench_engine.pruning import sensitivity as sens

    model = small_model("resnet10t")
    x = torch.randn(16, 3, 32, 32)
    layers, _ = find_prunable_layers(model, LayerPolicy(), x[:1])
    before = {l.name: l.module.weight.detach().clone() for l in layers}
    table = sens.cached_sensitivity(tmp_path, "abc", model, layers, x)
    for layer in layers:  # measuring restores every layer
        assert torch.equal(layer.module.weight, before[layer.name])
    assert set(table) == {l.name for l in layers}
    assert all(losses[0] == 0.0 for losses in table.values())
    assert all(losses[-1] >= losses[1] for losses in table.values())
    assert len(list(tmp_path.glob("sensitivity-*.json"))) == 1

    monkeypatch.setattr(sens, "measure_sensitivity", lambda *a, **k: pytest.fail("cache was not used"))
    assert sens.cached_sensitivity(tmp_path, "abc", model, layers, x) == table

    for sparsity in (0.3, 0.6, 0.97):
        counts = sens.sensitivity_allocation(layers, sparsity, table)
        assert sum(counts.values()) == round(sparsity * sum(l.numel for l in layers))
        for layer in layers:
            assert 0 <= counts[layer.name] <= layer.numel


def test_sensitivity_spares_the_sensitive_layer():
    from bench_engine.pruning.sensitivity import SENSITIVITY_GRID, sensitivity_allocation

    model = small_model("resnet10t")
    layers, _ = find_prunable_layers(model, LayerPolicy(), torch.randn(1, 3, 32, 32))
    robust = [0.0, 0.001, 0.002, 0.004, 0.008, 0.016]
    fragile = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
    table = {l.name: robust for l in layers}
    table[layers[3].name] = fragile
    assert len(robust) == len(SENSITIVITY_GRID)
    counts = sensitivity_allocation(layers, 0.5, table)
    assert counts[layers[3].name] / layers[3].numel < 0.1
    assert counts[layers[4].name] / layers[4].numel > 0.5
