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
    btt      : Bradley-Terry with ties, Rao-Kupper (1967) with a fixed theta > 1:
               P(c > r) = sigmoid(beta h - log theta), P(r > c) = sigmoid(-beta h - log theta),
               P(tie) = (theta^2 - 1) P(c > r) P(r > c); the loss is -log P of what the raters
               said, a tie being target = 0.5 (KwaiVGI/VideoAlign trainer.py, theta = k = 5)
    uncertainty : -E[logsigmoid(Z)], Z ~ N(beta h, (beta sigma_z)^2), with
               sigma_z = sqrt(sigma_c^2 + sigma_r^2) from a (mu, log sigma) head; s is mu
               (MizzenAI/HPSv3 hpsv3/model/qwen2vl_trainer.py samples Z; here a closed form,
               ``expected_logsigmoid``)

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

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import LossConfig
from .models import Rewards

GAUSS_NODES = 32
"""Quadrature nodes of ``expected_logsigmoid``: absolute error < 1e-7 at any mean and std
(float64)."""
WIDE = 2.0
"""Above this std ``expected_logsigmoid`` switches from Gauss-Hermite to the split form."""


@dataclass(frozen=True)
class PairTerms:
    """What a batch carries per pair besides the two scores; each ``(N,)``, each optional.

    ``ref_chosen``/``ref_rejected``: the frozen reference's scores (``dpo`` needs them).
    ``target``: the probability that ``chosen`` is preferred (1 = a hard label, 0.5 = a tie,
    0.7 = 7 of 10 raters). ``margin``: shifts the logit. ``weight``: weighs the pair in the
    mean. ``chosen_c``/``rejected_c``: the clips' temporal consistency (with
    ``loss.temporal_weight``). ``log_sigma_chosen``/``log_sigma_rejected``: each item's log
    standard deviation (``uncertainty``, from a ``mu_sigma`` head)."""

    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    target: Tensor | None = None
    margin: Tensor | None = None
    weight: Tensor | None = None
    chosen_c: Tensor | None = None
    rejected_c: Tensor | None = None
    log_sigma_chosen: Tensor | None = None
    log_sigma_rejected: Tensor | None = None


