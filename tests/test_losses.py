"""The preference objectives against hand-computed values.

softplus(-2) = log(1 + e^-2) = 0.126928;  log 2 = 0.693147;  softplus(1.5) = 1.701413;
logsigmoid(-2) = -2.126928.
"""

import math

import pytest
import torch

from components.config import LossConfig
from components.training.losses import PairTerms, preference_loss


def t(*v):
    return torch.tensor(v, dtype=torch.float32)


def test_bt_matches_hand_computed_values():
    loss, m = preference_loss(t(2.0), t(0.0), LossConfig(type="bt", beta=1.0))
    assert loss.item() == pytest.approx(0.126928, abs=1e-6)
    loss, _ = preference_loss(t(0.0), t(3.0), LossConfig(type="bt", beta=0.5))
    assert loss.item() == pytest.approx(1.701413, abs=1e-6)
    # mean over the batch: (0.126928 + log 2) / 2
    loss, m = preference_loss(t(2.0, 1.0), t(0.0, 1.0), LossConfig(type="bt", beta=1.0))
    assert loss.item() == pytest.approx((0.126928 + math.log(2)) / 2, abs=1e-6)
    assert m["rewards/chosen"].item() == pytest.approx(1.5)
    assert m["rewards/rejected"].item() == pytest.approx(0.5)
    assert m["rewards/margins"].item() == pytest.approx(1.0)
    assert m["rewards/accuracies"].item() == pytest.approx(0.5)  # the tie counts as wrong


def test_bt_is_the_seed_formula_where_that_is_finite():
    s_c, s_r, beta = t(0.3, -1.2, 4.0), t(0.1, 0.7, -2.0), 0.7
    seed = torch.log(1 + torch.exp(beta * (s_r - s_c))).mean()
    loss, _ = preference_loss(s_c, s_r, LossConfig(type="bt", beta=beta))
    assert loss.item() == pytest.approx(seed.item(), rel=1e-6)


@pytest.mark.parametrize("gap", [100.0, 1e4])
def test_large_gaps_give_finite_loss_and_gradients(gap):
    # The literal log(1 + exp(beta * (s_r - s_c))) is inf at a gap of ~100 in fp32.
    assert torch.isinf(torch.log(1 + torch.exp(t(gap)))).item()
    for loss_type in ("bt", "ipo", "hinge", "robust"):
        s_c = t(0.0).requires_grad_()
        s_r = t(gap).requires_grad_()
        loss, _ = preference_loss(s_c, s_r, LossConfig(type=loss_type, beta=1.0, label_smoothing=0.1
                                  if loss_type == "robust" else 0.0))
        loss.backward()
        assert torch.isfinite(loss), loss_type
        assert torch.isfinite(s_c.grad).all() and torch.isfinite(s_r.grad).all(), loss_type
    s_c = t(0.0).requires_grad_()
    loss, _ = preference_loss(s_c, t(gap), LossConfig(type="bt", beta=1.0))
    loss.backward()
    assert loss.item() == pytest.approx(gap, rel=1e-6)  # softplus(x) -> x
    assert s_c.grad.item() == pytest.approx(-1.0)  # d/ds_c = -sigmoid(beta * (s_r - s_c))


def test_other_objectives_match_hand_computed_values():
    # ipo: (h - 1/(2 beta))^2 with h = 2, beta = 1 -> 1.5^2 = 2.25
    assert preference_loss(t(2.0), t(0.0), LossConfig(type="ipo", beta=1.0))[0].item() == pytest.approx(2.25)
    # hinge: relu(1 - beta h): h = 0.25 -> 0.75; h = 2 -> 0
    assert preference_loss(t(0.25), t(0.0), LossConfig(type="hinge"))[0].item() == pytest.approx(0.75)
    assert preference_loss(t(2.0), t(0.0), LossConfig(type="hinge"))[0].item() == 0.0
    # robust, eps = 0.1, h = 2: (0.9 * 0.126928 + 0.1 * -2.126928) / 0.8 = -0.123072
    loss, _ = preference_loss(t(2.0), t(0.0), LossConfig(type="robust", label_smoothing=0.1))
    assert loss.item() == pytest.approx(-0.123072, abs=1e-5)
    # cDPO (bt with label smoothing 0.1), h = 2: 0.9 * 0.126928 + 0.1 * 2.126928 = 0.326928
    loss, _ = preference_loss(t(2.0), t(0.0), LossConfig(type="bt", label_smoothing=0.1))
    assert loss.item() == pytest.approx(0.326928, abs=1e-5)
    # center_rewards_coefficient 0.01 adds 0.01 * (2 + 0)^2 = 0.04
    loss, _ = preference_loss(t(2.0), t(0.0), LossConfig(center_rewards_coefficient=0.01))
    assert loss.item() == pytest.approx(0.166928, abs=1e-5)


