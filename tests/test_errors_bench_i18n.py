"""Bench engine and store errors: literal templates whose English output reads as before."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from bench_engine.errors import InvalidConfigError, WeightsError
from bench_engine.latency_bench import LatencyPlan
from bench_engine.pruning.config import check_sparsity
from bench_engine.runner import BenchPlan
from bench_engine.runtimes import RuntimeUnavailableError, get_runtime
from bench_engine.weights import load_into
from db import DatabaseNotFoundError, Store


def expected_misfit(source: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    """The message `load_into` built by joining its parts, before each case got its own template."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        parts.append(f"{len(mismatched)} with other shapes (e.g. {'; '.join(mismatched[:2])})")
    return (
        f"weights {source} do not fit the architecture: {'; '.join(parts)}. Check that the "
        "architecture name and --num-classes/--in-chans match the file."
    )


@pytest.mark.parametrize("missing, unexpected, mismatched", [
    case for case in itertools.product([False, True], repeat=3) if any(case)
])
def test_load_into_misfit_message(missing, unexpected, mismatched):
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    state = {key: value.clone() for key, value in model.state_dict().items()}
    missing_keys, unexpected_keys, mismatched_rows = [], [], []
    if missing:
        del state["1.bias"]
        missing_keys = ["1.bias"]
    if unexpected:
        state["2.weight"] = torch.zeros(1)
        state["2.bias"] = torch.zeros(1)
        unexpected_keys = ["2.weight", "2.bias"]
    if mismatched:
        state["0.weight"] = torch.zeros(5, 4)
        mismatched_rows = ["0.weight: file (5, 4) vs model (3, 4)"]

    with pytest.raises(WeightsError) as caught:
        load_into(model, state, "w.pt")

    assert str(caught.value) == expected_misfit("w.pt", missing_keys, unexpected_keys, mismatched_rows)
    assert caught.value.template.startswith("weights {source} do not fit the architecture: ")
    assert caught.value.fields["source"] == "w.pt"


def test_sparsity_percentage_hint_template():
    with pytest.raises(InvalidConfigError) as caught:
        check_sparsity(50)
    assert str(caught.value).endswith("for example 0.5. If 50 is a percentage, use 0.5.")
    assert caught.value.fields == {"value": 50, "fraction": 0.5}


def test_sparsity_out_of_range_without_hint():
    with pytest.raises(InvalidConfigError) as caught:
        check_sparsity(150)
    assert str(caught.value).endswith("must be greater than 0 and less than 1, for example 0.5.")
    assert "percentage" not in caught.value.template


@pytest.mark.parametrize("plan", [
    BenchPlan(criteria=("magnitude",), runtimes=("torch-eager", "tensorrt")),
    LatencyPlan(runtimes=("torch-eager", "tensorrt")),
])
def test_unknown_runtime_matches_get_runtime(plan):
    with pytest.raises(RuntimeUnavailableError) as lookup:
        get_runtime("tensorrt")
    with pytest.raises(InvalidConfigError) as caught:
        plan.configs()
    assert str(caught.value) == str(lookup.value)
    assert caught.value.template == lookup.value.template


def test_store_error_translates_with_fields(tmp_path):
    path = tmp_path / "missing.duckdb"
    with pytest.raises(DatabaseNotFoundError) as caught:
        Store.open(path, read_only=True)
    assert str(caught.value).startswith(f"database not found: {path}. Run `ptsa demo`")
    japanese = {caught.value.template: "データベースが見つかりません: {path}。"}
    assert caught.value.localized(lambda text: japanese.get(text, text)) == f"データベースが見つかりません: {path}。"
