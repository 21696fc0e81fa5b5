"""``trainer.fit`` on the session's Ray cluster, on its own: Ray Train's run of the worker loop
with datasets built in memory, where a behaviour is Ray Train's and not the workflow's (the
workflow's own tests run prepare -> train -> evaluate -> register around it)."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from components.config import LossConfig, TrainConfig
from components.training.trainer import fit
from components.training.worker import WorkerSpec

pytestmark = pytest.mark.slow


def _pairs(ray, n: int, seed: int, size: int = 32):
    """``n`` decoded pairs of random pixels with the training columns' types."""
    rng = np.random.default_rng(seed)
    return ray.data.from_items([
        {"chosen_px": rng.integers(0, 256, (3, size, size), dtype=np.uint8),
         "rejected_px": rng.integers(0, 256, (3, size, size), dtype=np.uint8),
         "target": 1.0, "margin": 0.0, "weight": 1.0} for _ in range(n)])


def test_early_stopping_ends_the_run_when_validation_stops_improving(ray_cluster, tmp_path):
    # seed-cnn has no BatchNorm and lr is ~0: the validation accuracy cannot change, so with
    # patience 1 the workers stop after the second epoch of five.
    train = TrainConfig(epochs=5, lr=1e-12, patience=1, batch_size=16)
    spec = WorkerSpec(train=train, loss=LossConfig(), model_name="seed-cnn", modality="image",
                      train_pairs=64, select_by=train.selection(val_fraction=0.2),
                      validate=True)
    assert spec.select_by == "val/accuracy"
    handler = signal.getsignal(signal.SIGINT)
    out = fit(spec, _pairs(ray_cluster, 64, seed=0), storage_path=str(tmp_path / "ray_results"),
              run_name="early", val_ds=_pairs(ray_cluster, 32, seed=1))
    assert out.metrics["train/epochs_run"] == 2
    assert out.metrics["train/selected_epoch"] in (1, 2)  # equal validation accuracy
    assert out.epochs == out.metrics["train/selected_epoch"]
    assert len(out.loss_history) == out.epochs  # the selected checkpoint's own history

    # The run's actors end with it: fit puts back the SIGINT handler that Ray Train's fit
    # leaves holding the run's controller (which holds the dataset actors).
    assert signal.getsignal(signal.SIGINT) is handler
    from ray.util.state import list_actors

    run_actors = {"TrainController", "DatasetManager", "SplitCoordinator", "RayTrainWorker"}
    # This cluster's address: asked with none, the state API looks for the machine's one Ray
    # instance and fails while another runs (the other xdist worker's cluster, in CI).
    address = ray_cluster.get_runtime_context().gcs_address
    deadline = time.monotonic() + 30
    while alive := [a.class_name for a in
                    list_actors(address=address, filters=[("state", "=", "ALIVE")])
                    if a.class_name in run_actors]:
        assert time.monotonic() < deadline, f"still alive 30 s after fit returned: {alive}"
        time.sleep(0.5)
