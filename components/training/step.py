"""The DPO train step in plain PyTorch: no Ray, no MLflow. Ray Train wraps it.

Inputs are uint8 batches of chosen and rejected images ``(N, 3, H, W)`` or clips
``(N, 3, T, H, W)``; they become float on the training device. On CUDA: bf16 autocast and
channels_last (channels_last_3d for clips). On CPU: fp32. Same code.

Serving and evaluation read the score ``(N,)`` (``score_images``); the objectives read a
scorer's ``Rewards`` (``score_rewards``): the score, and ``log sigma`` or the per-head scores
of a ``mu_sigma`` or ``named`` head.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from ..config import LossConfig
from .losses import configured_loss
from .models import Rewards, reward_head, takes_prompt, to_model_input


def _autocast(device: torch.device, amp: bool | None):
    if amp if amp is not None else device.type == "cuda":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def score_images(model: nn.Module, images: Tensor, device: torch.device,
                 amp: bool | None = None, channels_last: bool | None = None,
                 tokens: Tensor | None = None) -> Tensor:
    """uint8 ``(N, 3, H, W)`` or ``(N, 3, T, H, W)`` -> float32 scores ``(N,)`` on ``device``.
    ``tokens``: int ``(N, L)`` prompt token ids, required by a prompt-conditioned scorer."""
    return _forward(model, images, device, amp, channels_last, tokens, outputs=False)


def score_rewards(model: nn.Module, images: Tensor, device: torch.device,
                  amp: bool | None = None, channels_last: bool | None = None,
                  tokens: Tensor | None = None) -> Rewards:
    """As ``score_images``, with everything the scorer's head outputs (float32, ``(N,)`` or
    ``(N, K)``); for a one-output ``score`` head that is the score alone, by the same call."""
    head = reward_head(model)
    if head.kind == "score":
        return Rewards(score_images(model, images, device, amp, channels_last, tokens))
    return head.rewards(_forward(model, images, device, amp, channels_last, tokens, outputs=True))


def _forward(model: nn.Module, images: Tensor, device: torch.device, amp: bool | None,
             channels_last: bool | None, tokens: Tensor | None, outputs: bool) -> Tensor:
    cl = channels_last if channels_last is not None else device.type == "cuda"
    x = to_model_input(images, device, channels_last=cl)
    prompt = takes_prompt(model)
    if prompt and tokens is None:
        raise ValueError("this scorer is prompt-conditioned: pass the prompts' token ids")
    kwargs = {"outputs": True} if outputs else {}  # (N, width) instead of the score (N,)
    with _autocast(device, amp):
        if prompt:
            return model(x, tokens.to(device, non_blocking=True), **kwargs).float()
        return model(x, **kwargs).float()


def reward_pairs(model: nn.Module, chosen: Tensor, rejected: Tensor, device: torch.device,
                 amp: bool | None = None, channels_last: bool | None = None,
                 tokens: Tensor | None = None) -> tuple[Rewards, Rewards]:
    """One forward over ``cat([chosen, rejected])`` (BatchNorm sees both halves) -> the
    ``Rewards`` of each side. Both sides of a pair share its prompt (``tokens``, ``(N, L)``)."""
    n = chosen.shape[0]
    both = None if tokens is None else torch.cat([tokens, tokens])
    r = score_rewards(model, torch.cat([chosen, rejected]), device, amp, channels_last, both)
    return r[:n], r[n:]


def score_pairs(model: nn.Module, chosen: Tensor, rejected: Tensor, device: torch.device,
                amp: bool | None = None, channels_last: bool | None = None,
                tokens: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``reward_pairs``' scores: ``(N,), (N,)``."""
    r_c, r_r = reward_pairs(model, chosen, rejected, device, amp, channels_last, tokens)
    return r_c.score, r_r.score


PER_PAIR_KEYS = ("target", "margin", "weight", "ref_chosen", "ref_rejected", "chosen_c", "rejected_c")


def per_pair(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """The optional ``(N,)`` per-pair columns of a batch, as float32 on ``device``."""
    return {k: batch[k].to(device, torch.float32) for k in PER_PAIR_KEYS if k in batch}


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    chosen: Tensor,
    rejected: Tensor,
    loss_cfg: LossConfig,
    device: torch.device,
    extras: dict[str, Tensor] | None = None,
    *,
    amp: bool | None = None,
    channels_last: bool | None = None,
    tokens: Tensor | None = None,
) -> dict[str, Tensor]:
    """One optimiser step on a batch of pairs. ``extras``: optional per-pair ``target``,
    ``margin``, ``weight``, ``ref_chosen``, ``ref_rejected``, ``chosen_c``, ``rejected_c``
    (see ``preference_loss``). ``amp`` (bf16 autocast) and ``channels_last``: None = on for
    CUDA, off on CPU. ``tokens``: the pairs' prompt token ids (prompt-conditioned scorers).
    ``optimizer``: a torch optimiser, or an ``optim.Updater`` (schedule, clipping,
    accumulation, freezing, EMA), which decides when a micro-batch ends in an optimiser step.
    Returns detached metrics on ``device`` (no host sync here; the caller decides when)."""
    model.train()
    r_c, r_r = reward_pairs(model, chosen, rejected, device, amp, channels_last, tokens)
    loss, metrics = configured_loss(r_c, r_r, loss_cfg, **(extras or {}))
    if hasattr(optimizer, "update"):
        optimizer.update(loss)
    else:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {"loss": loss.detach(), **metrics}


@torch.no_grad()
def eval_scores(model: nn.Module, chosen: Tensor, rejected: Tensor, device: torch.device,
                tokens: Tensor | None = None) -> tuple[Tensor, Tensor]:
    model.eval()
    return score_pairs(model, chosen, rejected, device, tokens=tokens)


@torch.no_grad()
def eval_rewards(model: nn.Module, chosen: Tensor, rejected: Tensor, device: torch.device,
                 tokens: Tensor | None = None) -> tuple[Rewards, Rewards]:
    model.eval()
    return reward_pairs(model, chosen, rejected, device, tokens=tokens)
