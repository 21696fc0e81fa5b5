"""The Ray Train worker loop, in small named pieces: restore -> (one epoch -> save) per epoch.

``train_loop_per_worker`` only reads its ``get_dataset_shard("train")``, runs the
plain-PyTorch ``train_step`` (components/training/step.py) over it, reports metrics and saves a
checkpoint every epoch. The pieces (``restore``, ``run_epoch``, ``epoch_metrics``,
``save_checkpoint``) take plain objects, so a test calls them without Ray.

A checkpoint holds the model, the optimiser, the progress (epochs finished, optimiser steps)
and the resolved config sections of the run; never a copy of the starting weights.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..config import LossConfig, TrainConfig
from ..runtime.test_faults import fault_plan
from .models import build_scorer
from .step import per_pair, train_step

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "state.pt"
BATCH_DTYPES = {"chosen_px": torch.uint8, "rejected_px": torch.uint8, "target": torch.float32,
                "margin": torch.float32, "weight": torch.float32, "ref_chosen": torch.float32,
                "ref_rejected": torch.float32, "chosen_c": torch.float32,
                "rejected_c": torch.float32}


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite loss: the weights are no longer usable."""


@dataclass
class WorkerSpec:
    """Everything a training worker needs: one object across the process boundary."""

    train: TrainConfig
    loss: LossConfig
    model_name: str
    modality: str
    init_state: dict[str, torch.Tensor] | None = None
    """Starting weights (e.g. the DPO reference's); a checkpoint wins. Never checkpointed."""
    pinning: dict | None = None  # a CpuPlan dict (components/runtime/pinning.py)
    pinning_report_dir: str | None = None
    mlflow_run_id: str | None = None  # rank 0 logs metrics to this run
    tracking_uri: str | None = None

    def resolved_config(self) -> dict[str, Any]:
        return {"train": asdict(self.train), "loss": asdict(self.loss),
                "model": self.model_name, "modality": self.modality}


@dataclass
class Progress:
    """Where training stands: epochs finished and optimiser steps taken."""

    epoch: int = 0
    step: int = 0


@dataclass
class EpochSums:
    """Pair-weighted sums of one epoch on one worker (all-reduced across workers)."""

    values: torch.Tensor  # loss, r_c, r_r, margin, acc (pair-weighted), pairs
    first_batch_at: float | None = None
    first_batch_pairs: int = 0
    started: float = field(default_factory=time.perf_counter)


def restore(model: torch.nn.Module, checkpoint_dir: str | None,
            init_state: dict[str, torch.Tensor] | None) -> tuple[dict | None, Progress]:
    """Load the checkpoint in ``checkpoint_dir`` (a restarted or resumed run) into ``model``,
    else the starting weights; returns the optimiser state to load and the progress."""
    if checkpoint_dir:
        state = load_checkpoint(checkpoint_dir)
        model.load_state_dict(state["model"])
        return state["optimizer"], Progress(**state["progress"])
    if init_state is not None:
        model.load_state_dict(init_state)
    return None, Progress()


def load_checkpoint(checkpoint_dir: str) -> dict[str, Any]:
    # Tensors, numbers and strings only: no unpickling of arbitrary objects.
    return torch.load(os.path.join(checkpoint_dir, CHECKPOINT_FILE), map_location="cpu",
                      weights_only=True)


