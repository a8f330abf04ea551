"""Storage arithmetic: weight bytes per format, counted by hand on small layers and on real weights."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bench_engine.pruning import LayerPolicy, PruneConfig, find_prunable_layers, prune_model
from bench_engine.storage import fits_two_four, layer_storage, matrix_view, model_storage


def test_layer_storage_counted_by_hand():
    weight = torch.zeros(3, 8)
    weight[0, :3] = 1.0  # 3 non-zeros in row 0
    weight[2, 7] = -2.0  # 1 non-zero in row 2
    sizes = layer_storage("fc", weight, value_bytes=4, index_bytes=4).bytes
    assert sizes["dense"] == 24 * 4
    assert sizes["csr"] == 4 * (4 + 4) + (3 + 1) * 4  # values and column indices, row pointers
    assert sizes["bitmask"] == 3 + 4 * 4  # 24 bits, then the values
    # Row 0 keeps 3 of its first 4 inputs, so 2:4 does not apply and the layer counts dense.
    assert sizes["semi_structured_2_4"] == sizes["dense"]


def test_two_four_is_nine_sixteenths_at_half_precision():
    weight = torch.randn(16, 32)
    weight.view(16, 8, 4)[:, :, :2] = 0  # zero the first 2 of every group of 4
    storage = layer_storage("fc", weight, value_bytes=2, index_bytes=4)
    assert storage.fits_2_4
    assert storage.bytes["semi_structured_2_4"] * 16 == storage.bytes["dense"] * 9
    int8 = layer_storage("fc", weight, value_bytes=1, index_bytes=4)
    assert int8.bytes["semi_structured_2_4"] * 8 == int8.bytes["dense"] * 5


def test_conv_matrix_view_runs_along_input_channels():
    conv = nn.Conv2d(8, 4, 3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, 0:2, 1, 1] = 1.0  # 2 of the first 4 input channels at one kernel position
    matrix = matrix_view(conv.weight)
    assert matrix.shape == (4, 72)
    assert fits_two_four(matrix)
    conv.weight.data[:, 0:3, 1, 1] = 1.0
    assert not fits_two_four(matrix_view(conv.weight))


def test_pruned_resnet_storage_and_best_format():
    torch.manual_seed(0)
    import timm

    model = timm.create_model("resnet10t", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    dense_storage = model_storage(model)
    assert dense_storage.best()[0] == "dense"
    assert dense_storage.total("csr") > dense_storage.total("dense")

    sparse = copy.deepcopy(model)
    layers, _ = find_prunable_layers(sparse, LayerPolicy(), x[:1])
    prune_model(layers, PruneConfig(criterion="magnitude", sparsity=0.5, pattern=(2, 4)))
    storage = model_storage(sparse, value_bytes=2)
    targeted = {layer.name for layer in layers}
    for layer in storage.layers:
        assert layer.fits_2_4 == (layer.name in targeted)
    assert storage.best()[0] == "semi_structured_2_4"
    assert storage.total("semi_structured_2_4") < storage.total("bitmask") < storage.total("dense")


def test_storage_rejects_unknown_widths_and_formats():
    model = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="value width must be 1, 2, 4 or 8 bytes, got 3"):
        model_storage(model, value_bytes=3)
    with pytest.raises(ValueError, match="index width"):
        model_storage(model, index_bytes=1)
    with pytest.raises(ValueError, match="unknown storage format 'coo'"):
        model_storage(model).total("coo")
