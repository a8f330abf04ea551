"""The Runs tab: start a bench in its own process, watch its progress, cancel it.

The bench runs as `python -m advisor.cli bench ... --progress-file FILE`, so torch and timm load
in that process, never in the TUI's, and the interface stays responsive. The tab reads the last
line of the progress file twice a second. Cancel sends SIGINT, which the bench handles like
Ctrl-C: it stores the run as failed and keeps the models it had finished.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Input, Label, ProgressBar, Static

from advisor.i18n import N_, _

FIELDS = (  # (input id, label, initial value, placeholder)
    ("run-model", N_("Model"), "mnist/resnet10t", ""),
    ("run-weights", N_("Weights file (optional)"), "", ""),
    ("run-data", N_("Data"), "mnist", ""),
    ("run-criteria", N_("Criteria"), "magnitude,wanda", ""),
    ("run-sparsities", N_("Sparsities"), "0.5,0.7", ""),
    ("run-patterns", N_("Patterns"), "unstructured", "unstructured,2:4"),
    ("run-recipes", N_("Recipes; replace criteria"), "", "erk+wanda; owl+sparsegpt"),
)
REQUIRED = ("run-model", "run-data", "run-criteria", "run-sparsities")


def log_lines(stderr: str, limit: int = 6) -> list[str]:
    """Return the last lines of a bench's stderr worth showing: warnings without the logger's prefix, no error line.

    The error line is already in the status, and "WARNING bench_engine.runner: text" reads as
    "warning: text".
    """
    shown = []
    for line in stderr.splitlines():
        line = line.strip()
        if not line or line.startswith(("error:", "エラー:")):
            continue
        if line.startswith("WARNING ") and ": " in line:
            line = _("warning: {text}").format(text=line.split(": ", 1)[1])
        shown.append(line)
    return shown[-limit:]


class RunsPane(Vertical):
    """Start, watch and cancel one bench at a time."""

    class Finished(Message):
        """A bench process ended; `returncode` 0 means its results are stored."""

        def __init__(self, returncode: int, cancelled: bool) -> None:
            super().__init__()
            self.returncode = returncode
            self.cancelled = cancelled

    def __init__(self, db_path: Path, lang: str = "en", **kwargs) -> None:
        super().__init__(**kwargs)
        self.db_path = db_path
        self.lang = lang  # the bench's own messages and errors come back in this language
        self.process: subprocess.Popen | None = None
        self.folder: Path | None = None
        self.cancelled = False
        self._poll_timer = None

    def compose(self) -> ComposeResult:
        with Horizontal():
            with VerticalScroll(id="run-form"):
                for field_id, label, value, placeholder in FIELDS:
                    yield Label(_(label))
                    yield Input(value=value, placeholder=placeholder, id=field_id, compact=True)
                with Horizontal(id="run-buttons"):
                    yield Button(_("Start"), id="run-start", variant="primary", compact=True)
                    yield Button(_("Cancel"), id="run-cancel", variant="error", compact=True, disabled=True)
            with Vertical(classes="main"):
                yield Static(_("Start a bench: it runs in its own process and its results appear in the other tabs "
                               "when it finishes."), id="run-status")
                yield ProgressBar(total=1, id="run-progress", show_eta=False)  # determinate until a run starts
                yield Static(id="run-detail")
                yield Static(id="run-log")

    def command(self) -> list[str]:
        """Return the `ptsa` arguments for the form's values; raises ValueError naming an empty field."""
        values = {field[0]: self.query_one(f"#{field[0]}", Input).value.strip() for field in FIELDS}
        recipes = [r.strip() for r in values["run-recipes"].split(";") if r.strip()]
        for field_id in REQUIRED:
            if not values[field_id] and not (field_id == "run-criteria" and recipes):
                label = next(_(field[1]) for field in FIELDS if field[0] == field_id)
                raise ValueError(_("{field} is empty.").format(field=label))
        command = ["--db", str(self.db_path), "bench", values["run-model"], "--data", values["run-data"],
                   "--no-progress"]
        if values["run-weights"]:
            command += ["--weights", values["run-weights"]]
        if recipes:  # a recipe names its criterion, allocation, pattern and corrections
            for recipe in recipes:
                command += ["--recipe", recipe]
        else:
            for criterion in values["run-criteria"].split(","):
                command += ["--criterion", criterion.strip()]
            for pattern in values["run-patterns"].split(","):
                if pattern.strip():
                    command += ["--pattern", pattern.strip()]
        for sparsity in values["run-sparsities"].split(","):
            command += ["--sparsity", sparsity.strip()]
        return command

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @on(Button.Pressed, "#run-start")
    def start(self) -> None:
        if self.running:
            return
        status = self.query_one("#run-status", Static)
        try:
            command = self.command()
        except ValueError as exc:
            status.update(_("[b]Cannot start[/b]: {reason}").format(reason=exc))
            return
        self.folder = Path(tempfile.mkdtemp(prefix="ptsa-run-"))
        shown = shlex.join(["ptsa", *command])
        command = [sys.executable, "-m", "advisor.cli", "--lang", self.lang, *command,
                   "--progress-file", str(self.folder / "progress.jsonl")]
        self.cancelled = False
        with (self.folder / "stdout.txt").open("w") as stdout, (self.folder / "stderr.txt").open("w") as stderr:
            self.process = subprocess.Popen(command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
        status.update(_("Running: {command}").format(command=shown))
        self.query_one("#run-progress", ProgressBar).update(total=None, progress=0)
        self.query_one("#run-log", Static).update("")
        self.query_one("#run-start", Button).disabled = True
        self.query_one("#run-cancel", Button).disabled = False
        self._poll_timer = self.set_interval(0.5, self.poll)

    @on(Button.Pressed, "#run-cancel")
    def cancel(self) -> None:
        if self.running:
            self.cancelled = True
            self.process.send_signal(signal.SIGINT)
            self.query_one("#run-status", Static).update(_("Cancelling: the bench stores its run as failed and stops."))

    def poll(self) -> None:
        """Show the latest progress line; when the process has ended, say how and stop polling."""
        if self.process is None or self.folder is None:
            return
        progress_path = self.folder / "progress.jsonl"
        if progress_path.exists():
            lines = progress_path.read_text(encoding="utf-8").splitlines()
            if lines:
                step = json.loads(lines[-1])
                self.query_one("#run-progress", ProgressBar).update(total=max(step["total"], 1), progress=step["done"])
                self.query_one("#run-detail", Static).update(
                    _("run {run_id}: {done} of {total} jobs · {detail}").format(**step))
        returncode = self.process.poll()
        if returncode is None:
            return
        self._poll_timer.stop()
        stdout = (self.folder / "stdout.txt").read_text(encoding="utf-8", errors="replace").strip()
        stderr = (self.folder / "stderr.txt").read_text(encoding="utf-8", errors="replace").strip()
        status = self.query_one("#run-status", Static)
        if returncode == 0:
            status.update(_("[b]Finished[/b]: {message}").format(message=stdout.splitlines()[-1] if stdout else ""))
        elif self.cancelled:
            status.update(_("[b]Cancelled[/b]: the run is stored as failed. Results are stored per model, so those "
                            "of the model in progress are lost."))
        else:
            status.update(_("[b]Failed[/b] (exit code {code}): {error}").format(
                code=returncode, error=(stderr.splitlines() or [""])[-1]))
        self.query_one("#run-log", Static).update("\n".join(log_lines(stderr)))
        self.query_one("#run-start", Button).disabled = False
        self.query_one("#run-cancel", Button).disabled = True
        self.post_message(self.Finished(returncode, self.cancelled))

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel a running bench and wait for it, so quitting the TUI leaves no process behind."""
        if self.running:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
