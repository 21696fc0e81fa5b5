"""Fault tolerance and resume through the real workflow on the 2-CPU test cluster, for
``train.strategy=ddp`` and ``fsdp``: two Ray Train workers (gloo); a ddp worker failing at an
epoch start and an fsdp worker killed mid-epoch are both retried from the last checkpoint and
draw the same loss curve; a failed train step fails the run, and a resume (on another number of
workers, from sharded checkpoints) continues from there."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from pipelines.__main__ import main

pytestmark = pytest.mark.slow

# Two workers of 0.5 CPU plus the read tasks fit the 2-CPU cluster.
TWO_WORKERS = ["--workers", "2", "train.cpus_per_worker=0.5", "data.image_size=32",
               "train.batch_size=16", "train.log_every_steps=1"]


def _run(args, tmp_path, name, capsys):
    summary = tmp_path / f"{name}.json"
    rc = main(["run", "image", *args, "--summary", str(summary)])
    capsys.readouterr()
    return rc, json.loads(summary.read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Pick-a-Pic layout with ties; the runs read --train only (hash split into train/eval)."""
    from components.sample.images import write_image_pairs

    d = tmp_path_factory.mktemp("fsdp-data")
    write_image_pairs(str(d), pairs=200, size=32, layout="pickapic", tie_fraction=0.15, seed=5)
    return d


def test_failed_ddp_and_killed_fsdp_workers_are_retried_and_draw_the_same_curve(
        ray_cluster, data, tmp_path, tracking_uri, capsys, fault_plan_path, fail_training_once):
    common = ["--train", str(data / "train"), "--epochs", "2", "--tracking-uri", tracking_uri,
              *TWO_WORKERS, "train.max_failures=1"]
    failed = fail_training_once(epoch=1)  # rank 0 raises at the start of epoch 1
    rc, ddp = _run([*common, "--output-dir", str(tmp_path / "ddp"), "--model-name", "ddp"],
                   tmp_path, "ddp", capsys)
    assert rc == 0, ddp
    assert failed.exists(), "the failure was not injected"  # so the run really restarted
    assert ddp["epochs"] == 2
    # Pick-a-Pic layout with ties, hash split: ties excluded and counted, invariant holds.
    written = sum(pq.ParquetFile(p).metadata.num_rows for p in (data / "train").glob("*.parquet"))
    assert ddp["rows"]["train"]["read"] + ddp["rows"]["eval"]["read"] == written
    assert ddp["rows"]["train"]["excluded"] + ddp["rows"]["eval"]["excluded"] > 0
    for r in ddp["rows"].values():
        assert r["read"] == r["used"] + r["quarantined"] + r["excluded"]
    client = MlflowClient(tracking_uri, tracking_uri)
    # Epoch 1 from the first attempt, epoch 2 after the restart.
    assert [m.value for m in client.get_metric_history(ddp["run_id"], "epoch")] == [1.0, 2.0]
    # Both workers' pairs are counted; an equal split drops at most one pair per epoch.
    trained = client.get_metric_history(ddp["run_id"], "train/pairs_per_epoch")[-1].value
    assert ddp["rows"]["train"]["used"] - 1 <= trained <= ddp["rows"]["train"]["used"]

    killed = tmp_path / "killed"
    fault_plan_path.write_text(json.dumps({"epoch": 1, "kill_after_steps": 2, "rank": 1,
                                           "marker": str(killed)}))
    rc, fsdp = _run([*common, "--output-dir", str(tmp_path / "fsdp"), "--model-name", "fsdp",
                     "train.strategy=fsdp"], tmp_path, "fsdp", capsys)
    assert rc == 0, fsdp
    assert killed.read_text().startswith("worker killed at epoch 1, step 2, rank 1")
    assert fsdp["epochs"] == 2 and fsdp["model_version"] == "1"  # registered, like ddp
    # Each restarted group loaded epoch 1's checkpoint (fsdp: its shards) and ran epoch 2 again:
    # the two strategies, each interrupted differently, draw the same curve on the same data,
    # seed and batches (an uninterrupted run draws it too: tests/test_sharding.py).
    assert fsdp["train_loss_by_epoch"] == pytest.approx(ddp["train_loss_by_epoch"], abs=2e-3)

    run = client.get_run(fsdp["run_id"]).data.metrics
    total = run["memory/params_total"]
    for rank in (0, 1):  # measured from each rank's tensors, not assumed
        assert 0.45 < run[f"memory/rank{rank}/params_local"] / total < 0.55
        assert 0.45 < run[f"memory/rank{rank}/optimizer_state_local"] / (2 * total) < 0.55
    ddp_run = client.get_run(ddp["run_id"]).data.metrics
    assert ddp_run["memory/rank1/params_local"] == total
    assert run["train/checkpoint_wait_s"] >= 0

    # The registered fsdp model is a plain scorer: it loads and scores like the ddp one.
    import mlflow.pyfunc
    import pandas as pd

    from tests.media_bytes import photo_bytes

    model = mlflow.pyfunc.load_model("models:/fsdp/1")
    scores = model.predict(pd.DataFrame({"image": [photo_bytes(32, seed=1), photo_bytes(32, seed=2)]}))
    assert len(scores) == 2


