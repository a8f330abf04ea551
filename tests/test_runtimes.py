"""Runtimes: output checks against PyTorch, sparse kernel reporting, unavailable runtimes."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from bench_engine.pruning import LayerPolicy, PruneConfig, find_prunable_layers, prune_model
from bench_engine.runtimes import (
    RUNTIMES,
    OnnxRuntimeCpu,
    OutputMismatchError,
    PreparedModel,
    RuntimeUnavailableError,
    TorchSemiStructuredCuda,
    check_outputs,
    get_runtime,
    speedup_verdict,
)


@pytest.fixture(scope="module")
def sparse_vit():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    sparse = copy.deepcopy(model)
    layers, _ = find_prunable_layers(sparse, LayerPolicy(), x[:1])
    prune_model(layers, PruneConfig(criterion="magnitude", sparsity=0.7))
    return sparse, x


def test_csr_runtime_matches_and_reports_kernel(sparse_vit):
    model, x = sparse_vit
    prepared = get_runtime("torch-sparse-csr").prepare(model, x)
    assert prepared.sparse_layers == 8  # 4 Linear layers in each of 2 blocks; the head stays dense
    assert "CSR" in prepared.sparse_kernel
    assert check_outputs(model, prepared, x) < 1e-4


def test_csr_runtime_leaves_dense_model_alone():
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=1).eval()
    prepared = get_runtime("torch-sparse-csr").prepare(model, torch.randn(1, 3, 32, 32))
    assert prepared.sparse_kernel is None
    assert prepared.sparse_layers == 0


def test_onnxruntime_matches_pytorch(sparse_vit):
    runtime = OnnxRuntimeCpu()
    if runtime.unavailable_reason():
        pytest.skip(runtime.unavailable_reason())
    model, x = sparse_vit
    prepared = runtime.prepare(model, x[:1])
    assert prepared.sparse_kernel is None
    assert check_outputs(model, prepared, x) < 1e-3  # batch 2 through a graph exported at batch 1


def test_output_mismatch_is_rejected(sparse_vit):
    model, x = sparse_vit
    wrong = PreparedModel("broken", lambda inputs: model(inputs) + 0.1, sparse_kernel=None)
    with pytest.raises(OutputMismatchError, match="outputs differ from PyTorch's by up to 0.1"):
        check_outputs(model, wrong, x)
    shaped = PreparedModel("broken", lambda inputs: model(inputs)[:, :5], sparse_kernel=None)
    with pytest.raises(OutputMismatchError, match=r"returned shape \(2, 5\), expected \(2, 10\)"):
        check_outputs(model, shaped, x)


def test_unavailable_runtimes_give_the_reason(monkeypatch):
    if not torch.cuda.is_available():
        runtime = TorchSemiStructuredCuda()
        assert "no CUDA device" in runtime.unavailable_reason()
        with pytest.raises(RuntimeUnavailableError, match="runtime torch-2:4-cuda is unavailable: no CUDA device"):
            runtime.prepare(torch.nn.Linear(4, 4), torch.zeros(1, 4))
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else real_find_spec(name))
    assert OnnxRuntimeCpu().unavailable_reason() == (
        "Python package onnxruntime not installed; pip install onnx onnxruntime"
    )
    with pytest.raises(RuntimeUnavailableError, match="unknown runtime 'tensorrt'; choose from torch-eager"):
        get_runtime("tensorrt")
    assert set(RUNTIMES) == {"torch-eager", "torch-sparse-csr", "onnxruntime-cpu", "torch-2:4-cuda"}


def test_speedup_verdict_wording():
    assert speedup_verdict(10.0, 10.2, None).startswith("no sparse kernel ran")
    assert speedup_verdict(10.0, 5.0, "CSR") == "CSR: 2.00× faster than dense"
    assert speedup_verdict(10.0, 20.0, "CSR") == "CSR: 2.00× slower than dense"
    assert "no measurable change" in speedup_verdict(10.0, 10.1, "CSR")


def test_csr_runtime_converts_a_bare_linear_layer():
    layer = torch.nn.Linear(16, 8)
    with torch.no_grad():
        layer.weight[:, ::2] = 0
    prepared = get_runtime("torch-sparse-csr").prepare(layer, torch.randn(3, 16))
    assert prepared.sparse_layers == 1
    assert check_outputs(layer, prepared, torch.randn(3, 16)) < 1e-5
