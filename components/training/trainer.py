"""Ray Train: data-parallel DPO training of a scorer over the prepared uint8 pairs.

``fit`` builds a ``TorchTrainer`` around ``train_loop_per_worker`` (worker.py); the same
``run_name`` + ``storage_path`` resume from the last checkpoint. With a validation split the
outcome is the best checkpoint by ``spec.select_by`` (Ray Train keeps the best
``train.checkpoints_to_keep`` by that score, and always the latest for resuming).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..config import TrainConfig
from ..datasets.decode_graph import StreamingPairs
from ..runtime import storage
from .worker import (
    CHECKPOINT_FILE,
    WorkerSpec,
    checkpoint_weights,
    load_checkpoint,
    train_loop_per_worker,
)

log = logging.getLogger(__name__)
WEIGHTS_FILE = "weights.pt"
"""The plain scorer's weights, written next to a checkpoint that does not hold them as such
(sharded by ``fsdp``, or with ``model.lora`` adapters not yet merged)."""


@dataclass
class TrainOutcome:
    state_dict: dict[str, torch.Tensor]  # trained weights, on CPU
    metrics: dict[str, float]  # last epoch's reported metrics
    epochs: int
    checkpoint_path: str
    loss_history: list[float] = field(default_factory=list)  # train/loss of each epoch

    def to_record(self) -> dict[str, Any]:
        return {"checkpoint_path": self.checkpoint_path, "metrics": self.metrics,
                "epochs": self.epochs}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> TrainOutcome:
        path = r["checkpoint_path"]
        weights = storage.join(path, WEIGHTS_FILE)
        if storage.exists(weights):
            return cls(storage.torch_load(weights), r["metrics"], r["epochs"], path)
        state = storage.torch_load(storage.join(path, CHECKPOINT_FILE))
        return cls(state["model"], r["metrics"], r["epochs"], path)


def resolve_use_gpu(train: TrainConfig) -> bool:
    """``train.use_gpu``: ``auto`` trains on GPUs when the cluster has them now or its
    autoscaler can add GPU nodes (Ray Train then waits for them); it says so when it falls
    back to CPU."""
    if train.use_gpu != "auto":
        return train.use_gpu == "true"
    import ray

    from ..runtime.cluster import autoscaler_max_resources

    if ray.cluster_resources().get("GPU", 0) >= 1:
        return True
    if autoscaler_max_resources().get("GPU", 0) >= 1:
        log.info("train.use_gpu=auto: no GPU node is up yet; the autoscaler can add GPU nodes, "
                 "so training will wait for them")
        return True
    log.warning("train.use_gpu=auto: this cluster has no GPUs and no autoscaler node type with "
                "GPUs: training on CPU (set train.use_gpu=true to require GPUs)")
    return False


def fit(spec: WorkerSpec, train_ds, storage_path: str, run_name: str,
        val_ds=None) -> TrainOutcome:
    """Run Ray Train's TorchTrainer over ``train_ds`` (and ``val_ds``, validated each epoch);
    the same ``run_name`` + ``storage_path`` resume. ``spec.init_state``: starting weights
    (else the seeded random init, with ``spec.pretrained``/``spec.weights`` loaded).

    ``train_ds``: a Ray Dataset of one pass, iterated each epoch (the decoded cache), or
    ``StreamingPairs`` (``data.cache=none``), iterated once as ``train.epochs`` passes."""
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchTrainer

    t = spec.train
    if isinstance(train_ds, StreamingPairs):
        train_ds = train_ds.dataset(passes=t.epochs)
        spec = replace(spec, stream_passes=t.epochs)
    use_gpu = resolve_use_gpu(t)
    # Checkpoints go to storage_path on any pyarrow filesystem (S3 with AWS_ENDPOINT_URL too):
    # every node reads and writes the same place, which multi-node training needs.
    fs, fs_path = storage.filesystem(storage_path)
    storage.make_dirs(storage_path)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(
            num_workers=t.workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if use_gpu else {}),
                                  **({t.node_resource: 0.001} if t.node_resource else {})},
        ),
        run_config=RayRunConfig(
            name=run_name,
            storage_path=fs_path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=t.checkpoints_to_keep,
                **({} if spec.select_by == "last" else {
                    "checkpoint_score_attribute": spec.select_by,
                    "checkpoint_score_order": _order(spec.select_by)})),
        ),
        datasets={"train": train_ds, **({"val": val_ds} if val_ds is not None else {})},
    )
    log.info("training %s on %d worker(s), gpu=%s", spec.model_name, t.workers, use_gpu)
    with _sigint_handler_restored():
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")  # internal invariant
    checkpoint, metrics = result.checkpoint, result.metrics
    if spec.select_by != "last":
        checkpoint = result.get_best_checkpoint(spec.select_by, _order(spec.select_by))
        metrics = next(m for c, m in result.best_checkpoints if c.path == checkpoint.path)
    checkpoint_uri = storage.uri_of(fs, checkpoint.path, storage_path)
    with checkpoint.as_directory() as d:
        state = load_checkpoint(d)
        weights = checkpoint_weights(d, spec)
    if state.get("sharded") or spec.lora.r > 0:  # the registered model is a plain scorer
        import io

        buf = io.BytesIO()
        torch.save(weights, buf)
        storage.write_bytes(storage.join(checkpoint_uri, WEIGHTS_FILE), buf.getvalue())
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    numbers["train/selected_epoch"] = float(state["progress"]["epoch"])
    numbers["train/epochs_run"] = float(result.metrics.get("epoch", state["progress"]["epoch"]))
    log.info("registered weights: epoch %d (select_by=%s)", state["progress"]["epoch"],
             spec.select_by)
    return TrainOutcome(
        state_dict=weights,
        metrics=numbers,
        epochs=int(state["progress"]["epoch"]),
        checkpoint_path=checkpoint_uri,
        loss_history=list(state["progress"].get("losses", [])),
    )


@contextlib.contextmanager
def _sigint_handler_restored():
    """Put back this process's SIGINT handler after ``TorchTrainer.fit``. Ray Train's ``fit``
    installs one that holds the run's controller (Ctrl-C aborts the run) and leaves it
    installed when it returns, so the finished run's controller and the dataset actors it holds
    (DatasetManager, SplitCoordinator) stay alive until the next ``fit`` replaces the handler:
    in a driver that runs on (the scheduler, a notebook, the test session) about 0.5 CPU-second
    a minute and one process each, and a Ctrl-C after training is sent to a finished run."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _order(select_by: str) -> str:
    return "min" if select_by.endswith("loss") else "max"
