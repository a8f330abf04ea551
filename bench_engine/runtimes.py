"""Runtimes that execute a pruned model, dense or sparse, behind one small interface.

Each runtime turns a PyTorch model into a callable for one input shape and reports which
sparse kernel, if any, runs. A runtime that is not installed, or not supported on this hardware, gives
the reason instead of a result. Before any timing counts, `check_outputs` compares a runtime's
outputs with the dense-with-zeros PyTorch model. Adding a runtime is one subclass of `Runtime`
registered in RUNTIMES.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bench_engine.errors import BenchError, InvalidConfigError
from bench_engine.latency import SPREAD_WARNING
from bench_engine.runtime_names import MEASURABLE_CHANGE

log = logging.getLogger(__name__)


class RuntimeUnavailableError(BenchError):
    """The runtime is not installed or does not support this hardware or model."""


class OutputMismatchError(BenchError):
    """A runtime's outputs differ from the PyTorch model's, so its timings would mean nothing."""


@dataclass
class PreparedModel:
    """A model ready to run on one runtime, with the sparse kernels it uses."""

    runtime: str
    run: Callable[[torch.Tensor], torch.Tensor]
    sparse_kernel: str | None  # None when every layer runs a dense kernel
    sparse_layers: int = 0
    # How far its outputs may be from the float32 CPU model's (see `check_outputs`): wider for
    # runtimes that compute in float16.
    rtol: float = 1e-3
    atol: float = 1e-4


class Runtime:
    """A way to execute a model; subclasses set `name` and implement `prepare`."""

    name = ""

    def unavailable_reason(self) -> str | None:
        """Return why this runtime cannot run here, or None when it can."""
        return None

    def prepare(self, model: nn.Module, example: torch.Tensor) -> PreparedModel:
        raise NotImplementedError

    def require(self) -> None:
        reason = self.unavailable_reason()
        if reason:
            # NOTE: `reason` is English; the runtimes do not return it as a translatable template.
            raise RuntimeUnavailableError("runtime {name} is unavailable: {reason}", name=self.name, reason=reason)


class TorchEager(Runtime):
    """PyTorch eager execution with dense kernels: pruned weights are multiplied as zeros."""

    name = "torch-eager"

    def prepare(self, model: nn.Module, example: torch.Tensor) -> PreparedModel:
        model.eval()
        return PreparedModel(self.name, model, sparse_kernel=None)


class CsrLinear(nn.Module):
    """A Linear layer whose weight is stored in CSR and multiplied with torch.sparse.mm."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        # (out, in) sparse × (in, rows) dense, transposed back to (rows, out).
        out = torch.sparse.mm(self.weight, flat.t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


class TorchSparseCsr(Runtime):
    """PyTorch with every sparse enough Linear layer in CSR; convolutions stay dense.

    A Linear layer is converted when at least `min_sparsity` of its weights are zero.
    """

    name = "torch-sparse-csr"

    def __init__(self, min_sparsity: float = 0.3):
        self.min_sparsity = min_sparsity

    def prepare(self, model: nn.Module, example: torch.Tensor) -> PreparedModel:
        import copy

        converted = copy.deepcopy(model).eval()
        if isinstance(converted, nn.Linear):  # a bare layer has no parent to replace it in
            converted = nn.Sequential(converted)
        count = 0
        for parent in list(converted.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    sparsity = float((child.weight == 0).double().mean())
                    if sparsity >= self.min_sparsity:
                        setattr(parent, child_name, CsrLinear(child))
                        count += 1
        kernel = f"torch.sparse.mm CSR × dense for {count} Linear layers" if count else None
        return PreparedModel(self.name, converted, sparse_kernel=kernel, sparse_layers=count)


def _cuda_reason() -> str | None:
    """Return why PyTorch cannot use a CUDA device here, or None when it can."""
    if not torch.cuda.is_available():
        return "no CUDA device (PyTorch sees no NVIDIA GPU)"
    return None


class OnnxRuntimeCpu(Runtime):
    """ONNX Runtime with its CPU execution provider; the exported graph has dense weights."""

    name = "onnxruntime-cpu"
    provider = "CPUExecutionProvider"
    rtol, atol = 1e-3, 1e-4  # tolerances of `check_outputs`

    def unavailable_reason(self) -> str | None:
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            return f"Python package {' and '.join(missing)} not installed; pip install onnx onnxruntime"
        return None

    def _export(self, model: nn.Module, example: torch.Tensor) -> bytes:
        buffer = io.BytesIO()
        # NOTE: the TorchScript-based exporter (dynamo=False) is deprecated since PyTorch 2.9, but
        # the torch.export-based one needs onnxscript, which is not a dependency.
        with warnings.catch_warnings():
            # The tracer warns about Python branches on tensor values (timm's attention masks);
            # check_outputs catches any graph that does not match the model.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, (example,), buffer, dynamo=False, input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        return buffer.getvalue()

    def prepare(self, model: nn.Module, example: torch.Tensor) -> PreparedModel:
        self.require()
        import onnxruntime

        model.eval()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # Idle worker threads would otherwise spin after each run and take the cores from the
        # next session timed in the same round. Among five interleaved sessions, resnet18 at
        # batch 1 measured 43 to 55 ms per pass instead of 18 ms (docs/benchmarks.md). Without
        # spinning, a lone session is 4 to 16 % slower on the 2-core machine of those figures.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(self._export(model, example), options, providers=[self.provider])

        def run(x: torch.Tensor) -> torch.Tensor:
            # Inputs and outputs pass through host memory, as in a service that receives images.
            return torch.from_numpy(session.run(None, {"input": x.detach().numpy()})[0])

        return PreparedModel(self.name, run, sparse_kernel=None, rtol=self.rtol, atol=self.atol)


class OnnxRuntimeCuda(OnnxRuntimeCpu):
    """ONNX Runtime with its CUDA execution provider (the onnxruntime-gpu package), float32."""

    name = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"
    # GPU convolution algorithms sum in other orders than the CPU's.
    rtol, atol = 1e-2, 1e-3

    def unavailable_reason(self) -> str | None:
        reason = super().unavailable_reason()
        if reason:
            return reason
        import onnxruntime

        if self.provider not in onnxruntime.get_available_providers():
            return ("ONNX Runtime here has no CUDAExecutionProvider; install onnxruntime-gpu on a machine "
                    "with an NVIDIA GPU")
        return None


class TorchEagerCuda(Runtime):
    """PyTorch eager execution on the first CUDA device in float32, dense kernels."""

    name = "torch-eager-cuda"

    def unavailable_reason(self) -> str | None:
        return _cuda_reason()

    def prepare(self, model: nn.Module, example: torch.Tensor) -> PreparedModel:
        import copy

        self.require()
        on_device = copy.deepcopy(model).cuda().eval()

        def run(x: torch.Tensor) -> torch.Tensor:
            # Copying the output back waits for the GPU, so the time covers the whole pass.
            return on_device(x.cuda()).cpu()

        return PreparedModel(self.name, run, sparse_kernel=None, rtol=1e-2, atol=1e-3)


def semi_structured_layers(model: nn.Module) -> list[str]:
    """Return the names of the Linear layers whose weight fits 2:4 (at most 2 non-zeros in every 4 inputs)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.in_features % 4 == 0:
            groups = (module.weight != 0).reshape(module.out_features, -1, 4).sum(dim=2)
            if bool((groups <= 2).all()):
                names.append(name)
    return names


class TorchSemiStructuredCuda(Runtime):
    """PyTorch 2:4 semi-structured sparsity for Linear layers on a CUDA GPU (compute capability 8.0+).

    The model runs in float16, so the dense row of this runtime (the same model, no 2:4 layer)
    is also float16: speedups compare like with like.
    """

    name = "torch-2:4-cuda"

    def unavailable_reason(self) -> str | None:
        reason = _cuda_reason()
        if reason:
            return reason
        major, _ = torch.cuda.get_device_capability()
        if major < 8:
            return f"GPU {torch.cuda.get_device_name()} has compute capability {major}.x; 2:4 kernels need 8.0 or newer"
        return None

    def prepare(self, model: nn.Module, example: torch.Tensor) -> PreparedModel:
        import copy

        self.require()
        # NOTE: written to PyTorch's documented API, but never run here: this machine has no GPU.
        from torch.sparse import to_sparse_semi_structured

        converted = copy.deepcopy(model).half().cuda().eval()
        names = semi_structured_layers(converted)
        modules = dict(converted.named_modules())
        for name in names:
            module = modules[name]
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()))

        def run(x: torch.Tensor) -> torch.Tensor:
            return converted(x.half().cuda()).float().cpu()

        kernel = f"2:4 semi-structured for {len(names)} Linear layers" if names else None
        return PreparedModel(self.name, run, sparse_kernel=kernel, sparse_layers=len(names), rtol=5e-2, atol=5e-2)


RUNTIMES: dict[str, Runtime] = {
    runtime.name: runtime
    for runtime in (TorchEager(), TorchSparseCsr(), OnnxRuntimeCpu(), TorchEagerCuda(), OnnxRuntimeCuda(),
                    TorchSemiStructuredCuda())
}


def get_runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise RuntimeUnavailableError(
            "unknown runtime {name!r}; choose from {choices}.", name=name, choices=", ".join(RUNTIMES)
        ) from None


def check_runtime_names(names: Sequence[str]) -> None:
    """Raise InvalidConfigError for the first name that is not a runtime, with `get_runtime`'s message."""
    for name in names:
        if name not in RUNTIMES:
            raise InvalidConfigError(
                "unknown runtime {name!r}; choose from {choices}.", name=name, choices=", ".join(RUNTIMES)
            )


@torch.inference_mode()
def check_outputs(reference: nn.Module, prepared: PreparedModel, example: torch.Tensor) -> float:
    """Compare a prepared model's outputs with the PyTorch model's; return the max abs difference.

    Raises OutputMismatchError when they differ by more than the prepared model's tolerances.
    """
    rtol, atol = prepared.rtol, prepared.atol
    expected = reference.eval()(example).float()
    actual = prepared.run(example).float()
    if actual.shape != expected.shape:
        raise OutputMismatchError(
            "runtime {runtime} returned shape {shape}, expected {expected}",
            runtime=prepared.runtime,
            shape=tuple(actual.shape),
            expected=tuple(expected.shape),
        )
    difference = float((actual - expected).abs().max())
    if not torch.allclose(actual, expected, rtol=rtol, atol=atol):
        raise OutputMismatchError(
            "runtime {runtime} outputs differ from PyTorch's by up to {difference:.3g} "
            "(tolerance rtol={rtol:g}, atol={atol:g}); its timings are not recorded.",
            runtime=prepared.runtime,
            difference=difference,
            rtol=rtol,
            atol=atol,
        )
    return difference


def speedup_verdict(dense_ms: float, sparse_ms: float, sparse_kernel: str | None, spread: float = 0.0) -> str:
    """Say in one line whether a sparse result is faster than dense on the same runtime and batch.

    `spread` is the larger spread (IQR / median) of the two measurements; above SPREAD_WARNING
    the verdict adds that the ratio is unreliable.
    """
    ratio = dense_ms / sparse_ms if sparse_ms > 0 else float("nan")
    noisy = f"; timings noisy (spread {spread:.0%}), so the ratio is unreliable" if spread > SPREAD_WARNING else ""
    if sparse_kernel is None:
        return f"no sparse kernel ran: zeros are multiplied like other weights ({ratio:.2f}× dense speed{noisy})"
    if ratio >= 1 + MEASURABLE_CHANGE:
        return f"{sparse_kernel}: {ratio:.2f}× faster than dense{noisy}"
    if ratio <= 1 / (1 + MEASURABLE_CHANGE):
        return f"{sparse_kernel}: {1 / ratio:.2f}× slower than dense{noisy}"
    return f"{sparse_kernel}: no measurable change ({ratio:.2f}× dense speed{noisy})"
