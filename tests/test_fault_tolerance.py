"""Ray Train fault tolerance and resume: an injected worker failure, and a restarted run."""

import json
import os

import mlflow
import pytest
from mlflow import MlflowClient

from components.config import load_config
from components.contract import resolve_shards
from components.ingest import prepare, usable_pairs
from components.sample_data import write_image_pairs
from components.trainer import fit
from pipelines.__main__ import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pickapic_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pickapic")
    write_image_pairs(str(d), pairs=120, size=32, layout="pickapic", tie_fraction=0.15, seed=3)
    return d


def test_worker_failure_is_retried_and_the_run_completes(ray_cluster, pickapic_dir, tmp_path, tracking_uri, capsys):
    out = tmp_path / "out"
    summary = tmp_path / "s.json"
    rc = main(["run", "image", "--train", str(pickapic_dir / "train"), "--epochs", "2",
               "--tracking-uri", tracking_uri, "--output-dir", str(out), "--summary", str(summary),
               "data.image_size=32", "train.batch_size=16",
               "train.inject_failure_at_epoch=1", "train.max_failures=1"])
    s = json.loads(summary.read_text())
    assert rc == 0, s
    assert s["epochs"] == 2
    markers = list(out.rglob("*.injected-failure"))
    assert len(markers) == 1, "the failure was not injected"  # so the run really restarted
    # Pick-a-Pic layout with ties, hash split: ties excluded and counted, invariant holds.
    total = s["rows"]["train"]["read"] + s["rows"]["eval"]["read"]
    assert total == 90  # 120 pairs, 30 of them written to the eval folder
    assert s["rows"]["train"]["excluded"] + s["rows"]["eval"]["excluded"] > 0
    for r in s["rows"].values():
        assert r["read"] == r["used"] + r["quarantined"] + r["excluded"]
    epochs_logged = [m.value for m in MlflowClient(tracking_uri).get_metric_history(s["run_id"], "epoch")]
    assert epochs_logged == [1.0, 2.0]  # epoch 1 from the first attempt, epoch 2 after restart


def test_failure_beyond_max_failures_fails_the_run_and_moves_no_alias(ray_cluster, pickapic_dir, tmp_path, tracking_uri, capsys):
    summary = tmp_path / "s.json"
    rc = main(["run", "image", "--train", str(pickapic_dir / "train"), "--epochs", "1",
               "--tracking-uri", tracking_uri, "--output-dir", str(tmp_path / "out"),
               "--summary", str(summary), "--model-name", "never-registered",
               "data.image_size=32", "train.inject_failure_at_epoch=0", "train.max_failures=0"])
    s = json.loads(summary.read_text())
    assert rc == 1 and s["status"] == "failed"
    assert "injected failure" in s["reason"] or "Training" in s["reason"]
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("image-dpo").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert client.search_registered_models(filter_string="name = 'never-registered'") == []


def test_a_restarted_run_resumes_from_its_last_checkpoint(ray_cluster, sample_dir, tmp_path, tracking_uri):
    prepared = prepare(resolve_shards([str(sample_dir / "train")]), str(tmp_path / "p"),
                       layout="auto", image_size=32, max_pixels=10**6, decode_actors=1,
                       cpus_per_actor=1, batch_size=32, eval_fraction=None, split="train")
    storage = str(tmp_path / "ray_results")
    cfg1 = load_config(None, ["data.train=x", "train.epochs=1", "train.batch_size=32"])
    first = fit(cfg1, usable_pairs(prepared.path, "train"), storage, "resume-me", None, None)
    assert first.epochs == 1

    mlflow.set_tracking_uri(tracking_uri)
    run_id = MlflowClient(tracking_uri).create_run(
        MlflowClient(tracking_uri).create_experiment("resume")).info.run_id
    cfg2 = load_config(None, ["data.train=x", "train.epochs=2", "train.batch_size=32"])
    second = fit(cfg2, usable_pairs(prepared.path, "train"), storage, "resume-me", run_id, tracking_uri)
    assert second.epochs == 2
    history = MlflowClient(tracking_uri).get_metric_history(run_id, "epoch")
    assert [m.value for m in history] == [2.0]  # only the missing epoch was trained
    assert os.path.isdir(second.checkpoint_path)
    assert any(k1 != k2 or not (first.state_dict[k1] == second.state_dict[k2]).all()
               for k1, k2 in zip(first.state_dict, second.state_dict, strict=True))  # it kept training
