"""Benching end to end: a real timm model, real images, a real DuckDB file."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from advisor.cli import main
from bench_engine.baselines import MNIST_PREPROCESS, BaselineSpec, ensure_baseline
from bench_engine.data import load_mnist
from db import Store



def test_bench_cli_stores_complete_rows(tiny_setup):
    weights, data, db_path = tiny_setup
    result = CliRunner().invoke(main, [
        "--db", str(db_path), "bench", "resnet10t", "--weights", str(weights), "--data", str(data),
        "--input-size", "32", "--sparsity", "0.3", "--sparsity", "0.6", "--pattern", "unstructured",
        "--pattern", "2:4", "--calibration-size", "8", "--threads", "1", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().endswith(": 10"), result.stdout
    with Store.open(db_path, read_only=True) as store:
        rows = store.query("SELECT * FROM results WHERE provenance = 'measured' ORDER BY criterion, pattern, requested_sparsity")
        run = store.query("SELECT * FROM runs")[0]
        model = store.query("SELECT * FROM models")[0]
        env = store.query("SELECT * FROM environments")[0]
    assert run["status"] == "finished"
    assert run["command"].startswith(f"ptsa --db {db_path} bench resnet10t")
    assert model["architecture"] == "resnet10t"
    assert model["family"] == "resnet"
    assert model["num_conv_linear_layers"] > 5
    assert set(json.loads(model["weight_stats_json"])) == {"weight_magnitude_spread", "weight_kurtosis",
                                                          "weight_outlier_share"}
    assert env["torch_version"]
    assert env["env_key"] == rows[0]["env_key"]
    assert len(rows) == 1 + 3 * 3  # dense, then 3 criteria × (0.3, 0.6, 2:4)
    for row in rows:
        assert row["provenance"] == "measured"
        assert row["labelled"]
        assert row["top1"] is not None
        assert row["top5"] is not None
        assert row["latency_p50_ms"] > 0
        assert row["latency_p90_ms"] >= row["latency_p50_ms"]
        assert row["latency_p99_ms"] >= row["latency_p90_ms"]
        assert row["latency_spread"] >= 0
        assert row["throughput_per_s"] == pytest.approx(1000 / row["latency_p50_ms"])
        assert row["num_threads"] == 1
        assert row["latency_batch_size"] == 1
        assert row["calibration_size"] == 8
        assert row["eval_size"] == 6
        per_layer = json.loads(row["layer_sparsity_json"])
        assert len(per_layer) == model["num_conv_linear_layers"]
        weight_bytes = json.loads(row["weight_bytes_json"])
        assert weight_bytes["dense"] == 4 * model["conv_linear_param_count"]
        if row["criterion"] == "dense":
            assert weight_bytes["csr"] > weight_bytes["dense"]  # no zeros to leave out
            assert row["top1_agreement"] == 100.0
            assert row["kl_divergence"] == pytest.approx(0, abs=1e-6)
        elif row["pattern"] == "unstructured":
            assert row["achieved_sparsity_targeted"] == pytest.approx(row["requested_sparsity"], abs=1e-4)
            assert row["achieved_sparsity"] < row["achieved_sparsity_targeted"]  # stem and head stay dense
            recipe = json.loads(row["recipe_json"])
            assert recipe["criterion"] == row["criterion"]
            assert recipe["policy"]["prune_first_layer"] is False
        else:
            assert row["pattern"] == "2:4"
            assert row["requested_sparsity"] == 0.5
            assert weight_bytes["semi_structured_2_4"] < weight_bytes["dense"]
    skipped = json.loads(rows[0]["skipped_layers_json"])
    assert "first layer" in skipped["conv1.0"]


def test_bench_unlabelled_scores_fidelity(tiny_setup):
    weights, data, db_path = tiny_setup
    result = CliRunner().invoke(main, [
        "--db", str(db_path), "bench", "resnet10t", "--weights", str(weights), "--data", str(data), "--unlabelled",
        "--input-size", "32", "--criterion", "wanda", "--calibration-size", "4", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    with Store.open(db_path, read_only=True) as store:
        rows = store.query("SELECT labelled, top1, top1_agreement, kl_divergence FROM results WHERE provenance = 'measured'")
    assert len(rows) == 2
    assert all(not r["labelled"] and r["top1"] is None and r["top1_agreement"] is not None for r in rows)


def test_write_retries_while_locked(tmp_path):
    import subprocess
    import sys
    import time

    from bench_engine.runner import open_for_write
    from db import DatabaseLockedError

    path = tmp_path / "r.duckdb"
    Store.open(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('locked', flush=True); time.sleep(2)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DatabaseLockedError):
            open_for_write(path, wait_seconds=0)
        started = time.monotonic()
        with open_for_write(path, wait_seconds=30) as store:
            assert store.count("results") == 0
        assert time.monotonic() - started > 0.2
    finally:
        holder.kill()
        holder.wait()


def test_baseline_is_trained_once_and_cached(isolated_data_dir):
    spec = BaselineSpec("resnet10t", 2e-3, 1)
    data = load_mnist(MNIST_PREPROCESS)
    path = ensure_baseline(spec, data)
    assert path.exists()
    assert path.parent == isolated_data_dir / "baselines"
    assert not list(path.parent.glob("*.tmp*"))
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["spec"]["architecture"] == "resnet10t"
    assert meta["train_seconds"] > 0
    mtime = path.stat().st_mtime_ns
    assert ensure_baseline(spec, data) == path
    assert path.stat().st_mtime_ns == mtime


def test_bench_erk_with_corrections(tiny_setup):
    weights, data, db_path = tiny_setup
    result = CliRunner().invoke(main, [
        "--db", str(db_path), "bench", "resnet10t", "--weights", str(weights), "--data", str(data),
        "--input-size", "32", "--criterion", "magnitude", "--sparsity", "0.6", "--allocation", "erk",
        "--erk-power", "0.5", "--correction", "bn_reestimation", "--correction", "bias_correction",
        "--never-prune", "layer4.*", "--calibration-size", "8", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    with Store.open(db_path, read_only=True) as store:
        row = store.query("SELECT * FROM results WHERE provenance = 'measured' AND criterion = 'magnitude'")[0]
    recipe = json.loads(row["recipe_json"])
    assert recipe["allocation"] == "erk"
    assert recipe["erk_power"] == 0.5
    assert recipe["corrections"] == ["bias_correction", "bn_reestimation"]  # applied in this order
    assert recipe["policy"]["never_prune"] == ["layer4.*"]
    assert row["achieved_sparsity_targeted"] == pytest.approx(0.6, abs=1e-4)
    per_layer = json.loads(row["layer_sparsity_json"])
    assert per_layer["layer4.0.conv1"] == 0.0
    listing = CliRunner().invoke(main, ["--db", str(db_path), "recommend", "--sparse-only", "--dataset", row["dataset"]])
    assert "magnitude+bias_correction+bn_reestimation (erk)" in listing.stdout


def test_bench_unknown_correction(tiny_setup):
    weights, data, db_path = tiny_setup
    result = CliRunner().invoke(main, [
        "--db", str(db_path), "bench", "resnet10t", "--weights", str(weights), "--data", str(data),
        "--correction", "adaround",
    ])
    assert result.exit_code == 2
    assert "unknown correction 'adaround'" in result.stderr
    assert not db_path.exists()


def test_flag_allocation_with_only_a_pattern_is_rejected():
    from bench_engine.errors import InvalidConfigError
    from bench_engine.runner import BenchPlan

    with pytest.raises(InvalidConfigError, match="allocation 'learned' cannot be combined with pattern 2:4"):
        BenchPlan(criteria=["magnitude"], allocation="learned", patterns=[(2, 4)]).configs()
    mixed = BenchPlan(criteria=["magnitude"], sparsities=[0.5], allocation="erk", patterns=[None, (2, 4)]).configs()
    assert [(c.allocation, c.pattern_name) for c in mixed] == [("erk", "unstructured"), ("uniform", "2:4")]
    stored = BenchPlan(recipes=["wanda"], sparsities=[0.5]).to_dict()
    assert stored["recipes"] == ["wanda"]
    assert "criteria" not in stored
