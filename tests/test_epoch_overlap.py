"""Streaming epochs do not restart (issue #21): with ``data.cache=none`` the decode pipeline
runs once for all epochs, so an epoch after the first has its first batch already decoded,
and every epoch still trains exactly the usable training pairs; a worker group restarted
from a checkpoint streams again and goes on from the checkpoint's epoch."""

from __future__ import annotations

import json
import math

import pytest

from pipelines.__main__ import main


@pytest.mark.slow
def test_later_streaming_epochs_start_at_once_with_exact_row_counts(
        ray_cluster, sample_dir, tmp_path, capsys, tracking_uri, fail_training_once):
    summary = tmp_path / "s.json"
    epochs, batch = 4, 16
    # Rank 0 fails at the start of the third epoch: Ray Train restarts the worker group from
    # the second epoch's checkpoint, with a new stream.
    failed = fail_training_once(epoch=2)
    rc = main(["run", "image", "--train", str(sample_dir / "train"), "--epochs", str(epochs),
               "--tracking-uri", tracking_uri, "--output-dir", str(tmp_path / "out"),
               "data.cache=none", "data.val_fraction=0.15", "data.image_size=48",
               "train.cpus_per_worker=0.5", f"train.batch_size={batch}",
               "--summary", str(summary)])
    capsys.readouterr()
    s = json.loads(summary.read_text())
    assert rc == 0, s
    assert failed.exists()  # the failure fired and the run went on
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)

    def history(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(s["run_id"], key),
                                        key=lambda m: (m.step, m.timestamp))]

    used = s["rows"]["train"]["used"]
    assert used > 2 * batch
    # Every epoch trains exactly the usable pairs (one worker), in the same batches as a
    # dataset iterated once per epoch: ceil(used / batch) optimiser steps per epoch.
    assert history("train/pairs_per_epoch") == [float(used)] * epochs
    assert history("epoch") == [1.0, 2.0, 3.0, 4.0]
    assert history("train/optimizer_steps")[-1] == epochs * math.ceil(used / batch)
    assert len(history("val/accuracy")) == epochs  # validated every epoch, stream running
    for r in s["rows"].values():
        assert r["read"] == r["used"] + r["quarantined"] + r["excluded"]
    # The first epoch of each attempt waits for the read tasks and the actor pool to start;
    # the next finds its first batch decoded while the previous epoch validated and
    # checkpointed. Before the change every epoch restarted the pipeline and waited about
    # as long as the first.
    ttfb = history("train/time_to_first_batch_s")
    starts, continued = [ttfb[0], ttfb[2]], [ttfb[1], ttfb[3]]
    assert max(continued) < 0.5 * min(starts), ttfb
