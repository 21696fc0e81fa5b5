"""The workflow against a real `mlflow server` over HTTP (sqlite backend, local artifacts)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from pipelines.__main__ import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}",
         "--artifacts-destination", str(d / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=open(d / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        raise RuntimeError((d / "server.log").read_text())
    yield uri
    proc.terminate()
    proc.wait(30)


def test_workflow_over_http_and_a_consumer_loads_the_champion(ray_cluster, mlflow_server, sample_dir, tmp_path, capsys):
    summary = tmp_path / "s.json"
    rc = main(["run", "image", "--train", str(sample_dir / "train"), "--eval", str(sample_dir / "eval"),
               "--epochs", "1", "--tracking-uri", mlflow_server, "--output-dir", str(tmp_path / "out"),
               "--summary", str(summary), "--model-name", "served-scorer", "data.image_size=32"])
    capsys.readouterr()
    s = json.loads(summary.read_text())
    assert rc == 0, s
    client = MlflowClient(mlflow_server)
    run = client.get_run(s["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_metric_history(s["run_id"], "train/loss")  # logged by the Ray worker over HTTP
    paths = {a.path for a in client.list_artifacts(s["run_id"])}
    assert {"config.yaml", "model"} <= paths
    assert str(client.get_model_version_by_alias("served-scorer", "champion").version) == "1"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        mlflow.set_tracking_uri(mlflow_server)
        model = mlflow.pyfunc.load_model("models:/served-scorer@champion")
        ev = pq.read_table(sample_dir / "eval").to_pandas().head(4)
        assert len(model.predict(pd.DataFrame({"image": ev["chosen"]}))) == 4
    finally:
        if old is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old


def test_an_unreachable_tracking_server_fails_fast(sample_dir, tmp_path, capsys):
    rc = main(["run", "image", "--train", str(sample_dir / "train"), "--tracking-uri",
               "http://127.0.0.1:9", "--output-dir", str(tmp_path / "out"),
               "--summary", str(tmp_path / "s.json")])
    capsys.readouterr()
    s = json.loads((tmp_path / "s.json").read_text())
    assert rc == 1 and "http://127.0.0.1:9 is unreachable" in s["reason"]
    assert not (tmp_path / "out").exists()  # failed before any data was prepared