def run_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              batches: Iterable[dict[str, torch.Tensor]], loss: LossConfig,
              device: torch.device, progress: Progress,
              on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None) -> EpochSums:
    """One pass over ``batches`` (uint8 ``chosen_px``/``rejected_px`` ``(N, 3, [T,] S, S)`` plus
    optional per-pair columns); advances ``progress.step`` and calls ``on_step(step, metrics)``
    after each optimiser step."""
    sums = EpochSums(torch.zeros(6, device=device))
    # The first step with a non-finite loss, tracked on the device (no host sync per step)
    # and checked at the end of the epoch, before anything is saved.
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    for i, batch in enumerate(batches):
        if sums.first_batch_at is None:
            sums.first_batch_at = time.perf_counter()
            sums.first_batch_pairs = batch["chosen_px"].shape[0]
        chosen, rejected = batch["chosen_px"], batch["rejected_px"]
        m = train_step(model, optimizer, chosen, rejected, loss, device, per_pair(batch, device))
        n = chosen.shape[0]
        sums.values += torch.stack(
            [m["loss"] * n, m["rewards/chosen"] * n, m["rewards/rejected"] * n,
             m["rewards/margins"] * n, m["rewards/accuracies"] * n,
             torch.tensor(float(n), device=device)]
        )
        progress.step += 1
        bad = ~torch.isfinite(m["loss"]) & (first_bad < 0)
        first_bad = torch.where(bad, torch.tensor(progress.step * 100_000 + i, device=device),
                                first_bad)
        if on_step is not None:
            on_step(progress.step, m)
    if int(first_bad.item()) >= 0:
        step, batch_index = divmod(int(first_bad.item()), 100_000)
        raise NonFiniteLoss(
            f"the loss is not finite at optimiser step {step} (batch {batch_index} of epoch "
            f"{progress.epoch + 1}); nothing from this epoch is saved or registered. Look for "
            "extreme margin/weight values in the data, or lower train.lr")
    return sums


def epoch_metrics(sums: EpochSums, total: torch.Tensor, world: int, epoch: int) -> dict[str, float]:
    """Metrics of a finished epoch from this worker's sums and the all-reduced ``total``."""
    now = time.perf_counter()
    pairs = int(total[5].item())
    if pairs == 0:
        raise RuntimeError("the training shard yielded no pairs; check the prepared data")
    local_pairs = int(sums.values[5].item())
    # Steady state: after the first batch arrived, so the epoch's read start-up is excluded
    # (that is train/time_to_first_batch_s). Every worker reads an equal shard.
    first = sums.first_batch_at or sums.started
    steady_s = now - first
    steady = world * (local_pairs - sums.first_batch_pairs) / steady_s if steady_s > 0 else 0.0
    return {
        "train/loss": total[0].item() / pairs,
        "train/rewards/chosen": total[1].item() / pairs,
        "train/rewards/rejected": total[2].item() / pairs,
        "train/rewards/margins": total[3].item() / pairs,
        "train/rewards/accuracies": total[4].item() / pairs,
        "train/pairs_per_epoch": float(pairs),
        # All workers' pairs over this worker's wall time for the epoch (data wait included).
        "train/pairs_per_s": pairs / (now - sums.started),
        "train/time_to_first_batch_s": first - sums.started,
        "train/steady_pairs_per_s": steady,
        "epoch": float(epoch + 1),
    }


def progress_line(metrics: dict[str, float], done: int, epochs: int) -> str:
    """``epoch 2/4  loss 0.4127  acc 0.812  24.3 pairs/s  ETA 41 s`` (ETA: this epoch's time
    for each epoch left)."""
    epoch_s = metrics["train/pairs_per_epoch"] / max(metrics["train/pairs_per_s"], 1e-9)
    return (f"epoch {done}/{epochs}  loss {metrics['train/loss']:.4f}  "
            f"acc {metrics['train/rewards/accuracies']:.3f}  "
            f"{metrics['train/pairs_per_s']:.1f} pairs/s  ETA {(epochs - done) * epoch_s:.0f} s")


def save_checkpoint(directory: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    progress: Progress, spec: WorkerSpec) -> str:
    """Write model, optimiser, progress and the resolved config to ``directory``."""
    raw = model.module if hasattr(model, "module") else model  # DDP
    raw = getattr(raw, "_orig_mod", raw)  # torch.compile wraps the module
    path = os.path.join(directory, CHECKPOINT_FILE)
    torch.save({"model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
                "optimizer": optimizer.state_dict(), "progress": asdict(progress),
                "config": spec.resolved_config()}, path)
    return path


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(values)
    return values


def _fail_once_for_tests(epoch: int, rank: int) -> None:
    """Test-only (runtime/test_faults.py): fail once at the start of the planned epoch; the
    marker file makes the retry go through."""
    plan = fault_plan() if rank == 0 else {}
    if plan.get("epoch") == epoch and not os.path.exists(plan["marker"]):
        with open(plan["marker"], "w") as f:
            f.write(f"injected failure at epoch {epoch}, rank {rank}\n")
        raise RuntimeError(f"injected failure at epoch {epoch} (test fault hook)")


