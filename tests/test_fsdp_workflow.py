"""``train.strategy=fsdp`` through the real workflow on the 2-CPU test cluster: two Ray Train
workers (gloo), sharded checkpoints, a worker killed mid-epoch, a resume on another number of
workers, and the same loss curve as ``ddp``."""

from __future__ import annotations

import json

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
    from components.sample.images import write_image_pairs

    d = tmp_path_factory.mktemp("fsdp-data")
    write_image_pairs(str(d), pairs=160, size=32, shards=2, seed=5)
    return d


def test_a_killed_fsdp_worker_resumes_from_the_sharded_checkpoint_and_matches_ddp(
        ray_cluster, data, tmp_path, tracking_uri, capsys, fault_plan_path):
    common = ["--train", str(data / "train"), "--eval", str(data / "eval"), "--epochs", "2",
              "--tracking-uri", tracking_uri, *TWO_WORKERS]
    rc, ddp = _run([*common, "--output-dir", str(tmp_path / "ddp"), "--model-name", "ddp"],
                   tmp_path, "ddp", capsys)
    assert rc == 0, ddp

    marker = tmp_path / "killed"
    fault_plan_path.write_text(json.dumps({"epoch": 1, "kill_after_steps": 2, "rank": 1,
                                           "marker": str(marker)}))
    try:
        rc, fsdp = _run([*common, "--output-dir", str(tmp_path / "fsdp"), "--model-name", "fsdp",
                         "train.strategy=fsdp", "train.max_failures=1"], tmp_path, "fsdp", capsys)
    finally:
        fault_plan_path.unlink()
    assert rc == 0, fsdp
    assert marker.read_text().startswith("worker killed at epoch 1, step 2, rank 1")
    assert fsdp["epochs"] == 2 and fsdp["model_version"] == "1"  # registered, like ddp
    # The restarted group loaded epoch 1's shards and ran epoch 2 again: the curve is the one
    # an uninterrupted ddp run on the same data, seed and batches draws.
    assert fsdp["train_loss_by_epoch"] == pytest.approx(ddp["train_loss_by_epoch"], abs=2e-3)

    client = MlflowClient(tracking_uri, tracking_uri)
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


def test_an_fsdp_lora_run_resumes_on_a_different_number_of_workers_and_registers_merged(
        ray_cluster, data, tmp_path, tracking_uri, capsys, fail_training_once):
    """FSDP with LoRA adapters and activation checkpointing (VideoAlign's recipe at CNN scale):
    stopped after epoch 1 on two workers, resumed on one, registered as a plain scorer."""
    marker = fail_training_once(epoch=1)
    args = ["--train", str(data / "train"), "--eval", str(data / "eval"), "--epochs", "2",
            "--tracking-uri", tracking_uri, "--output-dir", str(tmp_path / "out"),
            *TWO_WORKERS, "train.strategy=fsdp", "train.max_failures=0",
            "train.activation_checkpointing=true", "model.lora.r=4", "model.lora.alpha=8"]
    rc, first = _run(args, tmp_path, "first", capsys)
    assert rc == 1 and first["failed_step"] == "train", first
    assert marker.exists()
    # Epoch 1 was saved as two shards; one worker now reads both (DCP reshards on load).
    rc, resumed = _run([*args, "--resume", first["run_id"], "--workers", "1",
                        "train.cpus_per_worker=1"], tmp_path, "resumed", capsys)
    assert rc == 0, resumed
    client = MlflowClient(tracking_uri, tracking_uri)
    assert [m.value for m in client.get_metric_history(first["run_id"], "epoch")] == [1.0, 2.0]
    sizes = [m.value for m in client.get_metric_history(first["run_id"], "train/world_size")]
    assert sizes == [2.0, 1.0]
    metrics = client.get_run(first["run_id"]).data.metrics
    assert metrics["memory/rank0/params_local"] == metrics["memory/params_total"]  # one holds all
    assert len(resumed["train_loss_by_epoch"]) == 2
    assert resumed["model_version"] == "1"

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
