"""Fine-tuning controls of a training run, in plain PyTorch: no Ray, no MLflow.

``Schedule`` holds the knobs (the caller fills it from its typed config); ``problems`` checks
them; ``Updater`` owns the optimiser side of a run:

* AdamW with two parameter groups, backbone and head (head = parameters whose name starts
  with one of the model's ``head_prefixes``), each at its own learning rate; an empty group is
  left out, so an all-backbone or all-head model works.
* A per-optimiser-step LR multiplier: linear warmup from 0 over ``warmup_steps`` steps (step 0
  runs at lr 0, step ``warmup_steps`` at the peak, as in the usual "linear warmup"), then
  constant or cosine decay to ``min_lr_ratio * peak`` at ``total_steps`` (held there after).
* Gradient accumulation over ``accumulation`` micro-batches, gradient-norm clipping, a frozen
  backbone for the first ``freeze_backbone_steps`` optimiser steps (its gradients are dropped,
  so AdamW applies neither an update nor weight decay to it and keeps no moments for it), and
  an EMA of the weights (buffers included, so BatchNorm statistics are averaged too).
* ``state_dict`` / ``load_state_dict`` so a resumed run continues exactly, even between two
  optimiser steps (the pending accumulated gradients are saved too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..config import LR_SCHEDULES

SCHEDULES = LR_SCHEDULES
GROUPS = ("backbone", "head")


@dataclass
class Schedule:
    lr: float
    weight_decay: float = 0.0
    backbone_lr: float = 0.0        # 0: same as lr
    warmup_steps: int = 0           # linear warmup from 0 over this many optimiser steps
    schedule: str = "constant"      # "constant" or "cosine"
    min_lr_ratio: float = 0.0       # cosine floor, as a fraction of the peak
    total_steps: int = 0            # optimiser steps in the whole run (cosine needs > 0)
    freeze_backbone_steps: int = 0  # backbone not updated for the first N optimiser steps
    grad_clip: float = 0.0          # 0: off; else max total grad norm
    accumulation: int = 1           # micro-batches per optimiser step
    ema_decay: float = 0.0          # 0: off; else EMA decay of the weights


def problems(s: Schedule) -> list[str]:
    """Human messages, one per problem, naming the config key (``train.<name>``); empty if fine."""
    out: list[str] = []

    def finite(name: str) -> bool:
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            out.append(f"train.{name}: must be a finite number, got {v!r}")
            return False
        return True

    def integer(name: str) -> bool:
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, int):
            out.append(f"train.{name}: must be an integer, got {v!r}")
            return False
        return True

    if finite("lr") and s.lr <= 0:
        out.append(f"train.lr: must be > 0, got {s.lr}")
    if finite("weight_decay") and s.weight_decay < 0:
        out.append(f"train.weight_decay: must be >= 0, got {s.weight_decay}")
    if finite("backbone_lr") and s.backbone_lr < 0:
        out.append(f"train.backbone_lr: must be >= 0 (0 means same as train.lr), got {s.backbone_lr}")
    for name in ("warmup_steps", "total_steps", "freeze_backbone_steps"):
        if integer(name) and getattr(s, name) < 0:
            out.append(f"train.{name}: must be >= 0, got {getattr(s, name)}")
    if s.schedule not in SCHEDULES:
        out.append(f"train.lr_schedule: must be one of {', '.join(SCHEDULES)}, got {s.schedule!r}")
    if finite("min_lr_ratio") and not 0.0 <= s.min_lr_ratio <= 1.0:
        out.append(f"train.min_lr_ratio: must be in [0, 1], got {s.min_lr_ratio}")
    if s.schedule == "cosine" and isinstance(s.total_steps, int) and s.total_steps <= 0:
        out.append("train.total_steps: must be > 0 with train.lr_schedule=cosine "
                   f"(optimiser steps in the whole run), got {s.total_steps}")
    if (s.schedule == "cosine" and isinstance(s.total_steps, int) and isinstance(s.warmup_steps, int)
            and 0 < s.total_steps < s.warmup_steps):
        out.append(f"train.warmup_steps: {s.warmup_steps} is more than the run's "
                   f"{s.total_steps} optimiser steps (train.epochs x batches per epoch / "
                   "train.accumulation) with train.lr_schedule=cosine; lower it")
    if finite("grad_clip") and s.grad_clip < 0:
        out.append(f"train.grad_clip: must be >= 0 (0 means off), got {s.grad_clip}")
    if integer("accumulation") and s.accumulation < 1:
        out.append(f"train.accumulation: must be >= 1, got {s.accumulation}")
    if finite("ema_decay") and not 0.0 <= s.ema_decay < 1.0:
        out.append(f"train.ema_decay: must be in [0, 1) (0 means off), got {s.ema_decay}")
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def head_prefixes_of(model: nn.Module) -> tuple[str, ...]:
    """The model's ``head_prefixes`` (default ``("head",)``), looked up through DDP/compile."""
    prefixes = getattr(unwrap(model), "head_prefixes", ("head",))
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    return tuple(prefixes)


