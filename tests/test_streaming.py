"""data.cache=none: the pinned decode actors decode all epochs as one stream into the trainers;
only status tables (and the small eval/val pixel sets) are written; the counts reconcile and
bad rows are quarantined exactly as with the decoded cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from components.media.augment import PairAugment
from components.runtime import storage
from pipelines.__main__ import main


def test_augmentation_draws_once_per_pair_and_changes_each_epoch():
    aug = PairAugment(seed=1, min_scale=0.5, frames=4)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    first = aug.draw("p1", 32)
    second = aug.draw("p1", 32)  # the next epoch: another view
    assert first.box != second.box and first.frame_offsets.shape == (4,)
    assert np.all(np.abs(first.frame_offsets) <= 0.5)
    out = aug.apply(first, a)
    assert out.shape == a.shape and out.dtype == np.uint8 and not np.array_equal(out, a)
    clip = rng.integers(0, 256, (3, 4, 32, 32), dtype=np.uint8)
    view = aug.apply(first, clip)  # every frame gets the same crop and flip
    for t in range(4):
        np.testing.assert_array_equal(view[:, t], aug.apply(first, clip[:, t]))
    again = PairAugment(seed=1, min_scale=0.5, frames=4)  # same seed, same first draw
    same = again.draw("p1", 32)
    assert same.box == first.box and np.array_equal(same.frame_offsets, first.frame_offsets)


def test_frame_jitter_moves_the_sampled_frames_of_both_clips_alike():
    from components.media.video import FRAME_JITTER, _uniform_indices

    assert _uniform_indices(100, 5) == [0, 25, 50, 74, 99]
    token = FRAME_JITTER.set(np.array([0.4, -0.4, 0.4, -0.4, 0.0]))
    try:
        jittered = _uniform_indices(100, 5)
    finally:
        FRAME_JITTER.reset(token)
    assert jittered != [0, 25, 50, 74, 99] and jittered == sorted(jittered)
    assert all(0 <= i <= 99 for i in jittered)


@pytest.mark.slow
def test_streaming_training_writes_no_training_pixels_and_reconciles(
        ray_cluster, sample_dir, tmp_path, capsys, tracking_uri, fail_training_once):
    """Streaming (``data.cache=none``): no training pixels written, every row counted, and
    epochs that do not restart (issue #21): the decode pipeline runs once for all epochs, so
    an epoch after the first finds its first batch decoded, and every epoch trains exactly
    the usable training pairs. Rank 0 fails at the start of the third epoch: Ray Train
    restarts the worker group from the second epoch's checkpoint, which streams anew."""
    summary = tmp_path / "s.json"
    epochs, batch = 3, 16
    failed = fail_training_once(epoch=2)
    rc = main(["run", "image", "--train", str(sample_dir / "train"), "--epochs", str(epochs),
               "--tracking-uri", tracking_uri, "--output-dir", str(tmp_path / "out"),
               "data.cache=none", "data.augment=true", "data.val_fraction=0.15",
               "train.cpus_per_worker=0.5", "data.image_size=48", f"train.batch_size={batch}",
               "--summary", str(summary)])
    capsys.readouterr()
    s = json.loads(summary.read_text())
    assert rc == 0, s
    assert failed.exists()  # the failure fired and the run went on
    rows = s["rows"]
    on_disk = sum(pq.ParquetFile(p).metadata.num_rows for p in (sample_dir / "train").glob("*.parquet"))
    assert sum(r["read"] for r in rows.values()) == on_disk  # train + val + eval (hash split)
    for r in rows.values():
        assert r["read"] == r["used"] + r["quarantined"] + r["excluded"]
    assert s["metrics"]["eval/accuracy"] >= 0.7, s["metrics"]

    prepared = storage.join(s["output_dir"], "prepared")
    status = storage.dataset(storage.join(prepared, "all"))
    assert "chosen_px" not in status.schema.names  # the status pass wrote no pixels
    assert status.count_rows() == on_disk
    eval_px = storage.dataset(storage.join(prepared, "eval"))
    assert "chosen_px" in eval_px.schema.names
    assert eval_px.count_rows() == rows["eval"]["read"]
    val_px = storage.dataset(storage.join(prepared, "val"))
    assert val_px.count_rows() == rows["val"]["read"]
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri).get_run(s["run_id"])
    assert run.data.tags["data.cache_resolved"] == "none"
    assert run.data.metrics["data/streaming"] == 1.0
    # Pixels written: only the eval and val pairs (about a third of the data here).
    bytes_per_pair = 2 * 3 * 48 * 48
    assert run.data.metrics["data/bytes_written"] < 0.6 * on_disk * bytes_per_pair

    def history(key: str) -> list[float]:
        return [m.value for m in sorted(MlflowClient(tracking_uri).get_metric_history(
            s["run_id"], key), key=lambda m: (m.step, m.timestamp))]

    used = rows["train"]["used"]
    assert used > 2 * batch
    # Every epoch trains exactly the usable pairs (one worker), in the same batches as a
    # dataset iterated once per epoch: ceil(used / batch) optimiser steps per epoch.
    assert history("train/pairs_per_epoch") == [float(used)] * epochs
    assert history("epoch") == [1.0, 2.0, 3.0]
    assert history("train/optimizer_steps")[-1] == epochs * math.ceil(used / batch)
    assert len(history("val/accuracy")) == epochs  # validated every epoch, stream running
    # The first epoch of each attempt waits for the read tasks and the actor pool to start;
    # the second found its first batch decoded while the first validated and checkpointed.
    # Before the change every epoch restarted the pipeline and waited about as long.
    ttfb = history("train/time_to_first_batch_s")
    assert ttfb[1] < 0.5 * min(ttfb[0], ttfb[2]), ttfb


def test_storage_helpers_on_a_pyarrow_uri(tmp_path):
    """runtime/storage.py through a URI (file:// here; s3:// in tests/test_two_nodes.py)."""
    root = f"file://{tmp_path}/runs"
    storage.write_json(storage.join(root, "a", "x.json"), {"k": 1})
    storage.write_bytes(storage.join(root, "b.bin"), b"abc")
    assert storage.read_json(storage.join(root, "a", "x.json")) == {"k": 1}
    assert storage.list_files(storage.join(root, "b.bin")) == [storage.join(root, "b.bin")]
    assert len(storage.list_files(root)) == 2 and storage.total_size(root) > 3
    local = storage.download(storage.join(root, "b.bin"), str(tmp_path))
    assert open(local, "rb").read() == b"abc"
    storage.remove(storage.join(root, "a"))
    assert not storage.exists(storage.join(root, "a"))
    storage.check_writable(root)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(storage.StorageError, match="cannot write run state"):
        storage.check_writable(str(tmp_path / "a-file" / "runs"))
    assert not (tmp_path / "never").exists()
    storage.check_writable(str(tmp_path / "never" / "made"))  # checks, creates nothing
    assert not (tmp_path / "never").exists()
