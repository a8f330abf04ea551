"""The TUI driven through Textual's pilot, then compared with SVG snapshots."""

from __future__ import annotations

import subprocess
import sys

from textual.widgets import DataTable, Input, Static

from advisor.recommend import Budget
from advisor.tui.app import RANK_DELAY, PTSAdvisorApp


async def settle(pilot) -> None:
    """Wait until an edit's ranking has run: the app ranks in a worker after RANK_DELAY seconds.

    Also stops the inputs' cursors from blinking, so a snapshot does not depend on when it is taken.
    """
    for field in pilot.app.query(Input):
        field.cursor_blink = False
    await pilot.pause(RANK_DELAY + 0.1)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.1)  # a DataTable sizes its columns to new rows when the app is next idle


def status_text(app: PTSAdvisorApp) -> str:
    return str(app.query_one("#status", Static).render())


async def test_budget_edits_rerank_the_table(fixture_db):
    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist", max_latency_ms=5.0))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        table = app.query_one("#ranking", DataTable)
        assert table.row_count == 3
        assert "3 of 6 candidates meet the budget" in status_text(app)
        assert "mnist/resnet10t" in str(app.query_one("#evidence", Static).render())

        latency = app.query_one("#max-latency", Input)
        latency.value = "1"
        await settle(pilot)
        assert "No candidate meets the budget" in status_text(app)
        assert "max latency rules out 6 of 6" in status_text(app)
        assert table.row_count == 3  # the nearest candidates
        assert "max latency missed by" in str(app.query_one("#evidence", Static).render())

        latency.value = "-4"
        await settle(pilot)
        assert "Invalid budget" in status_text(app)
        assert "positive number of milliseconds" in status_text(app)
        assert table.row_count == 0  # no ranking for a budget that is not on screen

        latency.value = ""
        await settle(pilot)
        assert table.row_count == 6


async def test_row_highlight_shows_its_evidence(fixture_db):
    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist", max_latency_ms=5.0))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+t", "down", "down")
        evidence = str(app.query_one("#evidence", Static).render())
        assert "sparsegpt" in evidence
        assert "requested 70%" in evidence
        assert "Test CPU" in evidence
        assert "recipe: uniform+sparsegpt+unstructured" in evidence


async def test_missing_database_is_reported_in_the_app(tmp_path):
    app = PTSAdvisorApp(tmp_path / "none.duckdb")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "Cannot read the database" in status_text(app)
        assert "ptsa demo" in status_text(app)
    assert not (tmp_path / "none.duckdb").exists()


def test_first_screen_snapshot(snap_compare, fixture_db):
    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist", max_latency_ms=5.0))
    assert snap_compare(app, run_before=settle, terminal_size=(80, 24))


def test_no_candidate_snapshot(snap_compare, fixture_db):
    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist", max_latency_ms=1.0, min_accuracy=90))
    assert snap_compare(app, run_before=settle, terminal_size=(80, 24))


