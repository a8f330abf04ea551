"""The ROI what-if and the budget limits beyond latency and accuracy, on worked examples."""

from __future__ import annotations

import json
import math

import pytest

from advisor.recommend import Budget, Timing, recommend
from advisor.roi import Workload, WorkloadError, capacity, instances_needed
from conftest import make_result


def timing(row, p50_ms, speedup=None, runtime="torch-eager", source_row=True, env_key="env0"):
    """A timing of `row` on one runtime; `speedup` set means dense and sparse were timed interleaved."""
    return Timing(row["model_key"], env_key, runtime, 1, row["criterion"], row["pattern"], row["requested_sparsity"],
                  p50_ms, p50_ms * 1.1, "csr kernel" if speedup else None, speedup,
                  row["result_id"] if source_row else None)


DENSE = make_result(result_id="dense", criterion="dense", allocation="none", pattern="dense", requested_sparsity=0.0,
                    achieved_sparsity=0.0, top1=80.0, dense_top1=80.0,
                    weight_bytes_json=json.dumps({"dense": 40_000_000, "csr": 80_000_000, "bitmask": 41_000_000,
                                                  "semi_structured_2_4": 40_000_000}))
FAST = make_result(result_id="fast", criterion="wanda", requested_sparsity=0.9, top1=78.5, dense_top1=80.0,
                   weight_bytes_json=json.dumps({"dense": 40_000_000, "csr": 8_000_000, "bitmask": 9_000_000,
                                                 "semi_structured_2_4": 40_000_000}))
SAME = make_result(result_id="same", criterion="magnitude", requested_sparsity=0.5, top1=79.5, dense_top1=80.0,
                   weight_bytes_json=json.dumps({"dense": 40_000_000, "csr": 40_000_000, "bitmask": 25_000_000,
                                                 "semi_structured_2_4": 40_000_000}))
SLOW = make_result(result_id="slow", criterion="sparsegpt", requested_sparsity=0.6, top1=79.0, dense_top1=80.0)
ROWS = [DENSE, FAST, SAME, SLOW]
# Dense 5 ms; 90 % Wanda measured 1.6× faster (3.125 ms) in interleaved rounds; 50 % magnitude
# 1.03× (no measurable change); 60 % SparseGPT 0.5× (10 ms).
TIMINGS = [timing(DENSE, 5.0), timing(FAST, 3.125, speedup=1.6), timing(SAME, 4.85, speedup=1.03),
           timing(SLOW, 10.0, speedup=0.5)]


def run(budget=None, workload=None, rows=ROWS, timings=TIMINGS):
    return recommend(rows, budget or Budget(dataset="mnist"), timings=timings, workload=workload)


def by_id(result):
    return {c.row["result_id"]: c for c in result.ranked}


def test_instances_and_cost_worked_by_hand():
    # capacity = 1 × 1000 / 5 ms = 200/s; at 50 % use 100/s; 1000/s peak -> 10 instances.
    assert capacity(5.0, 1) == 200.0
    assert instances_needed(1000, 200.0, 0.5) == 10
    assert instances_needed(200, 100.0, 1.0) == 2  # an exact fit is not rounded up
    assert instances_needed(0.001, 100.0, 0.5) == 1  # at least one

    workload = Workload(peak_rps=1000, price_per_hour=0.5, utilisation=0.5, requests_per_day=40e6, instances_today=12)
    costs = {key: c.costing for key, c in by_id(run(workload=workload)).items()}
    dense, fast = costs["dense"], costs["fast"]
    assert (dense.instances, dense.cost) == (10, 10 * 0.5 * 730)  # 3,650 a month
    # 3.125 ms -> 320/s, 160/s usable -> 1000 / 160 = 6.25 -> 7 instances, 2,555 a month.
    assert (fast.instances, fast.cost, fast.sized_by) == (7, 2555.0, "own_timing")
    assert fast.baseline_instances == 10
    assert fast.saving == pytest.approx(1095.0)
    assert fast.saving_vs_today == pytest.approx(12 * 365 - 2555.0)
    # 40 M requests a day × 30.42 days = 1,216.7 M requests a month.
    assert fast.cost_per_million == pytest.approx(2555.0 / (40 * 365 / 12))
    assert fast.compute_saving
    assert fast.accuracy_given_up == pytest.approx(1.5)
    assert (fast.weight_mb, fast.storage_mb, fast.baseline_storage_mb) == (40.0, 8.0, 40.0)


