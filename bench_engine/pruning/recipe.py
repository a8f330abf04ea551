"""Recipes: a technique combination written as one line or a TOML file, parsed into PruneConfig.

One-line form: terms joined by '+', each a name with optional parameters, for example

    erk(power=0.5)+sparsegpt(damping=0.02)+bias_correction+bn_reestimation
    wanda+2:4

A recipe names exactly one criterion, at most one allocation (default uniform), at most one
pattern (default unstructured), at most one reconstruction (layer_recon or block_recon) and any
error corrections, for example

    learned(steps=200)+sparsegpt+weight_correction+block_recon(input=sparse, steps=500)
 The TOML form has a [recipe] table with the keys criterion, allocation, pattern,
corrections, reconstruction and the parameter fields of PruneConfig (see _TOML_KEYS).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from bench_engine.errors import InvalidConfigError
from bench_engine.pruning.config import ALLOCATIONS, CORRECTIONS, CRITERIA, PruneConfig, parse_pattern
from bench_engine.pruning.layers import LayerPolicy

# Parameters each term accepts: recipe name -> PruneConfig field.
_PARAMETERS: dict[str, dict[str, str]] = {
    "erk": {"power": "erk_power"},
    "global_magnitude": {"max_layer_sparsity": "max_layer_sparsity"},
    "l2_global": {"max_layer_sparsity": "max_layer_sparsity"},
    "owl": {"band": "owl_band", "threshold": "owl_threshold"},
    "learned": {"steps": "learned_steps", "lr": "learned_lr", "penalty": "learned_penalty"},
    "layer_recon": {"input": "recon_input", "steps": "recon_steps", "lr": "recon_lr", "batch": "recon_batch",
                    "early_stop": "recon_early_stop"},
    "block_recon": {"input": "recon_input", "steps": "recon_steps", "lr": "recon_lr", "batch": "recon_batch",
                    "early_stop": "recon_early_stop"},
    "sparsegpt": {"blocksize": "sparsegpt_blocksize", "damping": "sparsegpt_damping"},
}
_INTEGER_FIELDS = {"sparsegpt_blocksize", "recon_steps", "recon_batch", "learned_steps"}
_STRING_FIELDS = {"recon_input"}
_RECONSTRUCTION_TERMS = {"layer_recon": "layer", "block_recon": "block"}
_TERM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*|\d+:\d+)\s*(?:\((.*)\))?\s*$")
_TOML_KEYS = {"criterion", "allocation", "pattern", "corrections", "erk_power", "max_layer_sparsity",
              "owl_band", "owl_threshold", "sparsegpt_blocksize", "sparsegpt_damping", "reconstruction",
              "recon_input", "recon_steps", "recon_lr", "recon_batch", "recon_early_stop", "learned_steps",
              "learned_lr", "learned_penalty"}


def _split_terms(text: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "+" and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return terms


def _parse_value(term: str, key: str, raw: str, field: str) -> float | int | str:
    if field in _STRING_FIELDS:
        return raw
    try:
        return int(raw) if field in _INTEGER_FIELDS else float(raw)
    except ValueError:
        if field in _INTEGER_FIELDS:
            raise InvalidConfigError(
                "recipe term {term!r}: {key}={value!r} is not an integer.", term=term, key=key, value=raw
            ) from None
        raise InvalidConfigError(
            "recipe term {term!r}: {key}={value!r} is not a number.", term=term, key=key, value=raw
        ) from None


def parse_recipe_line(text: str) -> dict[str, Any]:
    """Parse a one-line recipe into PruneConfig keyword arguments (without sparsity and policy)."""
    if not text.strip():
        raise InvalidConfigError("recipe is empty; give for example 'uniform+wanda'.")
    fields: dict[str, Any] = {"corrections": []}
    terms: dict[str, str] = {}  # slot -> the term that filled it, for error messages
    for term in _split_terms(text):
        match = _TERM.match(term)
        if not match:
            raise InvalidConfigError(
                "recipe term {term!r} is invalid; write NAME or NAME(key=value, ...).", term=term.strip()
            )
        name, arguments = match.group(1).lower(), match.group(2)
        if name in CRITERIA:
            slot = "criterion"
        elif name in ALLOCATIONS:
            slot = "allocation"
        elif name == "unstructured" or ":" in name:
            slot = "pattern"
        elif name in CORRECTIONS:
            fields["corrections"].append(name)
            slot = None
        elif name in _RECONSTRUCTION_TERMS:
            slot = "reconstruction"
        else:
            known = ", ".join((*CRITERIA, *ALLOCATIONS, *CORRECTIONS, *_RECONSTRUCTION_TERMS, "unstructured", "N:M"))
            raise InvalidConfigError("unknown recipe term {name!r}; known terms: {known}.", name=name, known=known)
        if slot is not None:
            if slot in fields:
                raise InvalidConfigError(
                    "recipe {recipe!r} names more than one {slot} ({first!r} and {second!r}); keep one of them.",
                    recipe=text,
                    slot=slot,
                    first=terms[slot],
                    second=name,
                )
            fields[slot] = _RECONSTRUCTION_TERMS[name] if slot == "reconstruction" else name
            terms[slot] = name
        if arguments is not None and arguments.strip():
            allowed = _PARAMETERS.get(name, {})
            seen_keys: set[str] = set()
            for pair in arguments.split(","):
                key, sep, raw = pair.partition("=")
                key = key.strip()
                if not sep or key not in allowed:
                    if not allowed:
                        raise InvalidConfigError(
                            "recipe term {name!r} has no parameter {key!r}; its parameters: none.", name=name, key=key
                        )
                    raise InvalidConfigError(
                        "recipe term {name!r} has no parameter {key!r}; its parameters: {options}.",
                        name=name,
                        key=key,
                        options=", ".join(allowed),
                    )
                if key in seen_keys:
                    raise InvalidConfigError("recipe term {name!r} sets {key} twice; give it once.", name=name, key=key)
                seen_keys.add(key)
                fields[allowed[key]] = _parse_value(name, key, raw.strip(), allowed[key])
    if "criterion" not in fields:
        raise InvalidConfigError(
            "recipe {recipe!r} names no criterion; add one of {choices}.", recipe=text, choices=", ".join(CRITERIA)
        )
    return fields


def parse_recipe_file(path: Path) -> dict[str, Any]:
    """Parse a TOML recipe file with a [recipe] table into PruneConfig keyword arguments."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidConfigError("cannot read recipe file {path}: {reason}.", path=path, reason=str(exc)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfigError("recipe file {path} is not valid TOML: {reason}.", path=path, reason=str(exc)) from exc
    table = document.get("recipe")
    if not isinstance(table, dict):
        raise InvalidConfigError("recipe file {path} has no [recipe] table.", path=path)
    unknown = sorted(set(table) - _TOML_KEYS)
    if unknown:
        raise InvalidConfigError(
            "recipe file {path}: unknown key {key!r}; known keys: {known}.",
            path=path,
            key=unknown[0],
            known=", ".join(sorted(_TOML_KEYS)),
        )
    fields = dict(table)
    if not isinstance(fields.get("corrections", []), list):
        raise InvalidConfigError(
            "recipe file {path}: corrections must be a list of names, got {value!r}; "
            'write for example corrections = ["bias_correction"].',
            path=path,
            value=fields["corrections"],
        )
    fields["corrections"] = list(fields.get("corrections", []))
    if "criterion" not in fields:
        raise InvalidConfigError(
            "recipe file {path} names no criterion; add criterion = \"wanda\" for example.", path=path
        )
    _check_toml_types(path, fields)
    _check_toml_parameters_used(path, fields)
    return fields


