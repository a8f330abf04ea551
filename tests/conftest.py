"""Shared fixtures. Tests use real parts: DuckDB files in temporary folders, small timm models."""

from __future__ import annotations

import os

# Model hubs must never be contacted; the Makefile also exports this before Python starts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import uuid
from pathlib import Path

import pytest

from db import Store


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path_factory, monkeypatch):
    """Keep every test away from the user's data folder and database."""
    folder = tmp_path_factory.mktemp("ptsa-data")
    monkeypatch.setenv("PTSA_DATA_DIR", str(folder))
    monkeypatch.delenv("PTSA_DB", raising=False)
    return folder


@pytest.fixture
def tiny_setup(tmp_path):
    """A random-weight resnet10t with 3 classes, 30 small images in 3 class folders, a database path."""
    from test_inputs import save_tiny_resnet, write_images

    weights = tmp_path / "w.safetensors"
    save_tiny_resnet(weights, num_classes=3)
    for index, name in enumerate(("a", "b", "c")):
        write_images(tmp_path / "data" / name, 10, seed=index)
    return weights, tmp_path / "data", tmp_path / "r.duckdb"


def make_result(**overrides):
    """Return one complete measured result row, as the runner would store it."""
    row = {
        "result_id": uuid.uuid4().hex,
        "run_id": "fixture",
        "model_key": "mnist/resnet10t",
        "dataset": "mnist",
        "labelled": True,
        "provenance": "measured",
        "source": "ptsa test",
        "env_key": "env0",
        "criterion": "magnitude",
        "allocation": "uniform",
        "pattern": "unstructured",
        "recipe_json": json.dumps({"criterion": "magnitude"}),
        "layer_policy_json": "{}",
        "requested_sparsity": 0.5,
        "achieved_sparsity": 0.49,
        "achieved_sparsity_targeted": 0.5,
        "layer_sparsity_json": "{}",
        "skipped_layers_json": "{}",
        "calibration_size": 128,
        "calibration_seed": 0,
        "eval_size": 1000,
        "top1": 95.0,
        "top5": 99.0,
        "dense_top1": 97.0,
        "dense_top5": 99.5,
        "top1_agreement": 96.0,
        "kl_divergence": 0.05,
        "runtime": "torch-eager",
        "latency_batch_size": 1,
        "latency_p50_ms": 4.0,
        "latency_p90_ms": 4.5,
        "latency_warmup": 5,
        "latency_repeats": 30,
        "num_threads": 2,
        "prune_seconds": 0.1,
    }
    row.update(overrides)
    if "recipe_json" not in overrides:
        recipe = {"criterion": row["criterion"], "sparsity": row["requested_sparsity"], "pattern": row["pattern"],
                  "recipe": f"{row['allocation']}+{row['criterion']}+{row['pattern']}"}
        row["recipe_json"] = json.dumps(recipe, sort_keys=True)
    return row


def make_latency(**overrides):
    """Return one latency row, as `ptsa latency` would store it (magnitude, no result)."""
    row = {
        "latency_id": uuid.uuid4().hex,
        "run_id": "fixture-latency",
        "model_key": "mnist/resnet10t",
        "env_key": "env0",
        "runtime": "torch-sparse-csr",
        "batch_size": 1,
        "criterion": "magnitude",
        "requested_sparsity": 0.5,
        "pattern": "unstructured",
        "achieved_sparsity": 0.5,
        "sparse_kernel": "torch.sparse.mm CSR × dense for 1 Linear layers",
        "sparse_layers": 1,
        "max_abs_diff": 1e-6,
        "p50_ms": 3.0,
        "p90_ms": 3.2,
        "p99_ms": 3.5,
        "spread": 0.02,
        "throughput_per_s": 333.0,
        "warmup": 5,
        "repeats": 20,
        "num_threads": 2,
        "speedup": 1.5,
        "verdict": "CSR: 1.50× faster than dense",
        "weight_bytes_json": "{}",
        "protocol": "interleaved",
        "baseline_p50_ms": 4.5,
    }
    row.update(overrides)
    if row["criterion"] == "dense":
        row.update(sparse_kernel=None, sparse_layers=0, speedup=None, verdict=None, requested_sparsity=0.0,
                   pattern="dense", achieved_sparsity=0.0)
    return row


def insert_latency(store: Store, rows: list[dict]) -> None:
    names = list(dict.fromkeys(name for row in rows for name in row))
    store.insert_latency({n: [r.get(n) for r in rows] for n in names})


def insert_rows(store: Store, rows: list[dict]) -> None:
    names = list(dict.fromkeys(name for row in rows for name in row))
    store.insert_results({n: [r.get(n) for r in rows] for n in names})


@pytest.fixture
def fixture_db(tmp_path) -> Path:
    """A database with a small, hand-made set of candidates on two datasets."""
    path = tmp_path / "fixture.duckdb"
    rows = [
        make_result(model_key="mnist/resnet10t", criterion="dense", allocation="none", pattern="dense",
                    requested_sparsity=0.0, achieved_sparsity=0.0, top1=97.0, latency_p90_ms=4.5),
        make_result(model_key="mnist/resnet10t", criterion="magnitude", requested_sparsity=0.5,
                    achieved_sparsity=0.49, top1=96.0, latency_p90_ms=4.6),
        make_result(model_key="mnist/resnet10t", criterion="sparsegpt", requested_sparsity=0.7,
                    achieved_sparsity=0.69, top1=95.5, latency_p90_ms=4.4),
        make_result(model_key="mnist/convnext_atto", criterion="dense", allocation="none", pattern="dense",
                    requested_sparsity=0.0, achieved_sparsity=0.0, top1=93.0, dense_top1=93.0, latency_p90_ms=9.0),
        make_result(model_key="mnist/convnext_atto", criterion="wanda", requested_sparsity=0.5,
                    achieved_sparsity=0.5, top1=92.0, dense_top1=93.0, latency_p90_ms=9.1),
        make_result(model_key="mnist/vit_tiny", criterion="wanda", pattern="2:4", requested_sparsity=0.5,
                    achieved_sparsity=0.45, top1=80.0, dense_top1=87.0, latency_p90_ms=None, latency_p50_ms=None),
        make_result(model_key="efficientnet_lite0", dataset="photos", labelled=False, criterion="sparsegpt",
                    requested_sparsity=0.5, top1=None, top5=None, dense_top1=None, dense_top5=None,
                    top1_agreement=88.0, latency_p90_ms=15.0, latency_p50_ms=14.0),
    ]
    with Store.open(path) as store:
        insert_rows(store, rows)
        store.upsert_environment("env0", {"cpu_model": "Test CPU", "cpu_count": 2, "device": "cpu"})
    return path


@pytest.fixture(scope="session")
def digits_detector_dir(tmp_path_factory):
    """A data folder holding the digits detection set and the named digits detector, trained once per session."""
    from bench_engine.detection import detectors

    folder = tmp_path_factory.mktemp("digits-detector")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PTSA_DATA_DIR", str(folder))
        detectors.ensure_digits_detector()
    return folder
