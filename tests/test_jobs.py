"""Resumable runs: job keys, worker processes, result shards and their ingester, kills at any moment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench_engine.jobs import ModelSource
from bench_engine.runner import BenchJob, BenchPlan, run_jobs, shard_folder
from bench_engine.shards import ingest_shards, write_shard
from db import SCHEMA_VERSION, Store

ROOT = Path(__file__).parents[1]


@pytest.fixture
def tiny(tiny_setup):
    weights, data, db_path = tiny_setup
    return ModelSource("resnet10t", str(data), weights=str(weights), input_size=32), db_path


def counts(db_path):
    with Store.open(db_path, read_only=True) as store:
        results = store.query("SELECT count(*) AS n, count(DISTINCT job_key) AS keys FROM results "
                              "WHERE provenance = 'measured'")[0]
        jobs = {r["status"]: r["n"] for r in store.query("SELECT status, count(*) AS n FROM jobs GROUP BY status")}
    return results["n"], results["keys"], jobs


def test_a_second_run_skips_finished_jobs_and_force_reruns_them(tiny):
    source, db_path = tiny
    job = BenchJob("tiny", source, BenchPlan(criteria=["magnitude", "wanda"], sparsities=[0.5], calibration_size=8))
    first = run_jobs(db_path, [job], "test", show_progress=False)
    assert (first.finished, first.skipped, first.failed) == (3, 0, [])  # dense + 2 configurations
    again = run_jobs(db_path, [job], "test", show_progress=False)
    assert (again.finished, again.skipped) == (0, 3)
    assert counts(db_path) == (3, 3, {"finished": 3})
    # A wider grid runs only what is new: the same keys, plus one sparsity.
    wider = BenchJob("tiny", source, BenchPlan(criteria=["magnitude", "wanda"], sparsities=[0.5, 0.7],
                                               calibration_size=8))
    grown = run_jobs(db_path, [wider], "test", show_progress=False)
    assert (grown.finished, grown.skipped) == (2, 3)
    timed = BenchJob("tiny", source, BenchPlan(criteria=["magnitude", "wanda"], sparsities=[0.5], calibration_size=8,
                                               runtimes=["torch-eager"]))
    run_jobs(db_path, [timed], "test", show_progress=False)  # other keys: the runtimes are part of a job
    forced = run_jobs(db_path, [timed], "test", show_progress=False, force=True)
    assert (forced.finished, forced.replaced, forced.skipped) == (3, 3, 0)
    assert counts(db_path) == (8, 8, {"finished": 8})  # benched again, and each job still has one row
    with Store.open(db_path, read_only=True) as store:
        runs = {r["job_key"]: r["run_id"] for r in store.query("SELECT job_key, run_id FROM results")}
        job_runs = {r["job_key"]: r["run_id"] for r in store.query("SELECT job_key, run_id FROM jobs")}
        stale_timings = store.query("SELECT count(*) AS n FROM latency l JOIN jobs j USING (job_key) "
                                    "WHERE l.run_id <> j.run_id")[0]["n"]
        timings = store.query("SELECT count(*) AS n FROM latency WHERE run_id = ?", [forced.run_id])[0]["n"]
    assert sorted(r for r in runs.values() if r == forced.run_id) == [forced.run_id] * 3  # the new measurement
    assert all(job_runs[key] == run for key, run in runs.items())
    assert timings > 0
    assert stale_timings == 0  # the replaced rows' timings went with them


def test_a_model_that_cannot_load_fails_alone(tiny, tmp_path):
    source, db_path = tiny
    plan = BenchPlan(criteria=["magnitude"], sparsities=[0.5], calibration_size=8)
    broken = ModelSource("resnet10t", str(tmp_path / "no-such-folder"), weights=source.weights, input_size=32)
    summary = run_jobs(db_path, [BenchJob("broken", broken, plan), BenchJob("good", source, plan)], "test",
                       show_progress=False)
    assert summary.finished == 2
    assert len(summary.failed) == 1
    assert summary.failed[0][0] == "resnet10t"
    assert "no-such-folder" in summary.failed[0][1]
    with Store.open(db_path, read_only=True) as store:
        run = store.query("SELECT status, error FROM runs")[0]
    assert run["status"] == "failed"
    assert "jobs failed: 1" in run["error"]


def _workers_of(pid: int) -> list[int]:
    """Child processes of `pid` that run a bench worker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and b"bench_engine.jobs" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker through /proc")
