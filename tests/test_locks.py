"""The schedule lease and the promotion lock really exclude: Ray named actors, tested with
several driver processes on one real Ray cluster."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from components.config import GateConfig
from components.evaluation.metrics import EvalReport
from components.media.spec import MediaSpec
from components.registry.scorer_files import TrainedScorer
from components.runtime import locks
from components.tracking import models, runs
from components.training.models import build_scorer
from tests.media_bytes import photo_bytes

ROOT = Path(__file__).resolve().parents[1]

CONTENDER = """
import json, sys, time
import ray
from components.runtime import locks
ray.init(address=sys.argv[1], namespace="x", log_to_driver=False)
start, rounds, prefix, out = float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
held, got = [], []
for i in range(rounds):
    while time.time() < start + 0.4 * i:  # both processes try each key at the same moment
        time.sleep(0.002)
    try:
        held.append(locks.try_acquire(f"{prefix}-{i}"))
        got.append(i)
    except locks.LeaseHeld:
        pass
with open(out + ".tmp", "w") as f:
    json.dump(got, f)
import os
os.replace(out + ".tmp", out)
deadline = time.time() + 600
while not os.path.exists(out + ".release") and time.time() < deadline:
    time.sleep(0.1)  # hold everything until the test has both results
"""


def _contender(address: str, start: float, rounds: int, prefix: str, out: Path):
    return subprocess.Popen([sys.executable, "-c", CONTENDER, address, str(start), str(rounds),
                             prefix, str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(paths: list[Path], procs, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while not all(p.exists() for p in paths):
        for proc in procs:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, "contenders did not report"
        time.sleep(0.2)


@pytest.mark.slow
def test_two_drivers_racing_for_many_locks_get_each_exactly_once(ray_cluster, tmp_path):
    address = ray_cluster.get_runtime_context().gcs_address
    rounds = 15
    start = time.time() + 20  # both connected by then (if not, they race unsynchronised)
    outs = [tmp_path / f"contender-{k}.json" for k in range(2)]
    procs = [_contender(address, start, rounds, "race", out) for out in outs]
    _wait_for(outs, procs)  # both have tried every lock and still hold what they got
    results = [set(json.loads(out.read_text())) for out in outs]
    for out in outs:
        (tmp_path / (out.name + ".release")).touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    a, b = results
    assert a | b == set(range(rounds)) and not a & b  # each lock: exactly one winner


@pytest.mark.slow
def test_a_killed_holder_frees_the_lease_within_seconds(ray_cluster, tmp_path):
    address = ray_cluster.get_runtime_context().gcs_address
    p = _contender(address, time.time(), 1, "crash", tmp_path / "crash.json")  # takes crash-0
    deadline = time.time() + 120
    while locks.holder_of("crash-0") is None:
        assert time.time() < deadline and p.poll() is None, p.stderr.read()[-2000:]
        time.sleep(0.5)
    with pytest.raises(locks.LeaseHeld, match="another run holds crash-0"):
        locks.try_acquire("crash-0")
    os.killpg(p.pid, signal.SIGKILL)  # the holder dies without releasing anything
    p.wait(30)
    killed = time.monotonic()
    lock = locks.acquire("crash-0", wait_s=60)
    freed_after = time.monotonic() - killed
    lock.release()
    assert freed_after < 30, freed_after


@pytest.mark.slow
def test_a_waiting_acquire_gets_the_lock_when_the_holder_releases(ray_cluster):
    first = locks.try_acquire("promotion:test-model")
    threading.Timer(2.0, first.release).start()
    t0 = time.monotonic()
    second = locks.acquire("promotion:test-model", wait_s=60)
    assert time.monotonic() - t0 >= 1.5
    second.release()
    with pytest.raises(locks.LeaseHeld):
        held = locks.try_acquire("promotion:test-model")
        try:
            locks.acquire("promotion:test-model", wait_s=1.0)
        finally:
            held.release()


def _report(n: int = 20) -> EvalReport:
    rng = np.random.default_rng(0)
    s_c = rng.normal(1.0, 1.0, n)
    return EvalReport({"eval/accuracy": 0.8}, pd.DataFrame({
        "pair_id": [f"p{i:03d}" for i in range(n)], "s_chosen": s_c,
        "s_rejected": s_c - np.where(np.arange(n) < 16, 1.0, -1.0), "target": np.ones(n)}))


@pytest.mark.slow
def test_register_is_idempotent_per_parent_run(ray_cluster, tmp_path):
    """A register step that failed after logging the model registers no second version when
    the run resumes."""
    from pipelines import stages

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs.setup(uri, "idempotent")
    torch.manual_seed(0)
    scorer = TrainedScorer("seed-cnn", build_scorer("seed-cnn").state_dict(),
                           MediaSpec("image", 32, 10**6))
    with mlflow.start_run() as run:
        models.log_scorer(scorer, photo_bytes(32), "once-scorer")  # then the step crashed
        out = stages.register("once-scorer", GateConfig(), scorer, _report(), "unused",
                              run.info.run_id)
    assert out["model_version"] == "1" and out["promoted"]
    assert len(mlflow.MlflowClient().search_model_versions("name = 'once-scorer'")) == 1


def test_a_registry_error_is_an_error_not_no_champion(monkeypatch):
    """A tracking server answering 500 must not read as "no champion yet" (which would
    promote without a gate)."""

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error_code": "INTERNAL_ERROR", "message": "database is down"}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        mlflow.set_tracking_uri(f"http://127.0.0.1:{server.server_address[1]}")
        mlflow.set_registry_uri(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(models.RegistryError, match="cannot read the champion"):
            models.current_champion("image-scorer")
    finally:
        server.shutdown()
