"""Scheduled incremental runs and the lease (resumable steps: tests/test_fsdp_workflow.py)."""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from components.runtime import locks
from pipelines.__main__ import main

FAST = ["data.image_size=32", "train.batch_size=16"]


def _main(args, tmp_path, capsys, name):
    path = tmp_path / f"{name}.json"
    rc = main(["run", "image", *args, "--summary", str(path)])
    capsys.readouterr()
    return rc, json.loads(path.read_text())


@pytest.mark.slow
def test_incremental_runs_train_on_new_shards_only(ray_cluster, sample_dir, tmp_path, tracking_uri, capsys):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    first, second = sorted((sample_dir / "train").glob("*.parquet"))[:2]
    shutil.copy(first, incoming / first.name)
    args = ["--train", str(incoming), "--eval", str(sample_dir / "eval"), "--incremental", "--epochs", "1",
            "--tracking-uri", tracking_uri, "--output-dir", str(tmp_path / "out"), *FAST]
    rc, a = _main(args, tmp_path, capsys, "a")
    assert rc == 0 and a["model_version"] == "1" and a["promoted"]
    assert a["rows"]["train"]["read"] == pq.ParquetFile(first).metadata.num_rows

    rc, b = _main(args, tmp_path, capsys, "b")
    assert rc == 0 and b["status"] == "nothing-new"
    rc, chk = _main([*args, "--check"], tmp_path, capsys, "check-b")  # the scheduler's question
    assert rc == 4 and chk["status"] == "nothing-new" and chk["new_shards"] == []
    client = MlflowClient(tracking_uri, tracking_uri)
    exp = client.get_experiment_by_name("image-dpo").experiment_id
    parents = [r for r in client.search_runs([exp]) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1  # no compute, no run

    # New data arrives. With loss.type=dpo the champion is the frozen reference (scored in
    # the training worker) and the start point; the gate judges the result against it.
    shutil.copy(second, incoming / second.name)
    rc, chk = _main([*args, "--check"], tmp_path, capsys, "check-c")
    assert rc == 0 and chk["status"] == "new-data"
    assert [u.rsplit("/", 1)[1] for u in chk["new_shards"]] == [second.name]
    rc, c = _main([*args, "loss.type=dpo", "loss.beta=0.5"], tmp_path, capsys, "c")
    assert rc == 0 and c["model_version"] == "2", c
    assert c["rows"]["train"]["read"] == pq.ParquetFile(second).metadata.num_rows  # only the new shard
    assert client.get_run(c["run_id"]).data.tags["loss.reference"] == "models:/image-scorer/1"
    # The reference is scored on the fly in the training worker: no second copy of the pairs.
    assert sorted(p.name for p in (Path(c["output_dir"]) / "prepared").iterdir()) == ["eval", "train"]
    # (That DPO then starts at log 2, the reference being the start point, is checked step by
    # step in tests/test_worker_loop.py.)
    p = c["promotion"]
    assert p["champion_version"] == "1" and p["ci_low"] <= p["difference"] <= p["ci_high"]
    assert c["promoted"] is (p["difference"] > 0 and p["ci_low"] > -0.02)
    assert str(client.get_model_version_by_alias("image-scorer", "champion").version) == (
        "2" if c["promoted"] else "1")
    assert json.loads(client.get_model_version("image-scorer", "2").tags["promotion"]) == p
    with open(client.download_artifacts(c["run_id"], "data/shards.json", str(tmp_path))) as f:
        shards = json.load(f)
    assert [s["uri"].rsplit("/", 1)[1] for s in shards["train"]] == [second.name]
    assert client.get_run(c["run_id"]).data.params["train.epochs"] == "1"
    assert locks.holder_of(str(tmp_path / "out"),
                           locks.schedule_lease_name("image", "image-scorer")) is None  # released


@pytest.mark.slow
def test_a_scheduled_run_finds_the_lease_held_and_skips(ray_cluster, sample_dir, tmp_path, tracking_uri, capsys):
    """Another run holds the lease (here: this test, in the run storage): the run exits 0
    with "skipped" (a SUCCEEDED job for Ray and KubeRay), before any work."""
    out = str(tmp_path / "out")
    lease = locks.try_acquire(out, locks.schedule_lease_name("image", "image-scorer"))
    try:
        rc, s = _main(["--train", str(sample_dir / "train"), "--incremental",
                       "--tracking-uri", tracking_uri, "--output-dir", out], tmp_path, capsys,
                      "blocked")
    finally:
        lease.release()
    assert rc == 0 and s["status"] == "skipped" and "lease:image:image-scorer" in s["reason"]
    exp = MlflowClient(tracking_uri, tracking_uri).get_experiment_by_name("image-dpo")
    assert MlflowClient(tracking_uri, tracking_uri).search_runs([exp.experiment_id]) == []