def test_tui_and_cli_start_without_torch():
    code = (
        "import sys, advisor.cli, advisor.tui.app; "
        "print(','.join(m for m in ('torch', 'timm', 'bench_engine.runner') if m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == ""


async def test_predicted_and_published_rows_say_what_they_are(tmp_path):
    from conftest import insert_rows, make_result
    from db import Store

    path = tmp_path / "mixed.duckdb"
    prediction = '{"retention": 91.0, "retention_low": 80.5, "retention_high": 99.0, "fit_id": "f1", "held_out_family_mae": 13.4}'
    rows = [
        make_result(model_key="deit_small_patch16_224", provenance="predicted", source="ptsa regressor fit f1",
                    dataset="imagenet", top1=72.0, dense_top1=79.9, prediction_json=prediction),
        make_result(model_key="resnet50@msbench", provenance="published", dataset="imagenet", top1=75.8,
                    dense_top1=76.6, source="msbench docs table T3", achieved_sparsity=None),
    ]
    with Store.open(path) as store:
        insert_rows(store, rows)
    app = PTSAdvisorApp(path, Budget(dataset="imagenet"))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+t")
        first = str(app.query_one("#evidence", Static).render())
        await pilot.press("down")
        second = str(app.query_one("#evidence", Static).render())
    assert "published on imagenet: msbench docs table T3" in first
    assert "achieved not published" in first
    assert "predicted retention 91.0 % of dense, 80 % interval 80.5 to 99.0" in second
    assert "held-out-family MAE 13.4" in second


# -- tabs: ROI, Evidence, Help; both languages ---------------------------------------------------


async def test_roi_tab_recomputes_as_the_workload_changes(fixture_db):
    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist"))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        status = app.query_one("#roi-status", Static)
        assert "Enter the peak rate" in str(status.render())
        app.query_one("#peak-rps", Input).value = "1000"
        app.query_one("#price", Input).value = "0.5"
        await settle(pilot)
        table = app.query_one("#roi-table", DataTable)
        # p50 4.0 ms -> 250/s, 150/s at 60 % -> 7 instances of the dense model; 2,555 a month.
        assert table.row_count == 6
        first = table.get_row_at(0)
        assert first[1] == "mnist/resnet10t"
        assert first[2] == "7→7"
        assert first[3] == "2,555 USD"
        assert "costs per month, cheapest first" in str(status.render())
        assert "saving is weight memory and storage, not compute" in str(app.query_one("#roi-notes", Static).render())

        app.query_one("#utilisation", Input).value = "150"
        await settle(pilot)
        assert "Invalid workload" in str(status.render())
        assert "150 %" in str(status.render())
        assert table.row_count == 0


async def test_evidence_tab_plots_the_highlighted_model(fixture_db):
    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist"))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+t", "down", "f4")
        await settle(pilot)
        title = str(app.query_one("#evidence-title", Static).render())
        assert "mnist/resnet10t on mnist" in title
        assert app.selected.row["criterion"] == "magnitude"
        detail = str(app.query_one("#evidence-detail", Static).render())
        assert "measured on mnist (1000 eval inputs" in detail


async def test_japanese_labels_everywhere(fixture_db):
    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist", max_latency_ms=5.0), lang="ja")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "6 件の候補のうち 3 件が予算を満たします" in status_text(app)
        app.query_one("#max-latency", Input).value = "1"
        await settle(pilot)
        assert "予算を満たす候補はありません" in status_text(app)
        assert "最大レイテンシで 6 件中 6 件が外れます" in status_text(app)
        app.query_one("#max-latency", Input).value = "abc"
        await settle(pilot)
        assert "最大レイテンシ ms: 'abc' は数値ではありません" in status_text(app)


def test_first_screen_japanese_snapshot(snap_compare, fixture_db):
    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist", max_latency_ms=5.0), lang="ja")
    assert snap_compare(app, run_before=settle, terminal_size=(80, 24))


def roi_app(fixture_db, lang):
    from advisor.roi import Workload

    return PTSAdvisorApp(fixture_db, Budget(dataset="mnist"), Workload(peak_rps=1000, price_per_hour=0.5), lang=lang)


def test_roi_snapshot(snap_compare, fixture_db):
    assert snap_compare(roi_app(fixture_db, "en"), run_before=settle, press=["f3"], terminal_size=(80, 24))


def test_roi_japanese_snapshot(snap_compare, fixture_db):
    assert snap_compare(roi_app(fixture_db, "ja"), run_before=settle, press=["f3"], terminal_size=(80, 24))


def test_evidence_snapshot(snap_compare, fixture_db):
    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist"), lang="en")
    assert snap_compare(app, run_before=settle, press=["ctrl+t", "down", "f4"], terminal_size=(80, 24))


def test_evidence_japanese_snapshot(snap_compare, fixture_db):
    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist"), lang="ja")
    assert snap_compare(app, run_before=settle, press=["ctrl+t", "down", "f4"], terminal_size=(80, 24))


