"""Shared fixtures: one real local Ray cluster per session, real sample data, real MLflow."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def fault_plan_path(tmp_path_factory) -> Path:
    """Where the test-only fault hook of the training worker looks for its plan
    (components/training/worker.py); set in the environment before Ray starts its workers."""
    from components.runtime import test_faults

    path = tmp_path_factory.mktemp("faults") / "plan.json"
    os.environ[test_faults.ENV] = str(path)
    return path


@pytest.fixture
def fail_training_once(fault_plan_path, tmp_path):
    """Call with an epoch: rank 0 fails once at the start of that epoch (marker: the path
    returned, written when the failure fires). The plan is removed after the test."""

    def arm(epoch: int) -> Path:
        marker = tmp_path / "injected-failure"
        fault_plan_path.write_text(json.dumps({"epoch": epoch, "marker": str(marker)}))
        return marker

    yield arm
    fault_plan_path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def ray_cluster(fault_plan_path):
    """A real local Ray cluster sized like the machine a user runs on: 2 CPUs, not more, so a
    resource plan that cannot be scheduled on it shows up here (as the plan check's error, or
    as a hang the test timeout reports), not on a user's laptop."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from components.runtime.cluster import ensure_ray

    ensure_ray()  # the pipelines' Ray Data settings, on the cluster just started
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """Canonical sample pairs from the scikit-image photos (train/eval photos disjoint)."""
    from components.sample.images import write_image_pairs

    d = tmp_path_factory.mktemp("sample")
    write_image_pairs(str(d), pairs=240, size=48, shards=2, seed=0)
    return d


@pytest.fixture
def tracking_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def encode(arr: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
    img = Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo_bytes(size: int = 64, fmt: str = "PNG", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), fmt)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server`: sqlite backend store, local artifacts destination."""
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