def _check_toml_types(path: Path, fields: dict[str, Any]) -> None:
    for key, value in fields.items():
        if key == "corrections":
            if not all(isinstance(item, str) for item in value):
                raise InvalidConfigError(
                    "recipe file {path}: corrections must be a list of names, got {value!r}.", path=path, value=value
                )
        elif key in _INTEGER_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidConfigError(
                    "recipe file {path}: {key} = {value!r} is not an integer.", path=path, key=key, value=value
                )
        elif key in _STRING_FIELDS or key in ("criterion", "allocation", "pattern", "reconstruction"):
            if not isinstance(value, str):
                raise InvalidConfigError(
                    "recipe file {path}: {key} = {value!r} is not a string; write it in quotes.",
                    path=path,
                    key=key,
                    value=value,
                )
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidConfigError(
                "recipe file {path}: {key} = {value!r} is not a number.", path=path, key=key, value=value
            )


# TOML parameter keys and the setting they belong to: (key of that setting, values that use them).
_PARAMETER_OWNERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "erk_power": ("allocation", ("erk",)),
    "max_layer_sparsity": ("allocation", ("global_magnitude", "l2_global")),
    "owl_band": ("allocation", ("owl",)),
    "owl_threshold": ("allocation", ("owl",)),
    "learned_steps": ("allocation", ("learned",)),
    "learned_lr": ("allocation", ("learned",)),
    "learned_penalty": ("allocation", ("learned",)),
    "sparsegpt_blocksize": ("criterion", ("sparsegpt",)),
    "sparsegpt_damping": ("criterion", ("sparsegpt",)),
    "recon_input": ("reconstruction", ("layer", "block")),
    "recon_steps": ("reconstruction", ("layer", "block")),
    "recon_lr": ("reconstruction", ("layer", "block")),
    "recon_batch": ("reconstruction", ("layer", "block")),
    "recon_early_stop": ("reconstruction", ("layer", "block")),
}
_DEFAULTS = {"allocation": "uniform", "reconstruction": "none"}


def _check_toml_parameters_used(path: Path, fields: dict[str, Any]) -> None:
    """Reject a parameter whose technique the file does not select; it would be ignored."""
    for key, (owner, users) in _PARAMETER_OWNERS.items():
        if key in fields:
            selected = fields.get(owner, _DEFAULTS.get(owner))
            if selected not in users:
                raise InvalidConfigError(
                    "recipe file {path}: {key} is set but {owner} is {selected!r}, so it would be ignored; "
                    "set {owner} = \"{value}\" or remove {key}.",
                    path=path,
                    key=key,
                    owner=owner,
                    selected=selected,
                    value=users[0],
                )


def resolve_recipe(recipe: str, sparsity: float | None, policy: LayerPolicy) -> PruneConfig:
    """Build a validated PruneConfig from a one-line recipe or the path of a TOML recipe file.

    `sparsity` may be None when the recipe's N:M pattern fixes it.
    """
    path = Path(recipe)
    fields = parse_recipe_file(path) if recipe.endswith(".toml") else parse_recipe_line(recipe)
    pattern = parse_pattern(str(fields.pop("pattern", "unstructured")))
    if pattern is not None:
        sparsity = 1.0 - pattern[0] / pattern[1]
    if sparsity is None:
        raise InvalidConfigError("recipe {recipe!r} needs a sparsity; pass --sparsity.", recipe=recipe)
    corrections = tuple(fields.pop("corrections"))
    try:
        return PruneConfig(sparsity=sparsity, pattern=pattern, policy=policy, corrections=corrections, **fields)
    except TypeError as exc:
        raise InvalidConfigError("recipe {recipe!r} is invalid: {reason}.", recipe=recipe, reason=str(exc)) from exc
