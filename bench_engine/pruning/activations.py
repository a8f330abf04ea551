"""Cached calibration activations within a memory budget, spilled to disk beyond it.

Reconstruction keeps a unit's inputs and targets for the whole calibration set. They grow fast
(ResNet-50's first stage outputs 256×56×56 floats per image, 3.2 MB, so 3.3 GB for 1,024 images).
Every store therefore draws on one shared `MemoryBudget`. Batches stay in memory while the
budget allows, are written to a temporary folder beyond it, and are read back one at a time.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 4 * 1024**3


class MemoryBudget:
    """Bytes of activations all stores of one reconstruction may keep in memory."""

    def __init__(self, limit_bytes: int = DEFAULT_BUDGET_BYTES, spill_dir: Path | None = None):
        if limit_bytes < 0:
            raise ValueError(f"memory budget must be at least 0 bytes, got {limit_bytes}")
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self.peak_bytes = 0
        self.spilled_bytes = 0
        self._spill_parent = spill_dir
        self._folder: Path | None = None
        self._files = 0

    def reserve(self, nbytes: int) -> bool:
        """Count `nbytes` as kept in memory if the budget allows; return False when they must spill."""
        if self.used_bytes + nbytes > self.limit_bytes:
            return False
        self.used_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.used_bytes)
        return True

    def release(self, nbytes: int) -> None:
        self.used_bytes -= nbytes

    def spill_path(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="ptsa-activations-", dir=self._spill_parent))
            log.info("activations beyond %.1f GiB spill to %s", self.limit_bytes / 1024**3, self._folder)
        self._files += 1
        return self._folder / f"{self._files:06d}.npy"

    def cleanup(self) -> None:
        """Delete the spill folder. Call it once reconstruction ends, also after an error."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> MemoryBudget:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


class ActivationStore:
    """An ordered list of activation batches, each in memory or in a spill file."""

    def __init__(self, budget: MemoryBudget):
        self._budget = budget
        self._batches: list[torch.Tensor | Path] = []
        self._shapes: list[tuple[int, ...]] = []
        self._in_memory_bytes = 0

    def append(self, batch: torch.Tensor) -> None:
        batch = batch.detach()
        nbytes = batch.numel() * batch.element_size()
        if self._budget.reserve(nbytes):
            self._batches.append(batch.to("cpu", copy=True) if batch.device.type != "cpu" else batch.clone())
            self._in_memory_bytes += nbytes
        else:
            path = self._budget.spill_path()
            np.save(path, batch.cpu().numpy())
            self._budget.spilled_bytes += nbytes
            self._batches.append(path)
        self._shapes.append(tuple(batch.shape))

    def __len__(self) -> int:
        return len(self._batches)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self._batches[index]
        if isinstance(item, Path):
            return torch.from_numpy(np.load(item))
        return item

    def __iter__(self):
        for index in range(len(self._batches)):
            yield self[index]

    @property
    def count(self) -> int:
        """Number of samples (images) over all batches."""
        return sum(shape[0] for shape in self._shapes)

    def clear(self) -> None:
        """Drop every batch and give its memory back to the budget."""
        for item in self._batches:
            if isinstance(item, Path):
                item.unlink(missing_ok=True)
        self._budget.release(self._in_memory_bytes)
        self._in_memory_bytes = 0
        self._batches.clear()
        self._shapes.clear()
