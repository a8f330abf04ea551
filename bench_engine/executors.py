"""Executors: where the worker tasks of a run execute.

`LocalExecutor` (the default) runs each model's task in a child process on this machine, one
after another, so a crash or an out-of-memory kill in one model leaves the run standing. The
driver (`bench_engine.runner.run_jobs`) gives it a callback that ingests the shards written so
far; the executor calls it every few seconds while a worker runs and once after it ends.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench_engine.jobs import WorkerTask, read_manifest, write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class TaskOutcome:
    """The outcome of one worker task."""

    label: str
    model_key: str | None = None  # known once the worker wrote its manifest
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {'label', 'spec'} it attempted
    skipped_keys: list[str] = field(default_factory=list)  # jobs it did not run because they are stored
    returncode: int = 0
    error: str | None = None  # how the worker ended, when it did not exit cleanly

    @property
    def crashed_before_manifest(self) -> bool:
        return self.returncode != 0 and self.model_key is None


class Executor(Protocol):
    name: str

    def run(self, tasks: Sequence[WorkerTask], bar: Any, ingest: Callable[[], None]) -> Iterator[TaskOutcome]:
        """Run the tasks, ingesting as shards arrive; yield each task's outcome as it ends."""
        ...


def exit_text(returncode: int, stderr: str) -> str:
    """Say how a worker ended: its last error line, or the signal that killed it."""
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else str(-returncode)
        hint = " (the system may have run out of memory)" if -returncode == signal.SIGKILL else ""
        return f"worker killed by signal {name}{hint}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return f"worker exited with code {returncode}: {lines[-1] if lines else 'no message'}"


class LocalExecutor:
    """Run each task in a child process here, one at a time."""

    name = "local"

    def __init__(self, poll_seconds: float = 0.25, ingest_seconds: float = 2.0) -> None:
        self.poll_seconds = poll_seconds
        self.ingest_seconds = ingest_seconds

    def run(self, tasks: Sequence[WorkerTask], bar: Any, ingest: Callable[[], None]) -> Iterator[TaskOutcome]:
        for task in tasks:
            yield self._run_one(task, bar, ingest)

    def _run_one(self, task: WorkerTask, bar: Any, ingest: Callable[[], None]) -> TaskOutcome:
        folder = Path(tempfile.mkdtemp(prefix="ptsa-worker-"))
        task.progress_file = str(folder / "progress.jsonl")
        task_path = folder / "task.json"
        write_json_atomic(task_path, task.to_json())
        bar.set_postfix_str(f"{task.source.label} · loading")
        stderr_path = folder / "stderr.txt"
        with stderr_path.open("w") as stderr:
            process = subprocess.Popen([sys.executable, "-m", "bench_engine.jobs", str(task_path)],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        progress = _ProgressReader(Path(task.progress_file))
        last_ingest = time.monotonic()
        try:
            while process.poll() is None:
                time.sleep(self.poll_seconds)
                progress.forward(bar)
                if time.monotonic() - last_ingest >= self.ingest_seconds:
                    ingest()
                    last_ingest = time.monotonic()
        except BaseException:  # Ctrl-C or a cancel from the TUI: stop the worker, keep what it finished
            _stop(process)
            raise
        finally:
            progress.forward(bar)
        ingest()
        stderr_text = stderr_path.read_text(encoding="utf-8", errors="replace")
        if stderr_text.strip():
            sys.stderr.write(stderr_text if stderr_text.endswith("\n") else stderr_text + "\n")
        manifest = read_manifest(task.manifest_path)
        task.manifest_path.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        outcome = TaskOutcome(label=task.source.label, model_key=manifest.get("model_key"),
                              jobs=manifest.get("jobs", {}), skipped_keys=manifest.get("skipped_keys", []),
                              returncode=process.returncode)
        if process.returncode != 0:
            outcome.error = exit_text(process.returncode, stderr_text)
            log.error("%s: %s", task.source.label, outcome.error)
        return outcome


def _stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _ProgressReader:
    """Follow a worker's progress lines and move the driver's bar with them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def forward(self, bar: Any) -> None:
        try:
            with self.path.open("rb") as stream:
                stream.seek(self.offset)
                data = stream.read()
        except FileNotFoundError:
            return
        complete, _, _partial = data.rpartition(b"\n")  # a line still being written waits for the next call
        if not complete:
            return
        self.offset += len(complete) + 1
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                step = json.loads(line)
            except json.JSONDecodeError:
                continue
            if step.get("kind") == "step":
                bar.update(1)
            elif step.get("kind") == "detail":
                bar.set_postfix_str(step.get("detail", ""))