def test_no_measured_speedup_sized_like_dense():
    workload = Workload(peak_rps=1000, price_per_hour=0.5, utilisation=0.5)
    same = by_id(run(workload=workload))["same"]
    assert same.costing.sized_by == "dense_timing"  # 1.03× is within the 5 % noise band
    assert (same.costing.instances, same.costing.saving) == (10, 0.0)
    assert not same.costing.compute_saving
    assert [n["code"] for n in same.costing.notes] == ["no_compute_saving"]
    assert same.has_risk("no_measured_speedup")
    assert same.costing.storage_mb == 25.0  # the saving that remains: storage


def test_slower_sparse_model_needs_more_instances():
    slow = by_id(run(workload=Workload(peak_rps=1000, price_per_hour=0.5, utilisation=0.5)))["slow"]
    # 10 ms -> 100/s, 50/s usable -> 20 instances: twice the dense cost.
    assert (slow.costing.instances, slow.costing.saving) == (20, -3650.0)
    assert [n["code"] for n in slow.costing.notes] == ["slower_than_dense"]


def test_price_per_device_is_paid_once():
    workload = Workload(peak_rps=150, price_per_device=300.0, utilisation=1.0)
    costs = {key: c.costing for key, c in by_id(run(workload=workload)).items()}
    # dense 200/s serves 150/s on 1 device; the 0.5× model (100/s) needs 2.
    assert (costs["dense"].cost, costs["slow"].cost) == (300.0, 600.0)
    assert workload.to_dict()["cost_period"] == "once"


def test_cost_objective_ranks_cheapest_then_most_accurate():
    workload = Workload(peak_rps=1000, price_per_hour=0.5, utilisation=0.5)
    ranked = [c.row["result_id"] for c in run(Budget(dataset="mnist", objective="cost"), workload).ranked]
    # 7 instances; then the two at 10 instances by accuracy (dense 80.0 before magnitude 79.5); then 20.
    assert ranked == ["fast", "dense", "same", "slow"]


def test_cost_objective_without_workload_is_refused():
    from advisor.recommend import BudgetError

    with pytest.raises(BudgetError, match="objective cost needs a workload"):
        run(Budget(objective="cost"))


def test_baseline_model_compares_every_candidate_with_today_deployment():
    other = make_result(result_id="other-dense", model_key="mnist/convnext_atto", criterion="dense", allocation="none",
                        pattern="dense", requested_sparsity=0.0, achieved_sparsity=0.0, top1=82.0, dense_top1=82.0)
    workload = Workload(peak_rps=1000, price_per_hour=0.5, utilisation=0.5, baseline_model="mnist/convnext_atto")
    result = run(workload=workload, rows=ROWS + [other], timings=TIMINGS + [timing(other, 20.0)])
    fast = by_id(result)["fast"].costing
    # convnext at 20 ms: 50/s, 25/s usable -> 40 instances; fast needs 7.
    assert (fast.baseline_model, fast.baseline_instances, fast.instances) == ("mnist/convnext_atto", 40, 7)
    assert fast.accuracy_given_up == pytest.approx(82.0 - 78.5)
    from advisor.recommend import BudgetError

    with pytest.raises(BudgetError, match="baseline model 'nope' has no dense result"):
        run(workload=Workload(peak_rps=1, price_per_hour=1, baseline_model="nope"))


def test_untimed_candidate_ranks_last():
    untimed = make_result(result_id="untimed", criterion="wanda", requested_sparsity=0.7, top1=79.9)
    result = run(Budget(dataset="mnist", objective="cost"), Workload(peak_rps=10, price_per_hour=1.0),
                 rows=ROWS + [untimed])
    last = result.ranked[-1]
    assert last.row["result_id"] == "untimed"
    assert last.costing.instances is None
    assert last.has_risk("latency_missing")
    assert last.costing.notes[0]["code"] == "no_timing"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"peak_rps": 0, "price_per_hour": 1}, "peak rate 0"),
        ({"peak_rps": math.nan, "price_per_hour": 1}, "peak rate nan"),
        ({"peak_rps": 10}, "exactly one price"),
        ({"peak_rps": 10, "price_per_hour": 1, "price_per_device": 5}, "exactly one price"),
        ({"peak_rps": 10, "price_per_hour": -1}, "price -1"),
        ({"peak_rps": 1, "price_per_hour": 1, "requests_per_day": 864_000}, "above the peak"),
        ({"peak_rps": 1, "price_per_hour": 1, "instances_today": 0}, "instances today 0"),
        ({"peak_rps": 1, "price_per_hour": 1, "utilisation": 1.5}, "150 %"),
        ({"peak_rps": 1, "price_per_hour": 1, "currency": ""}, "currency"),
    ],
)
def test_invalid_workloads(kwargs, message):
    with pytest.raises(WorkloadError, match=message):
        Workload(**kwargs)