def test_help_snapshot(snap_compare, fixture_db):
    assert snap_compare(PTSAdvisorApp(fixture_db, lang="en"), run_before=settle, press=["f1"], terminal_size=(80, 24))


def test_help_japanese_snapshot(snap_compare, fixture_db):
    assert snap_compare(PTSAdvisorApp(fixture_db, lang="ja"), run_before=settle, press=["f1"], terminal_size=(80, 24))


# -- Runs: a bench in its own process ------------------------------------------------------------


async def wait_for_run(app, pilot, seconds=300):
    from advisor.tui.runs import RunsPane

    pane = app.query_one(RunsPane)
    for _ in range(seconds * 2):
        await pilot.pause(0.5)
        if pane.process is not None and not pane.running and pane.query_one("#run-start").disabled is False:
            await pilot.pause()  # let the app handle the Finished message (its reload)
            return pane
    raise AssertionError("the bench did not finish in time")


async def test_runs_tab_bench_reaches_ranking(tmp_path):
    from test_inputs import save_tiny_resnet, write_images

    weights = tmp_path / "w.safetensors"
    save_tiny_resnet(weights)
    for index, name in enumerate(("a", "b", "c")):
        write_images(tmp_path / "data" / name, 60, seed=index)  # 144 training-side inputs: 128 calibrate
    db_path = tmp_path / "runs.duckdb"
    app = PTSAdvisorApp(db_path, Budget(), lang="en")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert "Cannot read the database" in status_text(app)  # nothing benched yet
        await pilot.press("f5")
        for field, value in (("#run-model", "resnet10t"), ("#run-weights", str(weights)),
                             ("#run-data", str(tmp_path / "data")), ("#run-criteria", "magnitude"),
                             ("#run-sparsities", "0.5")):
            app.query_one(field, Input).value = value
        await pilot.click("#run-start")
        await settle(pilot)
        assert "Running: ptsa --db" in str(app.query_one("#run-status", Static).render())
        pane = await wait_for_run(app, pilot)
        status = str(pane.query_one("#run-status", Static).render())
        assert "Finished" in status, str(pane.query_one("#run-log", Static).render())
        assert "results stored for resnet10t in" in status
        assert status.rstrip().endswith(": 2")
        assert "2 of 2 jobs" in str(pane.query_one("#run-detail", Static).render())
        # The reload after the run lists the new dataset, and picking it shows the two new rows.
        new = [name for name in app.dataset_names if name != "imagenet"]
        assert len(new) == 1
        await pilot.press("f2")
        app.budget = Budget(dataset=new[0])
        app.start_ranking()
        await settle(pilot)
        assert "2 of 2 candidates meet the budget" in status_text(app)
        assert app.query_one("#ranking", DataTable).row_count == 2


async def test_runs_tab_cancel_and_empty_field(tmp_path):
    from advisor.tui.runs import RunsPane

    app = PTSAdvisorApp(tmp_path / "none.duckdb", Budget(), lang="en")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("f5")
        app.query_one("#run-model", Input).value = ""
        await pilot.click("#run-start")
        assert "Cannot start: Model is empty." in str(app.query_one("#run-status", Static).render())
        app.query_one("#run-model", Input).value = "mnist/resnet10t"
        await pilot.pause(0.3)  # the button ignores a second press while its press effect shows
        await pilot.click("#run-start")
        await settle(pilot)
        assert app.query_one(RunsPane).running, str(app.query_one("#run-status", Static).render())
        await pilot.click("#run-cancel")
        pane = await wait_for_run(app, pilot, seconds=60)
        assert "Cancelled" in str(pane.query_one("#run-status", Static).render())
    assert not (tmp_path / "none.duckdb").exists()  # cancelled before it recorded anything


def test_runs_snapshot(snap_compare, tmp_path):
    assert snap_compare(PTSAdvisorApp(tmp_path / "none.duckdb", lang="en"), run_before=settle, press=["f5"], terminal_size=(80, 24))


