"""The schedule lease and the promotion lock are held in the run storage, so they exclude runs
on different Ray clusters: contenders in separate processes race on a real local directory
and on a real S3 server (moto, `PutObject` with `If-None-Match: *`); an expired lease is taken
over and its old holder's fencing token is refused by the register step; renewal keeps a
lease alive past its ttl; and two `python -m pipelines run image --incremental` started
together against one storage and one MLflow store register once (the other is "skipped")."""

from __future__ import annotations

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

from components.config import GateConfig
from components.evaluation.metrics import EvalReport
from components.media.spec import MediaSpec
from components.registry.scorer_files import TrainedScorer
from components.runtime import locks
from components.tracking import runs

pytest_plugins = ["two_nodes"]  # the s3_server fixture

ROOT = Path(__file__).resolve().parents[1]

CONTENDER = """
import json, sys, time
from components.runtime import locks
root, start, rounds, out = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
locks.holder_of(root, "warm-up")  # imports and the S3 client made before the race
got, held = [], []
for i in range(rounds):
    while time.time() < start + 0.3 * i:  # both processes try each name at the same moment
        pass
    try:
        held.append(locks.try_acquire(root, f"race-{i}"))
        got.append(i)
    except locks.LeaseHeld:
        pass
with open(out, "w") as f:
    json.dump(got, f)
"""


def _race(root: str, rounds: int, tmp_path: Path, env: dict[str, str] | None = None) -> list[set]:
    """Two processes try to take the same ``rounds`` leases at the same moments; what each
    got."""
    start = time.time() + 8  # both have imported and connected by then
    outs = [tmp_path / f"contender-{k}.json" for k in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, root, str(start), str(rounds),
                               str(out)], cwd=ROOT, env={**os.environ, **(env or {})},
                              stderr=subprocess.PIPE, text=True) for out in outs]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    return [set(json.loads(out.read_text())) for out in outs]


def _report(n: int = 20) -> EvalReport:
    rng = np.random.default_rng(0)
    s_c = rng.normal(1.0, 1.0, n)
    return EvalReport({"eval/accuracy": 0.8}, pd.DataFrame({
        "pair_id": [f"p{i:03d}" for i in range(n)], "s_chosen": s_c,
        "s_rejected": s_c - np.where(np.arange(n) < 16, 1.0, -1.0), "target": np.ones(n)}))


def _register_with(fence: locks.Lease, root: str, tmp_path: Path) -> None:
    """The register step of an incremental run that holds ``fence``, on a fresh registry."""
    import torch

    from components.training.models import build_scorer
    from pipelines import stages

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs.setup(uri, "fenced")
    torch.manual_seed(0)
    scorer = TrainedScorer("seed-cnn", build_scorer("seed-cnn").state_dict(),
                           MediaSpec("image", 32, 10**6))
    with mlflow.start_run() as run:
        stages.register("fenced-scorer", GateConfig(), scorer, _report(), "unused",
                        run.info.run_id, root, fence)


# --- a local (or shared) filesystem: os.link, the O_EXCL test-and-set ---------------------


def test_two_processes_racing_on_a_local_directory_get_each_lease_exactly_once(tmp_path):
    rounds = 15
    a, b = _race(str(tmp_path / "state"), rounds, tmp_path)
    assert a | b == set(range(rounds)) and not a & b, (a, b)  # each lease: exactly one winner