# -- budget limits beyond latency and accuracy ---------------------------------------------------


def test_throughput_limit_uses_p50_at_the_batch_size():
    result = run(Budget(dataset="mnist", min_throughput=250))
    # Only the 3.125 ms model serves 320/s; the dense one serves 200/s.
    assert [c.row["result_id"] for c in result.ranked] == ["fast"]
    assert result.ranked[0].throughput == pytest.approx(320.0)
    assert result.ranked[0].margins["min_throughput"] == pytest.approx(70.0)


def test_relative_drop_and_accuracy_margin():
    # 1.5 points of 80 is 1.875 % of dense: within 2 %, but not with 0.5 points of required headroom.
    assert "fast" in by_id(run(Budget(dataset="mnist", max_relative_drop=2.0)))
    with_margin = run(Budget(dataset="mnist", max_relative_drop=2.0, accuracy_margin=0.5))
    assert "fast" not in by_id(with_margin)
    assert with_margin.failing_counts["max_relative_drop"] == 1


def test_weight_format_and_latency_margin():
    rows = [DENSE, FAST]
    timings = [timing(DENSE, 5.0, runtime="torch-2:4-cuda"), timing(FAST, 3.125, speedup=1.6, runtime="torch-2:4-cuda")]
    budget = Budget(dataset="mnist", runtimes=("torch-2:4-cuda",), max_weight_mb=45)
    found = by_id(run(budget, rows=rows, timings=timings))
    assert found["fast"].weight_format == "semi_structured_2_4"
    assert found["fast"].weight_bytes == 40_000_000
    # A 10 % margin requires 4.5 ms under a 5 ms limit: the dense model (5.0 ms) no longer fits.
    tight = run(Budget(dataset="mnist", max_latency_ms=5.0, latency_stat="p50", margin_pct=10))
    assert [c.row["result_id"] for c in tight.ranked] == ["fast"]
    assert run(Budget(dataset="mnist", max_latency_ms=5.0, latency_stat="p50")).ranked[0].row["result_id"] == "dense"


def test_allowed_patterns_keep_dense_rows():
    two_four = make_result(result_id="24", criterion="wanda", pattern="2:4", requested_sparsity=0.5, top1=79.0)
    result = run(Budget(dataset="mnist", patterns=("2:4",)), rows=ROWS + [two_four])
    assert {c.row["result_id"] for c in result.ranked} == {"dense", "24"}


def test_each_runtime_is_a_candidate_of_its_own():
    csr = timing(FAST, 2.0, speedup=2.5, runtime="torch-sparse-csr")
    result = run(Budget(dataset="mnist", runtimes=("torch-eager", "torch-sparse-csr"), objective="latency"),
                 rows=[DENSE, FAST], timings=[timing(DENSE, 5.0), timing(FAST, 3.125, speedup=1.6), csr])
    pairs = [(c.row["result_id"], c.runtime) for c in result.ranked]
    assert pairs == [("fast", "torch-sparse-csr"), ("fast", "torch-eager"), ("dense", "torch-eager")]


def test_pareto_front_over_accuracy_latency_and_memory():
    result = run(Budget(dataset="mnist"))
    front = {c.row["result_id"] for c in result.pareto_front()}
    # dense: most accurate; fast: fastest; same: between them on both; slow is beaten by dense on
    # accuracy and latency at equal memory.
    assert front == {"dense", "fast", "same"}
    heavier = dict(SAME, result_id="heavier", model_key="mnist/heavier", weight_bytes_json=json.dumps({"dense": 50_000_000}))
    result = run(Budget(dataset="mnist"), rows=[DENSE, SAME, heavier],
                 timings=[timing(DENSE, 5.0), timing(SAME, 4.85, speedup=1.03), timing(heavier, 4.85, speedup=1.03)])
    assert {c.row["result_id"] for c in result.pareto_front()} == {"dense", "same"}


# -- the commands: `ptsa recommend`, `ptsa roi`, `ptsa report` ---------------------------------


