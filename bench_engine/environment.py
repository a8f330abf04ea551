"""The hardware and library profile that every measurement is stored with."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment_profile() -> dict[str, Any]:
    """Describe where measurements are taken. Only stable facts go in, so the key is stable."""
    import timm

    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "device": "cpu",
        "os": f"{platform.system()} {platform.release()}",
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "num_threads": torch.get_num_threads(),
    }


def environment_key(profile: dict[str, Any]) -> str:
    """Return a short stable hash of a profile: the same machine and libraries give the same key."""
    encoded = json.dumps(profile, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]
