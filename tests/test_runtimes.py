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
    # A float16 runtime declares a wider tolerance; the same difference then passes.
    half = PreparedModel("half", lambda inputs: model(inputs) + 0.01, sparse_kernel=None, rtol=5e-2, atol=5e-2)
    assert check_outputs(model, half, x) == pytest.approx(0.01, rel=1e-3)
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
    assert set(RUNTIMES) == {"torch-eager", "torch-sparse-csr", "onnxruntime-cpu", "torch-eager-cuda",
                             "onnxruntime-cuda", "torch-2:4-cuda"}


def test_cuda_runtimes_without_a_gpu_say_why(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("torch-eager-cuda", "torch-2:4-cuda"):
        assert get_runtime(name).unavailable_reason() == "no CUDA device (PyTorch sees no NVIDIA GPU)"
        with pytest.raises(RuntimeUnavailableError, match=f"runtime {name} is unavailable: no CUDA device"):
            get_runtime(name).prepare(torch.nn.Linear(4, 4), torch.zeros(1, 4))
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert "no CUDAExecutionProvider; install onnxruntime-gpu" in get_runtime("onnxruntime-cuda").unavailable_reason()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert get_runtime("onnxruntime-cuda").unavailable_reason() is None


def test_old_gpu_is_refused_for_2_4(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Tesla T4")
    assert get_runtime("torch-2:4-cuda").unavailable_reason() == (
        "GPU Tesla T4 has compute capability 7.x; 2:4 kernels need 8.0 or newer"
    )


def test_semi_structured_layers_selects_only_2_4_weights():
    from bench_engine.runtimes import semi_structured_layers

    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4), torch.nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight.view(4, 2, 4)[:, :, :2] = 0  # two zeros in every group of 4: fits 2:4
        model[2].weight[:, :1] = 0  # one zero per group: does not fit
        model[3].weight.zero_()  # 6 inputs: not a multiple of 4
    assert semi_structured_layers(model) == ["0"]


def test_speedup_verdict_wording():
    assert speedup_verdict(10.0, 10.2, None).startswith("no sparse kernel ran")
    assert speedup_verdict(10.0, 5.0, "CSR") == "CSR: 2.00× faster than dense"
    assert speedup_verdict(10.0, 20.0, "CSR") == "CSR: 2.00× slower than dense"
    assert "no measurable change" in speedup_verdict(10.0, 10.1, "CSR")
    noisy = speedup_verdict(10.0, 4.0, None, spread=2.3)
    assert noisy == ("no sparse kernel ran: zeros are multiplied like other weights (2.50× dense speed; timings "
                     "noisy (spread 230%), so the ratio is unreliable)")


def test_runtime_names_match_the_registry():
    from bench_engine.runtime_names import RUNTIME_NAMES

    assert tuple(RUNTIMES) == RUNTIME_NAMES


def test_csr_runtime_converts_a_bare_linear_layer():
    layer = torch.nn.Linear(16, 8)
    with torch.no_grad():
        layer.weight[:, ::2] = 0
    prepared = get_runtime("torch-sparse-csr").prepare(layer, torch.randn(3, 16))
    assert prepared.sparse_layers == 1
    assert check_outputs(layer, prepared, torch.randn(3, 16)) < 1e-5