@pytest.fixture
def roi_db(tmp_path):
    """A database built by the product's store: the rows above, timed interleaved on env0."""
    from conftest import insert_latency, insert_rows, make_latency
    from db import Store

    path = tmp_path / "roi.duckdb"
    rows = [dict(r, latency_p50_ms=None, latency_p90_ms=None) for r in ROWS]
    latency = [make_latency(criterion="dense", runtime="torch-eager", p50_ms=5.0, p90_ms=5.5, result_id="dense")]
    for row, p50, speedup in (("fast", 3.125, 1.6), ("same", 4.85, 1.03), ("slow", 10.0, 0.5)):
        source = next(r for r in ROWS if r["result_id"] == row)
        latency.append(make_latency(criterion=source["criterion"], runtime="torch-eager", requested_sparsity=source[
            "requested_sparsity"], p50_ms=p50, p90_ms=p50 * 1.1, speedup=speedup, result_id=row))
    with Store.open(path) as store:
        insert_rows(store, rows)
        insert_latency(store, latency)
        store.upsert_environment("env0", {"cpu_model": "Test CPU", "cpu_count": 2, "device": "cpu"})
    return path


SCHEMA_PATH = __import__("pathlib").Path(__file__).parents[1] / "assets" / "recommend-output.schema.json"


def invoke(*args):
    from click.testing import CliRunner

    from advisor.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def validate(payload):
    import jsonschema

    jsonschema.validate(payload, json.loads(SCHEMA_PATH.read_text()))


def test_roi_table_and_json_follow_the_schema(roi_db):
    args = ["--db", roi_db, "roi", "--dataset", "mnist", "--peak-rps", 1000, "--price-per-hour", 0.5,
            "--utilisation", 50, "--requests-per-day", 40e6]
    text = invoke(*args)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0].startswith("Workload: peak 1000 requests/s at 50 % utilisation, 0.5 USD per instance-hour")
    first = lines[4]
    for cell in ("wanda", "10→7", "2,555 USD", "1,095 USD"):
        assert cell in first
    assert "no speed-up measured on torch-eager: sized like the dense model" in text.stdout

    payload = json.loads(invoke(*args, "--json").stdout)
    validate(payload)
    assert payload["status"] == "ok"
    assert payload["budget"]["objective"] == "cost"
    assert [c["cost"]["instances"] for c in payload["candidates"]] == [7, 10, 10, 20]
    assert payload["workload"]["cost_period"] == "month"


def test_weight_limit_uses_dense_count(roi_db):
    result = invoke("--db", roi_db, "recommend", "--dataset", "mnist", "--max-weight-mb", 30, "--json")
    assert result.exit_code == 3  # no row has fewer than 30 MB of weights in dense format
    payload = json.loads(result.stdout)
    validate(payload)
    assert payload["binding_constraint"] == "max_weight_mb"
    # SparseGPT at 60 % has no byte count of its own: dense bytes do not depend on the mask.
    slow = next(c for c in payload["nearest"] if c["evidence"]["result_id"] == "slow")
    assert slow["weight_mb"] == 40.0
    assert slow["violations"]["max_weight_mb"] == pytest.approx(10.0)