def preference_loss(
    s_chosen: Tensor, s_rejected: Tensor, loss: LossConfig | None = None,
    pair: PairTerms | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted mean loss over a batch of pairs, and TRL-named metrics (detached).

    ``loss``: the objective and its settings (``type``, ``beta``, ``label_smoothing``,
    ``center_rewards_coefficient``, ``temporal_weight``, ``tie_theta``; ``LossConfig()``'s
    defaults when None). ``pair``: the per-pair tensors (``PairTerms``).

    Shapes: every tensor is ``(N,)``. The logistic losses (bt, dpo) use ``target`` as a soft
    label: ``-p logsigmoid(z) - (1 - p) logsigmoid(-z)``.
    ``margin`` shifts the logit, ``z = beta * h - margin`` (TRL's reward-model margin; for ipo
    the target gap becomes ``(margin + 1/2) / beta``). ``weight`` weighs pairs in the mean.

    ``uncertainty`` (HPSv3) reads ``log_sigma_chosen``/``log_sigma_rejected``, each item's log
    standard deviation, and takes the soft-label loss in expectation over
    ``Z ~ N(z, (beta sigma_z)^2)``; ``btt`` (VideoAlign) takes pairs with ``target == 0.5`` as
    ties, the others with ``target`` as a soft label over who won, and Rao-Kupper's
    ``tie_theta``.

    Returns ``(loss, metrics)`` where metrics holds ``rewards/chosen``, ``rewards/rejected``,
    ``rewards/margins`` (means of the implicit rewards ``beta * (s - s_ref)``) and
    ``rewards/accuracies`` (share of pairs with a strictly higher chosen reward; a tie
    counts as wrong); ``uncertainty`` adds ``rewards/sigma`` (mean ``beta * sigma_z``), ``btt``
    ``tie_theta``.
    """
    cfg = loss if loss is not None else LossConfig()
    t = pair if pair is not None else PairTerms()
    beta = cfg.beta
    s_chosen = s_chosen.float()
    s_rejected = s_rejected.float()
    if cfg.temporal_weight:
        if t.chosen_c is None or t.rejected_c is None:
            raise ValueError("temporal_weight != 0 needs chosen_c/rejected_c (video consistency)")
        s_chosen = s_chosen + cfg.temporal_weight * t.chosen_c.float()
        s_rejected = s_rejected + cfg.temporal_weight * t.rejected_c.float()
    if cfg.type == "dpo" and (t.ref_chosen is None or t.ref_rejected is None):
        raise ValueError("loss type 'dpo' needs reference scores ref_chosen/ref_rejected")
    lr_c = s_chosen - (t.ref_chosen.float() if t.ref_chosen is not None else 0.0)
    lr_r = s_rejected - (t.ref_rejected.float() if t.ref_rejected is not None else 0.0)
    h = lr_c - lr_r
    m = t.margin.float() if t.margin is not None else torch.zeros_like(h)
    eps = cfg.label_smoothing
    p = t.target.float() if t.target is not None else torch.ones_like(h)
    p = p * (1 - eps) + (1 - p) * eps  # cDPO label smoothing on top of the soft label
    sigmas = None if t.log_sigma_chosen is None or t.log_sigma_rejected is None else (
        t.log_sigma_chosen, t.log_sigma_rejected)
    losses, extra = _pair_losses(cfg.type, h, beta * h - m, m, p, beta, eps, t.target, sigmas,
                                 cfg.tie_theta)
    if t.weight is not None:
        w = t.weight.float()
        value = (losses * w).sum() / w.sum().clamp_min(1e-12)
    else:
        value = losses.mean()
    if cfg.center_rewards_coefficient:
        value = value + cfg.center_rewards_coefficient * ((s_chosen + s_rejected) ** 2).mean()
    r_c = (beta * lr_c).detach()
    r_r = (beta * lr_r).detach()
    metrics = {
        "rewards/chosen": r_c.mean(),
        "rewards/rejected": r_r.mean(),
        "rewards/margins": (r_c - r_r).mean(),
        "rewards/accuracies": (r_c > r_r).float().mean(),
        **extra,
    }
    return value, metrics


def _pair_losses(loss_type: str, h: Tensor, z: Tensor, m: Tensor, p: Tensor, beta: float,
                 eps: float, target: Tensor | None, log_sigmas: tuple[Tensor, Tensor] | None,
                 tie_theta: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Each pair's loss under ``loss_type`` (the formulas in the module docstring), from the
    log-ratio difference ``h``, the logit ``z = beta h - margin``, the margin ``m`` and the
    smoothed soft label ``p``; and the objective's own metrics."""
    extra: dict[str, Tensor] = {}
    if loss_type in ("bt", "dpo"):
        losses = -p * F.logsigmoid(z) - (1 - p) * F.logsigmoid(-z)
    elif loss_type == "uncertainty":
        if log_sigmas is None:
            raise ValueError("loss_type='uncertainty' needs log_sigma_chosen/log_sigma_rejected "
                             "(a scorer with a mu_sigma head)")
        # sigma_z = sqrt(sigma_c^2 + sigma_r^2) from the logs: no overflow, no sqrt(0)
        sigma_z = torch.exp(0.5 * torch.logaddexp(2 * log_sigmas[0].float(),
                                                  2 * log_sigmas[1].float()))
        std = beta * sigma_z
        losses = -p * expected_logsigmoid(z, std) - (1 - p) * expected_logsigmoid(-z, std)
        extra["rewards/sigma"] = std.detach().mean()
    elif loss_type == "btt":
        log_theta = math.log(tie_theta)
        won = -F.logsigmoid(z - log_theta)  # -log P(chosen preferred)
        lost = -F.logsigmoid(-z - log_theta)  # -log P(rejected preferred)
        tied = won + lost - math.log(tie_theta**2 - 1)  # -log P(tie)
        tie = target.float() == 0.5 if target is not None else torch.zeros_like(h, dtype=torch.bool)
        losses = torch.where(tie, tied, p * won + (1 - p) * lost)
        extra["tie_theta"] = torch.tensor(float(tie_theta), device=h.device)
    elif loss_type == "ipo":
        losses = (h - (m + 0.5) / beta) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - z)
    elif loss_type == "robust":
        losses = ((1 - eps) * -F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; use bt, dpo, ipo, hinge, robust, btt "
                         "or uncertainty")
    return losses, extra


@functools.cache
def _quadrature(nodes: int) -> tuple[np.ndarray, ...]:
    """Gauss-Hermite nodes and weights for E[f(Z)], Z ~ N(0, 1): ``sum w f(x)``; Gauss-Laguerre
    nodes with the weights times ``e^x log1p(e^-x)`` (float64 here: e^x overflows fp32)."""
    x, w = np.polynomial.hermite.hermgauss(nodes)
    xl, wl = np.polynomial.laguerre.laggauss(nodes)
    return x * math.sqrt(2), w / math.sqrt(math.pi), xl, wl * np.exp(xl) * np.log1p(np.exp(-xl))


