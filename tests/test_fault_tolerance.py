"""Ray Train fault tolerance and resume: an injected worker failure, and a restarted run."""

import json

import pytest
from mlflow import MlflowClient

from components.sample.images import write_image_pairs
from pipelines.__main__ import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pickapic_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pickapic")
    write_image_pairs(str(d), pairs=120, size=32, layout="pickapic", tie_fraction=0.15, seed=3)
    return d


def test_worker_failure_is_retried_and_the_run_completes(ray_cluster, pickapic_dir, tmp_path, tracking_uri, capsys, fail_training_once):
    out = tmp_path / "out"
    marker = fail_training_once(epoch=1)
    summary = tmp_path / "s.json"
    # Two data-parallel workers (DDP over gloo on CPU), one of them failing once.
    rc = main(["run", "image", "--train", str(pickapic_dir / "train"), "--epochs", "2",
               "--workers", "2", "train.cpus_per_worker=0.5",  # 2 x 0.5 + reads fit 2 CPUs
               "--tracking-uri", tracking_uri, "--output-dir", str(out), "--summary", str(summary),
               "data.image_size=32", "train.batch_size=16",
               "train.max_failures=1"])
    s = json.loads(summary.read_text())
    assert rc == 0, s
    assert s["epochs"] == 2
    assert marker.exists(), "the failure was not injected"  # so the run really restarted
    # Pick-a-Pic layout with ties, hash split: ties excluded and counted, invariant holds.
    total = s["rows"]["train"]["read"] + s["rows"]["eval"]["read"]
    assert total == 90  # 120 pairs, 30 of them written to the eval folder
    assert s["rows"]["train"]["excluded"] + s["rows"]["eval"]["excluded"] > 0
    for r in s["rows"].values():
        assert r["read"] == r["used"] + r["quarantined"] + r["excluded"]
    client = MlflowClient(tracking_uri, tracking_uri)
    epochs_logged = [m.value for m in client.get_metric_history(s["run_id"], "epoch")]
    assert epochs_logged == [1.0, 2.0]  # epoch 1 from the first attempt, epoch 2 after restart
    # Both workers' pairs are counted; equal split drops at most one pair per epoch.
    trained = client.get_metric_history(s["run_id"], "train/pairs_per_epoch")[-1].value
    assert s["rows"]["train"]["used"] - 1 <= trained <= s["rows"]["train"]["used"]