def test_dpo_is_log2_when_policy_equals_reference():
    s_c, s_r = t(1.3, -0.2), t(0.4, 2.0)
    loss, m = preference_loss(s_c, s_r, LossConfig(type="dpo", beta=0.1), PairTerms(ref_chosen=s_c, ref_rejected=s_r))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert m["rewards/margins"].item() == 0.0
    with pytest.raises(ValueError, match="reference"):
        preference_loss(s_c, s_r, LossConfig(type="dpo"))


def test_swapping_chosen_and_rejected_mirrors_the_bt_loss():
    s_c, s_r = t(0.5, 2.0, -1.0), t(0.0, 2.5, 1.0)
    a, _ = preference_loss(s_c, s_r)
    b, _ = preference_loss(s_r, s_c)
    # softplus(-x) + softplus(x) = x + 2 softplus(-x); per pair: softplus(d) - softplus(-d) = d
    assert (b - a).item() == pytest.approx((s_c - s_r).mean().item(), abs=1e-6)


def test_unknown_loss_type_is_an_error():
    with pytest.raises(ValueError, match="unknown loss_type"):
        preference_loss(t(1.0), t(0.0), LossConfig(type="nope"))


def test_temporal_prior_shifts_the_reward_by_lambda_times_consistency():
    """lambda = 2, s_c = 0.5, s_r = 0.2, c_c = -0.1, c_r = -0.6, beta = 1:
    reward_c = 0.5 + 2 * -0.1 = 0.3, reward_r = 0.2 + 2 * -0.6 = -1.0, h = 1.3
    loss = softplus(-1.3) = log(1 + e^-1.3) = 0.241008   (lambda = 0: softplus(-0.3) = 0.554355)
    d loss / d s_c = -sigmoid(-1.3) = -0.214165, d loss / d s_r = +0.214165
    (lambda = 0: -sigmoid(-0.3) = -0.425557); c is data: no gradient flows into it."""
    c_c, c_r = t(-0.1), t(-0.6)
    for lam, want_loss, want_grad in ((2.0, 0.241008, 0.214165), (0.0, 0.554355, 0.425557)):
        s_c = t(0.5).requires_grad_()
        s_r = t(0.2).requires_grad_()
        loss, m = preference_loss(s_c, s_r, LossConfig(type="bt", temporal_weight=lam),
                                  PairTerms(chosen_c=c_c, rejected_c=c_r))
        loss.backward()
        assert loss.item() == pytest.approx(want_loss, abs=1e-6)
        assert s_c.grad.item() == pytest.approx(-want_grad, abs=1e-6)
        assert s_r.grad.item() == pytest.approx(want_grad, abs=1e-6)
    assert m["rewards/margins"].item() == pytest.approx(0.3)  # lambda = 0: the scorer's own gap
    # dpo: the prior adds to the policy side only, so h = 1.3 - (ref_c - ref_r) = 1.3 - 0.5
    loss, m = preference_loss(t(0.5), t(0.2), LossConfig(type="dpo", temporal_weight=2.0),
                              PairTerms(ref_chosen=t(0.5), ref_rejected=t(0.0), chosen_c=c_c,
                                        rejected_c=c_r))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.8)), abs=1e-6)
    assert m["rewards/margins"].item() == pytest.approx(0.8, abs=1e-6)
    with pytest.raises(ValueError, match="chosen_c/rejected_c"):
        preference_loss(t(0.5), t(0.2), LossConfig(temporal_weight=1.0))


