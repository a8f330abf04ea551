"""Safe loading of weight files: safetensors, or a PyTorch state dict without arbitrary pickles."""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from torch import nn

from bench_engine.errors import WeightsError

# Checkpoints often wrap the state dict in one of these keys.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a .safetensors file or a PyTorch file, without running code.

    PyTorch files are read with `torch.load(weights_only=True)`, which only rebuilds tensors and
    plain containers; a file that needs any other class is rejected.
    """
    file = Path(path)
    if not file.exists():
        raise WeightsError(f"weights file not found: {file}. Check the path passed to --weights.")
    if not file.is_file():
        raise WeightsError(f"weights path is not a file: {file}.")
    if file.stat().st_size == 0:
        raise WeightsError(f"weights file is empty: {file}.")

    if file.suffix == ".safetensors":
        try:
            loaded: object = load_safetensors(str(file), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"cannot read safetensors file {file}: {exc}. The file may be truncated.") from exc
    else:
        try:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise WeightsError(
                f"rejected {file}: it is a pickle that needs more than tensors to load "
                f"({_unsupported_global(exc)}), and loading it could run arbitrary code. Re-save "
                "only the weights, with `torch.save(model.state_dict(), path)` or as .safetensors."
            ) from exc
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            detail = str(exc).strip().rstrip(".")
            raise WeightsError(
                f"cannot read weights file {file}: {detail}. It is not a PyTorch state dict or "
                "safetensors file, or it is truncated."
            ) from exc

    return _unwrap(loaded, file)


def _unsupported_global(exc: Exception) -> str:
    """Return the class torch's weights-only unpickler rejected, from its error message."""
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if match:
        return f"it references {match.group(1)}"
    return "it references a class other than tensors and plain containers"


def _unwrap(loaded: object, file: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in _WRAPPER_KEYS:
            inner = loaded.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                loaded = inner
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise WeightsError(f"weights file {file} contains no state dict (found {type(loaded).__name__}).")
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"weights file {file} contains no tensors.")
    # Checkpoints saved from DataParallel or torch.compile prefix every key.
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a state dict into a model; name the first mismatches when the two do not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} with other shapes (e.g. {'; '.join(mismatched[:2])})")
        raise WeightsError(
            f"weights {source} do not fit the architecture: {'; '.join(parts)}. Check that the "
            "architecture name and --num-classes/--in-chans match the file."
        )
    model.load_state_dict(state_dict, strict=True)
