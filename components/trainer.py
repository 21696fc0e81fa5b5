"""Ray Train: data-parallel DPO training of a scorer over the prepared uint8 pairs.

The worker loop only reads its ``get_dataset_shard("train")``, runs the plain-PyTorch
``train_step``, reports metrics and checkpoints every epoch. Rank 0 sends metrics to MLflow
every ``log_every_steps`` steps and at every epoch end.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from components.config import RunConfig
from components.models import build_scorer
from components.pinning import pin_role, plan_for_config
from components.train_step import StepSettings, per_pair, train_step

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"


@dataclass
class TrainOutcome:
    state_dict: dict[str, torch.Tensor]  # trained weights, on CPU
    metrics: dict[str, float]  # last epoch's reported metrics
    epochs: int
    checkpoint_path: str
    failure_marker: str  # exists when an injected failure fired

    def to_record(self) -> dict[str, Any]:
        return {"checkpoint_path": self.checkpoint_path, "metrics": self.metrics,
                "epochs": self.epochs, "failure_marker": self.failure_marker}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> TrainOutcome:
        state = torch.load(os.path.join(r["checkpoint_path"], CHECKPOINT_FILE), map_location="cpu")
        return cls(state["model"], r["metrics"], r["epochs"], r["checkpoint_path"],
                   r["failure_marker"])


def _log_metrics(client, run_id: str | None, metrics: dict[str, float], step: int) -> None:
    if client is None or run_id is None:
        return
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(values)
    return values


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    t = loop_config["train"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(t["seed"] + rank)
    # Pin to this worker's cores (its main and data-iteration threads) and size torch's pool
    # to them; unpinned, use the CPUs it reserved (Ray sets OMP_NUM_THREADS=1 in workers).
    pinned = pin_role(loop_config.get("pinning"), "train", ctx.get_local_rank(),
                      loop_config.get("pinning_report_dir"))
    torch.set_num_threads(len(pinned["planned"]) or max(1, int(t["cpus_per_worker"])))
    device = ray.train.torch.get_device()
    settings = StepSettings(**loop_config["step"])

    model = build_scorer(loop_config["model_name"])
    optimizer_state = None
    start_epoch, step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu")
        model.load_state_dict(state["model"])
        optimizer_state = state["optimizer"]
        start_epoch, step = state["epoch"], state["step"]
    elif loop_config.get("init_state") is not None:
        model.load_state_dict(loop_config["init_state"])  # e.g. the DPO reference's weights
    if t.get("compile"):
        model = torch.compile(model)
    model = ray.train.torch.prepare_model(model)
    if device.type == "cuda":
        video = loop_config.get("modality") == "video"
        model = model.to(memory_format=torch.channels_last_3d if video else torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)

    client = None
    if rank == 0 and loop_config.get("mlflow_run_id"):
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=loop_config["tracking_uri"])
    run_id = loop_config.get("mlflow_run_id")

    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, t["epochs"]):
        marker = loop_config.get("failure_marker")
        if t["inject_failure_at_epoch"] == epoch and marker and not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(f"injected failure at epoch {epoch}, rank {rank}\n")
            raise RuntimeError(f"injected failure at epoch {epoch} (train.inject_failure_at_epoch)")

        sums = torch.zeros(6, device=device)  # loss, r_c, r_r, margin, acc (pair-weighted), pairs
        t0, first_batch_at, first_batch_pairs = time.perf_counter(), None, 0
        for batch in shard.iter_torch_batches(
            batch_size=t["batch_size"],
            dtypes={"chosen_px": torch.uint8, "rejected_px": torch.uint8, "target": torch.float32,
                    "margin": torch.float32, "weight": torch.float32, "ref_chosen": torch.float32,
                    "ref_rejected": torch.float32, "chosen_c": torch.float32,
                    "rejected_c": torch.float32},
            device="cpu",  # uint8 stays uint8 until train_step copies it (non_blocking)
            prefetch_batches=2,
            pin_memory=device.type == "cuda",  # page-locked host batches: async H2D copies
            local_shuffle_buffer_size=t["batch_size"] * 8,
            local_shuffle_seed=t["seed"] + epoch,
        ):
            if first_batch_at is None:
                first_batch_at = time.perf_counter()
                first_batch_pairs = batch["chosen_px"].shape[0]
            chosen, rejected = batch["chosen_px"], batch["rejected_px"]
            m = train_step(model, optimizer, chosen, rejected, settings, device,
                           per_pair(batch, device))
            n = chosen.shape[0]
            sums += torch.stack(
                [m["loss"] * n, m["rewards/chosen"] * n, m["rewards/rejected"] * n,
                 m["rewards/margins"] * n, m["rewards/accuracies"] * n,
                 torch.tensor(float(n), device=device)]
            )
            step += 1
            if step % t["log_every_steps"] == 0:
                _log_metrics(client, run_id, {f"train/{k}": v.item() for k, v in m.items()}, step)
        elapsed = time.perf_counter() - t0
        local_pairs = int(sums[5].item())
        # Steady state: after the first batch arrived, so the epoch's read start-up is excluded
        # (that is train/time_to_first_batch_s). Every worker reads an equal shard.
        steady_s = time.perf_counter() - (first_batch_at or t0)
        steady = world * (local_pairs - first_batch_pairs) / steady_s if steady_s > 0 else 0.0
        sums = _all_reduce_sum(sums).cpu()
        pairs = int(sums[5].item())
        if pairs == 0:
            raise RuntimeError("the training shard yielded no pairs; check the prepared data")
        epoch_metrics = {
            "train/loss": sums[0].item() / pairs,
            "train/rewards/chosen": sums[1].item() / pairs,
            "train/rewards/rejected": sums[2].item() / pairs,
            "train/rewards/margins": sums[3].item() / pairs,
            "train/rewards/accuracies": sums[4].item() / pairs,
            "train/pairs_per_epoch": float(pairs),
            # All workers' pairs over this worker's wall time for the epoch (data wait included).
            "train/pairs_per_s": pairs / elapsed,
            "train/time_to_first_batch_s": (first_batch_at or t0) - t0,
            "train/steady_pairs_per_s": steady,
            "epoch": float(epoch + 1),
        }
        _log_metrics(client, run_id, epoch_metrics, step)
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                raw = model.module if hasattr(model, "module") else model
                raw = getattr(raw, "_orig_mod", raw)  # torch.compile wraps the module
                torch.save(
                    {
                        "model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1,
                        "step": step,
                        "config": loop_config,
                    },
                    os.path.join(d, CHECKPOINT_FILE),
                )
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report({**epoch_metrics, "step": step, "world_size": world}, checkpoint=ckpt)


def fit(
    cfg: RunConfig,
    train_ds,
    storage_path: str,
    run_name: str,
    mlflow_run_id: str | None,
    tracking_uri: str | None,
    init_state: dict[str, torch.Tensor] | None = None,
    pinning_report_dir: str | None = None,
) -> TrainOutcome:
    """Run Ray Train's TorchTrainer; the same ``run_name`` + ``storage_path`` resume.

    ``init_state``: starting weights (else the seeded random init); a checkpoint wins."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchTrainer

    t = cfg.train
    if t.use_gpu == "auto":
        use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    else:
        use_gpu = t.use_gpu == "true"
    os.makedirs(storage_path, exist_ok=True)
    marker = os.path.join(storage_path, f"{run_name}.injected-failure")
    loop_config = {
        "train": {
            k: getattr(t, k)
            for k in ("epochs", "batch_size", "lr", "weight_decay", "seed", "log_every_steps",
                      "inject_failure_at_epoch", "cpus_per_worker", "compile")
        },
        "step": {
            "loss_type": cfg.loss.type,
            "beta": cfg.loss.beta,
            "label_smoothing": cfg.loss.label_smoothing,
            "center_rewards_coefficient": cfg.loss.center_rewards_coefficient,
            "temporal_weight": cfg.loss.temporal_weight,
        },
        "model_name": cfg.model.name,
        "modality": cfg.modality,
        "mlflow_run_id": mlflow_run_id,
        "tracking_uri": tracking_uri,
        "failure_marker": marker,
        "init_state": init_state,
        "pinning": plan_for_config(cfg).to_dict(),
        "pinning_report_dir": pinning_report_dir,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
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
    log.info("training %s on %d worker(s), gpu=%s", cfg.model.name, t.workers, use_gpu)
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")  # internal invariant
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu")
    return TrainOutcome(
        state_dict=state["model"],
        metrics={k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))},
        epochs=int(state["epoch"]),
        checkpoint_path=result.checkpoint.path,
        failure_marker=marker,
    )