def test_runs_japanese_snapshot(snap_compare, tmp_path):
    assert snap_compare(PTSAdvisorApp(tmp_path / "none.duckdb", lang="ja"), run_before=settle, press=["f5"], terminal_size=(80, 24))


async def test_models_tab_without_fit_or_features(fixture_db):
    app = PTSAdvisorApp(fixture_db, lang="en")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("f6")
        await app.workers.wait_for_complete()
        await settle(pilot)
        status = str(app.query_one("#models-status", Static).render())
        assert "0 of 0 architectures with stored features." in status
        assert "No regressor is fitted: run `ptsa fit`" in status
        assert "`ptsa features --all` adds every timm architecture." in status


async def open_models_tab(pilot):
    await settle(pilot)
    await pilot.press("f6")
    await settle(pilot)  # the rows are read in a worker thread


def test_models_snapshot(snap_compare, fixture_db):
    assert snap_compare(PTSAdvisorApp(fixture_db, lang="en"), run_before=open_models_tab, terminal_size=(80, 24))


def test_models_japanese_snapshot(snap_compare, fixture_db):
    assert snap_compare(PTSAdvisorApp(fixture_db, lang="ja"), run_before=open_models_tab, terminal_size=(80, 24))


async def test_new_results_show_up_without_reload(fixture_db):
    from conftest import insert_rows, make_result
    from db import Store

    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist"), lang="en")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "6 of 6 candidates" in status_text(app)
        app.check_for_new_results()
        await settle(pilot)
        assert "6 of 6 candidates" in status_text(app)  # nothing new
        # A writer adds a result while the TUI runs; the TUI held no connection meanwhile.
        with Store.open(fixture_db) as store:
            insert_rows(store, [make_result(criterion="wanda", requested_sparsity=0.6, top1=94.0)])
        app.check_for_new_results()
        await settle(pilot)
        assert "7 of 7 candidates" in status_text(app)


async def test_function_keys_switch_tabs_from_a_focused_input(fixture_db):
    from textual.widgets import TabbedContent

    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist"), lang="ja")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.query_one("#min-accuracy", Input).focus()
        await settle(pilot)
        await pilot.press("f3")
        await settle(pilot)
        assert app.query_one(TabbedContent).active == "roi"
        assert app.focused is app.query_one("#peak-rps", Input)  # typing goes to the first field at once
        await pilot.press("1", "0")
        assert app.query_one("#peak-rps", Input).value == "10"
        await pilot.press("f2")
        await settle(pilot)
        assert app.query_one(TabbedContent).active == "recommend"
        assert app.focused is app.query_one("#ranking", DataTable)


# -- responsiveness, guards and runs options -----------------------------------------------------


async def test_typing_ranks_once_after_the_inputs_are_still(fixture_db):
    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist"), lang="en")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        before = app._generation
        app.query_one("#max-latency", Input).focus()
        await pilot.press("2", "5")  # two edits in quick succession
        assert "Ranking" not in status_text(app) or app._generation == before
        await settle(pilot)
        assert app._generation == before + 1  # one ranking for "25", none for "2"
        assert app.budget.max_latency_ms == 25.0
        assert "of 6 candidates meet the budget" in status_text(app)


async def test_unknown_runtime_is_named_with_the_choices(fixture_db):
    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist"), lang="en")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.query_one("#runtimes", Input).value = "torch-eager,tensorrt"
        await settle(pilot)
        assert "Runtimes: unknown runtime 'tensorrt'" in status_text(app)
        assert "onnxruntime-cpu" in status_text(app)
        assert app.query_one("#ranking", DataTable).row_count == 0


async def test_profile_select_lists_the_profiles_with_timings(fixture_db):
    from textual.widgets import Select

    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist"), lang="en")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.profiles
        assert "Test CPU" in app.profiles[0][1]
        app.query_one("#profile", Select).value = app.profiles[0][0]
        await settle(pilot)
        assert app.budget.profile == app.profiles[0][0]
        assert "6 of 6 candidates" in status_text(app)