def test_a_killed_worker_loses_only_its_unfinished_jobs(tiny):
    source, db_path = tiny
    plan = BenchPlan(criteria=["magnitude", "wanda", "sparsegpt"], sparsities=[0.3, 0.5, 0.7], calibration_size=8)
    spool = shard_folder(db_path)

    def kill_after_first_shard():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if spool.is_dir() and any(spool.glob("*.manifest")) and any(spool.glob("*.json")):
                for pid in _workers_of(os.getpid()):
                    os.kill(pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_first_shard)
    killer.start()
    summary = run_jobs(db_path, [BenchJob("tiny", source, plan)], "test", show_progress=False)
    killer.join()
    with Store.open(db_path, read_only=True) as store:
        failed = store.query("SELECT error FROM jobs WHERE status = 'failed'")
    assert failed, "the worker finished before it could be killed"
    assert all("killed by signal SIGKILL" in row["error"] for row in failed)
    finished = summary.finished
    # The failed jobs are skipped by default, and counted apart; --retry-failed benches exactly them.
    rerun = run_jobs(db_path, [BenchJob("tiny", source, plan)], "test", show_progress=False)
    assert (rerun.finished, rerun.skipped_failed, rerun.skipped) == (0, len(failed), 10 - len(failed))
    retried = run_jobs(db_path, [BenchJob("tiny", source, plan)], "test", show_progress=False, retry_failed=True)
    assert retried.finished == len(failed)
    assert finished + retried.finished == 10
    assert counts(db_path) == (10, 10, {"finished": 10})


def test_corrupt_and_half_written_shards_are_never_ingested(tiny, tmp_path):
    _source, db_path = tiny
    with Store.open(db_path):
        pass
    spool = shard_folder(db_path)
    spool.mkdir()
    (spool / "garbage.json").write_text("{not json", encoding="utf-8")
    (spool / ".half.123.tmp").write_text('{"format": "ptsa-result-shard", "bo', encoding="utf-8")
    good = write_shard(spool, "k1", {"job": {"job_key": "k1", "run_id": "r", "model_key": "m", "status": "failed",
                                              "error": "boom"}})
    altered = write_shard(spool, "k2", {"job": {"job_key": "k2", "run_id": "r", "model_key": "m", "status": "failed",
                                                 "error": "boom"}})
    payload = json.loads(altered.read_text())
    payload["body"]["job"]["error"] = "changed after writing"
    altered.write_text(json.dumps(payload))
    (spool / "k3.json").write_bytes(good.read_bytes())  # a shard whose name does not match its job
    with Store.open(db_path) as store:
        report = ingest_shards(store, spool)
        jobs = store.query("SELECT job_key, status FROM jobs")
    assert report.failed == ["k1"]
    reasons = dict(report.quarantined)
    assert "cannot read garbage.json" in reasons["garbage.json"]
    assert "fails its checksum" in reasons["k2.json"]
    assert "not the job its name says" in reasons["k3.json"]
    assert jobs == [{"job_key": "k1", "status": "failed"}]
    quarantine = spool / "quarantine"
    assert sorted(p.name for p in quarantine.glob("*.json")) == ["garbage.json", "k2.json", "k3.json"]
    assert "checksum" in (quarantine / "k2.reason.txt").read_text()
    assert (spool / ".half.123.tmp").exists()  # a writer may still be on it; it is never read


