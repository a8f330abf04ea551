"""Detection through the whole product: `ptsa bench` on the digits set and on unlabelled photos, then `ptsa recommend --task detection`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from db import Store


def ptsa(data_dir, *args, timeout=900):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PTSA_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "advisor.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_detection_grid_stored_and_ranked(digits_detector_dir, tmp_path):
    db = tmp_path / "det.duckdb"
    grid = ["--criterion", "magnitude", "--criterion", "wanda", "--sparsity", "0.3", "--calibration-size", "8",
            "--no-progress"]
    labelled = ptsa(digits_detector_dir, "--db", str(db), "bench", "digits/fcos_mobilenet_v2", "--data", "digits",
                    *grid)
    assert labelled.returncode == 0, labelled.stderr

    # At the default reference score no dense box on the photos qualifies: refused before any job runs.
    refused = ptsa(digits_detector_dir, "--db", str(db), "bench", "digits/fcos_mobilenet_v2", "--data", "photos",
                   *grid)
    assert refused.returncode == 2, refused.stderr
    assert "pass a lower --reference-score" in refused.stderr
    with Store.open(db, read_only=True) as store:
        assert store.query("SELECT count(*) AS n FROM jobs WHERE status = 'failed'")[0]["n"] == 0
    photos = ptsa(digits_detector_dir, "--db", str(db), "bench", "digits/fcos_mobilenet_v2", "--data", "photos",
                  "--reference-score", "0.2", *grid)
    assert photos.returncode == 0, photos.stderr

    with Store.open(db, read_only=True) as store:
        rows = store.query("SELECT dataset, labelled, criterion, task, box_map, dense_box_map, box_map_fidelity, "
                           "box_reference_score, top1 FROM results WHERE provenance = 'measured' "
                           "ORDER BY dataset, criterion")
        model = store.query("SELECT task, family FROM models WHERE model_key = 'digits/fcos_mobilenet_v2'")[0]

    assert model == {"task": "detection", "family": "fcos+mobilenetv2"}
    assert [(r["dataset"], r["criterion"]) for r in rows] == [
        ("digits", "dense"), ("digits", "magnitude"), ("digits", "wanda"),
        ("photos", "dense"), ("photos", "magnitude"), ("photos", "wanda")]
    assert all(r["task"] == "detection" and r["top1"] is None for r in rows)
    digits = [r for r in rows if r["dataset"] == "digits"]
    assert digits[0]["box_map"] == digits[0]["dense_box_map"] > 60.0  # the trained detector, in percent
    assert all(0 <= r["box_map"] <= 100 for r in digits)
    photos_rows = [r for r in rows if r["dataset"] == "photos"]
    assert all(not r["labelled"] and r["box_map"] is None and r["box_reference_score"] == 0.2 for r in photos_rows)
    assert photos_rows[0]["box_map_fidelity"] == 100.0
    assert all(0 <= r["box_map_fidelity"] <= 100 for r in photos_rows)

    # The same command again finds every job stored.
    again = ptsa(digits_detector_dir, "--db", str(db), "bench", "digits/fcos_mobilenet_v2", "--data", "digits", *grid)
    assert again.returncode == 0
    assert "jobs already stored, skipped: 3" in again.stderr

    # The recommender ranks detection rows by box mAP, and classification budgets never see them.
    ranked = ptsa(digits_detector_dir, "--db", str(db), "recommend", "--task", "detection", "--dataset", "digits",
                  "--json")
    assert ranked.returncode == 0, ranked.stderr
    candidates = json.loads(ranked.stdout)["candidates"]
    assert candidates and {c["metric"] for c in candidates} == {"box_map"}
    classification = ptsa(digits_detector_dir, "--db", str(db), "recommend", "--dataset", "digits")
    assert classification.returncode == 2
    assert "dataset 'digits' has detection results" in classification.stderr
    assert "pass --task detection" in classification.stderr


def test_bad_detection_inputs_exit_2(tmp_path):
    db = tmp_path / "bad.duckdb"
    cases = [
        (["torchvision:ssdlite320_mobilenet_v3_large", "--data", "photos"], "needs weights: pass --weights"),
        (["torchvision:ssdlite_v9", "--data", "photos", "--task", "detection"],
         "unknown detector architecture 'torchvision:ssdlite_v9'. Did you mean"),
        (["fcos_mobilenet_v2", "--weights", str(tmp_path / "missing.safetensors"), "--data", "photos"],
         "missing.safetensors"),
        # The data is checked before any model loads.
        (["fcos_mobilenet_v2", "--weights", str(tmp_path / "missing.safetensors"), "--data", "nowhere"],
         "dataset not found: nowhere"),
    ]
    for args, expected in cases:
        result = ptsa(tmp_path / "data", "--db", str(db), "bench", *args, "--no-progress")
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr, (args, result.stderr)
    assert not db.exists()


def test_timm_faster_rcnn_bench_with_random_weights(tmp_path):
    """`fasterrcnn:<timm architecture>` benches as `fcos:` does: rejected without weights, run with a local file."""
    import torch
    from safetensors.torch import save_file

    from bench_engine.detection.detectors import build_detector
    from bench_engine.detection.digits import build_digits_detection

    root = build_digits_detection(tmp_path / "digits", n_images=10, seed=1)
    torch.manual_seed(0)
    model = build_detector("fasterrcnn:efficientnet_lite0", num_classes=10, input_size=64)
    weights = tmp_path / "random.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(weights))
    db = tmp_path / "timm.duckdb"
    args = ["bench", "fasterrcnn:efficientnet_lite0", "--task", "detection", "--data", str(root / "train.json"),
            "--input-size", "64", "--criterion", "magnitude", "--sparsity", "0.5", "--calibration-size", "2",
            "--repeats", "5", "--max-seconds", "0.1", "--no-progress"]

    rejected = ptsa(tmp_path / "data", "--db", str(db), *args)
    assert rejected.returncode == 2, rejected.stderr
    assert "model 'fasterrcnn:efficientnet_lite0' needs weights: pass --weights" in rejected.stderr

    result = ptsa(tmp_path / "data", "--db", str(db), *args, "--weights", str(weights))
    assert result.returncode == 0, result.stderr
    with Store.open(db, read_only=True) as store:
        models = store.query("SELECT model_key, task, family, num_classes, input_size FROM models "
                             "WHERE architecture = 'fasterrcnn:efficientnet_lite0'")
        rows = store.query("SELECT criterion, task, box_map, achieved_sparsity_targeted FROM results "
                           "WHERE model_key = ? AND provenance = 'measured' ORDER BY criterion",
                           [models[0]["model_key"]])
    assert len(models) == 1
    assert models[0]["task"] == "detection"
    assert models[0]["family"] == "faster_rcnn+efficientnet"
    assert models[0]["num_classes"] == 10
    assert models[0]["input_size"] == 64
    assert [row["criterion"] for row in rows] == ["dense", "magnitude"]
    assert all(row["task"] == "detection" for row in rows)
    assert all(0 <= row["box_map"] <= 100 for row in rows)
    assert rows[1]["achieved_sparsity_targeted"] == pytest.approx(0.5, abs=0.01)