def _setup(spec: WorkerSpec, device: torch.device):
    """Model (restored, compiled, wrapped in DDP, channels_last on CUDA), optimiser and
    progress of this worker."""
    import ray.train
    import ray.train.torch

    t = spec.train
    model = build_scorer(spec.model_name)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            optimizer_state, progress = restore(model, d, spec.init_state)
    else:
        optimizer_state, progress = restore(model, None, spec.init_state)
    if t.compile:
        model = torch.compile(model)
    model = ray.train.torch.prepare_model(model)
    if device.type == "cuda":
        video = spec.modality == "video"
        model = model.to(memory_format=torch.channels_last_3d if video else torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    return model, optimizer, progress


def _report(metrics: dict[str, float], model, optimizer, progress: Progress, spec: WorkerSpec,
            rank: int, world: int) -> None:
    """Report the epoch to Ray Train, with a checkpoint written by rank 0."""
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        ckpt = None
        if rank == 0:
            save_checkpoint(d, model, optimizer, progress, spec)
            ckpt = ray.train.Checkpoint.from_directory(d)
        ray.train.report({**metrics, "step": progress.step, "world_size": world}, checkpoint=ckpt)


def train_loop_per_worker(config: dict[str, WorkerSpec]) -> None:
    """Ray Train's per-worker function; ``config = {"spec": WorkerSpec}``."""
    import ray.train
    import ray.train.torch

    from ..runtime.pinning import pin_role

    spec = config["spec"]
    t = spec.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(t.seed + rank)
    # Pin to this worker's cores (its main and data-iteration threads) and size torch's pool
    # to them; unpinned, use the CPUs it reserved (Ray sets OMP_NUM_THREADS=1 in workers).
    pinned = pin_role(spec.pinning, "train", ctx.get_local_rank(), spec.pinning_report_dir)
    torch.set_num_threads(len(pinned["planned"]) or max(1, int(t.cpus_per_worker)))
    device = ray.train.torch.get_device()
    model, optimizer, progress = _setup(spec, device)

    metrics_log = None
    if rank == 0 and spec.mlflow_run_id:
        from ..tracking.runs import MetricsLogger

        metrics_log = MetricsLogger(spec.tracking_uri, spec.mlflow_run_id)

    def on_step(step: int, m: dict[str, torch.Tensor]) -> None:
        if metrics_log is not None and step % t.log_every_steps == 0:
            metrics_log.log({f"train/{k}": v.item() for k, v in m.items()}, step)

    shard = ray.train.get_dataset_shard("train")
    try:
        for epoch in range(progress.epoch, t.epochs):
            _fail_once_for_tests(epoch, rank)
            batches = shard.iter_torch_batches(
                batch_size=t.batch_size, dtypes=BATCH_DTYPES,
                device="cpu",  # uint8 stays uint8 until train_step copies it (non_blocking)
                prefetch_batches=2,
                pin_memory=device.type == "cuda",  # page-locked host batches: async H2D copies
                local_shuffle_buffer_size=t.batch_size * 8,
                local_shuffle_seed=t.seed + epoch,
            )
            sums = run_epoch(model, optimizer, batches, spec.loss, device, progress, on_step)
            metrics = epoch_metrics(sums, _all_reduce_sum(sums.values.clone()).cpu(), world, epoch)
            progress.epoch = epoch + 1
            if rank == 0:  # one line per epoch on the driver's terminal (Ray forwards worker logs)
                log.info("%s", progress_line(metrics, progress.epoch, t.epochs))
            if metrics_log is not None:
                metrics_log.log(metrics, progress.step)
            _report(metrics, model, optimizer, progress, spec, rank, world)
    finally:  # also when this attempt fails: what was logged before the failure is sent
        if metrics_log is not None:
            counts = metrics_log.close()
            if counts["sent_late"] or counts["dropped"]:
                log.warning("mlflow metrics: %d sent late, %d dropped (the tracking server was "
                            "unavailable)", counts["sent_late"], counts["dropped"])