def test_shard_rows_that_do_not_fit_are_quarantined_whole(tiny):
    _source, db_path = tiny
    with Store.open(db_path):
        pass
    spool = shard_folder(db_path)
    write_shard(spool, "k9", {"job": {"job_key": "k9", "run_id": "r", "model_key": "m", "status": "finished"},
                              "results": {"result_id": ["x"], "no_such_column": [1]}})
    with Store.open(db_path) as store:
        report = ingest_shards(store, spool)
        assert store.count("jobs") == 0
        assert store.count("results") == 0
    assert [name for name, _ in report.quarantined] == ["k9.json"]


KILL_SCRIPT = """
import sys
from bench_engine.jobs import ModelSource
from bench_engine.runner import BenchJob, BenchPlan, run_jobs
source = ModelSource("resnet10t", sys.argv[2], weights=sys.argv[3], input_size=32)
plan = BenchPlan(criteria=["magnitude", "wanda"], sparsities=[0.3, 0.5, 0.7], calibration_size=8)
run_jobs(sys.argv[1], [BenchJob("tiny", source, plan)], "kill test", show_progress=False)
"""


def test_sigkill_at_random_moments_then_resume_gives_one_row_per_job(tiny, tmp_path):
    """Kill the whole bench (driver and worker) with SIGKILL at several moments, resume, and check the rows."""
    source, db_path = tiny
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", KILL_SCRIPT, str(db_path), source.data, source.weights]
    for delay in (1.0, 3.5, 5.0, 6.5, 8.0):  # from start-up, through loading, into the grid
        process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(delay)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if db_path.exists():
            with Store.open(db_path, read_only=True) as store:  # never corrupt: it opens after every kill
                store.count("results")
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert counts(db_path) == (7, 7, {"finished": 7})  # dense + 2 criteria × 3 sparsities, each once
    assert not list(shard_folder(db_path).glob("*.json"))
    # The killed runs are marked as interrupted, and nothing they left stays behind.
    with Store.open(db_path, read_only=True) as store:
        statuses = [r["status"] for r in store.query("SELECT status FROM runs ORDER BY started_at")]
        errors = {r["error"] for r in store.query("SELECT error FROM runs WHERE status = 'failed'")}
    assert statuses[-1] == "finished"
    assert "running" not in statuses
    assert all(error.startswith("interrupted") for error in errors)
    assert [p.name for p in shard_folder(db_path).iterdir() if p.name != "quarantine"] == []


def test_a_dead_run_is_marked_interrupted_and_a_live_one_is_left_alone(tiny):
    from bench_engine.liveness import RunLock

    source, db_path = tiny
    spool = shard_folder(db_path)
    with Store.open(db_path) as store:
        for run_id in ("deadrun", "liverun"):
            store.start_run(run_id, "test", {}, None, "0")
    spool.mkdir()
    (spool / "deadrun-resnet10t.manifest").write_text("{}")
    (spool / "deadrun.lock").write_text("123\n")  # its process is gone, so no process holds the lock
    with RunLock(spool, "liverun"):
        summary = run_jobs(db_path, [BenchJob("tiny", source, BenchPlan(criteria=["magnitude"], sparsities=[0.5],
                                                                         calibration_size=8))], "test",
                           show_progress=False)
        assert summary.interrupted_runs == ["deadrun"]
        with Store.open(db_path, read_only=True) as store:
            status = {r["run_id"]: (r["status"], r["error"]) for r in store.query("SELECT * FROM runs")}
        assert status["deadrun"][0] == "failed"
        assert status["deadrun"][1].startswith("interrupted")
        assert status["liverun"] == ("running", None)
        assert status[summary.run_id] == ("finished", None)
        assert sorted(p.name for p in spool.iterdir()) == ["liverun.lock"]
    assert list(spool.iterdir()) == []