def test_json_writes_unmeasured_shortfalls_as_null(fixture_db):
    result = invoke("--db", fixture_db, "recommend", "--dataset", "mnist", "--max-latency-ms", 1, "--limit", 10, "--json")
    assert result.exit_code == 3
    assert "Infinity" not in result.stdout
    payload = json.loads(result.stdout)
    validate(payload)
    assert payload["failing_counts"]["max_latency_ms"] == 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["roi", "--price-per-hour", 1], "needs the peak rate"),
        (["roi", "--peak-rps", 10], "exactly one price"),
        (["roi", "--peak-rps", 10, "--price-per-hour", 1, "--utilisation", 0], "utilisation 0 %"),
        (["recommend", "--objective", "cost"], "objective cost needs a workload"),
        (["recommend", "--runtime", "torch-eager,tensorrt"], "unknown runtime 'tensorrt'"),
        (["recommend", "--pattern", "3:2"], "pattern '3:2' is invalid"),
        (["roi", "--peak-rps", 10, "--price-per-hour", 1, "--baseline-model", "mnist/x"], "baseline model 'mnist/x'"),
    ],
)
def test_invalid_inputs_exit_2_with_the_fix(roi_db, args, message):
    result = invoke("--db", roi_db, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not result.stdout


def test_report_in_english_and_japanese(roi_db, tmp_path):
    args = ["--db", roi_db, "report", "--dataset", "mnist", "--peak-rps", 1000, "--price-per-hour", 0.5,
            "--utilisation", 50, "--instances-today", 12, "--max-drop", 1.8]
    english = tmp_path / "report.md"
    result = invoke(*args, "--out", english, "--lang", "en")
    assert result.exit_code == 0, result.output
    text = english.read_text()
    assert text.startswith("# PTS Advisor report")
    assert "We recommend **mnist/resnet10t** with **wanda** at 49.0% sparsity on torch-eager" in text
    assert "- Dense baseline (mnist/resnet10t): 10 instances, 3,650 USD per month." in text
    assert "- Recommended: 7 instances, 2,555 USD per month." in text
    assert "## Risks" in text
    assert "## Method" in text
    japanese = tmp_path / "report.ja.md"
    assert invoke(*args, "--out", japanese, "--lang", "ja").exit_code == 0
    ja = japanese.read_text()
    assert ja.startswith("# PTS Advisor レポート")
    assert "- 推奨構成: インスタンス 7 台、月額 2,555 USD。" in ja
    assert "## リスク" in ja
    assert "We recommend" not in ja  # every sentence is translated


def test_report_language_follows_the_locale(roi_db, tmp_path, monkeypatch):
    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    out = tmp_path / "r.md"
    assert invoke("--db", roi_db, "report", "--dataset", "mnist", "--out", out).exit_code == 0
    assert out.read_text().startswith("# PTS Advisor レポート")


def test_report_into_a_missing_folder_leaves_nothing(roi_db, tmp_path):
    out = tmp_path / "missing" / "report.md"
    result = invoke("--db", roi_db, "report", "--out", out)
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
    assert not (tmp_path / "missing").exists()
    assert not list(tmp_path.glob("**/*.partial"))


def test_report_when_nothing_fits_names_the_binding_limit(roi_db, tmp_path):
    out = tmp_path / "none.md"
    result = invoke("--db", roi_db, "report", "--dataset", "mnist", "--max-latency-ms", 1, "--out", out, "--lang", "en")
    assert result.exit_code == 3
    text = out.read_text()
    assert "No candidate meets the budget: max latency rules out" in text
    assert "does not meet the budget: max latency missed by" in text
    assert "Do not deploy it as it is." in text
    assert "Recommended:" not in text
    assert "## Evidence of the nearest candidate" in text


def test_report_file_mode_symlink_and_empty_path(roi_db, tmp_path):
    import os
    import stat

    target = tmp_path / "shared.md"
    target.write_text("old")
    target.chmod(0o644)
    link = tmp_path / "link.md"
    link.symlink_to(target)
    assert invoke("--db", roi_db, "report", "--dataset", "mnist", "--out", link, "--lang", "en").exit_code == 0
    assert link.is_symlink()  # the link stays; the file it points to is replaced
    assert target.read_text().startswith("# PTS Advisor report")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    fresh = tmp_path / "fresh.md"
    old_umask = os.umask(0o022)
    try:
        assert invoke("--db", roi_db, "report", "--dataset", "mnist", "--out", fresh).exit_code == 0
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
    empty = invoke("--db", roi_db, "report", "--out", "")
    assert empty.exit_code == 2
    assert "--out is empty" in empty.stderr


def test_report_says_when_no_accuracy_limit_is_set(roi_db, tmp_path):
    out = tmp_path / "r.md"
    invoke("--db", roi_db, "report", "--dataset", "mnist", "--out", out, "--lang", "en")
    assert "The budget sets no accuracy limit" in out.read_text()


def test_negative_saving_reads_as_extra_cost(roi_db, tmp_path):
    out = tmp_path / "r.md"
    args = ["--db", roi_db, "report", "--dataset", "mnist", "--peak-rps", 1000, "--price-per-hour", 0.5,
            "--utilisation", 50, "--instances-today", 5, "--max-drop", 1.8, "--out", out, "--lang", "en"]
    assert invoke(*args).exit_code == 0
    # 7 instances cost 2,555 a month; 5 today cost 1,825.
    assert "Saving against the 5 instances running today: 730 USD more per month." in out.read_text()


def test_utilisation_as_a_fraction_is_rejected(roi_db):
    result = invoke("--db", roi_db, "roi", "--peak-rps", 10, "--price-per-hour", 1, "--utilisation", 0.6)
    assert result.exit_code == 2
    assert "pass --utilisation 60" in result.stderr


def test_pattern_without_results_exits_2(roi_db):
    result = invoke("--db", roi_db, "recommend", "--dataset", "mnist", "--pattern", "2:8", "--sparse-only")
    assert result.exit_code == 2
    assert "has pattern 2:8" in result.stderr
    assert "The results have patterns unstructured" in result.stderr


def test_next_measurement_commands_parse(tmp_path):
    """Every suggested command is accepted by the CLI's parser once WEIGHTS and DATA_DIR are filled in."""
    import shlex

    from advisor.cli import main
    from advisor.recommend import next_measurement

    published = dict(make_result(result_id="pub", model_key="resnet50@msbench", dataset="imagenet",
                                 recipe_json=json.dumps({"recipe": "uniform+magnitude+unstructured"})),
                     provenance="published", architecture="resnet50")
    predicted = dict(make_result(result_id="pred", criterion="wanda"), provenance="predicted")
    untimed_dense = dict(make_result(result_id="d2", model_key="vit_small_patch16_224@random-init", criterion="dense",
                                     allocation="none", pattern="dense", requested_sparsity=0.0),
                         architecture="vit_small_patch16_224")
    inferred = make_result(result_id="inferred", criterion="sparsegpt", requested_sparsity=0.7)
    rows = [published, predicted, untimed_dense, inferred]
    timings = [timing(DENSE, 5.0, runtime="torch-sparse-csr"),
               timing(dict(inferred, criterion="magnitude"), 4.0, speedup=1.2, runtime="torch-sparse-csr",
                      source_row=False)]
    result = run(Budget(runtimes=("torch-sparse-csr",)), rows=rows + [DENSE], timings=timings)
    commands = {c.row["result_id"]: next_measurement(c) for c in result.ranked}
    assert commands["pub"].startswith("ptsa bench resnet50 --weights WEIGHTS --data DATA_DIR")
    assert commands["d2"] == ("ptsa latency vit_small_patch16_224 --random-init --runtime torch-sparse-csr --batch 1 "
                              "--sparsity 0.5")
    assert "--runtime torch-sparse-csr" in commands["inferred"]  # a timing of another mask is used in its place
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    for command in filter(None, commands.values()):
        filled = {"WEIGHTS": str(weights), "DATA_DIR": str(tmp_path)}
        words = [filled.get(word, word) for word in shlex.split(command)]
        group = main.make_context("ptsa", words[1:2])
        sub = main.get_command(group, words[1])
        sub.make_context(words[1], words[2:], parent=group)  # raises on an unknown option or a bad value


def test_noisy_timing_and_sizing_p50():
    noisy = Timing(SAME["model_key"], "env0", "torch-eager", 1, "magnitude", "unstructured", 0.5, 4.85, 5.3, None,
                   1.03, "same", spread=0.4)
    result = run(Budget(dataset="mnist"), Workload(peak_rps=1000, price_per_hour=0.5, utilisation=0.5),
                 timings=[TIMINGS[0], TIMINGS[1], noisy, TIMINGS[3]])
    same = by_id(result)["same"]
    assert same.has_risk("unreliable_timing")
    assert same.costing.sized_p50_ms == 5.0  # the dense model's p50, as 1.03× is within the noise
    from advisor.formatting import roi_text

    assert "5.00 (dense)" in roi_text(result)


def test_pareto_sweep_matches_brute_force():
    import random

    from advisor.recommend import Candidate, mark_pareto

    rng = random.Random(3)
    points = [Candidate({"result_id": str(i)}, "top1", rng.choice([70.0, 71.0, 72.5, 80.0]), None,
                        rng.choice([1.0, 2.0, 2.5, 4.0]), weight_bytes=rng.choice([10, 20, 30]))
              for i in range(300)]
    mark_pareto(points)

    def beaten(c):
        return any(o.latency_ms <= c.latency_ms and o.accuracy >= c.accuracy and o.weight_bytes <= c.weight_bytes
                   and (o.latency_ms, o.accuracy, o.weight_bytes) != (c.latency_ms, c.accuracy, c.weight_bytes)
                   for o in points)

    expected = {c.row["result_id"] for c in points if not beaten(c)}
    assert {c.row["result_id"] for c in points if c.pareto} == expected
    assert expected  # the draw has a front
