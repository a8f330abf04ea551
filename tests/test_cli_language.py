"""The `ptsa` command line in Japanese: errors, tables and messages follow --lang or the locale.

JSON output and Click's own usage errors stay English. The Japanese checks read the shipped
catalog (assets/locale/ja), so they pass once the catalog contains the CLI's messages.
"""

from __future__ import annotations

import json
import unicodedata

import pytest
from click.testing import CliRunner

from advisor.cli import main
from advisor.i18n import use_language

JAPANESE = {"LANG": "ja_JP.UTF-8", "LC_ALL": None, "LC_MESSAGES": None}
C_LOCALE = {"LANG": "C", "LC_ALL": None, "LC_MESSAGES": None}


@pytest.fixture(autouse=True)
def english_afterwards():
    """`main` sets the language for the whole process; put English back for the tests that follow."""
    yield
    use_language("en")


@pytest.fixture
def runner():
    return CliRunner()


def invoke(runner, args, env):
    return runner.invoke(main, [str(a) for a in args], env=env)


def test_invalid_budget_japanese_with_lang_option(runner, tmp_path):
    result = invoke(runner, ["--lang", "ja", "--db", tmp_path / "results.duckdb", "recommend", "--max-drop", "-1"],
                    C_LOCALE)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("エラー: ")
    assert "最大精度低下 -1.0 は範囲外です" in result.stderr
    assert "例: --max-drop 2" in result.stderr


def test_invalid_budget_japanese_from_locale(runner, tmp_path):
    result = invoke(runner, ["--db", tmp_path / "results.duckdb", "recommend", "--min-accuracy", "120"], JAPANESE)
    assert result.exit_code == 2
    assert result.stderr.startswith("エラー: ")
    assert "最低精度 120.0 は範囲外です" in result.stderr


def test_invalid_budget_english_with_c_locale(runner, tmp_path):
    result = invoke(runner, ["--db", tmp_path / "results.duckdb", "recommend", "--max-drop", "-1"], C_LOCALE)
    assert result.exit_code == 2
    assert result.stderr == ("error: maximum drop -1.0 is out of range; it is in percentage points between 0 and 100, "
                             "for example --max-drop 2.\n")


def test_lang_option_wins_over_locale(runner, tmp_path):
    result = invoke(runner, ["--lang", "en", "--db", tmp_path / "results.duckdb", "recommend", "--max-drop", "-1"],
                    JAPANESE)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: maximum drop -1.0 is out of range")


def test_bench_engine_error_japanese(runner, tmp_path):
    # The sparsity is checked before any model or data is loaded.
    result = invoke(runner, ["--lang", "ja", "--db", tmp_path / "results.duckdb", "bench", "mnist/resnet10t",
                             "--data", "mnist", "--sparsity", "1.5"], C_LOCALE)
    assert result.exit_code == 2
    assert result.stderr.startswith("エラー: スパース率 1.5")
    assert "out of range" not in result.stderr


def test_workload_error_japanese(runner, tmp_path):
    result = invoke(runner, ["--lang", "ja", "--db", tmp_path / "results.duckdb", "roi", "--peak-rps", "100",
                             "--price-per-hour", "1", "--utilisation", "0.5"], C_LOCALE)
    assert result.exit_code == 2
    assert result.stderr == "エラー: --utilisation 0.5 はパーセント（0.5 %）として読みます。50 % のつもりなら --utilisation 50 を指定してください。\n"


def test_recommend_table_japanese(runner, fixture_db):
    result = invoke(runner, ["--lang", "ja", "--db", fixture_db, "recommend", "--dataset", "mnist", "--max-drop", "1.5",
                             "--objective", "sparsity"], C_LOCALE)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("6 件の候補のうち 5 件が予算を満たします（目的: sparsity、")
    assert lines[1].split() == ["#", "モデル", "手法", "スパース率", "精度", "低下", "レイテンシ", "ms", "高速化", "p50",
                                "出所", "パレート"]
    assert "sparsegpt" in lines[3]  # model and method names stay as they are
    assert "最上位の候補: 最も厳しい制約は最大精度低下で" in result.stdout
    assert "スパースカーネルが動いていません" in result.stdout
    # Wide characters take two terminal columns, so every line of the table is as wide as its header.
    widths = {sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line) for line in lines[1:8]}
    assert len(widths) == 1


def test_nothing_fits_japanese(runner, fixture_db):
    result = invoke(runner, ["--lang", "ja", "--db", fixture_db, "recommend", "--dataset", "mnist",
                             "--max-latency-ms", "1"], C_LOCALE)
    assert result.exit_code == 3
    assert result.stdout.startswith("予算を満たす候補はありません。最大レイテンシで 6 件中 6 件が外れます。")
    assert "満たさない理由" in result.stdout


def test_recommend_table_english_with_c_locale(runner, fixture_db):
    result = invoke(runner, ["--db", fixture_db, "recommend", "--dataset", "mnist", "--max-drop", "1.5",
                             "--objective", "sparsity"], C_LOCALE)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("5 of 6 candidates meet the budget (objective: sparsity; latency p90 on torch-eager")
    assert lines[1].split() == ["#", "model", "method", "sparsity", "accuracy", "drop", "latency", "ms", "speedup",
                                "p50", "evidence", "front"]
    assert "Top candidate: the tightest constraint is max drop, with 0.00 points of headroom." in result.stdout


def test_json_stays_english(runner, fixture_db):
    args = ["--db", fixture_db, "recommend", "--dataset", "mnist", "--json"]
    japanese = invoke(runner, ["--lang", "ja", *args], C_LOCALE)
    english = invoke(runner, ["--lang", "en", *args], C_LOCALE)
    assert japanese.exit_code == 0, japanese.output
    assert json.loads(japanese.stdout)["status"] == "ok"
    assert "no speed-up over dense measured on torch-eager" in japanese.stdout  # a risk's detail
    assert japanese.stdout == english.stdout


def test_click_usage_errors_stay_english(runner, tmp_path):
    result = invoke(runner, ["--lang", "ja", "--db", tmp_path / "results.duckdb", "recommend", "--limit", "0"],
                    C_LOCALE)
    assert result.exit_code == 2
    assert "Invalid value for '--limit'" in result.stderr