def test_btt_is_rao_kupper_with_videoaligns_theta():
    """Rao-Kupper, theta = 5 (KwaiVGI/VideoAlign trainer.py, loss_type "btt": k = 5.0), with
    reward gap h: -log P(c wins) = log(1 + theta e^-h), -log P(r wins) = log(1 + theta e^h),
    -log P(tie) = both - log(theta^2 - 1).
    h = 0: win = log 6 = 1.791759, tie = log(36 / 24) = 0.405465;
    h = 2: win = log(1 + 5 e^-2) = 0.516814, loss = log(1 + 5 e^2) = 3.636145,
           tie = 0.516814 + 3.636145 - log 24 = 0.974905; soft label 0.7:
           0.7 * 0.516814 + 0.3 * 3.636145 = 1.452613."""
    loss, m = preference_loss(t(0.0, 2.0), t(0.0, 0.0), LossConfig(type="btt"), PairTerms(target=t(1.0, 1.0)))
    assert loss.item() == pytest.approx((1.791759 + 0.516814) / 2, abs=1e-6)
    loss, _ = preference_loss(t(0.0, 2.0), t(0.0, 0.0), LossConfig(type="btt"), PairTerms(target=t(0.5, 0.5)))
    assert loss.item() == pytest.approx((0.405465 + 0.974905) / 2, abs=1e-6)
    loss, _ = preference_loss(t(2.0), t(0.0), LossConfig(type="btt"), PairTerms(target=t(0.7)))
    assert loss.item() == pytest.approx(1.452613, abs=1e-6)
    assert m["tie_theta"].item() == 5.0  # logged with the loss (train/tie_theta)
    # the three outcomes' probabilities add up to 1 at any gap and theta
    for h, theta in ((0.0, 5.0), (2.0, 5.0), (-3.0, 1.5)):
        rk = LossConfig(type="btt", tie_theta=theta)
        probs = [math.exp(-preference_loss(t(h), t(0.0), rk, PairTerms(target=t(p)))[0].item())
                 for p in (1.0, 0.0, 0.5)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-6)


def test_btt_ties_pull_the_gap_to_zero_and_wins_push_it_up():
    h = t(0.3, -0.2).requires_grad_()
    loss, _ = preference_loss(h, t(0.0, 0.0), LossConfig(type="btt"), PairTerms(target=t(0.5, 0.5)))
    loss.backward()
    assert h.grad[0] > 0 > h.grad[1]  # descent moves each gap toward 0
    h = t(0.3).requires_grad_()
    preference_loss(h, t(0.0), LossConfig(type="btt"))[0].backward()
    assert h.grad.item() < 0


def test_uncertainty_matches_hand_computed_values():
    """HPSv3's loss: sigma_z = sqrt(sigma_c^2 + sigma_r^2), -E[logsigmoid(Z)],
    Z ~ N(beta * h, beta^2 sigma_z^2); expectations by scipy.integrate.quad:
    h = 0, log sigma = 0 (sigma_z = sqrt 2): 0.902662 (> log 2: the spread costs);
    h = 2, sigma_z = sqrt 2: 0.241174; h = 2, sigma = 0.5 each (sigma_z = sqrt 0.5): 0.154179;
    beta = 0.5, h = 2, sigma_z = sqrt 2 -> Z ~ N(1, 0.5): 0.361241;
    sigma -> 0 is Bradley-Terry: softplus(-2) = 0.126928."""
    zero, half = t(0.0), t(math.log(0.5))
    cases = [(0.0, zero, 1.0, 0.902662), (2.0, zero, 1.0, 0.241174), (2.0, half, 1.0, 0.154179),
             (2.0, zero, 0.5, 0.361241), (2.0, t(-30.0), 1.0, 0.126928)]
    for h, log_sigma, beta, want in cases:
        loss, m = preference_loss(t(h), t(0.0), LossConfig(type="uncertainty", beta=beta),
                                  PairTerms(log_sigma_chosen=log_sigma,
                                            log_sigma_rejected=log_sigma))
        assert loss.item() == pytest.approx(want, abs=1e-6), (h, log_sigma, beta)
    assert m["rewards/sigma"].item() == pytest.approx(math.sqrt(2) * math.exp(-30), rel=1e-4)
    with pytest.raises(ValueError, match="log_sigma_chosen"):
        preference_loss(t(1.0), t(0.0), LossConfig(type="uncertainty"))