async def test_quit_asks_first_while_a_bench_runs(fixture_db):
    from advisor.tui.confirm import Confirm

    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist"), lang="en")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.runs_pane.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            await pilot.press("q")
            assert isinstance(app.screen, Confirm)
            assert "A bench is running" in str(app.screen.query_one("#confirm-question", Static).render())
            await pilot.press("n")
            assert not isinstance(app.screen, Confirm)
            assert app.is_running
            await pilot.press("q", "y")
            await pilot.pause()
        finally:
            app.runs_pane.process.kill()
    assert app.return_code == 0


def test_bench_log_drops_the_error_line_and_logger_prefixes():
    from advisor.tui.runs import log_lines

    stderr = ("WARNING bench_engine.runner: layer fc kept dense\n"
              "run 3: 1 of 2 models done\n"
              "error: sparsity 1.5 is out of range\n")
    assert log_lines(stderr) == ["warning: layer fc kept dense", "run 3: 1 of 2 models done"]


async def test_runs_form_builds_recipe_and_pattern_options(tmp_path):
    from advisor.tui.runs import RunsPane

    app = PTSAdvisorApp(tmp_path / "none.duckdb", Budget(), lang="en")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f5")
        pane = app.query_one(RunsPane)
        app.query_one("#run-patterns", Input).value = "unstructured, 2:4"
        args = pane.command()
        assert args[args.index("--pattern") + 1] == "unstructured"
        assert "2:4" in args
        app.query_one("#run-criteria", Input).value = ""
        app.query_one("#run-recipes", Input).value = "owl(band=0.1, threshold=5)+wanda; erk+magnitude"
        args = pane.command()
        assert "--criterion" not in args and "--pattern" not in args  # a recipe names both
        assert [args[i + 1] for i, a in enumerate(args) if a == "--recipe"] == [
            "owl(band=0.1, threshold=5)+wanda", "erk+magnitude"]


async def test_roi_tab_prices_devices_and_compares_with_today(fixture_db):
    from textual.widgets import Select

    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist"), lang="en")
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        for field, value in (("#peak-rps", "1000"), ("#price", "0.5"), ("#instances-today", "10"),
                             ("#requests-per-day", "1000000")):
            app.query_one(field, Input).value = value
        await settle(pilot)
        table = app.query_one("#roi-table", DataTable)
        headers = [str(column.label) for column in table.columns.values()]
        assert headers[:7] == ["#", "model", "instances", "cost/month", "saving", "vs today", "per 1M req"]
        assert "storage MB" in headers
        first = table.get_row_at(0)
        assert first[3] == "2,555 USD" and first[5] == "1,095 USD"  # 10 × 0.5 × 730 = 3,650 today
        assert first[6] == "84.00 USD"  # 2,555 / (1e6 × 365 / 12 / 1e6)
        status = str(app.query_one("#roi-status", Static).render())
        assert "saving against the 10 instances running now" in status
        assert "1,000,000 requests a day" in status

        app.query_one("#billing", Select).value = "device"
        await settle(pilot)
        headers = [str(column.label) for column in table.columns.values()]
        assert "cost once" in headers
        assert "per 1M req" not in headers
        assert table.get_row_at(0)[3] == "4 USD"  # 7 devices × 0.5, rounded
        assert "per device bought once" in str(app.query_one("#roi-status", Static).render())


async def test_ctrl_b_gives_the_table_the_whole_width(fixture_db):
    from advisor.tui.forms import BudgetForm

    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist"), lang="en")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        table = app.query_one("#ranking", DataTable)
        narrow = table.size.width
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert not app.query_one(BudgetForm).display
        assert table.size.width >= narrow + 20
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert app.query_one(BudgetForm).display
        assert table.size.width == narrow