def _steps(client, parent_id):
    runs = client.search_runs([client.get_run(parent_id).info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return sorted((r.data.tags["visual_dpo.step"], r.info.status) for r in runs)


def test_a_failed_train_step_fails_the_run_and_an_fsdp_lora_resume_continues_on_one_worker(
        ray_cluster, data, tmp_path, tracking_uri, capsys, fail_training_once):
    """FSDP with LoRA adapters and activation checkpointing (VideoAlign's recipe at CNN scale):
    the train step fails in epoch 2 on two workers (no retries), which fails the run and moves
    no alias; resumed on one worker, the run continues from its sharded checkpoint (DCP
    reshards on load), skips the finished steps and registers the merged scorer once."""
    marker = fail_training_once(epoch=1)
    args = ["--train", str(data / "train"), "--epochs", "2", "--run-name", "nightly",
            "--tracking-uri", tracking_uri, "--output-dir", str(tmp_path / "out"),
            *TWO_WORKERS, "train.strategy=fsdp", "train.max_failures=0",
            "train.activation_checkpointing=true", "model.lora.r=4", "model.lora.alpha=8"]
    rc, first = _run(args, tmp_path, "first", capsys)
    assert rc == 1 and first["failed_step"] == "train", first
    assert marker.exists()
    client = MlflowClient(tracking_uri, tracking_uri)
    parent = client.get_run(first["run_id"])
    assert parent.info.status == "FAILED" and parent.data.tags["visual_dpo.failed_step"] == "train"
    assert _steps(client, first["run_id"]) == [("prepare", "FINISHED"), ("reference", "FINISHED"),
                                               ("train", "FAILED")]
    assert client.search_registered_models() == []  # a failed run moves no alias

    one_worker = [*args, "--workers", "1", "train.cpus_per_worker=1"]
    rc, resumed = _run([*one_worker, "--resume", first["run_id"]], tmp_path, "resumed", capsys)
    assert rc == 0, resumed
    assert resumed["run_id"] == first["run_id"] and resumed["epochs"] == 2
    assert resumed["steps"] == {"executed": ["train", "evaluate", "register"],
                                "skipped": ["prepare", "reference"]}
    assert client.get_run(first["run_id"]).info.status == "FINISHED"
    # Epoch 1 ran before the failure on two workers; the resumed step continued on one.
    assert [m.value for m in client.get_metric_history(first["run_id"], "epoch")] == [1.0, 2.0]
    sizes = [m.value for m in client.get_metric_history(first["run_id"], "train/world_size")]
    assert sizes == [2.0, 1.0]
    metrics = client.get_run(first["run_id"]).data.metrics
    assert metrics["memory/rank0/params_local"] == metrics["memory/params_total"]  # one holds all
    assert len(resumed["train_loss_by_epoch"]) == 2
    assert resumed["model_version"] == "1"

    # The same --run-name and config: nothing to do (another config would train again).
    rc, again = _run(one_worker, tmp_path, "again", capsys)
    assert rc == 0 and again["steps"]["executed"] == []
    assert again["model_version"] == "1"
    assert len(client.search_model_versions("name = 'image-scorer'")) == 1  # registered once

    # The registered weights are bn-cnn's own keys (adapters merged): no peft to load them.
    import mlflow.pyfunc
    import pandas as pd
    import torch

    from components.training.models import build_scorer
    from components.training.trainer import WEIGHTS_FILE
    from tests.media_bytes import photo_bytes

    assert client.get_run(first["run_id"]).data.params["model.lora.r"] == "4"
    weights = torch.load(next((tmp_path / "out").rglob(WEIGHTS_FILE)), weights_only=True)
    assert list(weights) == list(build_scorer("bn-cnn").state_dict())
    model = mlflow.pyfunc.load_model(f"models:/image-scorer/{resumed['model_version']}")
    assert len(model.predict(pd.DataFrame({"image": [photo_bytes(32, seed=3)]}))) == 1
