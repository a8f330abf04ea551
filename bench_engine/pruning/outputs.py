"""The outputs that sensitivity and learned allocation compare between the dense and a pruned model.

For a classifier these are the class probabilities, compared by KL divergence from the dense
ones. A detector's boxes go through score thresholds and NMS, so it is compared on its outputs
before post-processing instead (`bench_engine.detection.raw`), by relative squared error.
Both losses are sums over images, so callers divide by the image count they want.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def is_detector(model: nn.Module) -> bool:
    """True for a BatchedDetector (checked by its attributes, so pruning need not import the detectors)."""
    return hasattr(model, "detector") and hasattr(model, "first_label")


class OutputComparison:
    """How to run a model for comparison, and how far its outputs are from the dense model's."""

    def __init__(self, model: nn.Module) -> None:
        self.detector = is_detector(model)
        if self.detector:
            from bench_engine.detection.raw import RawOutputs

            self.module: nn.Module = RawOutputs(model)
            self.prefix = "model."  # the model's parameter names inside RawOutputs
        else:
            self.module = model
            self.prefix = ""
        # Cache keys of measurements made with this comparison; classifier keys stay as they were.
        self.kind = "detector-raw-v1" if self.detector else ""

    def outputs(self, x: torch.Tensor, parameters: dict[str, Any] | None = None) -> list[torch.Tensor]:
        """Run the model (with `parameters` in place of its own, for gradients) and return comparable tensors."""
        if parameters is None:
            result = self.module(x)
        else:
            result = functional_call(self.module, {self.prefix + name: value for name, value in parameters.items()},
                                     (x,))
        if self.detector:
            return list(result)
        return [F.log_softmax(result.float(), dim=1)]

    @torch.no_grad()
    def reference(self, calibration: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
        """Return the dense model's outputs on the whole calibration set, each tensor with one row per image."""
        parts = [self.outputs(calibration[start : start + batch_size])
                 for start in range(0, calibration.shape[0], batch_size)]
        return [torch.cat([part[i].detach().float() for part in parts]) for i in range(len(parts[0]))]

    def loss(self, outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
        """Return the summed loss over the images of a batch."""
        if self.detector:
            from bench_engine.detection.raw import discrepancy

            return discrepancy(outputs, reference)
        return F.kl_div(outputs[0], reference[0], log_target=True, reduction="sum")


def select(reference: list[torch.Tensor], index: torch.Tensor | slice) -> list[torch.Tensor]:
    """Return the rows `index` of each reference tensor."""
    return [tensor[index] for tensor in reference]
