"""Peak memory of this process, read from Linux's /proc (None elsewhere), and of the CUDA device."""

from __future__ import annotations

from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Reset the process's peak resident memory (and CUDA's peak); False where that is not possible."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        # Writing 5 resets VmHWM to the current resident size (Linux 4.0 and later).
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def resident_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_resident_bytes() -> int | None:
    """Return the peak resident memory since the last `reset_peak`, or None off Linux."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def peak_cuda_bytes() -> int | None:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
