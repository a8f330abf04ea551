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
        raise WeightsError("weights file not found: {path}. Check the path passed to --weights.", path=file)
    if not file.is_file():
        raise WeightsError("weights path is not a file: {path}.", path=file)
    if file.stat().st_size == 0:
        raise WeightsError("weights file is empty: {path}.", path=file)

    if file.suffix == ".safetensors":
        try:
            loaded: object = load_safetensors(str(file), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(
                "cannot read safetensors file {path}: {reason}. The file may be truncated.", path=file, reason=str(exc)
            ) from exc
    else:
        try:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            rejected = _unsupported_global(exc)
            if rejected:
                raise WeightsError(
                    "rejected {path}: it is a pickle that needs more than tensors to load "
                    "(it references {name}), and loading it could run arbitrary code. Re-save "
                    "only the weights, with `torch.save(model.state_dict(), path)` or as .safetensors.",
                    path=file,
                    name=rejected,
                ) from exc
            raise WeightsError(
                "rejected {path}: it is a pickle that needs more than tensors to load "
                "(it references a class other than tensors and plain containers), and loading it could "
                "run arbitrary code. Re-save only the weights, with `torch.save(model.state_dict(), path)` "
                "or as .safetensors.",
                path=file,
            ) from exc
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            detail = str(exc).strip().rstrip(".")
            raise WeightsError(
                "cannot read weights file {path}: {reason}. It is not a PyTorch state dict or "
                "safetensors file, or it is truncated.",
                path=file,
                reason=detail,
            ) from exc

    return _unwrap(loaded, file)


def _unsupported_global(exc: Exception) -> str | None:
    """Return the class torch's weights-only unpickler rejected, from its error message, or None."""
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return match.group(1) if match else None


def _unwrap(loaded: object, file: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in _WRAPPER_KEYS:
            inner = loaded.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                loaded = inner
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise WeightsError(
            "weights file {path} contains no state dict (found {found}).", path=file, found=type(loaded).__name__
        )
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError("weights file {path} contains no tensors.", path=file)
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
        raise _misfit_error(source, missing, unexpected, mismatched)
    model.load_state_dict(state_dict, strict=True)


def _misfit_error(source: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> WeightsError:
    """Build the error for a state dict that does not fit, naming a few keys of each kind.

    Each combination of problems has its own whole-sentence template, so a translation can order
    the parts freely. A template ignores the fields it does not name.
    """
    fields = {
        "source": source,
        "missing": len(missing),
        "missing_keys": ", ".join(missing[:3]),
        "unexpected": len(unexpected),
        "unexpected_keys": ", ".join(unexpected[:3]),
        "mismatched": len(mismatched),
        "mismatched_keys": "; ".join(mismatched[:2]),
    }
    if missing and unexpected and mismatched:
        return WeightsError(
            "weights {source} do not fit the architecture: {missing} missing (e.g. {missing_keys}); "
            "{unexpected} unexpected (e.g. {unexpected_keys}); {mismatched} with other shapes "
            "(e.g. {mismatched_keys}). Check that the architecture name and --num-classes/--in-chans "
            "match the file.",
            **fields,
        )
    if missing and unexpected:
        return WeightsError(
            "weights {source} do not fit the architecture: {missing} missing (e.g. {missing_keys}); "
            "{unexpected} unexpected (e.g. {unexpected_keys}). Check that the architecture name and "
            "--num-classes/--in-chans match the file.",
            **fields,
        )
    if missing and mismatched:
        return WeightsError(
            "weights {source} do not fit the architecture: {missing} missing (e.g. {missing_keys}); "
            "{mismatched} with other shapes (e.g. {mismatched_keys}). Check that the architecture name "
            "and --num-classes/--in-chans match the file.",
            **fields,
        )
    if unexpected and mismatched:
        return WeightsError(
            "weights {source} do not fit the architecture: {unexpected} unexpected (e.g. {unexpected_keys}); "
            "{mismatched} with other shapes (e.g. {mismatched_keys}). Check that the architecture name "
            "and --num-classes/--in-chans match the file.",
            **fields,
        )
    if missing:
        return WeightsError(
            "weights {source} do not fit the architecture: {missing} missing (e.g. {missing_keys}). "
            "Check that the architecture name and --num-classes/--in-chans match the file.",
            **fields,
        )
    if unexpected:
        return WeightsError(
            "weights {source} do not fit the architecture: {unexpected} unexpected (e.g. {unexpected_keys}). "
            "Check that the architecture name and --num-classes/--in-chans match the file.",
            **fields,
        )
    return WeightsError(
        "weights {source} do not fit the architecture: {mismatched} with other shapes (e.g. {mismatched_keys}). "
        "Check that the architecture name and --num-classes/--in-chans match the file.",
        **fields,
    )
