"""The Ray executor against a real Ray cluster started on loopback for these tests."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from db import Store

pytest.importorskip("ray")  # in the test extra; `pip install "pts-advisor[ray]"` for users

RAY = Path(sys.executable).with_name("ray")
# Ray's token authentication, with a token of these tests' own: the head and every `ptsa` process
# get it from the environment, whatever ~/.ray/auth_token holds on this machine.
CLUSTER_GROUP: list[int] = []  # the process group of the cluster the fixture started
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A one-node Ray cluster on 127.0.0.1, owned by this module and stopped after its tests.

    `ray start --block` keeps every process of the cluster in one process group, which the
    fixture ends; `ray stop` would also stop any other Ray cluster on the machine.
    """
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "ray.log"
    env = {**os.environ, **RAY_ENV}
    with log.open("w") as stream:
        head = subprocess.Popen([str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                                 f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                                 "--disable-usage-stats"], env=env, stdout=stream, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if head.poll() is not None:
                raise RuntimeError(f"ray start exited with {head.returncode}: {log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        time.sleep(2)  # the raylet registers with the head after its port opens
        CLUSTER_GROUP[:] = [head.pid]
        yield f"127.0.0.1:{port}"
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)  # ray start --block stops its services on SIGTERM
            head.wait(60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of the group is left
        except ProcessLookupError:
            pass
        head.wait()


@pytest.fixture
def tiny(tiny_setup):
    return tiny_setup


def bench(db_path, weights, data, *extra, timeout=600):
    command = [sys.executable, "-m", "advisor.cli", "--db", str(db_path), "bench", "resnet10t", "--weights",
               str(weights), "--data", str(data), "--input-size", "32", "--calibration-size", "8",
               "--criterion", "magnitude", "--criterion", "wanda", "--sparsity", "0.5", "--sparsity", "0.7",
               "--no-progress", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **RAY_ENV}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_grid_runs_on_the_cluster_and_resumes_locally(ray_cluster, tiny):
    weights, data, db_path = tiny
    done = bench(db_path, weights, data, "--executor", "ray", "--address", ray_cluster, "--resources", "cpus=1")
    assert done.returncode == 0, done.stderr
    with Store.open(db_path, read_only=True) as store:
        rows = store.query("SELECT count(*) AS n, count(DISTINCT job_key) AS keys FROM results "
                             "WHERE provenance = 'measured'")[0]
        config = store.query("SELECT config_json FROM runs")[0]["config_json"]
    assert (rows["n"], rows["keys"]) == (5, 5)  # dense + 2 criteria × 2 sparsities
    assert '"executor": "ray"' in config
    # The same jobs have the same keys whichever executor ran them: a local rerun skips them all.
    again = bench(db_path, weights, data)
    assert again.returncode == 0, again.stderr
    assert "jobs already stored, skipped: 5" in again.stderr
    # A request no node can meet fails at once, naming the request and the largest node.
    too_big = bench(db_path, weights, data, "--executor", "ray", "--address", ray_cluster, "--resources",
                    "cpus=1,gpus=8", timeout=120)
    assert too_big.returncode == 2, too_big.stderr
    assert "no node of the Ray cluster can meet --resources cpus=1, gpus=8" in too_big.stderr
    assert "the largest node offers cpus=" in too_big.stderr


def descends_from(pid: int, ancestor: int) -> bool:
    """True when `ancestor` is `pid` or one of its parents."""
    for _ in range(32):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return False


def test_a_lost_ray_worker_has_its_task_run_again(ray_cluster, tiny):
    weights, data, db_path = tiny
    killed = []

    def kill_one_ray_worker():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    if b"bench_engine.jobs" not in (entry / "cmdline").read_bytes():
                        continue
                    parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    # Only a worker of this test's cluster: other benches on the machine are not ours.
                    if not descends_from(parent, CLUSTER_GROUP[0]):
                        continue
                    os.kill(parent, signal.SIGKILL)  # the Ray worker running the task, as a lost node would
                    killed.append(parent)
                    break
                except (OSError, ValueError):
                    continue
            time.sleep(0.1)

    killer = threading.Thread(target=kill_one_ray_worker)
    killer.start()
    done = bench(db_path, weights, data, "--executor", "ray", "--address", ray_cluster)
    killer.join()
    assert killed, "no Ray worker was found to kill"
    assert done.returncode == 0, done.stderr
    with Store.open(db_path, read_only=True) as store:
        rows = store.query("SELECT count(*) AS n, count(DISTINCT job_key) AS keys FROM results "
                             "WHERE provenance = 'measured'")[0]
    assert (rows["n"], rows["keys"]) == (5, 5)


def test_bad_executor_options_are_named(tiny):
    weights, data, db_path = tiny
    local = bench(db_path, weights, data, "--address", "127.0.0.1:1")
    assert local.returncode == 2
    assert "--address and --resources apply to --executor ray" in local.stderr
    resources = bench(db_path, weights, data, "--executor", "ray", "--resources", "cpus=two")
    assert resources.returncode == 2
    assert "resource cpus needs a number, got 'two'" in resources.stderr
    not_a_port = bench(db_path, weights, data, "--executor", "ray", "--address", "127.0.0.1:notaport")
    assert not_a_port.returncode == 2
    assert "invalid --address 127.0.0.1:notaport: give HOST:PORT" in not_a_port.stderr
    unreachable = bench(db_path, weights, data, "--executor", "ray", "--address", f"127.0.0.1:{free_port()}",
                        timeout=300)
    assert unreachable.returncode == 2, unreachable.stderr
    assert "cannot reach the Ray cluster" in unreachable.stderr
    assert not db_path.exists()
