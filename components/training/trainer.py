"""Ray Train: data-parallel DPO training of a scorer over the prepared uint8 pairs.

``fit`` builds a ``TorchTrainer`` around ``train_loop_per_worker`` (worker.py); the same
``run_name`` + ``storage_path`` resume from the last checkpoint.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from ..config import TrainConfig
from .worker import WorkerSpec, load_checkpoint, train_loop_per_worker

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    state_dict: dict[str, torch.Tensor]  # trained weights, on CPU
    metrics: dict[str, float]  # last epoch's reported metrics
    epochs: int
    checkpoint_path: str

    def to_record(self) -> dict[str, Any]:
        return {"checkpoint_path": self.checkpoint_path, "metrics": self.metrics,
                "epochs": self.epochs}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> TrainOutcome:
        state = load_checkpoint(r["checkpoint_path"])
        return cls(state["model"], r["metrics"], r["epochs"], r["checkpoint_path"])


def resolve_use_gpu(train: TrainConfig) -> bool:
    if train.use_gpu == "auto":
        import ray

        return ray.cluster_resources().get("GPU", 0) >= 1
    return train.use_gpu == "true"


def fit(spec: WorkerSpec, train_ds, storage_path: str, run_name: str) -> TrainOutcome:
    """Run Ray Train's TorchTrainer over ``train_ds``; the same ``run_name`` + ``storage_path``
    resume. ``spec.init_state``: starting weights (else the seeded random init)."""
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchTrainer

    t = spec.train
    use_gpu = resolve_use_gpu(t)
    os.makedirs(storage_path, exist_ok=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(
            num_workers=t.workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RayRunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoints_to_keep),
        ),
        datasets={"train": train_ds},
    )
    log.info("training %s on %d worker(s), gpu=%s", spec.model_name, t.workers, use_gpu)
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")  # internal invariant
    with result.checkpoint.as_directory() as d:
        state = load_checkpoint(d)
    return TrainOutcome(
        state_dict=state["model"],
        metrics={k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))},
        epochs=int(state["progress"]["epoch"]),
        checkpoint_path=result.checkpoint.path,
    )