def lr_factor(s: Schedule, step: int) -> float:
    """Multiplier of the peak lr for optimiser step ``step`` (0-based)."""
    if s.warmup_steps > 0 and step < s.warmup_steps:
        return step / s.warmup_steps
    if s.schedule == "cosine":
        span = max(1, s.total_steps - s.warmup_steps)
        progress = min(1.0, (step - s.warmup_steps) / span)
        return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def _cpu(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}


class Updater:
    """Backward, accumulate, clip, freeze, step, schedule, EMA: one call per micro-batch."""

    def __init__(self, model: nn.Module, s: Schedule):
        bad = problems(s)
        if bad:
            raise ValueError("invalid training schedule: " + "; ".join(bad))
        self.model = model
        self.schedule = s
        inner = unwrap(model)
        prefixes = head_prefixes_of(model)
        split: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
        for name, p in inner.named_parameters():
            if p.requires_grad:
                split["head" if name.startswith(prefixes) else "backbone"].append(p)
        self.base_lrs = {"backbone": s.backbone_lr or s.lr, "head": s.lr}
        self.group_names = [g for g in GROUPS if split[g]]
        if not self.group_names:
            raise ValueError("model has no trainable parameters")
        self._backbone = split["backbone"]
        self._params = [p for g in self.group_names for p in split[g]]
        self.optimizer = torch.optim.AdamW(
            [{"params": split[g], "lr": self.base_lrs[g], "name": g} for g in self.group_names],
            lr=s.lr, weight_decay=s.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(self.schedule, step))
        self.ema: AveragedModel | None = None
        if s.ema_decay > 0:
            self.ema = AveragedModel(inner, multi_avg_fn=get_ema_multi_avg_fn(s.ema_decay),
                                     use_buffers=True)
            self.ema.requires_grad_(False)
        self.steps = 0          # optimiser steps taken
        self.micro = 0          # micro-batches accumulated toward the next optimiser step
        self.last_grad_norm: Tensor | None = None  # total norm before clipping (clip on)

    @property
    def frozen(self) -> bool:
        """Whether the backbone is frozen for the next optimiser step."""
        return self.steps < self.schedule.freeze_backbone_steps

    def update(self, loss: Tensor) -> bool:
        """Backward ``loss / accumulation``; every ``accumulation`` calls take an optimiser
        step. True when a step happened."""
        s = self.schedule
        (loss / s.accumulation).backward()
        self.micro += 1
        if self.micro < s.accumulation:
            return False
        if self.frozen:
            # Dropped before clipping, so the norm measures what is applied.
            for p in self._backbone:
                p.grad = None
        if s.grad_clip > 0:
            params = [p for p in self._params if p.grad is not None]
            if params:
                self.last_grad_norm = torch.nn.utils.clip_grad_norm_(params, s.grad_clip).detach()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(unwrap(self.model))
        self.steps += 1
        self.micro = 0
        return True

    def lrs(self) -> dict[str, float]:
        """Current learning rates (those of the next optimiser step), both groups always
        reported (a group the model lacks gets the lr it would have)."""
        out = {f"lr/{g}": self.base_lrs[g] * lr_factor(self.schedule, self.steps) for g in GROUPS}
        for g, group in zip(self.group_names, self.optimizer.param_groups, strict=True):
            out[f"lr/{g}"] = float(group["lr"])
        return out

    def weights(self) -> dict[str, Tensor]:
        """Weights to evaluate/register: the EMA's when EMA is on, else the model's; keys as
        the unwrapped model's ``state_dict``; detached CPU copies."""
        src = self.ema.module if self.ema is not None else unwrap(self.model)
        return _cpu(src.state_dict())

    def progress_state(self) -> dict:
        """Where the schedule stands, without tensors: what a sharded checkpoint keeps beside
        the optimiser state and gradients that DCP writes per rank."""
        return {"groups": list(self.group_names), "scheduler": self.scheduler.state_dict(),
                "steps": self.steps, "micro": self.micro}

    def state_dict(self) -> dict:
        pending = None
        if self.micro:
            names = {id(p): n for n, p in unwrap(self.model).named_parameters()}
            pending = {names[id(p)]: p.grad.detach().clone()
                       for p in self._params if p.grad is not None}
        return {
            **self.progress_state(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "pending_grads": pending,
        }

    def load_progress_state(self, d: dict) -> None:
        if list(d["groups"]) != self.group_names:
            raise ValueError(f"optimiser state has parameter groups {d['groups']}, "
                             f"this model has {self.group_names}")
        self.scheduler.load_state_dict(d["scheduler"])
        self.steps = int(d["steps"])
        self.micro = int(d["micro"])

    def load_state_dict(self, d: dict) -> None:
        if self.ema is not None and d.get("ema") is None:
            raise ValueError("train.ema_decay is on but the saved state has no EMA")
        self.load_progress_state(d)
        self.optimizer.load_state_dict(d["optimizer"])
        self.scheduler.load_state_dict(d["scheduler"])  # after the optimiser's: its lrs win
        if self.ema is not None:
            self.ema.load_state_dict(d["ema"])
        self.optimizer.zero_grad(set_to_none=True)
        if d.get("pending_grads"):
            params = dict(unwrap(self.model).named_parameters())
            for name, g in d["pending_grads"].items():
                params[name].grad = g.to(params[name].device, params[name].dtype).clone()
