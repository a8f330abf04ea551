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


# Instruction-set extensions that change which CPU kernels PyTorch and ONNX Runtime can use.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "sve")


def isa_flags() -> list[str]:
    """Return the ISA_FLAGS this CPU reports in /proc/cpuinfo (empty where that file is missing)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return []
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.lower().startswith(("flags", "features")):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in ISA_FLAGS if flag in present]
    return []


def gpu_profile() -> dict[str, Any]:
    """Return the CUDA device name, capability and driver-side CUDA version, or {} without a GPU."""
    if not torch.cuda.is_available():
        return {}
    major, minor = torch.cuda.get_device_capability()
    return {"gpu_name": torch.cuda.get_device_name(), "gpu_capability": f"{major}.{minor}", "cuda_version": torch.version.cuda}


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
        "isa_flags": isa_flags(),
        **gpu_profile(),
    }


def environment_key(profile: dict[str, Any]) -> str:
    """Return a short stable hash of a profile: the same machine and libraries give the same key."""
    encoded = json.dumps(profile, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]