def test_an_expired_lease_is_taken_over_and_the_old_holder_registers_nothing(tmp_path):
    root = str(tmp_path / "state")
    name = locks.schedule_lease_name("image", "fenced-scorer")
    # A holder that stops renewing (as a paused or hung run does): ttl 1 s, renewal far later.
    old = locks.try_acquire(root, name, ttl_s=1.0, renew_every_s=3600)
    with pytest.raises(locks.LeaseHeld, match=f"another run holds {name}"):
        locks.try_acquire(root, name)
    old.check()  # still valid before the ttl
    time.sleep(1.3)
    new = locks.try_acquire(root, name)  # expired: taken over, atomically, with the next token
    assert new.token == old.token + 1
    with pytest.raises(locks.LeaseLost, match=rf"its token {old.token}; .* now token {new.token}"):
        old.check()
    with pytest.raises(locks.LeaseLost, match="Not registering"):
        _register_with(old, root, tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_registered_models() == []  # refused before anything was registered
    new.check()
    new.release()


def test_an_expired_lease_nobody_took_fails_the_fencing_check(tmp_path):
    lease = locks.try_acquire(str(tmp_path), "lease:image:m", ttl_s=0.5, renew_every_s=3600)
    time.sleep(0.7)
    with pytest.raises(locks.LeaseLost, match="expired at"):
        lease.check()


def test_renewal_keeps_the_lease_alive_past_its_ttl(tmp_path):
    lease = locks.try_acquire(str(tmp_path), "lease:image:m", ttl_s=1.0, renew_every_s=0.2)
    time.sleep(3.0)  # three ttls
    with pytest.raises(locks.LeaseHeld):
        locks.try_acquire(str(tmp_path), "lease:image:m")
    lease.check()
    lease.release()
    again = locks.try_acquire(str(tmp_path), "lease:image:m")  # released: free at once
    assert again.token == lease.token + 1
    again.release()
    # Superseded records are removed: the folder holds the current one only.
    assert len(os.listdir(tmp_path / ".visual-dpo" / "leases" / "lease_image_m")) == 1


def test_a_waiting_acquire_gets_the_lock_when_the_holder_releases(tmp_path):
    first = locks.try_acquire(str(tmp_path), locks.promotion_lock_name("m"))
    threading.Timer(1.0, first.release).start()
    t0 = time.monotonic()
    second = locks.acquire(str(tmp_path), locks.promotion_lock_name("m"), wait_s=30, poll_s=0.1)
    assert time.monotonic() - t0 >= 0.9 and second.token == first.token + 1
    with pytest.raises(locks.LeaseHeld):
        locks.acquire(str(tmp_path), locks.promotion_lock_name("m"), wait_s=0.5, poll_s=0.1)
    second.release()


def test_a_killed_holder_frees_the_lease_after_its_ttl(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom components.runtime import locks\n"
        "locks.try_acquire(sys.argv[1], 'lease:image:m', ttl_s=1.5)\n"
        "print('held', flush=True)\ntime.sleep(600)\n"), str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(2.0)  # renewed meanwhile: still held
        with pytest.raises(locks.LeaseHeld):
            locks.try_acquire(str(tmp_path), "lease:image:m")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(30)
    lease = locks.acquire(str(tmp_path), "lease:image:m", wait_s=10, poll_s=0.1)
    lease.release()


def test_a_damaged_record_counts_as_expired_and_is_superseded(tmp_path):
    folder = tmp_path / ".visual-dpo" / "leases" / "lease_image_m"
    folder.mkdir(parents=True)
    (folder / f"{7:020d}.json").write_text('{"holder": "half-writ')
    lease = locks.try_acquire(str(tmp_path), "lease:image:m")
    assert lease.token == 8  # the next token: never one an earlier holder had
    lease.release()


def test_storage_without_an_atomic_create_is_refused_naming_what_works():
    with pytest.raises(locks.LeaseUnsupported,
                       match=r"not for gs:// \(GCS generation-match is not implemented\)"):
        locks.try_acquire("gs://bucket/runs", "lease:image:m")
    assert not locks.supported("gs://bucket/runs") and locks.supported("s3://bucket/runs")


# --- S3: PutObject with If-None-Match: * (moto's server) ----------------------------------


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    return s3_server


@pytest.mark.slow
def test_two_processes_racing_on_s3_get_each_lease_exactly_once(s3_env, tmp_path):
    rounds = 15
    a, b = _race(s3_env.uri(f"race-{tmp_path.name}"), rounds, tmp_path, s3_env.env)
    assert a | b == set(range(rounds)) and not a & b, (a, b)


@pytest.mark.slow
def test_on_s3_an_expired_lease_is_taken_over_and_the_old_token_is_refused(s3_env, tmp_path):
    root = s3_env.uri(f"takeover-{tmp_path.name}")
    name = locks.schedule_lease_name("image", "fenced-scorer")
    old = locks.try_acquire(root, name, ttl_s=1.0, renew_every_s=3600)  # stops renewing
    with pytest.raises(locks.LeaseHeld):
        locks.try_acquire(root, name)
    time.sleep(1.3)
    new = locks.try_acquire(root, name)
    assert new.token == old.token + 1
    with pytest.raises(locks.LeaseLost, match="Not registering"):
        _register_with(old, root, tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_registered_models() == []
    new.check()
    new.release()
    keys = s3_env.keys(f"takeover-{tmp_path.name}/.visual-dpo/leases/")
    assert f"takeover-{tmp_path.name}/.visual-dpo/leases/lease_image_fenced-scorer/" \
           f"{new.token:020d}.json" in keys


@pytest.mark.slow
def test_on_s3_renewal_keeps_the_lease_alive_past_its_ttl(s3_env, tmp_path):
    root = s3_env.uri(f"renew-{tmp_path.name}")
    lease = locks.try_acquire(root, "lease:image:m", ttl_s=1.5, renew_every_s=0.25)
    time.sleep(4.0)
    with pytest.raises(locks.LeaseHeld):
        locks.try_acquire(root, "lease:image:m")
    lease.check()
    lease.release()
    assert locks.holder_of(root, "lease:image:m") is None


# --- end to end: two runs, two Ray clusters, one storage -------------------------------------


@pytest.mark.slow
def test_two_incremental_runs_started_together_register_once(ray_cluster, tmp_path):
    """The cron line whose previous run is still going: two `run image --incremental` on one
    machine, same data, storage and MLflow store, both pointed at the running cluster
    (RAY_ADDRESS, as a cron line on a head node would be). One trains and registers; the
    other finds the lease held in the storage and exits 0 "skipped" before it connects to Ray
    (so which cluster the winner trains on does not matter to the lease; the races above are
    between processes that share nothing but the storage). The winner joins this session's
    cluster instead of starting a third on the 2 cores (a whole local cluster with its
    dashboard, about half of this test's time when it did)."""
    from components.sample.images import write_image_pairs

    sample_dir = tmp_path / "pairs"  # small: the winner trains one epoch on 48 pairs
    write_image_pairs(str(sample_dir), pairs=64, size=32, shards=1, seed=0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment("image-dpo")  # the store exists already
    out = tmp_path / "out"
    address = ray_cluster.get_runtime_context().gcs_address
    procs = []
    try:
        for k in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "pipelines", "run", "image",
                 "--train", str(sample_dir / "train"), "--eval", str(sample_dir / "eval"),
                 "--incremental", "--epochs", "1", "--tracking-uri", uri,
                 "--output-dir", str(out), "--summary", str(tmp_path / f"run-{k}.json"),
                 "data.image_size=32", "train.batch_size=16"],
                cwd=ROOT, env={**os.environ, "RAY_ADDRESS": address}, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, start_new_session=True))
        errs = [p.communicate(timeout=400)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    summaries = [json.loads((tmp_path / f"run-{k}.json").read_text()) for k in range(2)]
    assert [p.returncode for p in procs] == [0, 0], [e[-3000:] for e in errs]
    by_status = {s["status"]: s for s in summaries}
    assert sorted(by_status) == ["ok", "skipped"], summaries
    assert "lease:image:image-scorer" in by_status["skipped"]["reason"]
    assert by_status["ok"]["model_version"] == "1"
    client = mlflow.MlflowClient(uri, uri)
    assert len(client.search_model_versions("name = 'image-scorer'")) == 1  # registered once
    exp = client.get_experiment_by_name("image-dpo").experiment_id
    parents = [r for r in client.search_runs([exp]) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1  # the skipped run made no MLflow run
    assert locks.holder_of(str(out), locks.schedule_lease_name("image", "image-scorer")) is None
