"""A detector's outputs before post-processing, which sensitivity and learned allocation compare.

A detector's boxes come from score thresholds, top-k selection and NMS, so a small change to a
weight can add, drop or reorder boxes: the boxes are neither comparable tensor by tensor nor
differentiable. Sensitivity allocation needs a smooth measure of how far a pruned layer moves
the model, and learned allocation needs gradients. Both therefore read the tensors the
detector computes before any selection:

- the feature maps the backbone and neck hand to the heads;
- the one-stage head's class scores and box offsets (RetinaNet, FCOS with its centerness, SSD);
- for Faster R-CNN, the RPN head's objectness and box deltas, and the R-CNN box head's class
  scores and box offsets on a fixed grid of regions. RPN proposals are selected by score, so
  they would differ between the dense and the pruned model. Fixed regions keep the second
  stage comparable, and every layer of the box head still moves the outputs.

`discrepancy` compares them with the relative squared error of each tensor per image, averaged
over the tensors, so the large early feature maps do not drown the head outputs.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

# The fixed regions of the second stage: a GRID × GRID lattice of centres, with square boxes of
# these sides, as fractions of the input size.
REGION_GRID = 4
REGION_SIDES = (0.15, 0.3, 0.6)


def fixed_regions(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Return [GRID² × len(SIDES), 4] boxes (x1, y1, x2, y2) over an image, clipped to it."""
    boxes = []
    for row in range(REGION_GRID):
        for column in range(REGION_GRID):
            cx, cy = (column + 0.5) * width / REGION_GRID, (row + 0.5) * height / REGION_GRID
            for side in REGION_SIDES:
                half_w, half_h = side * width / 2, side * height / 2
                boxes.append([max(cx - half_w, 0.0), max(cy - half_h, 0.0), min(cx + half_w, width),
                              min(cy + half_h, height)])
    return torch.tensor(boxes, dtype=torch.float32, device=device)


def raw_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Return the pre-selection outputs of a BatchedDetector for a [B, 3, H, W] batch, each with the batch first."""
    detector = model.detector
    images, _ = detector.transform(list(x))
    features = detector.backbone(images.tensors)
    if isinstance(features, torch.Tensor):
        features = OrderedDict([("0", features)])
    maps = list(features.values())
    outputs = list(maps)
    batch = x.shape[0]
    if hasattr(detector, "rpn"):  # Faster R-CNN
        objectness, deltas = detector.rpn.head(maps)
        outputs += [*objectness, *deltas]
        height, width = images.tensors.shape[-2:]
        regions = [fixed_regions(height, width, x.device)] * batch
        heads = detector.roi_heads
        pooled = heads.box_roi_pool(features, regions, images.image_sizes)
        scores, offsets = heads.box_predictor(heads.box_head(pooled))
        outputs += [scores.reshape(batch, -1), offsets.reshape(batch, -1)]
    else:  # RetinaNet, FCOS and SSD return a dict of per-anchor tensors
        outputs += list(detector.head(maps).values())
    return outputs


class RawOutputs(nn.Module):
    """Holds a BatchedDetector as `model` and returns its pre-selection outputs, for `torch.func.functional_call`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return raw_outputs(self.model, x)


def discrepancy(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    """Return the sum over images of the mean, over tensors, of ‖output − reference‖² / ‖reference‖²."""
    per_tensor = []
    for output, target in zip(outputs, reference):
        output, target = output.float().flatten(1), target.float().flatten(1)
        scale = (target**2).sum(dim=1).clamp_min(1e-12)
        per_tensor.append(((output - target) ** 2).sum(dim=1) / scale)
    return torch.stack(per_tensor).mean(dim=0).sum()
