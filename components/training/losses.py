"""Pairwise preference objectives for scorers (the DPO family, names as in TRL's ``loss_type``).

A scorer maps an input to a scalar ``s(x)``. With an optional frozen reference scorer
``s_ref``, the log-ratio difference of a pair is

    h = (s(x_c) - s_ref(x_c)) - (s(x_r) - s_ref(x_r))          (reference scores 0 if absent)

and the objectives are (beta > 0, eps = label smoothing):

    bt / dpo : -logsigmoid(beta * h)          with a soft label p: -p ls(beta h) - (1-p) ls(-beta h)          bt is the seed post's log(1 + exp(beta (s_r - s_c)))
                                              (Rafailov et al. 2023, eq. 7, with s as log-density)
    ipo      : (h - 1 / (2 beta))^2            (Azar et al. 2023, eq. 17)
    hinge    : relu(1 - beta * h)              (SLiC, Zhao et al. 2023)
    robust   : ((1 - eps) * -logsigmoid(beta h) + eps * logsigmoid(-beta h)) / (1 - 2 eps)
                                              (Chowdhury et al. 2024, unbiased under label noise)

Video scorers may add a fixed temporal-consistency prior (lambda = ``temporal_weight``): the
reward of a clip becomes ``s(x) + lambda * c(x)`` with ``c(x) = -mean_t MSE(f_t, f_t+1)``
computed in preprocessing, so ``h`` gains ``lambda * (c(x_c) - c(x_r))`` and the scorer is
trained on what consistency alone does not explain (``c`` is data, so it has no gradient).

``bt`` with ``label_smoothing > 0`` is conservative DPO (cDPO):
``-(1 - eps) logsigmoid(beta h) - eps logsigmoid(-beta h)``.

Everything is written with ``logsigmoid``/``softplus`` so that score gaps of 1e4 give finite
losses and gradients (the literal ``log(1 + exp(.))`` overflows at a gap of ~100 in fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import LossConfig


def preference_loss(
    s_chosen: Tensor,
    s_rejected: Tensor,
    *,
    loss_type: str = "bt",
    beta: float = 1.0,
    label_smoothing: float = 0.0,
    center_rewards_coefficient: float = 0.0,
    ref_chosen: Tensor | None = None,
    ref_rejected: Tensor | None = None,
    target: Tensor | None = None,
    margin: Tensor | None = None,
    weight: Tensor | None = None,
    temporal_weight: float = 0.0,
    chosen_c: Tensor | None = None,
    rejected_c: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted mean loss over a batch of pairs, and TRL-named metrics (detached).

    Shapes: every tensor is ``(N,)``. ``target`` is the probability that ``chosen`` is
    preferred (1 = a hard label, 0.5 = a tie, 0.7 = 7 of 10 raters); the logistic losses
    (bt, dpo) use it as a soft label: ``-p logsigmoid(z) - (1 - p) logsigmoid(-z)``.
    ``margin`` shifts the logit, ``z = beta * h - margin`` (TRL's reward-model margin; for ipo
    the target gap becomes ``(margin + 1/2) / beta``). ``weight`` weighs pairs in the mean.

    Returns ``(loss, metrics)`` where metrics holds ``rewards/chosen``, ``rewards/rejected``,
    ``rewards/margins`` (means of the implicit rewards ``beta * (s - s_ref)``) and
    ``rewards/accuracies`` (share of pairs with a strictly higher chosen reward; a tie
    counts as wrong).
    """
    s_chosen = s_chosen.float()
    s_rejected = s_rejected.float()
    if temporal_weight:
        if chosen_c is None or rejected_c is None:
            raise ValueError("temporal_weight != 0 needs chosen_c/rejected_c (video consistency)")
        s_chosen = s_chosen + temporal_weight * chosen_c.float()
        s_rejected = s_rejected + temporal_weight * rejected_c.float()
    if loss_type == "dpo" and (ref_chosen is None or ref_rejected is None):
        raise ValueError("loss_type='dpo' needs reference scores ref_chosen/ref_rejected")
    lr_c = s_chosen - (ref_chosen.float() if ref_chosen is not None else 0.0)
    lr_r = s_rejected - (ref_rejected.float() if ref_rejected is not None else 0.0)
    h = lr_c - lr_r
    m = margin.float() if margin is not None else torch.zeros_like(h)
    z = beta * h - m
    eps = label_smoothing
    if loss_type in ("bt", "dpo"):
        p = target.float() if target is not None else torch.ones_like(h)
        p = p * (1 - eps) + (1 - p) * eps  # cDPO label smoothing on top of the soft label
        losses = -p * F.logsigmoid(z) - (1 - p) * F.logsigmoid(-z)
    elif loss_type == "ipo":
        losses = (h - (m + 0.5) / beta) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - z)
    elif loss_type == "robust":
        losses = ((1 - eps) * -F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; use bt, dpo, ipo, hinge or robust")
    if weight is not None:
        w = weight.float()
        loss = (losses * w).sum() / w.sum().clamp_min(1e-12)
    else:
        loss = losses.mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * ((s_chosen + s_rejected) ** 2).mean()
    r_c = (beta * lr_c).detach()
    r_r = (beta * lr_r).detach()
    metrics = {
        "rewards/chosen": r_c.mean(),
        "rewards/rejected": r_r.mean(),
        "rewards/margins": (r_c - r_r).mean(),
        "rewards/accuracies": (r_c > r_r).float().mean(),
    }
    return loss, metrics


def configured_loss(
    s_chosen: Tensor, s_rejected: Tensor, loss: LossConfig, *, with_prior: bool = True,
    **per_pair: Tensor,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``preference_loss`` with the run's ``LossConfig``: the one place the config's loss keys
    become the objective, for the train step, evaluation and the reference pass alike.

    ``with_prior=False`` for scores that already hold the full reward ``s + lambda * c``
    (evaluation scores them that way), so the temporal prior is not added twice.
    ``per_pair``: ``target``, ``margin``, ``weight``, ``ref_chosen``, ``ref_rejected``,
    ``chosen_c``, ``rejected_c`` as in ``preference_loss``.
    """
    return preference_loss(
        s_chosen, s_rejected, loss_type=loss.type, beta=loss.beta,
        label_smoothing=loss.label_smoothing,
        center_rewards_coefficient=loss.center_rewards_coefficient,
        temporal_weight=loss.temporal_weight if with_prior else 0.0, **per_pair,
    )
