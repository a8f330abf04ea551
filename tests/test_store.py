"""The DuckDB store on real files: migrations, columnar inserts, and every way opening can fail."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import duckdb
import pytest

from conftest import insert_rows, make_result
from db import (
    SCHEMA_VERSION,
    DatabaseError,
    DatabaseLockedError,
    DatabaseNotFoundError,
    InvalidRowsError,
    SchemaTooNewError,
    Store,
)


def test_new_database_gets_schema_and_reopens(tmp_path):
    path = tmp_path / "sub" / "r.duckdb"
    with Store.open(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert {"result_id", "provenance", "env_key", "achieved_sparsity", "latency_p90_ms"} <= set(store.columns("results"))
        insert_rows(store, [make_result()])
    with Store.open(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.count("results") == 1


def test_columnar_insert_round_trip_with_nulls(tmp_path):
    with Store.open(tmp_path / "r.duckdb") as store:
        rows = [make_result(top1=None, top5=None, dataset="photos", labelled=False), make_result(top1=91.25)]
        insert_rows(store, rows)
        stored = store.query("SELECT dataset, top1, provenance, created_at FROM results ORDER BY dataset")
    assert stored[0]["dataset"] == "mnist"
    assert stored[0]["top1"] == 91.25
    assert stored[1]["top1"] is None
    assert all(r["provenance"] == "measured" and r["created_at"] is not None for r in stored)


def test_invalid_rows_insert_nothing(tmp_path):
    with Store.open(tmp_path / "r.duckdb") as store:
        with pytest.raises(InvalidRowsError, match="invalid provenance"):
            insert_rows(store, [make_result(), make_result(provenance="guessed")])
        with pytest.raises(InvalidRowsError, match="unknown results columns"):
            insert_rows(store, [make_result(colour="red")])
        with pytest.raises(InvalidRowsError, match="unequal lengths"):
            store.insert_results({"result_id": ["a", "b"], "model_key": ["m"]})
        with pytest.raises(InvalidRowsError, match="rejected by the schema"):
            insert_rows(store, [make_result(), make_result(requested_sparsity=1.5)])
        assert store.count("results") == 0


def test_read_only_missing_file(tmp_path):
    path = tmp_path / "absent.duckdb"
    with pytest.raises(DatabaseNotFoundError, match="ptsa demo"):
        Store.open(path, read_only=True)
    assert not path.exists()


def test_newer_schema_is_rejected(tmp_path):
    path = tmp_path / "r.duckdb"
    Store.open(path).close()
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_version VALUES (99, now())")
    con.close()
    with pytest.raises(SchemaTooNewError, match="schema version 99.*Upgrade pts-advisor"):
        Store.open(path)


def test_not_a_database_is_left_untouched(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_text("these are notes, not a database\n" * 10)
    before = path.read_bytes()
    with pytest.raises(DatabaseError, match=str(path.name)):
        Store.open(path)
    assert path.read_bytes() == before


def test_locked_database_names_the_fix(tmp_path):
    path = tmp_path / "r.duckdb"
    Store.open(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys, time
            con = duckdb.connect({str(path)!r})
            print("locked", flush=True)
            time.sleep(30)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DatabaseLockedError, match="locked by another process.*--db"):
            Store.open(path)
    finally:
        holder.kill()
        holder.wait()
    deadline = time.time() + 10
    while True:  # the lock goes with the process
        try:
            Store.open(path).close()
            break
        except DatabaseLockedError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def test_run_lifecycle(tmp_path):
    with Store.open(tmp_path / "r.duckdb") as store:
        store.upsert_environment("e1", {"cpu_model": "X", "device": "cpu"})
        store.upsert_environment("e1", {"cpu_model": "X", "device": "cpu"})
        store.start_run("run1", "ptsa bench", {"a": 1}, "e1", "0.1.0")
        store.finish_run("run1", "failed", "boom")
        run = store.query("SELECT status, error, finished_at FROM runs")[0]
    assert run["status"] == "failed"
    assert run["error"] == "boom"
    assert run["finished_at"] is not None


def test_version_1_file_migrates_on_write_open(tmp_path):
    import duckdb

    from db.migrations import MIGRATION_1

    path = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL)")
    for statement in MIGRATION_1:
        con.execute(statement)
    con.execute("INSERT INTO schema_version VALUES (1, now())")
    con.close()
    with pytest.raises(DatabaseError, match="needs migration"):
        Store.open(path, read_only=True)
    with Store.open(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert "weight_bytes_json" in store.columns("results")
        insert_rows(store, [make_result(weight_bytes_json='{"dense": 16}')])
        assert store.query("SELECT weight_bytes_json FROM results")[0]["weight_bytes_json"] == '{"dense": 16}'
        assert {"result_id", "protocol", "baseline_p50_ms"} <= set(store.columns("latency"))


def test_nested_transaction_lands_all_or_nothing(tmp_path):
    with Store.open(tmp_path / "r.duckdb") as store:
        with pytest.raises(InvalidRowsError, match="unknown latency columns"):
            with store.transaction():
                insert_rows(store, [make_result()])
                store.insert_latency({"no_such_column": [1]})
        assert store.count("results") == 0  # the results insert was rolled back with the latency one
        with store.transaction():
            insert_rows(store, [make_result()])
        assert store.count("results") == 1


def test_foreign_duckdb_file_is_rejected(tmp_path):
    import duckdb

    path = tmp_path / "sales.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE sales (id INTEGER)")
    with pytest.raises(DatabaseError, match="not a PTS Advisor one: it has the tables sales"):
        Store.open(path)
    with duckdb.connect(str(path), read_only=True) as con:
        tables = [row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
    assert tables == ["sales"]  # nothing was added