def test_a_forced_rerun_that_fails_keeps_the_stored_measurement(tiny):
    source, db_path = tiny
    with Store.open(db_path):
        pass
    spool = shard_folder(db_path)
    job = {"job_key": "k1", "run_id": "r1", "model_key": "m", "label": "m · dense", "status": "finished",
           "error": None}
    from conftest import make_result

    row = {**make_result(job_key="k1"), "run_id": "r1"}
    write_shard(spool, "k1", {"job": job, "results": {name: [value] for name, value in row.items()}})
    with Store.open(db_path) as store:
        assert ingest_shards(store, spool).finished == ["k1"]
    write_shard(spool, "k1", {"job": {**job, "run_id": "r2", "status": "failed", "error": "boom", "replace": True}})
    with Store.open(db_path) as store:
        report = ingest_shards(store, spool)
        kept = store.query("SELECT run_id FROM results WHERE job_key = 'k1'")
        status = store.query("SELECT status, run_id FROM jobs WHERE job_key = 'k1'")[0]
    assert report.failed_kept == [("m · dense", "boom")]
    assert kept == [{"run_id": "r1"}]
    assert status == {"status": "finished", "run_id": "r1"}


def test_a_file_where_the_shard_folder_goes_is_named(tiny):
    source, db_path = tiny
    shard_folder(db_path).write_text("not a folder")
    from bench_engine.errors import InvalidConfigError

    with pytest.raises(InvalidConfigError, match="is a file, but a bench keeps its result shards in a folder"):
        run_jobs(db_path, [BenchJob("tiny", source, BenchPlan(criteria=["magnitude"], sparsities=[0.5]))], "test",
                 show_progress=False)
    assert not db_path.exists()


# -- moving results between machines ---------------------------------------------------------------