def expected_logsigmoid(mean: Tensor, std: Tensor, nodes: int = GAUSS_NODES) -> Tensor:
    """``E[logsigmoid(Z)]``, ``Z ~ N(mean, std^2)``, elementwise and differentiable in both:
    the closed form of HPSv3's Monte-Carlo estimate (``expected_logsigmoid_mc``).

    For ``std <= 2``: Gauss-Hermite quadrature of logsigmoid itself. Wider Gaussians see the
    bend of logsigmoid at 0 as a kink, where Gauss-Hermite converges slowly (32 nodes: 1e-2
    off at std 10), so there ``logsigmoid(z) = min(z, 0) - log1p(e^-|z|)``:
    ``E[min(Z, 0)] = mean Phi(-mean/std) - std phi(mean/std)`` exactly, and the bump
    ``log1p(e^-|z|)`` (width ~1, integral pi^2/6) by Gauss-Laguerre over ``z >= 0`` against
    the folded density ``n(z) + n(-z)``. Either way the absolute error is under 1e-7 in
    float64 (2.7e-8 at worst, at std 2, against adaptive quadrature for |mean| <= 30,
    0 <= std <= 100: tests/test_losses.py); float32 adds its own rounding.
    """
    x, w, xl, cl = (torch.as_tensor(a, dtype=mean.dtype, device=mean.device)
                    for a in _quadrature(nodes))
    m, s = mean[..., None], std[..., None]
    narrow = (F.logsigmoid(m + s * x) * w).sum(-1)
    sw = torch.where(std > WIDE, std, torch.full_like(std, WIDE))[..., None]  # finite either way
    a = m / sw
    e_min = m * torch.special.ndtr(-a) - sw * torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    folded = (torch.exp(-0.5 * ((xl - m) / sw) ** 2) + torch.exp(-0.5 * ((xl + m) / sw) ** 2))
    bump = (cl * folded).sum(-1, keepdim=True) / (sw * math.sqrt(2 * math.pi))
    return torch.where(std > WIDE, (e_min - bump)[..., 0], narrow)


def expected_logsigmoid_mc(mean: Tensor, std: Tensor, samples: int = 1000,
                           generator: torch.Generator | None = None) -> Tensor:
    """HPSv3's estimate of ``E[logsigmoid(Z)]``: the mean over ``samples`` draws
    ``z = mean + std * eps``, ``eps ~ N(0, 1)`` (reparameterised, so it has gradients).

    MizzenAI/HPSv3 ``hpsv3/model/qwen2vl_trainer.py`` (``VLMRewardTrainer.compute_loss``,
    ``loss_type == "uncertainty"``; commit d232ff8): ``sigma = exp(logits[:, 1])`` unclamped,
    1000 fp16 draws per pair, ``-logsigmoid(z_samples).mean()``. Training here uses the
    closed form instead: the same objective without sampling noise in the gradients, runs
    that repeat bit for bit, and 32 evaluations per pair instead of 1000; this one is kept to
    check it (tests/test_losses.py).
    """
    eps = torch.randn((*mean.shape, samples), generator=generator, dtype=mean.dtype,
                      device=mean.device)
    return F.logsigmoid(mean[..., None] + std[..., None] * eps).mean(-1)


def configured_loss(
    chosen: Rewards | Tensor, rejected: Rewards | Tensor, loss: LossConfig, *,
    with_prior: bool = True, **per_pair: Tensor,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``preference_loss`` with the run's ``LossConfig``: the one place the config's loss keys
    become the objective, for the train step, evaluation and the reference pass alike.

    ``chosen``/``rejected``: the scores ``(N,)``, or a scorer's ``Rewards``. ``uncertainty``
    reads their ``log_sigma``. ``named`` heads are each trained as a scorer of its own and the
    loss is their mean, as VideoAlign trains its VQ/MQ/TA heads (KwaiVGI/VideoAlign
    ``trainer.py`` ``compute_loss``: the loss of the ``[B, 3]`` rewards, averaged); VideoAlign
    has a label per head, this data one per pair, which every head gets. The metrics are those
    of the score (the weighted total), plus ``head/<name>/accuracy``.

    ``with_prior=False`` for scores that already hold the full reward ``s + lambda * c``
    (evaluation scores them that way), so the temporal prior is not added twice.
    ``per_pair``: ``target``, ``margin``, ``weight``, ``ref_chosen``, ``ref_rejected``,
    ``chosen_c``, ``rejected_c``: the fields of ``PairTerms``.
    """
    c = chosen if isinstance(chosen, Rewards) else Rewards(chosen)
    r = rejected if isinstance(rejected, Rewards) else Rewards(rejected)
    settings = loss if with_prior else replace(loss, temporal_weight=0.0)
    if c.log_sigma is not None and r.log_sigma is not None:
        per_pair = {**per_pair, "log_sigma_chosen": c.log_sigma,
                    "log_sigma_rejected": r.log_sigma}
    terms = PairTerms(**per_pair)
    value, metrics = preference_loss(c.score, r.score, settings, terms)
    if c.heads is None or r.heads is None:
        return value, metrics
    per_head = [preference_loss(c.heads[:, k], r.heads[:, k], settings, terms)
                for k in range(c.heads.shape[1])]
    for name, (_, m) in zip(c.names, per_head, strict=True):
        metrics[f"head/{name}/accuracy"] = m["rewards/accuracies"]
    return torch.stack([v for v, _ in per_head]).mean(), metrics
