"""Validated pruning configuration: criterion, allocation, sparsity and pattern."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from bench_engine.errors import InvalidConfigError
from bench_engine.pruning.layers import LayerPolicy

CRITERIA = ("magnitude", "wanda", "sparsegpt")
ALLOCATIONS = ("uniform", "erk", "global_magnitude", "l2_global", "owl", "sensitivity", "learned")
# Error corrections applied after pruning, in this order.
CORRECTIONS = ("weight_correction", "bias_correction", "bn_reestimation")
# Reconstruction granularity; the recipe terms are layer_recon and block_recon.
RECONSTRUCTIONS = ("none", "layer", "block")

_PATTERN_RE = re.compile(r"^(\d+):(\d+)$")


def parse_pattern(text: str) -> tuple[int, int] | None:
    """Parse 'unstructured' to None and 'N:M' (for example '2:4') to (N, M).

    N is the number of weights kept in each group of M consecutive input weights.
    """
    value = text.strip().lower()
    if value == "unstructured":
        return None
    match = _PATTERN_RE.match(value)
    if not match:
        raise InvalidConfigError(
            "invalid pattern {text!r}: use 'unstructured' or N:M such as '2:4' "
            "(keep N of every M input weights).",
            text=text,
        )
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise InvalidConfigError("invalid pattern {text!r}: N:M needs 0 < N < M, for example '2:4'.", text=text)
    return n, m


def format_pattern(n_m: tuple[int, int] | None) -> str:
    return "unstructured" if n_m is None else f"{n_m[0]}:{n_m[1]}"


def check_sparsity(value: float) -> float:
    """Validate a requested sparsity, a fraction of weights set to zero."""
    try:
        sparsity = float(value)
    except (TypeError, ValueError):
        raise InvalidConfigError(
            "invalid sparsity {value!r}: give a fraction between 0 and 1, for example 0.5.", value=value
        ) from None
    if 1.0 < sparsity < 100.0:
        raise InvalidConfigError(
            "sparsity {value!r} is out of range: it is the fraction of weights set to zero and "
            "must be greater than 0 and less than 1, for example 0.5. If {value} is a percentage, "
            "use {fraction:g}.",
            value=value,
            fraction=sparsity / 100,
        )
    if sparsity != sparsity or not 0.0 < sparsity < 1.0:
        raise InvalidConfigError(
            "sparsity {value!r} is out of range: it is the fraction of weights set to zero and "
            "must be greater than 0 and less than 1, for example 0.5.",
            value=value,
        )
    return sparsity


@dataclass(frozen=True)
class PruneConfig:
    """One pruning technique combination, resolved and validated.

    `sparsity` is the requested fraction of zeros over the layers the policy targets. For an
    N:M pattern it must equal 1 - N/M, because the pattern fixes each layer's sparsity.
    """

    criterion: str
    sparsity: float
    allocation: str = "uniform"
    pattern: tuple[int, int] | None = None
    policy: LayerPolicy = field(default_factory=LayerPolicy)
    # ERK: exponent of (sum of dimensions / product of dimensions); 1.0 is the published default.
    erk_power: float = 1.0
    # global_magnitude and l2_global: no layer is pruned beyond this sparsity.
    max_layer_sparsity: float = 1.0
    # OWL: layer sparsities spread over target ± owl_band. A score is an outlier above
    # owl_threshold × the layer's mean score. 0.08 and 5 are the defaults OWL published for LLMs.
    owl_band: float = 0.08
    owl_threshold: float = 5.0
    # Learned allocation: Adam steps, learning rate and weight of the global sparsity penalty.
    learned_steps: int = 100
    learned_lr: float = 0.05
    learned_penalty: float = 10.0
    corrections: tuple[str, ...] = ()
    # Reconstruction after pruning: 'none', 'layer' (each layer alone) or 'block' (each residual
    # or transformer block), fed with the dense model's inputs ('dense') or the pruned model's
    # ('sparse'). Steps count per layer or block, and a batch is calibration images per step.
    # A fit stops early once its loss falls below recon_early_stop × its first loss.
    reconstruction: str = "none"
    recon_input: str = "dense"
    recon_steps: int = 200
    recon_lr: float = 1e-4
    recon_batch: int = 32
    recon_early_stop: float = 1e-3
    # SparseGPT: columns updated together, and Hessian damping as a fraction of its mean diagonal.
    sparsegpt_blocksize: int = 128
    sparsegpt_damping: float = 0.01

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise InvalidConfigError(
                "unknown criterion {name!r}; choose one of {choices}.",
                name=self.criterion,
                choices=", ".join(CRITERIA),
            )
        if self.allocation not in ALLOCATIONS:
            raise InvalidConfigError(
                "unknown allocation {name!r}; choose one of {choices}.",
                name=self.allocation,
                choices=", ".join(ALLOCATIONS),
            )
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity))
        if self.pattern is not None:
            n, m = self.pattern
            pattern_sparsity = 1.0 - n / m
            if abs(self.sparsity - pattern_sparsity) > 1e-9:
                raise InvalidConfigError(
                    "sparsity {sparsity:g} does not match pattern {n}:{m}, which fixes "
                    "each pruned layer at {pattern_sparsity:g}; request {pattern_sparsity:g}.",
                    sparsity=self.sparsity,
                    n=n,
                    m=m,
                    pattern_sparsity=pattern_sparsity,
                )
            if self.allocation != "uniform":
                raise InvalidConfigError(
                    "allocation {allocation!r} cannot be combined with pattern {n}:{m}; "
                    "an N:M pattern fixes every layer's sparsity, so use allocation 'uniform'.",
                    allocation=self.allocation,
                    n=n,
                    m=m,
                )
        if not self.erk_power > 0:
            raise InvalidConfigError("erk_power must be positive, got {value}; 0.5 or 1.0 are usual.", value=self.erk_power)
        if not 0.0 < self.max_layer_sparsity <= 1.0:
            raise InvalidConfigError(
                "max_layer_sparsity must be in (0, 1], got {value}; for example 0.9.", value=self.max_layer_sparsity
            )
        if not 0.0 <= self.owl_band < 0.5:
            raise InvalidConfigError("owl_band must be in [0, 0.5), got {value}; 0.08 is usual.", value=self.owl_band)
        if not self.owl_threshold > 1.0:
            raise InvalidConfigError(
                "owl_threshold must be greater than 1, got {value}; 5 is usual.", value=self.owl_threshold
            )
        unknown = [c for c in self.corrections if c not in CORRECTIONS]
        if unknown:
            raise InvalidConfigError(
                "unknown correction {name!r}; choose from {choices}.", name=unknown[0], choices=", ".join(CORRECTIONS)
            )
        if self.reconstruction not in RECONSTRUCTIONS:
            raise InvalidConfigError(
                "unknown reconstruction {name!r}; choose one of {choices}.",
                name=self.reconstruction,
                choices=", ".join(RECONSTRUCTIONS),
            )
        if self.recon_input not in ("dense", "sparse"):
            raise InvalidConfigError(
                "reconstruction input {value!r} is invalid; use dense or sparse.", value=self.recon_input
            )
        if self.recon_steps < 1:
            raise InvalidConfigError("reconstruction steps must be at least 1, got {value}.", value=self.recon_steps)
        if not 0.0 < self.recon_lr < 1.0:
            raise InvalidConfigError(
                "reconstruction learning rate must be in (0, 1), got {value}; 1e-4 is usual.", value=self.recon_lr
            )
        if self.recon_batch < 1:
            raise InvalidConfigError(
                "reconstruction batch must be at least 1 image, got {value}; 32 is usual.", value=self.recon_batch
            )
        if not 0.0 <= self.recon_early_stop < 1.0:
            raise InvalidConfigError(
                "reconstruction early_stop must be in [0, 1), got {value}; 1e-3 is usual, 0 turns it off.",
                value=self.recon_early_stop,
            )
        if self.learned_steps < 1:
            raise InvalidConfigError(
                "learned allocation steps must be at least 1, got {value}; 100 is usual.", value=self.learned_steps
            )
        if not 0.0 < self.learned_lr < 10.0:
            raise InvalidConfigError(
                "learned allocation lr must be in (0, 10), got {value}; 0.05 is usual.", value=self.learned_lr
            )
        if not self.learned_penalty > 0:
            raise InvalidConfigError(
                "learned allocation penalty must be positive, got {value}; 10 is usual.", value=self.learned_penalty
            )
        ordered = tuple(c for c in CORRECTIONS if c in self.corrections)
        object.__setattr__(self, "corrections", ordered)
        if self.sparsegpt_blocksize < 1:
            raise InvalidConfigError(
                "sparsegpt_blocksize must be at least 1, got {value}.", value=self.sparsegpt_blocksize
            )
        if not 0.0 < self.sparsegpt_damping < 1.0:
            raise InvalidConfigError(
                "sparsegpt_damping must be in (0, 1), got {value}; 0.01 is usual.", value=self.sparsegpt_damping
            )

    @property
    def pattern_name(self) -> str:
        return format_pattern(self.pattern)

    def recipe(self) -> str:
        """Return the canonical one-line recipe, with every parameter spelled out."""
        terms = []
        if self.allocation == "erk":
            terms.append(f"erk(power={self.erk_power:g})")
        elif self.allocation in ("global_magnitude", "l2_global"):
            terms.append(f"{self.allocation}(max_layer_sparsity={self.max_layer_sparsity:g})")
        elif self.allocation == "owl":
            terms.append(f"owl(band={self.owl_band:g}, threshold={self.owl_threshold:g})")
        elif self.allocation == "learned":
            terms.append(f"learned(steps={self.learned_steps}, lr={self.learned_lr:g}, penalty={self.learned_penalty:g})")
        else:
            terms.append(self.allocation)
        if self.criterion == "sparsegpt":
            terms.append(f"sparsegpt(blocksize={self.sparsegpt_blocksize}, damping={self.sparsegpt_damping:g})")
        else:
            terms.append(self.criterion)
        if self.reconstruction != "none":
            terms.append(
                f"{self.reconstruction}_recon(input={self.recon_input}, steps={self.recon_steps}, lr={self.recon_lr:g}, "
                f"batch={self.recon_batch}, early_stop={self.recon_early_stop:g})"
            )
        terms.extend(self.corrections)
        terms.append(self.pattern_name)
        return "+".join(terms)

    def to_dict(self) -> dict[str, Any]:
        """Return the full resolved configuration, as stored with every result."""
        data = asdict(self)
        data["recipe"] = self.recipe()
        data["pattern"] = self.pattern_name
        data["policy"] = self.policy.to_dict()
        data["corrections"] = list(self.corrections)
        if self.criterion != "sparsegpt":
            data.pop("sparsegpt_blocksize")
            data.pop("sparsegpt_damping")
        if self.allocation != "erk":
            data.pop("erk_power")
        if self.allocation not in ("global_magnitude", "l2_global"):
            data.pop("max_layer_sparsity")
        if self.reconstruction == "none":
            for key in ("recon_input", "recon_steps", "recon_lr", "recon_batch", "recon_early_stop"):
                data.pop(key)
        if self.allocation != "owl":
            data.pop("owl_band")
            data.pop("owl_threshold")
        if self.allocation != "learned":
            for key in ("learned_steps", "learned_lr", "learned_penalty"):
                data.pop(key)
        return data
