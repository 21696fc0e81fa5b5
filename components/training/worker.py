"""The Ray Train worker loop, in small named pieces: restore -> (one epoch -> save) per epoch.

``train_loop_per_worker`` reads its ``get_dataset_shard("train")``, runs the plain-PyTorch
``train_step`` (components/training/step.py) over it with an ``optim.Updater`` (learning-rate
schedule, clipping, accumulation, backbone freezing, EMA), validates on its shard of ``val``
when the run has a validation split, reports metrics and saves a checkpoint every epoch, and
stops early after ``train.patience`` epochs without a better ``train.select_by``. The pieces
(``restore``, ``run_epoch``, ``validate``, ``epoch_metrics``, ``save_checkpoint``) take plain
objects, so a test calls them without Ray.

A checkpoint holds the weights to use (the EMA's when on), the updater's state, the progress
(epochs finished, steps, best validation value) and the resolved config sections of the run;
never a copy of the starting weights.

Streaming training (``spec.stream_passes``): the train dataset is one Ray Data execution of
``train.epochs`` passes back to back, iterated once; ``EpochCutter`` cuts it into epochs of
``train_pairs // world`` rows in the batches a per-epoch iterator would give, so the decode
actors keep decoding the next epoch while this one ends, validates and checkpoints.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..config import LoraConfig, LossConfig, TrainConfig
from ..runtime.test_faults import fault_plan
from . import sharding
from .models import build_scorer, initial_weights, to_memory_format
from .optim import Schedule, Updater
from .step import eval_rewards, eval_scores, per_pair, train_step

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "state.pt"
BATCH_DTYPES = {"chosen_px": torch.uint8, "rejected_px": torch.uint8, "target": torch.float32,
                "margin": torch.float32, "weight": torch.float32, "ref_chosen": torch.float32,
                "ref_rejected": torch.float32, "chosen_c": torch.float32,
                "rejected_c": torch.float32, "prompt_ids": torch.int32}


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
    model_options: dict[str, Any] = field(default_factory=dict)  # models.model_options
    pretrained: str = ""  # model.pretrained / model.weights: loaded by each worker, not shipped
    weights: str = ""
    train_pairs: int = 0  # usable training pairs (sizes the cosine schedule)
    select_by: str = "last"  # resolved train.select_by
    validate: bool = False  # the run has a validation split (dataset "val")
    lora: LoraConfig = field(default_factory=LoraConfig)  # model.lora; r=0: off
    reference: Any = None
    """loss.type=dpo: the frozen reference (a ``TrainedScorer``), scored on the fly in the
    worker on the same (augmented) batch: no pass over the data, no stored copy."""
    pinning: dict | None = None  # a CpuPlan dict (components/runtime/pinning/plan.py)
    pinning_report_dir: str | None = None
    mlflow_run_id: str | None = None  # rank 0 logs metrics to this run
    tracking_uri: str | None = None
    stream_passes: int = 0
    """> 0: the train dataset is one stream of this many passes over the ``train_pairs``
    usable pairs (streaming, ``data.cache=none``), cut into epochs by counting rows; 0: a
    dataset of one pass, iterated again each epoch."""

    def resolved_config(self) -> dict[str, Any]:
        return {"train": asdict(self.train), "loss": asdict(self.loss),
                "model": self.model_name, "modality": self.modality,
                "select_by": self.select_by, "lora": asdict(self.lora)}

    def build_model(self) -> torch.nn.Module:
        """The scorer as the workers train it (adapters injected with ``model.lora``), before
        any wrapping for data parallelism; random weights."""
        model = build_scorer(self.model_name, self.model_options)
        if self.lora.r > 0:
            from .lora import apply_lora

            model = apply_lora(model, self.lora)
        return model

    def schedule(self, world: int) -> Schedule:
        """The updater's settings: ``train.*`` keys, with the run's total optimiser steps."""
        t = self.train
        micro = -(-max(self.train_pairs, 1) // (t.batch_size * world))  # batches per epoch
        return Schedule(lr=t.lr, weight_decay=t.weight_decay, backbone_lr=t.backbone_lr,
                        warmup_steps=t.warmup_steps, schedule=t.lr_schedule,
                        min_lr_ratio=t.min_lr_ratio,
                        total_steps=t.epochs * -(-micro // t.accumulation),
                        freeze_backbone_steps=t.freeze_backbone_steps, grad_clip=t.grad_clip,
                        accumulation=t.accumulation, ema_decay=t.ema_decay)


@dataclass
class Progress:
    """Where training stands: epochs finished, batches taken, and the best validation value
    of ``select_by`` so far (for early stopping)."""

    epoch: int = 0
    step: int = 0
    best: float | None = None
    best_epoch: int = 0
    stale: int = 0  # epochs since the best
    losses: list[float] = field(default_factory=list)  # train/loss of each finished epoch


@dataclass
class EpochSums:
    """Pair-weighted sums of one epoch on one worker (all-reduced across workers)."""

    values: torch.Tensor  # loss, r_c, r_r, margin, acc (pair-weighted), pairs
    first_batch_at: float | None = None
    first_batch_cpu: float = 0.0  # time.process_time() then: this process's CPU seconds
    first_batch_pairs: int = 0
    started: float = field(default_factory=time.perf_counter)


class EpochCutter:
    """Cuts one stream of batches (every epoch's rows back to back) into epochs of exactly
    ``rows`` rows, in batches of ``batch_size`` rows and a shorter last one: the batches a
    dataset of one pass iterated each epoch gives, so the steps per epoch (and the learning-
    rate schedule) stay the same. A batch that straddles two epochs is split; the rows after
    the cut open the next epoch, joined to the next stream batch (a copy of one batch).

    Batches are dicts of tensors whose first dimension is the row (``(N, ...)``)."""

    def __init__(self, batches: Iterable[dict[str, torch.Tensor]], rows: int, batch_size: int):
        # rows 0 (fewer pairs than workers): empty epochs, which epoch_metrics reports
        assert rows >= 0 and batch_size > 0, (rows, batch_size)
        self._stream: Iterator[dict[str, torch.Tensor]] = iter(batches)
        self.rows, self.batch_size = rows, batch_size
        self._carry: dict[str, torch.Tensor] | None = None  # read, not yet trained on
        self.short_by = 0  # rows the last epoch lacked when the stream ended early

    def epoch(self) -> Iterator[dict[str, torch.Tensor]]:
        """The next epoch's batches; the stream ending first ends the epoch early (counted in
        ``short_by``)."""
        left = self.rows
        while left > 0:
            batch = self._take(min(self.batch_size, left))
            if batch is None:
                self.short_by = left
                return
            left -= _rows(batch)
            yield batch

    def _take(self, n: int) -> dict[str, torch.Tensor] | None:
        parts, have = [], 0
        while have < n:
            if self._carry is None:
                self._carry = next(self._stream, None)
                if self._carry is None:
                    break
            take = min(n - have, _rows(self._carry))
            parts.append({k: v[:take] for k, v in self._carry.items()})
            rest = _rows(self._carry) - take
            self._carry = {k: v[take:] for k, v in self._carry.items()} if rest else None
            have += take
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _rows(batch: dict[str, torch.Tensor]) -> int:
    return next(iter(batch.values())).shape[0]


def restore(model: torch.nn.Module, checkpoint_dir: str | None,
            init_state: dict[str, torch.Tensor] | None) -> tuple[dict | None, Progress]:
    """Load the checkpoint in ``checkpoint_dir`` (a restarted or resumed run) into ``model``,
    else the starting weights; returns the updater state to load and the progress."""
    if checkpoint_dir:
        state = load_checkpoint(checkpoint_dir)
        model.load_state_dict(state.get("train_model", state["model"]))  # live, not EMA
        return state["updater"], Progress(**state["progress"])
    if init_state is not None:
        model.load_state_dict(init_state)
    return None, Progress()


def make_updater(model: torch.nn.Module, spec: WorkerSpec, state: dict | None,
                 world: int = 1) -> Updater:
    updater = Updater(model, spec.schedule(world))
    if state is not None:
        updater.load_state_dict(state)
    return updater


def load_checkpoint(checkpoint_dir: str) -> dict[str, Any]:
    # Tensors, numbers and strings only: no unpickling of arbitrary objects.
    return torch.load(os.path.join(checkpoint_dir, CHECKPOINT_FILE), map_location="cpu",
                      weights_only=True)


def run_epoch(model: torch.nn.Module, optimizer: Updater | torch.optim.Optimizer,
              batches: Iterable[dict[str, torch.Tensor]], loss: LossConfig,
              device: torch.device, progress: Progress,
              on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
              reference: torch.nn.Module | None = None) -> EpochSums:
    """One pass over ``batches`` (uint8 ``chosen_px``/``rejected_px`` ``(N, 3, [T,] S, S)`` plus
    optional per-pair columns); advances ``progress.step`` and calls ``on_step(step, metrics)``
    after each optimiser step. ``reference``: a frozen scorer whose raw scores of the batch
    become ``ref_chosen``/``ref_rejected`` (loss.type=dpo)."""
    sums = EpochSums(torch.zeros(6, device=device))
    # The first step with a non-finite loss, tracked on the device (no host sync per step)
    # and checked at the end of the epoch, before anything is saved.
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    for i, batch in enumerate(batches):
        if sums.first_batch_at is None:
            sums.first_batch_at = time.perf_counter()
            sums.first_batch_cpu = time.process_time()
            sums.first_batch_pairs = batch["chosen_px"].shape[0]
        chosen, rejected = batch["chosen_px"], batch["rejected_px"]
        extras = per_pair(batch, device)
        if reference is not None:
            extras["ref_chosen"], extras["ref_rejected"] = eval_scores(
                reference, chosen, rejected, device, tokens=batch.get("prompt_ids"))
        m = train_step(model, optimizer, chosen, rejected, loss, device, extras,
                       tokens=batch.get("prompt_ids"))
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


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]],
             loss: LossConfig, device: torch.device) -> torch.Tensor:
    """Pair-weighted ``[loss, accuracy, pairs]`` sums of ``model`` (eval mode) over validation
    batches, to all-reduce. The accuracy is the registered score's (``s + lambda * c``):
    chosen scores higher. For ``dpo`` (no reference scores here) the loss is the BT loss of
    the scores."""
    from dataclasses import replace

    from .losses import configured_loss

    cfg = replace(loss, type="bt") if loss.type == "dpo" else loss
    sums = torch.zeros(3, device=device)
    for batch in batches:
        extras = {k: v for k, v in per_pair(batch, device).items()
                  if k not in ("ref_chosen", "ref_rejected")}
        r_c, r_r = eval_rewards(model, batch["chosen_px"], batch["rejected_px"], device,
                                tokens=batch.get("prompt_ids"))
        value, m = configured_loss(r_c, r_r, cfg, **extras)
        n = float(batch["chosen_px"].shape[0])
        sums += torch.stack([value * n, m["rewards/accuracies"] * n,
                             torch.tensor(n, device=device)])
    return sums


def val_metrics(total: torch.Tensor) -> dict[str, float]:
    pairs = float(total[2].item())
    if pairs == 0:
        raise RuntimeError("the validation split yielded no pairs; raise data.val_fraction")
    return {"val/loss": total[0].item() / pairs, "val/accuracy": total[1].item() / pairs,
            "val/pairs": pairs}


def track_best(progress: Progress, metrics: dict[str, float], select_by: str) -> bool:
    """Update the best ``select_by`` value in ``progress``; True when this epoch is the best."""
    if select_by == "last":
        return True
    value = metrics[select_by]
    better = progress.best is None or (
        value < progress.best if select_by.endswith("loss") else value > progress.best)
    if better:
        progress.best, progress.best_epoch, progress.stale = value, progress.epoch, 0
    else:
        progress.stale += 1
    return better


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
    steady_pairs = local_pairs - sums.first_batch_pairs
    steady = world * steady_pairs / steady_s if steady_s > 0 else 0.0
    # CPU seconds of this worker process (every thread: the step, Ray Data's batch iteration,
    # Ray's own) per pair in the same window: what the pipeline costs the trainer's cores,
    # unlike wall time not inflated by other processes on a shared machine.
    cpu = (time.process_time() - sums.first_batch_cpu) / steady_pairs if steady_pairs > 0 else 0.0
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
        "train/steady_cpu_s_per_pair": cpu,
        "epoch": float(epoch + 1),
    }


def progress_line(metrics: dict[str, float], done: int, epochs: int) -> str:
    """``epoch 2/4  loss 0.4127  acc 0.812  24.3 pairs/s  ETA 41 s`` (ETA: this epoch's time
    for each epoch left)."""
    epoch_s = metrics["train/pairs_per_epoch"] / max(metrics["train/pairs_per_s"], 1e-9)
    return (f"epoch {done}/{epochs}  loss {metrics['train/loss']:.4f}  "
            f"acc {metrics['train/rewards/accuracies']:.3f}  "
            f"{metrics['train/pairs_per_s']:.1f} pairs/s  ETA {(epochs - done) * epoch_s:.0f} s")


def save_checkpoint(directory: str, model: torch.nn.Module, updater: Updater,
                    progress: Progress, spec: WorkerSpec, rank: int = 0) -> str:
    """Write the weights to use (the EMA's when on; then also the live ``train_model``), the
    updater's state, progress and the resolved config to ``directory``.

    ``train.strategy=fsdp``: every rank writes its shard of the weights, optimiser state and
    pending gradients (``sharding.save_sharded``, a collective) and rank 0 the rest, without
    tensors; ``ddp``: rank 0 writes everything (the caller calls it on rank 0 only)."""
    path = os.path.join(directory, CHECKPOINT_FILE)
    if spec.train.strategy == "fsdp":
        sharding.save_sharded(directory, model, updater.optimizer, pending_grads=updater.micro > 0)
        if rank == 0:
            torch.save({"updater": updater.progress_state(), "progress": asdict(progress),
                        "config": spec.resolved_config(), "sharded": True}, path)
        return path
    raw = model.module if hasattr(model, "module") else model  # DDP
    raw = getattr(raw, "_orig_mod", raw)  # torch.compile wraps the module
    live = {k: v.detach().cpu() for k, v in raw.state_dict().items()}
    state = {"model": updater.weights() if spec.train.ema_decay > 0 else live,
             "updater": updater.state_dict(), "progress": asdict(progress),
             "config": spec.resolved_config()}
    if spec.train.ema_decay > 0:
        state["train_model"] = live
    torch.save(state, path)
    return path


def checkpoint_weights(directory: str, spec: WorkerSpec) -> dict[str, torch.Tensor]:
    """The plain scorer's weights in a checkpoint directory, whatever wrote it: read from the
    shards of an ``fsdp`` run, with ``model.lora``'s adapters merged in; the keys are those of
    ``build_scorer``'s model, what registering and serving load."""
    state = load_checkpoint(directory)
    if state.get("sharded"):
        model = spec.build_model()
        model.load_state_dict(sharding.full_model_state(directory, model))
    elif spec.lora.r > 0:
        model = spec.build_model()
        model.load_state_dict(state["model"])
    else:
        return state["model"]
    if spec.lora.r > 0:
        from .lora import merge_lora

        model = merge_lora(model)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _reference_model(spec: WorkerSpec, device: torch.device) -> torch.nn.Module | None:
    if spec.reference is None:
        return None
    ref = build_scorer(spec.reference.model_name, spec.reference.options)
    ref.load_state_dict(spec.reference.state_dict)
    ref.requires_grad_(False)
    return ref.to(device).eval()


def _validate(model, updater: Updater, val_shard, spec: WorkerSpec,
              device: torch.device) -> dict[str, float]:
    """``val/*`` of the weights that would be registered (the EMA's when on)."""
    target = model
    if spec.train.ema_decay > 0:
        target = spec.build_model().to(device)
        target.load_state_dict(updater.weights())
    batches = val_shard.iter_torch_batches(batch_size=spec.train.batch_size,
                                           dtypes=BATCH_DTYPES, device="cpu")
    return val_metrics(_all_reduce_sum(validate(target, batches, spec.loss, device)).cpu())


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(values)
    return values


def _fail_once_for_tests(epoch: int, rank: int, step: int | None = None) -> None:
    """Test-only (runtime/test_faults.py): fail once where the plan says; the marker file
    makes the retry go through. ``{"epoch": e}``: rank 0 raises at the start of epoch ``e``;
    ``{"epoch": e, "kill_after_steps": k, "rank": r}``: rank ``r``'s process exits after ``k``
    optimiser steps of epoch ``e`` (a worker killed mid-epoch)."""
    plan = fault_plan()
    if plan.get("epoch") != epoch or os.path.exists(plan.get("marker", "")):
        return
    kill_after = plan.get("kill_after_steps")
    if kill_after is None and step is None and rank == 0:
        with open(plan["marker"], "w") as f:
            f.write(f"injected failure at epoch {epoch}, rank {rank}\n")
        raise RuntimeError(f"injected failure at epoch {epoch} (test fault hook)")
    if kill_after is not None and step == kill_after and rank == plan.get("rank", 0):
        with open(plan["marker"], "w") as f:
            f.write(f"worker killed at epoch {epoch}, step {step}, rank {rank}\n")
        os._exit(137)


def _setup(spec: WorkerSpec, device: torch.device, world: int):
    """Model (initial weights, adapters, activation checkpointing, restored, then wrapped:
    DDP or FSDP2; channels_last on CUDA), updater and progress of this worker."""
    import ray.train
    import ray.train.torch

    t = spec.train
    model = build_scorer(spec.model_name, spec.model_options)
    init = spec.init_state
    if init is None and (spec.pretrained or spec.weights):  # read here, not shipped to workers
        init = initial_weights(spec.model_name, spec.model_options, t.seed, spec.pretrained,
                               spec.weights)
    if init is not None:  # plain keys: before the adapters change the module tree
        model.load_state_dict(init)
    if spec.lora.r > 0:
        from .lora import apply_lora

        model = apply_lora(model, spec.lora)
    if t.activation_checkpointing:
        sharding.checkpoint_activations(sharding.shard_units(model))
    checkpoint = ray.train.get_checkpoint()
    if t.strategy == "fsdp":
        model = sharding.fully_shard_model(model.to(device), device)
        updater, progress = make_updater(model, spec, None, world), Progress()
        if checkpoint:
            with checkpoint.as_directory() as d:
                state = load_checkpoint(d)
                sharding.load_sharded(d, model, updater.optimizer,
                                      pending_grads=state["updater"]["micro"] > 0)
                updater.load_progress_state(state["updater"])
                progress = Progress(**state["progress"])
        return model, updater, progress
    if checkpoint:
        with checkpoint.as_directory() as d:
            updater_state, progress = restore(model, d, None)
    else:
        updater_state, progress = restore(model, None, None)
    if t.compile:
        model = torch.compile(model)
    model = ray.train.torch.prepare_model(model)
    if device.type == "cuda":
        model = to_memory_format(model, video=spec.modality == "video")
    return model, make_updater(model, spec, updater_state, world), progress


def _report(metrics: dict[str, float], model, updater: Updater, progress: Progress,
            spec: WorkerSpec, rank: int, world: int) -> float:
    """Report the epoch to Ray Train with a checkpoint: written by rank 0 (``ddp``) or by
    every rank, each its shard (``fsdp``), and uploaded in the background (Ray Train's
    asynchronous upload) so training goes on while the files travel. The time this took
    from training (writing, not uploading) is reported as ``train/checkpoint_wait_s``."""
    import ray.train
    from ray.train import CheckpointUploadMode

    t0 = time.perf_counter()
    d = tempfile.mkdtemp(prefix="visual-dpo-ckpt-")  # Ray deletes it after the upload
    ckpt = None
    if rank == 0 or spec.train.strategy == "fsdp":
        save_checkpoint(d, model, updater, progress, spec, rank)
        ckpt = ray.train.Checkpoint.from_directory(d)
    wait = time.perf_counter() - t0
    metrics = {**metrics, "step": progress.step, "world_size": world,
               "train/checkpoint_wait_s": wait}
    ray.train.report(metrics, checkpoint=ckpt, checkpoint_upload_mode=CheckpointUploadMode.ASYNC
                     if ckpt is not None else CheckpointUploadMode.SYNC)
    if ckpt is None:
        os.rmdir(d)
    return wait


def _memory_by_rank(model, updater: Updater, device: torch.device, world: int) -> dict[str, float]:
    """Each rank's parameter and optimiser-state elements (``sharding.memory_report``),
    gathered so rank 0's report names every rank: ``memory/rank{r}/params_local`` ..."""
    mine = sharding.memory_report(model, updater.optimizer)
    keys = sorted(mine)
    values = torch.tensor([mine[k] for k in keys], dtype=torch.float64, device=device)
    gathered = [torch.zeros_like(values) for _ in range(world)]
    if world > 1:
        torch.distributed.all_gather(gathered, values)
    else:
        gathered = [values]
    out = {f"memory/rank{r}/{k.split('/', 1)[1]}": float(v)
           for r, row in enumerate(gathered) for k, v in zip(keys, row.tolist(), strict=True)}
    out["memory/params_total"] = mine["memory/params_total"]
    return out


class TrainBatches:
    """A worker's training batches, epoch by epoch, from its ``get_dataset_shard("train")``:
    a dataset of one pass iterated again each epoch (the decoded cache), or, streaming
    (``spec.stream_passes``), one iteration of the stream cut into epochs (``EpochCutter``).

    Iterated once, the actor pool keeps decoding across epoch ends. Every epoch has exactly
    ``train_pairs // world`` rows; the shuffle buffer runs across the cuts, so up to
    ``batch_size * 8`` rows of one pass may be trained in a neighbouring epoch (with one
    worker, each pair is still trained ``train.epochs`` times in the run). A resumed run reads
    a fresh stream and uses its first epochs-left passes."""

    def __init__(self, shard: Any, spec: WorkerSpec, device: torch.device, first_epoch: int,
                 world: int):
        self.shard, self.spec, self.device = shard, spec, device
        self.cutter = None
        if spec.stream_passes:
            t = spec.train
            assert t.epochs - first_epoch <= spec.stream_passes, (t.epochs, spec.stream_passes)
            self.cutter = EpochCutter(self._iterate(first_epoch), spec.train_pairs // world,
                                      t.batch_size)

    def _iterate(self, epoch: int) -> Iterable[dict[str, torch.Tensor]]:
        t = self.spec.train
        return self.shard.iter_torch_batches(
            batch_size=t.batch_size, dtypes=BATCH_DTYPES,
            device="cpu",  # uint8 stays uint8 until train_step copies it (non_blocking)
            prefetch_batches=2,
            pin_memory=self.device.type == "cuda",  # page-locked host batches: async H2D copies
            local_shuffle_buffer_size=t.batch_size * 8,
            local_shuffle_seed=t.seed + epoch,
        )

    def of(self, epoch: int) -> Iterable[dict[str, torch.Tensor]]:
        """The batches of ``epoch``."""
        return self.cutter.epoch() if self.cutter is not None else self._iterate(epoch)

    def check(self, epoch: int) -> None:
        """After ``epoch``: say so when the stream ended before the epoch had its rows."""
        c = self.cutter
        if c is not None and c.short_by:
            log.warning("the training stream ended %d rows short of epoch %d's %d rows (the "
                        "prepare step counted %d usable training pairs)", c.short_by, epoch + 1,
                        c.rows, self.spec.train_pairs)


def train_loop_per_worker(config: dict[str, WorkerSpec]) -> None:
    """Ray Train's per-worker function; ``config = {"spec": WorkerSpec}``."""
    import ray.train
    import ray.train.torch

    from ..runtime.pinning import pin_role

    spec = config["spec"]
    t = spec.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(t.seed)  # the same initial weights on every worker and every run
    # Pin to this worker's cores (its main and data-iteration threads) and size torch's pool
    # to them; unpinned, use the CPUs it reserved (Ray sets OMP_NUM_THREADS=1 in workers).
    pinned = pin_role(spec.pinning, "train", ctx.get_local_rank(), spec.pinning_report_dir)
    torch.set_num_threads(len(pinned["planned"]) or max(1, int(t.cpus_per_worker)))
    device = ray.train.torch.get_device()
    if rank == 0:
        log.info("training on %s%s", device,
                 f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    model, updater, progress = _setup(spec, device, world)
    reference = _reference_model(spec, device)
    torch.manual_seed(t.seed + rank)

    metrics_log = None
    if rank == 0 and spec.mlflow_run_id:
        from ..tracking.runs import MetricsLogger

        metrics_log = MetricsLogger(spec.tracking_uri, spec.mlflow_run_id)

    epoch_start_step = progress.step

    def on_step(step: int, m: dict[str, torch.Tensor]) -> None:
        _fail_once_for_tests(progress.epoch, rank, step - epoch_start_step)
        if metrics_log is not None and step % t.log_every_steps == 0:
            metrics_log.log({**{f"train/{k}": v.item() for k, v in m.items()},
                             **{f"train/{k}": v for k, v in updater.lrs().items()}}, step)

    shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if spec.validate else None

    batches = TrainBatches(shard, spec, device, progress.epoch, world)
    try:
        for epoch in range(progress.epoch, t.epochs):
            _fail_once_for_tests(epoch, rank)
            epoch_start_step = progress.step
            sums = run_epoch(model, updater, batches.of(epoch), spec.loss, device, progress,
                             on_step, reference)
            batches.check(epoch)
            metrics = epoch_metrics(sums, _all_reduce_sum(sums.values.clone()).cpu(), world, epoch)
            metrics.update(_memory_by_rank(model, updater, device, world))
            progress.epoch = epoch + 1
            progress.losses.append(metrics["train/loss"])
            if val_shard is not None:
                metrics.update(_validate(model, updater, val_shard, spec, device))
            best = track_best(progress, metrics, spec.select_by)
            metrics["train/optimizer_steps"] = float(updater.steps)
            metrics["train/on_gpu"] = float(device.type == "cuda")  # the device actually used
            metrics["train/world_size"] = float(world)
            if rank == 0:  # one line per epoch on the driver's terminal (Ray forwards worker logs)
                log.info("%s%s", progress_line(metrics, progress.epoch, t.epochs),
                         f"  val acc {metrics['val/accuracy']:.3f}{' (best)' if best else ''}"
                         if "val/accuracy" in metrics else "")
            if metrics_log is not None:
                metrics_log.log(metrics, progress.step)
            wait = _report(metrics, model, updater, progress, spec, rank, world)
            if metrics_log is not None:
                metrics_log.log({"train/checkpoint_wait_s": wait}, progress.step)
            if t.patience and progress.stale >= t.patience:  # same all-reduced value everywhere
                if rank == 0:
                    log.info("early stop after epoch %d: %s has not improved for %d epochs "
                             "(best %.4f at epoch %d)", progress.epoch, spec.select_by,
                             progress.stale, progress.best, progress.best_epoch)
                break
    finally:  # also when this attempt fails: what was logged before the failure is sent
        if metrics_log is not None:
            counts = metrics_log.close()
            if counts["sent_late"] or counts["dropped"]:
                log.warning("mlflow metrics: %d sent late, %d dropped (the tracking server was "
                            "unavailable)", counts["sent_late"], counts["dropped"])