def test_export_then_import_twice_adds_each_row_once(tmp_path):
    from click.testing import CliRunner

    from advisor.cli import main
    from conftest import insert_rows, make_result

    source, target = tmp_path / "lab.duckdb", tmp_path / "laptop.duckdb"
    with Store.open(source) as store:
        insert_rows(store, [make_result(criterion="wanda", requested_sparsity=0.5, top1=91.0, job_key="j1"),
                            make_result(criterion="magnitude", requested_sparsity=0.5, top1=89.0),
                            # every installation imports the published tables itself
                            make_result(model_key="resnet50@msbench", provenance="published", top1=75.0)])
        store.upsert_environment("env-lab", {"cpu_model": "Lab CPU", "device": "cpu"})
        store.upsert_job({"job_key": "j1", "run_id": "r1", "model_key": "m", "label": "m · dense",
                          "spec_json": "{}", "status": "finished", "error": None, "attempts": 1,
                          "result_count": 1, "updated_at": "2026-12-05 00:00:00"})
    runner = CliRunner()
    out = tmp_path / "export"
    exported = runner.invoke(main, ["--db", str(source), "db", "export", "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert "exported 3 results" in exported.output
    assert sorted(p.name for p in out.iterdir())[-1] == "runs.parquet"
    assert (out / "manifest.json").exists()
    for expected in (2, 0):  # the second import finds every row already there
        imported = runner.invoke(main, ["--db", str(target), "db", "import", str(out)])
        assert imported.exit_code == 0, imported.output
        assert f"imported {expected} results" in imported.output
    with Store.open(target, read_only=True) as store:
        assert store.count("results") == 2
        assert store.count("jobs") == 1
    # A database that already contains job j1 (benched there too) does not get its row twice.
    third = tmp_path / "third.duckdb"
    with Store.open(third) as store:
        insert_rows(store, [make_result(criterion="wanda", requested_sparsity=0.5, top1=90.5, job_key="j1")])
    assert "imported 1 results" in runner.invoke(main, ["--db", str(third), "db", "import", str(out)]).output
    with Store.open(target, read_only=True) as store:
        assert store.query("SELECT cpu_model FROM environments WHERE env_key = 'env-lab'")[0]["cpu_model"] == "Lab CPU"
        assert {r["provenance"] for r in store.query("SELECT provenance FROM results")} == {"measured"}
    again = runner.invoke(main, ["--db", str(source), "db", "export", "--out", str(out)])
    assert again.exit_code == 2
    assert "already exists" in again.output


def test_import_rejects_a_broken_or_newer_export(tmp_path):
    from click.testing import CliRunner

    from advisor.cli import main

    runner = CliRunner()
    target = tmp_path / "t.duckdb"
    missing = runner.invoke(main, ["--db", str(target), "db", "import", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2
    assert "export folder" in missing.output and "not found" in missing.output
    with Store.open(tmp_path / "s.duckdb"):
        pass
    out = tmp_path / "export"
    assert runner.invoke(main, ["--db", str(tmp_path / "s.duckdb"), "db", "export", "--out", str(out)]).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (out / "manifest.json").write_text(json.dumps(manifest))
    newer = runner.invoke(main, ["--db", str(target), "db", "import", str(out)])
    assert newer.exit_code == 2
    assert "schema version 99, newer than this PTS Advisor reads" in newer.output
    manifest["schema_version"] = SCHEMA_VERSION
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "results.parquet").unlink()
    incomplete = runner.invoke(main, ["--db", str(target), "db", "import", str(out)])
    assert incomplete.exit_code == 2
    assert "lacks results.parquet" in incomplete.output
    a_file = runner.invoke(main, ["--db", str(target), "db", "import", str(out / "manifest.json")])
    assert a_file.exit_code == 2
    assert "is a file; pass the folder `ptsa db export` wrote" in a_file.output
    # A file cut short in the copy, a manifest that does not match, a schema version that is no number.
    fresh = tmp_path / "fresh"
    assert runner.invoke(main, ["--db", str(tmp_path / "s.duckdb"), "db", "export", "--out", str(fresh)]).exit_code == 0
    assert oct(fresh.stat().st_mode & 0o777) != oct(0o700)  # readable like any folder, not private
    whole = (fresh / "models.parquet").read_bytes()
    (fresh / "models.parquet").write_bytes(whole[: len(whole) // 2])
    truncated = runner.invoke(main, ["--db", str(target), "db", "import", str(fresh)])
    assert truncated.exit_code == 2
    assert "models.parquet" in truncated.output
    assert "damaged or only partly copied" in truncated.output
    (fresh / "models.parquet").write_bytes(whole)
    manifest = json.loads((fresh / "manifest.json").read_text())
    manifest["rows"]["runs"] = 5
    (fresh / "manifest.json").write_text(json.dumps(manifest))
    altered = runner.invoke(main, ["--db", str(target), "db", "import", str(fresh)])
    assert altered.exit_code == 2
    assert "holds 0 rows but the manifest says 5" in altered.output
    manifest["schema_version"] = "six"
    (fresh / "manifest.json").write_text(json.dumps(manifest))
    not_a_number = runner.invoke(main, ["--db", str(target), "db", "import", str(fresh)])
    assert not_a_number.exit_code == 2
    assert "has no valid schema version (found 'six')" in not_a_number.output
    assert not target.exists()  # nothing half-written


def test_a_bench_waits_for_a_reader_to_let_go(tiny):
    """A TUI or `ptsa recommend` reading at the moment a bench starts delays it; it does not fail it."""
    source, db_path = tiny
    with Store.open(db_path):
        pass
    reader = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from db import Store; s = Store.open(sys.argv[1], read_only=True); "
        "print('reading', flush=True); time.sleep(3); s.close()"), str(db_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "reading"
        summary = run_jobs(db_path, [BenchJob("tiny", source, BenchPlan(criteria=["magnitude"], sparsities=[0.5],
                                                                         calibration_size=8))], "test",
                           show_progress=False)
    finally:
        reader.wait()
    assert summary.finished == 2
