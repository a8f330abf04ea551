"""The `ptsa` command line: output, JSON schema, exit codes and error messages."""

from __future__ import annotations

import json
import pickle

import pytest
from click.testing import CliRunner

from advisor.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def test_recommend_json(runner, fixture_db):
    result = runner.invoke(main, ["--db", str(fixture_db), "recommend", "--dataset", "mnist",
                                  "--max-latency-ms", "5", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["status"] == "ok"
    assert payload["candidates_meeting_budget"] == 3
    first = payload["candidates"][0]
    assert first["rank"] == 1
    assert first["model_key"] == "mnist/resnet10t"
    assert first["criterion"] == "dense"
    assert first["method"] == "dense"
    assert first["recipe"] == "dense"
    pruned = next(c for c in payload["candidates"] if c["criterion"] != "dense")
    assert pruned["method"].startswith(pruned["criterion"])
    assert pruned["recipe"].endswith("+unstructured") or pruned["recipe"].endswith("+2:4")
    assert set(first["evidence"]) >= {"provenance", "env_key", "run_id", "result_id"}
    assert first["latency"]["runtime"] == "torch-eager"
    assert first["latency"]["profile"] == "env0"
    assert first["evidence"]["provenance"] == "measured"
    assert first["binding_constraint"] == "max_latency_ms"


def test_recommend_table(runner, fixture_db):
    result = runner.invoke(main, ["--db", str(fixture_db), "recommend", "--dataset", "mnist", "--max-drop", "1.5",
                                  "--objective", "sparsity"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("5 of 6 candidates meet the budget")
    assert "sparsegpt" in lines[3]
    assert "mnist/resnet10t" in lines[3]
    assert "No sparse kernel ran on torch-eager" in result.stdout
    assert "latency p90 on torch-eager at batch 1, profile env0 (Test CPU" in lines[0]


def test_recommend_nothing_fits_exits_3(runner, fixture_db):
    result = runner.invoke(main, ["--db", str(fixture_db), "recommend", "--max-latency-ms", "1", "--json"])
    assert result.exit_code == 3
    payload = json.loads(result.stdout)
    assert payload["status"] == "no_candidate"
    assert payload["binding_constraint"] == "max_latency_ms"
    assert payload["nearest"]
    text = runner.invoke(main, ["--db", str(fixture_db), "recommend", "--max-latency-ms", "1"])
    assert text.exit_code == 3
    assert "No candidate meets the budget: max latency rules out" in text.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--min-accuracy", "120"], "between 0 and 100"),
        (["--max-latency-ms", "-3"], "positive number of milliseconds"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_recommend_invalid_budget_exits_2(runner, fixture_db, args, message):
    result = runner.invoke(main, ["--db", str(fixture_db), "recommend", *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_recommend_unknown_dataset_lists_known_ones(runner, fixture_db):
    result = runner.invoke(main, ["--db", str(fixture_db), "recommend", "--dataset", "cifar10"])
    assert result.exit_code == 2
    assert "no results for dataset 'cifar10'" in result.stderr
    assert "imagenet, mnist, photos" in result.stderr  # imagenet: the published evidence


@pytest.mark.parametrize("args", [["--limit", "0"], ["--limit", "-3"], ["--batch-size", "-1"]])
def test_recommend_rejects_non_positive_counts(runner, fixture_db, args):
    result = runner.invoke(main, ["--db", str(fixture_db), "recommend", *args])
    assert result.exit_code == 2
    assert args[0] in result.stderr


def test_recommend_missing_database(runner, tmp_path):
    path = tmp_path / "none.duckdb"
    result = runner.invoke(main, ["--db", str(path), "recommend"])
    assert result.exit_code == 2
    assert "database not found" in result.stderr
    assert "ptsa demo" in result.stderr
    assert not path.exists()


def test_recommend_empty_database_gets_the_published_evidence(runner, tmp_path):
    from db import Store

    path = tmp_path / "empty.duckdb"
    Store.open(path).close()
    result = runner.invoke(main, ["--db", str(path), "recommend", "--dataset", "imagenet", "--min-accuracy", "70",
                                  "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["candidates"]
    assert {c["evidence"]["provenance"] for c in payload["candidates"]} == {"published"}
    assert all(c["evidence"]["source"] for c in payload["candidates"])  # every row cites its source
    mnist = runner.invoke(main, ["--db", str(path), "recommend", "--dataset", "mnist"])
    assert mnist.exit_code == 2
    assert "no results for dataset 'mnist'; it has results for imagenet" in mnist.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["not_a_model", "--data", "mnist"], "unknown model 'not_a_model'"),
        (["mnist/nope", "--data", "mnist"], "unknown MNIST baseline 'mnist/nope'"),
        (["mnist/resnet10t", "--data", "mnist", "--sparsity", "1.5"], "sparsity 1.5 is out of range"),
        (["mnist/resnet10t", "--data", "mnist", "--sparsity", "50"], "is a percentage, use 0.5"),
        (["mnist/resnet10t", "--data", "mnist", "--criterion", "obs"], "unknown criterion 'obs'"),
        (["mnist/resnet10t", "--data", "mnist", "--pattern", "2-4"], "invalid pattern '2-4'"),
        (["resnet18", "--data", "mnist"], "needs weights"),
        (["mnist/resnet10t", "--data", "mnist", "--input-size", "-5"], "--input-size"),
        (["mnist/resnet10t", "--data", "mnist", "--num-classes", "0"], "--num-classes"),
        (["mnist/resnet10t", "--data", "mnist", "--calibration-size", "0"], "--calibration-size"),
        (["mnist/resnet10t", "--data", "mnist", "--threads", "0"], "--threads"),
    ],
)
def test_bench_bad_input_exits_2_and_writes_nothing(runner, tmp_path, args, message):
    db_path = tmp_path / "r.duckdb"
    result = runner.invoke(main, ["--db", str(db_path), "bench", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not db_path.exists()


def test_bench_refuses_unsafe_checkpoint(runner, tmp_path):
    weights = tmp_path / "evil.pth"
    weights.write_bytes(pickle.dumps({"w": object()}))
    db_path = tmp_path / "r.duckdb"
    result = runner.invoke(main, ["--db", str(db_path), "bench", "resnet18", "--weights", str(weights), "--data", "mnist"])
    assert result.exit_code == 2
    assert "rejected" in result.stderr
    assert not db_path.exists()


def test_bench_empty_dataset(runner, tmp_path):
    weights = tmp_path / "w.safetensors"
    from test_inputs import save_tiny_resnet

    save_tiny_resnet(weights)
    empty = tmp_path / "images"
    empty.mkdir()
    db_path = tmp_path / "r.duckdb"
    result = runner.invoke(main, ["--db", str(db_path), "bench", "resnet10t", "--weights", str(weights), "--data", str(empty)])
    assert result.exit_code == 2
    assert "has 0 images" in result.stderr
    assert not db_path.exists()


def test_bench_class_count_mismatch(runner, tmp_path):
    from test_inputs import save_tiny_resnet, write_images

    weights = tmp_path / "w.safetensors"
    save_tiny_resnet(weights, num_classes=5)
    for name in ("a", "b"):
        write_images(tmp_path / "data" / name, 4)
    result = runner.invoke(main, ["--db", str(tmp_path / "r.duckdb"), "bench", "resnet10t", "--weights", str(weights),
                                  "--data", str(tmp_path / "data")])
    assert result.exit_code == 2
    assert "5 outputs but dataset" in result.stderr
    assert "--unlabelled" in result.stderr


def test_models_lists_named_models(runner, fixture_db):
    result = runner.invoke(main, ["--db", str(fixture_db), "models"])
    assert result.exit_code == 0
    assert "efficientnet_lite0" in result.stdout
    assert "mnist/vit_tiny_patch16_224" in result.stdout
    assert "mnist/convnext_atto" in result.stdout
    assert "mobilenet_v2" in result.stdout
    assert "efficientnet_lite2" in result.stdout
    assert "digits/fcos_mobilenet_v2 (detection)" in result.stdout
    assert "classification" in result.stdout  # the task of each model with results


def test_bench_broken_image_fails_before_any_write(runner, tmp_path):
    from test_inputs import save_tiny_resnet, write_images

    weights = tmp_path / "w.safetensors"
    save_tiny_resnet(weights)
    for name in ("a", "b", "c"):
        write_images(tmp_path / "data" / name, 5)
    (tmp_path / "data" / "a" / "broken.png").write_bytes(b"not an image")
    db_path = tmp_path / "r.duckdb"
    result = runner.invoke(main, ["--db", str(db_path), "bench", "resnet10t", "--weights", str(weights),
                                  "--data", str(tmp_path / "data"), "--input-size", "32", "--calibration-size", "4"])
    assert result.exit_code == 2
    assert "broken.png" in result.stderr
    assert not db_path.exists()


def test_recommend_on_a_sparse_runtime_reports_measured_speedup(runner, fixture_db):
    from conftest import insert_latency, make_latency
    from db import Store

    with Store.open(fixture_db) as store:
        insert_latency(store, [make_latency(criterion="dense", p90_ms=4.8), make_latency(p90_ms=3.2)])
    args = ["--db", str(fixture_db), "recommend", "--dataset", "mnist", "--runtime", "torch-sparse-csr",
            "--max-latency-ms", "4", "--json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["latency_profile"]["env_key"] == "env0"
    assert [c["criterion"] for c in payload["candidates"]] == ["magnitude"]
    latency = payload["candidates"][0]["latency"]
    assert latency["runtime"] == "torch-sparse-csr"
    assert latency["speedup_vs_dense"] == 1.5
    assert latency["source"].startswith("measured for the same model, sparsity and pattern")
    assert latency["sparse_kernel"].startswith("torch.sparse.mm")
    text = runner.invoke(main, args[:-1])
    assert "1.50×*" in text.stdout  # marked: timed at the same sparsity, not this result
    assert "* latency and speedup measured for the same model, sparsity and pattern" in text.stdout


def test_recommend_untimed_runtime_exits_2(runner, fixture_db):
    result = runner.invoke(main, ["--db", str(fixture_db), "recommend", "--runtime", "onnxruntime-cpu",
                                  "--max-latency-ms", "5"])
    assert result.exit_code == 2
    assert "no latency measured on runtime 'onnxruntime-cpu' at batch 1" in result.stderr
    assert "torch-eager at batch 1" in result.stderr  # what the database has
    unknown = runner.invoke(main, ["--db", str(fixture_db), "recommend", "--runtime", "tensorrt"])
    assert unknown.exit_code == 2
    assert "unknown runtime 'tensorrt'; choose from torch-eager" in unknown.stderr


def test_recommend_unknown_profile_exits_2(runner, fixture_db):
    result = runner.invoke(main, ["--db", str(fixture_db), "recommend", "--profile", "laptop"])
    assert result.exit_code == 2
    assert "profile 'laptop' is not in the database; known profiles: env0" in result.stderr


def test_profiles_lists_each_profile_with_its_timings(runner, fixture_db):
    result = runner.invoke(main, ["--db", str(fixture_db), "profiles"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("env0  Test CPU")
    assert "torch-eager batch 1: 6 timings" in result.stdout  # six fixture results have a latency
    payload = json.loads(runner.invoke(main, ["--db", str(fixture_db), "profiles", "--json"]).stdout)
    assert payload[0]["profile"] == "env0"
    assert payload[0]["timings"] == {"torch-eager batch 1": 6}


def test_recommend_published_timings_empty_database(runner, tmp_path):
    from db import Store

    path = tmp_path / "fresh.duckdb"
    Store.open(path).close()
    args = ["--db", str(path), "recommend", "--dataset", "imagenet", "--runtime", "timm-benchmark",
            "--profile", "timm-fp32-pt240-cpu-i7", "--latency-stat", "p50", "--max-latency-ms", "20",
            "--min-accuracy", "80", "--json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["latency_profile"]["cpu_model"] == "Intel Core i7-12700H"
    best = payload["candidates"][0]
    assert best["latency_ms"] <= 20
    assert best["latency"]["provenance"] == "published"
    assert best["latency"]["citation"].startswith("timm results/benchmark-infer-fp32-nchw-pt240-cpu-i7_12700h")
    assert best["latency"]["source"] == "published for the same architecture and input size, dense"
    # A published timing is a mean step time, so a p90 limit would rule out every candidate.
    p90 = runner.invoke(main, [a for a in args if a not in ("--latency-stat", "p50")])
    assert p90.exit_code == 2
    assert "add --latency-stat p50" in p90.stderr
    listed = runner.invoke(main, ["--db", str(path), "profiles"])
    assert "timm-amp-pt291-cu128-rtx4090  NVIDIA GeForce RTX 4090, torch 2.9.1" in listed.stdout
