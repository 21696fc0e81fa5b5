"""The workflow as a Ray job on a real head node started with `ray start --head`.

Ray 2.60 turns token authentication on: the head runs with RAY_AUTH_MODE=token and a token
generated here; the job client sends it as a bearer token.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    # tests/two_nodes.py, imported here: at module level it would be imported before
    # test_two_nodes.py loads it as a plugin, and so not assertion-rewritten.
    from two_nodes import free_ports

    tmp_path = tmp_path_factory.mktemp("head")
    # Ray's socket paths must stay under 107 bytes: a short temp dir of its own.
    ray_tmp = tempfile.mkdtemp(prefix="vdpo-", dir="/tmp")
    token = secrets.token_hex(32)
    (gcs, dash, client, agent, agent_grpc, metrics, rt_env, nm, om) = free_ports(9)
    # No 30 s drain at teardown (`ray start --block` drains the node on SIGTERM first).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           # its workers' state API (Ray Train's placement-group cleaner asks it): this head's
           # dashboard, not whichever cluster on the machine answers (tests/conftest.py)
           "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dash}"}
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
           f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={rt_env}", f"--node-manager-port={nm}",
           f"--object-manager-port={om}", f"--temp-dir={ray_tmp}"]
    # Its own process group: stopping it must not touch the test session's cluster
    # (`ray stop` would kill every Ray process on the machine).
    proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                            stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dash}"
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + 120
    client_ = None
    while time.time() < deadline:
        try:
            client_ = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
            client_.list_jobs()
            break
        except Exception:
            client_ = None
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "head.log").read_text()) from None
            time.sleep(2)
    if client_ is None:
        raise RuntimeError("Ray head did not come up:\n" + (tmp_path / "head.log").read_text())
    yield client_, token, address
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_unauthenticated_clients_are_refused(ray_head):
    from ray.job_submission import JobSubmissionClient

    _, _, address = ray_head
    with pytest.raises(Exception):  # noqa: B017 - the client raises a plain RuntimeError
        JobSubmissionClient(address, headers={"Authorization": "Bearer wrong"}).list_jobs()


@pytest.mark.timeout(900)  # above the job's own 600 s deadline, which reports the job's logs
def test_workflow_runs_as_a_ray_job_logging_to_a_tracking_server(ray_head, mlflow_server, sample_dir, tmp_path):
    """Submit with --working-dir; the job logs over HTTP to a real `mlflow server`, and a
    consumer loads the registered champion through the server."""
    from ray.job_submission import JobStatus
    from two_nodes import job_excludes  # the Makefile's, as `make submit` uploads

    client, _, _ = ray_head
    # Basic-auth credentials in the tracking URI (the server ignores them): the run works and
    # the password is recorded nowhere.
    password = "s3cr3t-" + os.urandom(4).hex()
    with_credentials = mlflow_server.replace("http://", f"http://alice:{password}@")
    entrypoint = (
        f"{sys.executable} -m pipelines run image --train {sample_dir / 'train'} "
        f"--eval {sample_dir / 'eval'} --epochs 1 --tracking-uri {with_credentials} "
        f"--output-dir {tmp_path / 'out'} --model-name job-scorer --experiment job "
        "data.image_size=32 train.batch_size=16"
    )
    commit = "0123456789abcdef0123456789abcdef01234567"  # what `make submit` passes in
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={"working_dir": str(REPO), "excludes": job_excludes(),
                     "env_vars": {"VISUAL_DPO_GIT_COMMIT": commit}},
    )
    deadline = time.time() + 600
    status = None
    while time.time() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(3)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-5000:]
    # Ray echoes the entry point it runs (a command line is public: see README, Security);
    # nothing this package prints holds the password.
    assert [ln for ln in logs.splitlines()
            if password in ln and "-m pipelines run image" not in ln] == []
    summary = json.loads([ln for ln in logs.strip().splitlines() if ln.startswith("{")][-1])
    assert summary["status"] == "ok" and summary["model_version"] == "1"

    mlf = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    run = mlf.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    # The working dir has no .git: the commit came in explicitly, under MLflow's own tag.
    assert run.data.tags["mlflow.source.git.commit"] == commit and "git.commit" not in run.data.tags
    # What a person watching the job sees: where the run is, each step, each epoch.
    shown = mlflow_server.replace("http://", "http://alice:***@")
    assert f"{shown}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in logs
    assert summary["tracking_uri"] == shown and run.data.params["tracking.tracking_uri"] == shown
    config = mlf.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert password not in Path(config).read_text() + json.dumps(run.data.params)
    assert "step prepare: started" in logs and "step register: finished in" in logs
    assert "epoch 1/1  loss " in logs and " pairs/s  ETA 0 s" in logs
    assert mlf.get_metric_history(summary["run_id"], "train/loss")  # from the Ray worker, over HTTP
    assert "config.yaml" in {a.path for a in mlf.list_artifacts(summary["run_id"])}
    assert str(mlf.get_model_version_by_alias("job-scorer", "champion").version) == "1"
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    model = mlflow.pyfunc.load_model("models:/job-scorer@champion")
    ev = pq.read_table(sample_dir / "eval").to_pandas().head(4)
    assert model.predict(pd.DataFrame({"image": ev["chosen"]})).shape == (4,)


def test_stopping_a_running_job_moves_no_alias(ray_head, sample_dir, tmp_path):
    from ray.job_submission import JobStatus
    from two_nodes import job_excludes

    client, _, _ = ray_head
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job_id = client.submit_job(
        entrypoint=(f"{sys.executable} -m pipelines run image --train {sample_dir / 'train'} "
                    f"--eval {sample_dir / 'eval'} --epochs 50 --tracking-uri {uri} "
                    f"--output-dir {tmp_path / 'out'} --model-name stopped-scorer "
                    "data.image_size=32"),
        runtime_env={"working_dir": str(REPO), "excludes": job_excludes()},
    )
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until training has started
        if "training bn-cnn" in client.get_job_logs(job_id):
            break
        assert client.get_job_status(job_id) in (JobStatus.PENDING, JobStatus.RUNNING)
        time.sleep(2)
    assert client.stop_job(job_id)
    while time.time() < deadline and client.get_job_status(job_id) not in (
            JobStatus.STOPPED, JobStatus.FAILED, JobStatus.SUCCEEDED):
        time.sleep(2)
    assert client.get_job_status(job_id) == JobStatus.STOPPED
    models = MlflowClient(uri, uri).search_registered_models(filter_string="name = 'stopped-scorer'")
    assert models == []  # nothing registered, no alias moved
