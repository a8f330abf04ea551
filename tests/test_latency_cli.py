"""`ptsa latency`: measurements stored with verdicts, unavailable runtimes reported, bad input rejected."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from advisor.cli import main
from db import Store
from test_inputs import save_tiny_resnet


@pytest.fixture()
def weights(tmp_path):
    path = tmp_path / "w.safetensors"
    save_tiny_resnet(path)
    return path


def latency_args(db_path, weights, *extra):
    return ["--db", str(db_path), "latency", "resnet10t", "--weights", str(weights), "--input-size", "32",
            "--repeats", "5", "--max-seconds", "0.2", "--threads", "1", *extra]


def test_latency_stores_dense_and_sparse_rows(tmp_path, weights):
    db_path = tmp_path / "lat.duckdb"
    args = latency_args(db_path, weights, "--runtime", "torch-eager,torch-sparse-csr,torch-2:4-cuda",
                        "--batch", "1,2", "--sparsity", "0.5,2:4", "--json")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    if not torch.cuda.is_available():
        assert "no CUDA device" in report["unavailable"]["torch-2:4-cuda"]
        assert "runtime torch-2:4-cuda skipped: no CUDA device" in result.stderr
    assert report["break_even_sparsity"] == {}  # no sparse kernel ran on resnet10t
    with Store.open(db_path, read_only=True) as store:
        rows = store.query("SELECT * FROM latency WHERE provenance = 'measured' "
                           "ORDER BY runtime, batch_size, requested_sparsity, pattern")
        run = store.query("SELECT status FROM runs")[0]
    assert run["status"] == "finished"

    assert len(rows) == 2 * 2 * 3  # runtimes × batch sizes × (dense, 50 %, 2:4)
    for row in rows:
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["max_abs_diff"] < 1e-3
        assert json.loads(row["weight_bytes_json"])["dense"] > 0
        assert row["peak_rss_bytes"] > 0  # Linux CI; None only where /proc is missing
        assert row["protocol"] == "interleaved"
        assert row["result_id"] is None  # timed by `ptsa latency`, not as a bench result
        if row["criterion"] == "dense":
            assert row["speedup"] is None
            assert row["achieved_sparsity"] == 0.0
            assert row["baseline_p50_ms"] == row["p50_ms"]
        else:
            assert row["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)
            assert row["speedup"] == pytest.approx(row["baseline_p50_ms"] / row["p50_ms"])
            # resnet10t's only Linear layer is the classifier, left dense, so no sparse kernel runs.
            assert row["sparse_kernel"] is None
            assert row["verdict"].startswith("no sparse kernel ran")

    two_four = [r for r in rows if r["pattern"] == "2:4"]
    assert len(two_four) == 4
    assert all(json.loads(r["weight_bytes_json"])["semi_structured_2_4"] < json.loads(r["weight_bytes_json"])["dense"]
               for r in two_four)


@pytest.mark.parametrize("extra, message", [
    (["--runtime", "tensorrt"], "unknown runtime 'tensorrt'"),
    (["--batch", "0"], "batch sizes must be at least 1"),
    (["--batch", "one"], "invalid --batch 'one'"),
    (["--sparsity", "1.5"], "sparsity '1.5' is out of range"),
    (["--sparsity", "3:2"], "invalid pattern '3:2'"),
])
def test_latency_bad_input_exits_2_and_writes_nothing(tmp_path, weights, extra, message):
    db_path = tmp_path / "lat.duckdb"
    result = CliRunner().invoke(main, latency_args(db_path, weights, *extra))
    assert result.exit_code == 2
    assert message in result.stderr
    assert not db_path.exists()


def test_latency_with_no_usable_runtime_exits_2(tmp_path, weights):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device, so torch-2:4-cuda may run")
    db_path = tmp_path / "lat.duckdb"
    result = CliRunner().invoke(main, latency_args(db_path, weights, "--runtime", "torch-2:4-cuda"))
    assert result.exit_code == 2
    assert "none of the requested runtimes can run here (torch-2:4-cuda: no CUDA device" in result.stderr
    assert not db_path.exists()


def test_latency_random_init_needs_no_weights(tmp_path):
    db_path = tmp_path / "lat.duckdb"
    args = ["--db", str(db_path), "latency", "resnet10t", "--random-init", "--input-size", "32", "--repeats", "5",
            "--max-seconds", "0.1", "--runtime", "torch-eager", "--batch", "1", "--sparsity", "0.5"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    with Store.open(db_path, read_only=True) as store:
        model = store.query("SELECT model_key, weights_source FROM models")[0]
        assert len(store.query("SELECT 1 FROM latency WHERE provenance = 'measured'")) == 2
    assert model["model_key"] == "resnet10t@random-init"
    assert "timing only" in model["weights_source"]
    both = CliRunner().invoke(main, args + ["--weights", str(tmp_path / "w.safetensors")])
    assert both.exit_code == 2
    assert "either --weights or --random-init" in both.stderr


def test_break_even_takes_lowest_winning_sparsity():
    from bench_engine.latency_bench import break_even

    def row(runtime, batch, sparsity, speedup, kernel="CSR", pattern="unstructured"):
        return {"runtime": runtime, "batch_size": batch, "requested_sparsity": sparsity, "speedup": speedup,
                "sparse_kernel": kernel, "pattern": pattern}

    rows = [
        row("torch-sparse-csr", 1, 0.9, 2.1), row("torch-sparse-csr", 1, 0.5, 0.6), row("torch-sparse-csr", 1, 0.7, 1.03),
        row("torch-sparse-csr", 16, 0.5, 0.3), row("torch-sparse-csr", 16, 0.9, 0.9),
        row("torch-eager", 1, 0.9, 1.2, kernel=None), row("torch-2:4-cuda", 1, 0.5, 1.4, pattern="2:4"),
    ]
    # 1.03× at 70 % is within the 5 % the verdicts call no measurable change: 90 % is the first win.
    assert break_even(rows) == {"torch-sparse-csr batch 1": 0.9, "torch-sparse-csr batch 16": None}


def bench_args(tmp_path, weights, *extra):
    from test_inputs import write_images

    for name in ("a", "b"):
        write_images(tmp_path / "data" / name, 4)
    return ["--db", str(tmp_path / "bench.duckdb"), "bench", "resnet10t", "--weights", str(weights),
            "--data", str(tmp_path / "data"), "--unlabelled", "--input-size", "32", "--calibration-size", "4",
            "--criterion", "magnitude", "--criterion", "wanda", "--sparsity", "0.5", "--repeats", "5",
            "--max-seconds", "0.1", "--no-progress", *extra]


def test_bench_times_every_result_on_each_runtime(tmp_path, weights):
    args = bench_args(tmp_path, weights, "--runtime", "torch-eager,torch-sparse-csr,torch-2:4-cuda", "--batch", "1,2")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    if not torch.cuda.is_available():
        assert "runtime torch-2:4-cuda skipped: no CUDA device" in result.stderr
    assert "break-even" not in result.stdout  # no sparse kernel ran on resnet10t
    with Store.open(tmp_path / "bench.duckdb", read_only=True) as store:
        results = {r["result_id"]: r for r in store.query("SELECT * FROM results WHERE provenance = 'measured'")}
        timings = store.query("SELECT * FROM latency WHERE provenance = 'measured'")
    assert len(results) == 3  # dense, magnitude, wanda
    assert len(timings) == 3 * 2 * 2  # results × runtimes × batch sizes
    assert {t["result_id"] for t in timings} == set(results)
    for timing in timings:
        result_row = results[timing["result_id"]]
        assert timing["criterion"] == result_row["criterion"]
        assert timing["run_id"] == result_row["run_id"]
        assert timing["env_key"] == result_row["env_key"]
        assert timing["protocol"] == "interleaved"
        if timing["criterion"] != "dense":
            assert timing["speedup"] == pytest.approx(timing["baseline_p50_ms"] / timing["p50_ms"])
            assert timing["achieved_sparsity"] == pytest.approx(result_row["achieved_sparsity_targeted"])
    assert "torch-sparse-csr" in result.stdout  # the latency table is printed after the run


@pytest.mark.parametrize("extra, message", [
    (["--runtime", "tensorrt"], "unknown runtime 'tensorrt'"),
    (["--runtime", "torch-eager", "--batch", "0"], "batch sizes must be at least 1"),
    (["--runtime", "torch-eager", "--batch", "x"], "invalid --batch 'x'"),
])
def test_bench_bad_runtime_input_exits_2(tmp_path, weights, extra, message):
    result = CliRunner().invoke(main, bench_args(tmp_path, weights, *extra))
    assert result.exit_code == 2
    assert message in result.stderr
    assert not (tmp_path / "bench.duckdb").exists()


def test_bench_with_no_usable_runtime_exits_2(tmp_path, weights):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device, so torch-2:4-cuda may run")
    result = CliRunner().invoke(main, bench_args(tmp_path, weights, "--runtime", "torch-2:4-cuda"))
    assert result.exit_code == 2
    assert "none of the requested runtimes can run here" in result.stderr
    assert not (tmp_path / "bench.duckdb").exists()
