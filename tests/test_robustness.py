"""The robustness regressor: grouped evaluation, fit, predict for an unseen architecture, tampering."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from click.testing import CliRunner

from advisor.cli import main
from advisor.robustness import FEATURES, RegressorError, TrainingData, evaluate, recipe_features
from conftest import insert_rows, make_result
from db import Store

# (model key, architecture, timm module) for small MNIST-shaped models of six families.
MODELS = [
    ("t/resnet10t", "resnet10t", "resnet"), ("t/resnet18", "resnet18", "resnet"),
    ("t/mobilenetv3_small_050", "mobilenetv3_small_050", "mobilenetv3"),
    ("t/convnext_atto", "convnext_atto", "convnext"), ("t/vit_tiny", "vit_tiny_patch16_224", "vision_transformer"),
    ("t/regnetx_002", "regnetx_002", "regnet"), ("t/efficientnet_lite0", "efficientnet_lite0", "efficientnet"),
]
RECIPES = [("magnitude", "uniform"), ("wanda", "uniform"), ("sparsegpt", "uniform"), ("magnitude", "erk")]


def build_db(path, retention):
    """A database of pruned results whose retention is `retention(architecture, criterion, sparsity)`."""
    rows = []
    for key, architecture, _ in MODELS:
        for criterion, allocation in RECIPES:
            for sparsity in (0.3, 0.5, 0.7):
                top1 = 98.0 * retention(architecture, criterion, sparsity) / 100
                rows.append(make_result(model_key=key, criterion=criterion, allocation=allocation,
                                        requested_sparsity=sparsity, top1=top1, dense_top1=98.0))
    with Store.open(path) as store:
        insert_rows(store, rows)
        store.upsert_models([{"model_key": key, "architecture": arch, "family": family, "num_classes": 10,
                              "in_chans": 1, "input_size": 32, "weights_source": "test"}
                             for key, arch, family in MODELS])
    return path


def plausible(architecture, criterion, sparsity):
    """Retention falls with sparsity, faster for magnitude and for mobile networks."""
    fragile = 1.6 if "mobilenet" in architecture or "efficientnet" in architecture else 1.0
    steep = 1.0 if criterion == "magnitude" else 0.5
    return max(0.0, 100 - 120 * fragile * steep * sparsity**3)


def test_recipe_features_read_the_stored_recipe():
    row = make_result(criterion="wanda", allocation="owl", pattern="2:4", requested_sparsity=0.5,
                      recipe_json=json.dumps({"reconstruction": "block", "recon_input": "sparse", "recon_steps": 100,
                                              "corrections": ["bias_correction"]}), calibration_size=100)
    values = recipe_features(row)
    assert values["criterion_wanda"] == 1.0
    assert values["allocation_owl"] == 1.0
    assert values["nm_density"] == 0.5
    assert values["reconstruction_block"] == 1.0
    assert values["reconstruction_sparse_input"] == 1.0
    assert values["reconstruction_log10_steps"] == pytest.approx(2.0)
    assert values["bias_correction"] == 1.0
    assert values["log10_calibration_size"] == pytest.approx(2.0)
    assert np.isnan(recipe_features(make_result())["reconstruction_sparse_input"])  # unknown, not "dense"
    from advisor.robustness import UNKNOWN, input_vector

    assert input_vector({}, recipe_features(make_result()))[FEATURES.index("nm_density")] == UNKNOWN


def test_held_out_family_is_never_seen_in_training():
    # Each family's retention is its own random constant, unrelated to anything the regressor can
    # learn from other families. Trained on the held-out family, the regressor would recognise it by
    # its architecture features and predict it almost exactly; held out, it cannot.
    rng = random.Random(1)
    families = [f"family{i}" for i in range(6)]
    level = {f: rng.uniform(40, 100) for f in families}
    X, y, groups, rows = [], [], [], []
    for index, family in enumerate(families):
        for j in range(10):
            vector = [float(index)] * len(FEATURES)  # the features identify the family
            X.append(vector)
            y.append(level[family])
            groups.append(family)
            rows.append({"criterion": "magnitude", "pattern": "unstructured", "requested_sparsity": 0.5,
                         "recipe_json": "{}"})
    data = TrainingData(rows, np.array(X), np.array(y), np.array(groups, dtype=object))
    metrics = evaluate(data)
    assert metrics["split"] == "LeaveOneGroupOut"
    assert sorted(metrics["per_family"]) == families
    assert metrics["models"]["regressor"]["mae"] > 5


def test_too_few_families_names_the_fix():
    data = TrainingData([{}] * 40, np.zeros((40, len(FEATURES))), np.zeros(40), np.array(["a", "b"] * 20, dtype=object))
    with pytest.raises(RegressorError, match="2 architecture families .* needs at least 3"):
        evaluate(data)


def test_predict_unbenched_architecture(tmp_path):
    db_path = build_db(tmp_path / "r.duckdb", plausible)
    runner = CliRunner()
    fitted = runner.invoke(main, ["--db", str(db_path), "fit", "--json"])
    assert fitted.exit_code == 0, fitted.output
    fit = json.loads(fitted.stdout)
    assert fit["n_families"] >= 6
    assert set(fit["metrics"]["models"]) == {"regressor", "params_only", "recipe_mean"}
    assert fit["metrics"]["models"]["regressor"]["mae"] >= 0

    args = ["--db", str(db_path), "predict", "deit_tiny_patch16_224", "--recipe", "wanda", "--sparsity", "0.5",
            "--sparsity", "0.7", "--num-classes", "10", "--input-size", "32", "--dataset", "mnist", "--json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)
    assert [p["sparsity"] for p in predictions] == [0.5, 0.7]
    for p in predictions:
        assert p["retention_low"] <= p["retention"] <= p["retention_high"]
        assert p["top1"] is None  # no dense top-1 known for an architecture never benched
        effects = [abs(d["effect"]) for d in p["drivers"]]
        assert effects == sorted(effects, reverse=True)  # largest effect first; may be empty

    with Store.open(db_path, read_only=True) as store:
        stored = store.query("SELECT * FROM results WHERE provenance = 'predicted'")
    assert len(stored) == 2
    assert all(r["model_key"] == "deit_tiny_patch16_224" for r in stored)
    assert all(r["source"].startswith("ptsa regressor fit") for r in stored)
    assert json.loads(stored[0]["prediction_json"])["fit_id"] == fit["fit_id"]

    text = runner.invoke(main, ["--db", str(db_path), "predict", "deit_tiny_patch16_224", "--no-store"])
    assert "80 % interval" in text.stdout

    known = json.loads(runner.invoke(main, ["--db", str(db_path), "predict", "t/resnet18", "--no-store",
                                            "--json"]).stdout)[0]
    assert known["top1"] is not None  # the stored dense top-1 gives a top-1
    assert known["dataset"] == "mnist"
    assert known["top1_high"] <= 100.0


    checks = runner.invoke(main, ["--db", str(db_path), "predict", "t/resnet18", "--recipe", "magnitude",
                                  "--sparsity", "0.5", "--sparsity", "0.95", "--no-store", "--json"])
    measured, beyond = json.loads(checks.stdout)
    assert any(w.startswith("this configuration was measured: retention") for w in measured["warnings"])
    assert any("outside the training data's 10% to 70%" in w for w in beyond["warnings"])


def test_tampered_model_file_rejected(tmp_path):
    db_path = build_db(tmp_path / "r.duckdb", plausible)
    runner = CliRunner()
    fit = json.loads(runner.invoke(main, ["--db", str(db_path), "fit", "--json"]).stdout)
    path = fit["model_path"]
    with open(path, "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    result = runner.invoke(main, ["--db", str(db_path), "predict", "resnet18", "--no-store"])
    assert result.exit_code == 2
    assert "was changed after it was fitted" in result.stderr
    assert "run `ptsa fit` again" in result.stderr

    outside = tmp_path / "elsewhere.skops"
    outside.write_bytes(b"not a model")
    with Store.open(db_path) as store:
        store._con.execute("UPDATE regressor_fits SET model_path = ?", [str(outside)])
    moved = runner.invoke(main, ["--db", str(db_path), "predict", "resnet18", "--no-store"])
    assert moved.exit_code == 2
    assert "is outside" in moved.stderr


def test_fit_without_enough_results_names_the_fix(tmp_path):
    from advisor.robustness import fit

    with Store.open(tmp_path / "r.duckdb") as store:
        insert_rows(store, [make_result()])
        with pytest.raises(RegressorError, match="has 0 labelled pruned results .* needs at least 30"):
            fit(store, tmp_path, 1, "test")


def test_first_run_fits_on_the_published_evidence_alone(tmp_path):
    db_path = tmp_path / "r.duckdb"
    Store.open(db_path).close()
    runner = CliRunner()
    fitted = runner.invoke(main, ["--db", str(db_path), "fit", "--json"])
    assert fitted.exit_code == 0, fitted.output
    assert json.loads(fitted.stdout)["n_architectures"] == 4  # the four msbench networks
    unknown = runner.invoke(main, ["--db", str(db_path), "predict", "resnet19"])
    assert unknown.exit_code == 2
    assert "unknown model 'resnet19'" in unknown.stderr
    assert "did you mean resnet18" in unknown.stderr
    deit = json.loads(runner.invoke(main, ["--db", str(db_path), "predict", "deit_small_patch16_224", "--no-store",
                                           "--json"]).stdout)[0]
    assert deit["dense_source"] == "published top-1 of deit_small_patch16_224.fb_in1k"
    assert deit["top1"] is not None
    missing = runner.invoke(main, ["--db", str(tmp_path / "none.duckdb"), "fit"])
    assert missing.exit_code == 2
    assert "database not found" in missing.stderr
    assert not (tmp_path / "none.duckdb").exists()


async def test_models_tab_lists_architectures_with_predictions(tmp_path):
    from textual.widgets import DataTable, Input, Static

    from advisor.tui.app import PTSAdvisorApp
    from advisor.tui.models import ModelsPane

    db_path = build_db(tmp_path / "r.duckdb", plausible)
    assert CliRunner().invoke(main, ["--db", str(db_path), "fit"]).exit_code == 0
    app = PTSAdvisorApp(db_path, lang="en")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f6")
        pane = app.query_one(ModelsPane)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        table = app.query_one("#models-table", DataTable)
        with Store.open(db_path, read_only=True) as store:
            stored = store.count("architectures")  # the benched ones and the published ones' (ImageNet shape)
        assert stored >= len(MODELS)
        assert table.row_count == stored
        status = str(app.query_one("#models-status", Static).render())
        assert f"{stored} of {stored} architectures" in status
        assert f"predicted by fit {pane.fit_id}" in status
        first = table.get_row_at(0)
        assert first[1] == "classification"
        assert first[7] != "-"  # sorted by predicted retention, highest first
        retentions = [pane.rows[i].get("retention") for i in range(len(pane.rows))]
        assert float(first[7].split()[0]) == pytest.approx(max(retentions), abs=0.5)
        app.query_one("#models-filter", Input).value = "mobilenetv3"
        await pilot.pause()
        assert table.row_count == 1
        assert table.get_row_at(0)[0] == "mobilenetv3_small_050"


# (model key, architecture) of two detectors, each with its own family (head + backbone).
DETECTORS = [("digits/fcos_mobilenet_v2", "fcos_mobilenet_v2"), ("digits/fcos_efficientnet_lite0",
                                                                  "fcos:efficientnet_lite0")]


def add_detection_rows(path, retention):
    """Add labelled detection rows (box mAP) whose retention is `retention(criterion, sparsity)`."""
    from bench_engine.detection.detectors import detector_family

    rows = []
    for key, _architecture in DETECTORS:
        for criterion, allocation in RECIPES:
            for sparsity in (0.3, 0.5, 0.7):
                box_map = 76.0 * retention(criterion, sparsity) / 100
                rows.append(make_result(model_key=key, dataset="digits", task="detection", criterion=criterion,
                                        allocation=allocation, requested_sparsity=sparsity, top1=None,
                                        dense_top1=None, top5=None, dense_top5=None, top1_agreement=None,
                                        box_map=box_map, dense_box_map=76.0, box_map_50=None, eval_size=300))
    with Store.open(path) as store:
        insert_rows(store, rows)
        store.upsert_models([{"model_key": key, "architecture": architecture, "family": detector_family(architecture),
                              "num_classes": 10, "in_chans": 3, "input_size": 128, "task": "detection",
                              "weights_source": "test"} for key, architecture in DETECTORS])


def test_regressor_learns_detection_rows_with_their_task(tmp_path):
    """Detection rows train the same regressor with the task as an input, and predictions name their task."""
    db_path = build_db(tmp_path / "r.duckdb", plausible)
    # Detection loses far more than classification at the same sparsity (as the digits detector does).
    add_detection_rows(db_path, lambda criterion, sparsity: max(0.0, 100 - 250 * sparsity**2))
    runner = CliRunner()
    fitted = runner.invoke(main, ["--db", str(db_path), "fit", "--json"])
    assert fitted.exit_code == 0, fitted.output
    metrics = json.loads(fitted.stdout)["metrics"]
    assert metrics["per_task"]["detection"]["rows"] == 24
    assert metrics["per_task"]["detection"]["families"] == ["fcos+efficientnet", "fcos+mobilenetv2"]
    # The test rows and the published rows that ship with the product.
    assert metrics["per_task"]["classification"]["rows"] > len(MODELS) * len(RECIPES) * 3
    text = runner.invoke(main, ["--db", str(db_path), "fit"])
    assert "detection: 24 rows (fcos+efficientnet, fcos+mobilenetv2); MAE" in text.stdout

    result = runner.invoke(main, ["--db", str(db_path), "predict", "digits/fcos_mobilenet_v2", "--recipe", "wanda",
                                  "--sparsity", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    prediction = json.loads(result.stdout)[0]
    assert (prediction["task"], prediction["metric"], prediction["dataset"]) == ("detection", "box_map", "digits")
    assert prediction["dense_box_map"] == 76.0
    assert prediction["dense_source"] == "stored result"
    assert prediction["box_map"] == pytest.approx(prediction["retention"] * 0.76)
    assert "top1" not in prediction
    assert prediction["held_out_family_mae"] == metrics["per_task"]["detection"]["regressor_mae"]
    # The detection rows keep 37.5 % at 50 %; the classifiers keep 92 to 100 %. The task feature
    # lets the prediction follow its own task.
    assert prediction["retention"] < 70
    with Store.open(db_path, read_only=True) as store:
        stored = store.query("SELECT task, box_map, dense_box_map, top1 FROM results WHERE provenance = 'predicted'")
    assert stored == [{"task": "detection", "box_map": pytest.approx(prediction["box_map"]), "dense_box_map": 76.0,
                       "top1": None}]
    text = runner.invoke(main, ["--db", str(db_path), "predict", "digits/fcos_mobilenet_v2", "--no-store"])
    assert "box mAP" in text.stdout
    assert "top-1" not in text.stdout

    wrong = runner.invoke(main, ["--db", str(db_path), "predict", "digits/fcos_mobilenet_v2", "--dense-top1", "80"])
    assert wrong.exit_code == 2
    assert "is a detector" in wrong.stderr
    assert "--dense-box-map" in wrong.stderr
    classifier = runner.invoke(main, ["--db", str(db_path), "predict", "t/resnet18", "--dense-box-map", "30"])
    assert classifier.exit_code == 2
    assert "is a classifier" in classifier.stderr

    unknown_shape = runner.invoke(main, ["--db", str(db_path), "predict", "torchvision:ssdlite320_mobilenet_v3_large"])
    assert unknown_shape.exit_code == 2
    assert "--dataset NAME and --num-classes N" in unknown_shape.stderr
    new = runner.invoke(main, ["--db", str(db_path), "predict", "torchvision:ssdlite320_mobilenet_v3_large",
                               "--dataset", "coco", "--num-classes", "80", "--dense-box-map", "21.3", "--no-store",
                               "--json"])
    assert new.exit_code == 0, new.output
    ssdlite = json.loads(new.stdout)[0]
    assert ssdlite["task"] == "detection"
    assert ssdlite["box_map"] <= 21.3
    with Store.open(db_path, read_only=True) as store:
        architecture = store.query("SELECT family, input_size FROM architectures "
                                   "WHERE architecture = 'torchvision:ssdlite320_mobilenet_v3_large'")
    assert architecture == [{"family": "ssd+mobilenetv3", "input_size": 320}]


async def test_models_tab_names_the_task_of_detectors(tmp_path):
    """Detector architectures show as detection, and filtering by task finds them."""
    from textual.widgets import DataTable, Input

    from advisor.tui.app import PTSAdvisorApp

    db_path = build_db(tmp_path / "r.duckdb", plausible)
    add_detection_rows(db_path, lambda criterion, sparsity: max(0.0, 100 - 250 * sparsity**2))
    assert CliRunner().invoke(main, ["--db", str(db_path), "fit"]).exit_code == 0
    app = PTSAdvisorApp(db_path, lang="en")
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("f6")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        app.query_one("#models-filter", Input).value = "detection"
        await pilot.pause()
        table = app.query_one("#models-table", DataTable)
        rows = sorted(table.get_row_at(i)[:3] for i in range(table.row_count))
        assert rows == [["fcos:efficientnet_lite0", "detection", "fcos+efficientnet"],
                        ["fcos_mobilenet_v2", "detection", "fcos+mobilenetv2"]]
        assert all(table.get_row_at(i)[7] != "-" for i in range(table.row_count))  # predicted for detection