def test_uncertainty_gradients_reach_mu_and_sigma_and_stay_finite():
    """d loss / d sigma > 0 everywhere (-logsigmoid is convex; Stein's lemma), so the loss
    narrows sigma; finite at score gaps of 1e4 and log sigma from -30 to 10."""
    for gap, log_sigma in ((0.5, 0.0), (-1.0, 1.0), (1e4, 0.0), (-1e4, 10.0), (3.0, -30.0)):
        s_c, s_r = t(gap).requires_grad_(), t(0.0).requires_grad_()
        ls_c, ls_r = t(log_sigma).requires_grad_(), t(log_sigma).requires_grad_()
        loss, _ = preference_loss(s_c, s_r, LossConfig(type="uncertainty"),
                                  PairTerms(log_sigma_chosen=ls_c, log_sigma_rejected=ls_r))
        loss.backward()
        grads = [s_c.grad, s_r.grad, ls_c.grad, ls_r.grad]
        assert torch.isfinite(loss) and all(torch.isfinite(g) for g in grads), (gap, log_sigma)
        # (at sigma ~ e^-30 the true gradient, ~1e-26, is below float32's rounding)
        assert s_c.grad.item() <= 0 and ls_c.grad.item() >= -1e-12, (gap, log_sigma)


def test_the_closed_form_expectation_is_exact_at_any_mean_and_spread():
    """Gauss-Hermite (std <= 2) and the split form (wider) against adaptive quadrature:
    under 1e-7 in float64 for |mean| <= 30, 0 <= std <= 100 (measured: 2.7e-8, at std 2, where
    the forms meet); float32 adds its own rounding (~4e-6 at values ~30)."""
    from scipy import integrate
    from scipy.special import log_expit

    from components.training.losses import expected_logsigmoid

    def exact(mu: float, s: float) -> float:
        if s == 0:
            return float(log_expit(mu))
        kink = [-mu / s] if abs(mu / s) < 40 else None
        density = 1 / math.sqrt(2 * math.pi)
        return density * integrate.quad(lambda x: log_expit(mu + s * x) * math.exp(-x * x / 2),
                                        -40, 40, points=kink, limit=500, epsabs=1e-13)[0]

    means = torch.linspace(-30, 30, 25, dtype=torch.float64)
    for s in (0.0, 0.3, 1.0, 1.99, 2.0, 2.01, 4.0, 10.0, 100.0):
        got = expected_logsigmoid(means, torch.full_like(means, s))
        want = torch.tensor([exact(m, s) for m in means.tolist()], dtype=torch.float64)
        assert (got - want).abs().max().item() < 1e-7, s


def test_monte_carlo_as_hpsv3_samples_it_agrees_with_the_closed_form():
    """2^20 draws (fixed seed) per (mean, std): the Monte-Carlo mean is within 4 standard
    errors of the closed form (measured: at most 1.8 SE, 1.9e-3 absolute). HPSv3's 1000 draws
    per pair scatter by 0.009 (std 0.3) to 0.18 (std 10) around it."""
    from components.training.losses import expected_logsigmoid, expected_logsigmoid_mc

    mean = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0, 4.0, 1.0], dtype=torch.float64)
    std = torch.tensor([0.3, 1.0, math.sqrt(2), 2.0, 3.0, 5.0, 10.0], dtype=torch.float64)
    n = 1 << 20
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(len(mean), n, generator=gen, dtype=torch.float64)
    draws = torch.nn.functional.logsigmoid(mean[:, None] + std[:, None] * eps)
    se = draws.std(-1) / math.sqrt(n)
    closed = expected_logsigmoid(mean, std)
    mc = expected_logsigmoid_mc(mean, std, samples=n, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mc, draws.mean(-1))  # the same draws: the estimator is that mean
    assert ((mc - closed).abs() < 4 * se).all(), ((mc - closed) / se)
