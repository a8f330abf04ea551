"""Run a bench's worker tasks on a Ray cluster (`ptsa bench ... --executor ray`).

Each model's task becomes one Ray task with its own resource request (CPUs, GPUs, memory). On
its node, the task runs the same worker process as the local executor, into a node-local shard
folder, and streams each shard's bytes to the driver as the worker writes it, then the worker's
manifest. The driver writes the shards into the database's shard folder and ingests them. Nodes therefore never see the database
file, and the driver checks every shard as if a local worker had written it.

When a node dies, Ray runs the task again elsewhere (`max_retries`); a worker that fails on its
own (a crash, an error before its manifest) is reported like a local one. Ray is an optional
dependency (`pip install "pts-advisor[ray]"`) imported only here.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_engine.errors import InvalidConfigError
from bench_engine.executors import TaskOutcome, exit_text
from bench_engine.jobs import WorkerTask, plan_from_json, read_manifest, write_json_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayResources:
    """The resources one model's task requests from its node."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_gb: float | None = None  # Ray schedules by it; None requests no particular amount


def run_task_on_node(task_json: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Run one worker on this node, into a temporary folder, and yield each shard as it is written (the Ray task).

    It is a streaming generator: the driver ingests every job's shard while the model's other
    jobs still run, and moves its progress bar per job. The last item reports how the worker ended.
    """
    task = WorkerTask.from_json(task_json)
    node = socket.gethostname()
    with tempfile.TemporaryDirectory(prefix="ptsa-ray-") as folder:
        task.shard_folder = folder
        task.progress_file = None
        task_path = Path(folder) / "task.json"
        write_json_atomic(task_path, task.to_json())
        stderr_path = Path(folder) / "stderr.txt"
        with stderr_path.open("w") as stderr:
            process = subprocess.Popen([sys.executable, "-m", "bench_engine.jobs", str(task_path)],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        sent: set[str] = set()
        while True:
            ended = process.poll() is not None  # read the folder once more after the worker ended
            for path in sorted(Path(folder).glob("*.json")):
                if path.name not in sent and path.name != "task.json":
                    sent.add(path.name)
                    yield {"shard": path.name, "data": path.read_bytes(), "node": node}
            if ended:
                break
            time.sleep(0.5)
        manifest = read_manifest(task.manifest_path)
        stderr_text = stderr_path.read_text(encoding="utf-8", errors="replace")
    yield {"done": True, "manifest": manifest, "returncode": process.returncode, "stderr": stderr_text[-20000:],
           "node": node}


class RayExecutor:
    """Fan the tasks out to a Ray cluster; ingest each task's shards as it returns."""

    name = "ray"

    def __init__(self, address: str | None = None, resources: RayResources = RayResources(), max_retries: int = 2,
                 init_options: dict[str, Any] | None = None) -> None:
        self.address = address
        self.resources = resources
        self.max_retries = max_retries
        self.init_options = init_options or {}

    def connect(self) -> Any:
        """Join the cluster (once); raises InvalidConfigError naming the address when it cannot.

        Call it before anything is written, so a wrong address fails the command at once.
        """
        try:
            import ray
        except ImportError:
            raise InvalidConfigError(
                "--executor ray needs Ray, which is not installed; install it with "
                "pip install \"pts-advisor[ray]\", or use --executor local."
            ) from None
        if not ray.is_initialized():
            self._check_reachable()
            options = {"include_dashboard": False, "log_to_driver": False, **self.init_options}
            try:
                ray.init(address=self.address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                # The address accepted a TCP connection, so a rejection here is most often a missing token.
                if _looks_like_auth_failure(str(exc)) or (self.address not in (None, "auto", "local")
                                                          and not os.environ.get("RAY_AUTH_MODE")):
                    raise InvalidConfigError(
                        "the Ray cluster at {address} answers but did not accept this process: {reason}. If the "
                        "cluster uses token authentication, set RAY_AUTH_MODE=token and the cluster's token "
                        "(RAY_AUTH_TOKEN, or the file ~/.ray/auth_token) in this shell as on the head node, then run "
                        "the command again; otherwise check that Ray and Python here match the cluster's versions.",
                        address=self.address or "auto", reason=str(exc),
                    ) from exc
                raise InvalidConfigError(
                    "cannot reach the Ray cluster at {address}: {reason}. Start it with `ray start --head` on "
                    "the head node, then pass --address HOST:PORT (or auto on a node of the cluster).",
                    address=self.address or "auto", reason=str(exc),
                ) from exc
        return ray

    def _check_reachable(self) -> None:
        """Raise within seconds for a HOST:PORT with no listener, because Ray itself retries for minutes."""
        if not self.address or self.address in ("auto", "local"):  # local: a new one-machine instance
            return
        host, _, port = self.address.removeprefix("ray://").rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidConfigError(
                "invalid --address {address}: give HOST:PORT (the port `ray start --head` printed, 6379 by "
                "default), ray://HOST:PORT for a Ray client server, or auto on a node of the cluster.",
                address=self.address)
        try:
            with socket.create_connection((host, int(port)), timeout=5):
                pass
        except OSError as exc:
            raise InvalidConfigError(
                "cannot reach the Ray cluster at {address}: {reason}. Start it with `ray start --head` on "
                "the head node, then pass --address HOST:PORT (or auto on a node of the cluster).",
                address=self.address, reason=str(exc) or type(exc).__name__,
            ) from exc

    def check_resources(self, ray: Any) -> None:
        """Raise when no live node can ever meet the request, since Ray would wait for one without end."""
        nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
        wanted = {"CPU": self.resources.num_cpus, "GPU": self.resources.num_gpus,
                  "memory": 0.0 if self.resources.memory_gb is None else self.resources.memory_gb * 1024**3}
        if any(all(node.get(name, 0.0) >= amount for name, amount in wanted.items()) for node in nodes):
            return
        largest = max(nodes, key=lambda node: (node.get("GPU", 0.0), node.get("CPU", 0.0), node.get("memory", 0.0)),
                      default={})
        raise InvalidConfigError(
            "no node of the Ray cluster can meet --resources {request}; the largest node offers {largest}. "
            "Lower --resources, or add a node that has them with `ray start --address HEAD:PORT`.",
            request=_describe(wanted), largest=_describe(largest) if largest else "nothing (no live node)")

    def run(self, tasks: Sequence[WorkerTask], bar: Any, ingest: Callable[[], None]) -> Iterator[TaskOutcome]:
        from bench_engine.shards import write_shard_bytes

        ray = self.connect()
        self.check_resources(ray)
        memory = None if self.resources.memory_gb is None else int(self.resources.memory_gb * 1024**3)
        remote = ray.remote(num_cpus=self.resources.num_cpus, num_gpus=self.resources.num_gpus, memory=memory,
                            max_retries=self.max_retries, num_returns="streaming")(run_task_on_node)
        streams = {remote.remote(task.to_json()): task for task in tasks}
        counted = {id(task): 0 for task in tasks}  # jobs of each task the bar has moved for
        per_node: Counter[str] = Counter()
        bar.set_postfix_str(f"{len(streams)} tasks on Ray")
        while streams:
            ready, _ = ray.wait(list(streams), num_returns=1, timeout=1.0)
            for stream in ready:
                task = streams[stream]
                try:
                    item = ray.get(next(stream))
                except StopIteration:  # the task ended without its report; Ray raised it on the item before
                    del streams[stream]
                    continue
                except Exception as exc:  # the task failed on every try (a lost node, a Ray error)
                    del streams[stream]
                    error = f"Ray task failed after {self.max_retries} retries: {type(exc).__name__}: {exc}"
                    log.error("%s: %s", task.source.label, error)
                    yield TaskOutcome(label=task.source.label, returncode=1, error=error)
                    continue
                if "shard" in item:
                    write_shard_bytes(Path(task.shard_folder), item["shard"], item["data"])
                    ingest()
                    per_node[item["node"]] += 1
                    if counted[id(task)] < _job_count(task):
                        counted[id(task)] += 1
                        bar.update(1)
                    bar.set_postfix_str(", ".join(f"{node}: {n} jobs" for node, n in sorted(per_node.items())))
                    continue
                del streams[stream]
                bar.update(_job_count(task) - counted[id(task)])  # the skipped jobs
                yield self._outcome(task, item)

    def _outcome(self, task: WorkerTask, returned: dict[str, Any]) -> TaskOutcome:
        """Say how a task's worker ended, from the last item of its stream."""
        manifest = returned["manifest"]
        if returned["stderr"].strip():
            sys.stderr.write(returned["stderr"] if returned["stderr"].endswith("\n") else returned["stderr"] + "\n")
        outcome = TaskOutcome(label=task.source.label, model_key=manifest.get("model_key"),
                              jobs=manifest.get("jobs", {}), skipped_keys=manifest.get("skipped_keys", []),
                              returncode=returned["returncode"])
        if returned["returncode"] != 0:
            outcome.error = exit_text(returned["returncode"], returned["stderr"]) + f" (node {returned['node']})"
        return outcome


def _job_count(task: WorkerTask) -> int:
    """Return the number of a task's jobs: the dense model, then each configuration of its plan."""
    return len(plan_from_json(task.plan).configs()) + 1


def _looks_like_auth_failure(reason: str) -> bool:
    text = reason.lower()
    return "token" in text or "unauthenticated" in text or "authentication" in text or (
        os.path.exists(os.path.expanduser("~/.ray/auth_token")) and not os.environ.get("RAY_AUTH_MODE"))


def _describe(resources: dict[str, float]) -> str:
    """'cpus=4, gpus=0, memory=7.5 GiB', in the words of --resources."""
    return (f"cpus={resources.get('CPU', 0.0):g}, gpus={resources.get('GPU', 0.0):g}, "
            f"memory={resources.get('memory', 0.0) / 1024**3:.1f} GiB")


def parse_resources(text: str | None) -> RayResources:
    """Read 'cpus=2,gpus=1,memory=8' (memory in GiB) into RayResources; names the bad part."""
    if not text:
        return RayResources()
    values: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in ("cpus", "gpus", "memory"):
            raise InvalidConfigError(
                "unknown resource {name!r} in --resources; use cpus, gpus and memory (GiB), for example "
                "cpus=2,gpus=1,memory=8.", name=name)
        try:
            number = float(value)
        except ValueError:
            raise InvalidConfigError("resource {name} needs a number, got {value!r}; for example {name}=2.",
                                     name=name, value=value.strip()) from None
        if not number >= 0:
            raise InvalidConfigError("resource {name} must be 0 or more, got {value}.", name=name, value=value.strip())
        if name == "cpus" and number == 0:
            raise InvalidConfigError("resource cpus must be more than 0: a task that reserves no CPU lets Ray start "
                                     "more benches on a node than it has cores. Give cpus=1 or more.")
        values[name] = number
    return RayResources(num_cpus=values.get("cpus", 1.0), num_gpus=values.get("gpus", 0.0),
                        memory_gb=values.get("memory"))