async def test_reload_offers_new_datasets_and_waits_out_a_writer(fixture_db, tmp_path):
    from textual.widgets import Select

    from conftest import insert_rows, make_result
    from db import Store

    app = PTSAdvisorApp(fixture_db, Budget(), lang="en")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        with Store.open(fixture_db) as store:
            insert_rows(store, [make_result(dataset="digits", criterion="wanda", requested_sparsity=0.5)])
        await pilot.press("r")
        await settle(pilot)
        options = [value for _label, value in app.query_one("#dataset", Select)._options]
        assert "digits" in options
        # A bench holding the write lock for longer than a read waits: the TUI reports it as busy, not broken.
        holder = subprocess.Popen([sys.executable, "-c", (
            "import sys, time; from db import Store; s = Store.open(sys.argv[1]); print('locked', flush=True); "
            "time.sleep(6)"), str(fixture_db)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"
            app.start_ranking()
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert "The database is busy: a bench is writing results" in status_text(app)
        finally:
            holder.kill()
            holder.wait()


async def test_help_scrolls_from_the_keyboard(fixture_db):
    from textual.containers import VerticalScroll

    app = PTSAdvisorApp(fixture_db, lang="en")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("f1")
        await pilot.pause()
        scroll = app.query_one("#help-scroll", VerticalScroll)
        assert app.focused is scroll
        await pilot.press("pagedown", "pagedown")
        await pilot.pause()
        assert scroll.scroll_y > 0


async def test_backspace_keeps_its_place_among_queued_keys(fixture_db):
    """Keys that arrive together while the app is busy are applied in typing order, Backspace too."""
    from textual import events

    app = PTSAdvisorApp(fixture_db, Budget(dataset="mnist"), lang="en")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        field = app.query_one("#max-latency", Input)
        field.focus()
        await pilot.pause()
        for key in ("3", "0", "backspace", "backspace", "1", "2"):  # queued in one go, as a fast typist sends them
            app.post_message(events.Key(key, None if key == "backspace" else key))
        await settle(pilot)
        assert field.value == "12"
        assert app.budget.max_latency_ms == 12.0


async def test_detection_results_offer_the_task_choice(fixture_db):
    """A database with detection rows shows the task choice; picking detection ranks by box mAP."""
    from textual.widgets import Select

    from conftest import insert_rows, make_result
    from db import Store

    app = PTSAdvisorApp(fixture_db, Budget())
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert not app.query_one("#task", Select).display  # classification only: nothing to choose
    detection = dict(task="detection", model_key="digits/fcos_mobilenet_v2", dataset="digits", top1=None,
                     dense_top1=None, top1_agreement=None, dense_box_map=76.5)
    with Store.open(fixture_db) as store:
        insert_rows(store, [make_result(criterion="dense", allocation="none", pattern="dense", requested_sparsity=0.0,
                                        box_map=76.5, box_map_fidelity=100.0, **detection),
                            make_result(requested_sparsity=0.3, box_map=71.6, box_map_fidelity=88.3, **detection)])
    app = PTSAdvisorApp(fixture_db, Budget())
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        select = app.query_one("#task", Select)
        assert select.display
        datasets = app.query_one("#dataset", Select)
        assert "digits" not in [value for _label, value in datasets._options]  # a detection dataset
        table = app.query_one("#ranking", DataTable)
        assert "digits/fcos_mobilenet_v2" not in str([table.get_row_at(i) for i in range(table.row_count)])
        select.value = "detection"
        await settle(pilot)
        assert "digits" in [value for _label, value in datasets._options]
        assert "mnist" not in [value for _label, value in datasets._options]
        rows = [" ".join(str(cell) for cell in table.get_row_at(i)) for i in range(table.row_count)]
        assert len(rows) == 2 and all("digits/fcos_mobilenet_v2" in row for row in rows)
        assert "box mAP 76.5 % (dense 76.5 %)" in str(app.query_one("#evidence", Static).render())
