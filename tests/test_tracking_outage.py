"""The MLflow tracking server goes down mid-training and comes back (a real `mlflow server`,
killed and restarted on the same port and store): training goes on, the metrics logged during
the outage arrive late, and the run finishes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.tracking.steps import StepFailed, Workflow
from pipelines.__main__ import main

pytestmark = pytest.mark.slow


def _start(store: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
         f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=open(store / f"server-{time.time():.0f}.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("mlflow server did not start")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


@pytest.fixture
def server(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = {"proc": _start(store, port), "store": store, "port": port,
             "uri": f"http://127.0.0.1:{port}"}
    yield state
    _stop(state["proc"])


def test_training_survives_a_tracking_server_outage(ray_cluster, sample_dir, server, tmp_path, capsys):
    out = tmp_path / "out"
    window: dict[str, float] = {}

    def outage() -> None:
        deadline = time.time() + 300
        while not list(out.rglob("checkpoint_*")) and time.time() < deadline:
            time.sleep(0.2)  # the first epoch is done: training is under way
        _stop(server["proc"])
        window["down"] = time.time()
        time.sleep(10)
        server["proc"] = _start(server["store"], server["port"])
        window["up"] = time.time()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    summary = tmp_path / "s.json"
    rc = main(["run", "image", "--train", str(sample_dir / "train"), "--eval",
               str(sample_dir / "eval"), "--epochs", "14", "--tracking-uri", server["uri"],
               "--output-dir", str(out), "--summary", str(summary), "data.image_size=32",
               "train.batch_size=16", "train.log_every_steps=1"])
    capsys.readouterr()
    thread.join(180)
    s = json.loads(summary.read_text())
    assert rc == 0, s
    assert {"down", "up"} <= set(window), "the outage did not happen"
    client = MlflowClient(server["uri"], server["uri"])
    assert client.get_run(s["run_id"]).info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(s["run_id"], "epoch")] == list(
        map(float, range(1, 15)))  # every epoch arrived, those of the outage too
    during = [m for m in client.get_metric_history(s["run_id"], "train/loss")
              if window["down"] * 1000 < m.timestamp < window["up"] * 1000]
    # Training did not wait for the server: many steps ran (and were logged late) while it was
    # down. A logger that blocks on the server would show at most the one step it was sending.
    assert len({m.step for m in during}) >= 3, during


def test_a_failing_step_keeps_its_own_cause_while_the_server_is_down(server):
    """The step fails while the tracking server is down: recording the failure fails too, and
    the error the user sees is still the step's own, naming the step."""
    client = MlflowClient(server["uri"], server["uri"])
    exp = client.create_experiment("outage")
    parent = client.create_run(exp).info.run_id
    wf = Workflow(client, parent)

    def compute():
        _stop(server["proc"])
        raise ValueError("the real cause")

    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        with pytest.raises(StepFailed) as e:
            wf.step("evaluate", {"x": 1}, compute, dict, dict)
    finally:
        del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert e.value.step == "evaluate" and "ValueError: the real cause" in str(e.value)
