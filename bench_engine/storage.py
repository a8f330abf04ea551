"""Bytes a pruned model's weights take in each storage format, counted from the weights themselves.

A zero saves memory only in a format that leaves it out. For each Conv2d and Linear weight,
viewed as a matrix of out_channels rows and in_channels/groups × kh × kw columns:

- dense: every element;
- CSR: the non-zero values, one column index per value and rows + 1 row pointers;
- bitmask: one bit per element (rounded up to whole bytes) and the non-zero values;
- 2:4 semi-structured: half the elements as values plus 2 bits of position metadata per kept
  value, so 9/16 of dense at 16-bit precision and 5/8 at 8-bit. It applies only where every
  group of 4 consecutive inputs has at most 2 non-zeros; other layers are counted dense.

The counts are exact for the given value and index widths. What a runtime allocates on top of
them (alignment, padding, kernel workspaces) is not included.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch
from torch import nn

FORMATS = ("dense", "csr", "bitmask", "semi_structured_2_4")


@dataclass
class LayerStorage:
    """Weight bytes of one layer in every format."""

    name: str
    rows: int
    columns: int
    nonzeros: int
    fits_2_4: bool
    bytes: dict[str, int] = field(default_factory=dict)


@dataclass
class ModelStorage:
    """Weight bytes of a model's Conv2d and Linear layers, per format and per layer."""

    layers: list[LayerStorage]
    value_bytes: int
    index_bytes: int

    def total(self, storage_format: str) -> int:
        if storage_format not in FORMATS:
            raise ValueError(f"unknown storage format {storage_format!r}; choose one of {', '.join(FORMATS)}")
        return sum(layer.bytes[storage_format] for layer in self.layers)

    def best(self) -> tuple[str, int]:
        """Return the smallest format over the whole model and its bytes."""
        totals = {name: self.total(name) for name in FORMATS}
        smallest = min(totals, key=totals.get)
        return smallest, totals[smallest]


def matrix_view(weight: torch.Tensor) -> torch.Tensor:
    """Return the weight as (out_channels, inputs per output), inputs ordered (kh, kw, cin)."""
    if weight.dim() == 2:
        return weight
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def fits_two_four(matrix: torch.Tensor) -> bool:
    """True when every group of 4 consecutive inputs in each row has at most 2 non-zeros."""
    if matrix.shape[1] % 4:
        return False
    groups = (matrix != 0).reshape(matrix.shape[0], -1, 4).sum(dim=2)
    return bool((groups <= 2).all())


def layer_storage(name: str, weight: torch.Tensor, value_bytes: int, index_bytes: int) -> LayerStorage:
    """Count the bytes of one weight tensor in every format."""
    matrix = matrix_view(weight.detach())
    rows, columns = matrix.shape
    numel = rows * columns
    nonzeros = int((matrix != 0).sum())
    fits = fits_two_four(matrix)
    dense = numel * value_bytes
    sizes = {
        "dense": dense,
        "csr": nonzeros * (value_bytes + index_bytes) + (rows + 1) * index_bytes,
        "bitmask": math.ceil(numel / 8) + nonzeros * value_bytes,
        # Half the elements are stored, each with a 2-bit position inside its group of 4.
        "semi_structured_2_4": (numel // 2) * value_bytes + math.ceil(numel // 2 * 2 / 8) if fits else dense,
    }
    return LayerStorage(name, rows, columns, nonzeros, fits, sizes)


def model_storage(model: nn.Module, value_bytes: int = 4, index_bytes: int = 4) -> ModelStorage:
    """Count the weight bytes of every Conv2d and Linear layer of `model`.

    `value_bytes` is the width of one stored weight (4 for float32, 2 for float16, 1 for int8),
    and `index_bytes` the width of one CSR index (4 for int32 indices, 8 for PyTorch's default
    int64).
    """
    if value_bytes not in (1, 2, 4, 8):
        raise ValueError(f"value width must be 1, 2, 4 or 8 bytes, got {value_bytes}")
    if index_bytes not in (2, 4, 8):
        raise ValueError(f"index width must be 2, 4 or 8 bytes, got {index_bytes}")
    layers = [
        layer_storage(name, module.weight, value_bytes, index_bytes)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    return ModelStorage(layers, value_bytes, index_bytes)


def weight_bytes_json(model: torch.nn.Module) -> str:
    """Return the model's Conv2d and Linear weight bytes per storage format, as stored JSON."""
    storage = model_storage(model, value_bytes=4, index_bytes=4)
    return json.dumps({name: storage.total(name) for name in FORMATS})
