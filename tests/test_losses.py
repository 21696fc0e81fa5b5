"""The preference objectives against hand-computed values.

softplus(-2) = log(1 + e^-2) = 0.126928;  log 2 = 0.693147;  softplus(1.5) = 1.701413;
logsigmoid(-2) = -2.126928.
"""

import math

import pytest
import torch

from components.training.losses import preference_loss


def t(*v):
    return torch.tensor(v, dtype=torch.float32)


def test_bt_matches_hand_computed_values():
    loss, m = preference_loss(t(2.0), t(0.0), loss_type="bt", beta=1.0)
    assert loss.item() == pytest.approx(0.126928, abs=1e-6)
    loss, _ = preference_loss(t(0.0), t(3.0), loss_type="bt", beta=0.5)
    assert loss.item() == pytest.approx(1.701413, abs=1e-6)
    # mean over the batch: (0.126928 + log 2) / 2
    loss, m = preference_loss(t(2.0, 1.0), t(0.0, 1.0), loss_type="bt", beta=1.0)
    assert loss.item() == pytest.approx((0.126928 + math.log(2)) / 2, abs=1e-6)
    assert m["rewards/chosen"].item() == pytest.approx(1.5)
    assert m["rewards/rejected"].item() == pytest.approx(0.5)
    assert m["rewards/margins"].item() == pytest.approx(1.0)
    assert m["rewards/accuracies"].item() == pytest.approx(0.5)  # the tie counts as wrong


def test_bt_is_the_seed_formula_where_that_is_finite():
    s_c, s_r, beta = t(0.3, -1.2, 4.0), t(0.1, 0.7, -2.0), 0.7
    seed = torch.log(1 + torch.exp(beta * (s_r - s_c))).mean()
    loss, _ = preference_loss(s_c, s_r, loss_type="bt", beta=beta)
    assert loss.item() == pytest.approx(seed.item(), rel=1e-6)


@pytest.mark.parametrize("gap", [100.0, 1e4])
def test_large_gaps_give_finite_loss_and_gradients(gap):
    # The literal log(1 + exp(beta * (s_r - s_c))) is inf at a gap of ~100 in fp32.
    assert torch.isinf(torch.log(1 + torch.exp(t(gap)))).item()
    for loss_type in ("bt", "ipo", "hinge", "robust"):
        s_c = t(0.0).requires_grad_()
        s_r = t(gap).requires_grad_()
        loss, _ = preference_loss(s_c, s_r, loss_type=loss_type, beta=1.0, label_smoothing=0.1
                                  if loss_type == "robust" else 0.0)
        loss.backward()
        assert torch.isfinite(loss), loss_type
        assert torch.isfinite(s_c.grad).all() and torch.isfinite(s_r.grad).all(), loss_type
    s_c = t(0.0).requires_grad_()
    loss, _ = preference_loss(s_c, t(gap), loss_type="bt", beta=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(gap, rel=1e-6)  # softplus(x) -> x
    assert s_c.grad.item() == pytest.approx(-1.0)  # d/ds_c = -sigmoid(beta * (s_r - s_c))


def test_other_objectives_match_hand_computed_values():
    # ipo: (h - 1/(2 beta))^2 with h = 2, beta = 1 -> 1.5^2 = 2.25
    assert preference_loss(t(2.0), t(0.0), loss_type="ipo", beta=1.0)[0].item() == pytest.approx(2.25)
    # hinge: relu(1 - beta h): h = 0.25 -> 0.75; h = 2 -> 0
    assert preference_loss(t(0.25), t(0.0), loss_type="hinge")[0].item() == pytest.approx(0.75)
    assert preference_loss(t(2.0), t(0.0), loss_type="hinge")[0].item() == 0.0
    # robust, eps = 0.1, h = 2: (0.9 * 0.126928 + 0.1 * -2.126928) / 0.8 = -0.123072
    loss, _ = preference_loss(t(2.0), t(0.0), loss_type="robust", label_smoothing=0.1)
    assert loss.item() == pytest.approx(-0.123072, abs=1e-5)
    # cDPO (bt with label smoothing 0.1), h = 2: 0.9 * 0.126928 + 0.1 * 2.126928 = 0.326928
    loss, _ = preference_loss(t(2.0), t(0.0), loss_type="bt", label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.326928, abs=1e-5)
    # center_rewards_coefficient 0.01 adds 0.01 * (2 + 0)^2 = 0.04
    loss, _ = preference_loss(t(2.0), t(0.0), center_rewards_coefficient=0.01)
    assert loss.item() == pytest.approx(0.166928, abs=1e-5)


def test_dpo_is_log2_when_policy_equals_reference():
    s_c, s_r = t(1.3, -0.2), t(0.4, 2.0)
    loss, m = preference_loss(s_c, s_r, loss_type="dpo", beta=0.1, ref_chosen=s_c, ref_rejected=s_r)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert m["rewards/margins"].item() == 0.0
    with pytest.raises(ValueError, match="reference"):
        preference_loss(s_c, s_r, loss_type="dpo")


def test_swapping_chosen_and_rejected_mirrors_the_bt_loss():
    s_c, s_r = t(0.5, 2.0, -1.0), t(0.0, 2.5, 1.0)
    a, _ = preference_loss(s_c, s_r)
    b, _ = preference_loss(s_r, s_c)
    # softplus(-x) + softplus(x) = x + 2 softplus(-x); per pair: softplus(d) - softplus(-d) = d
    assert (b - a).item() == pytest.approx((s_c - s_r).mean().item(), abs=1e-6)


def test_unknown_loss_type_is_an_error():
    with pytest.raises(ValueError, match="unknown loss_type"):
        preference_loss(t(1.0), t(0.0), loss_type="nope")


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
        loss, m = preference_loss(s_c, s_r, loss_type="bt", temporal_weight=lam,
                                  chosen_c=c_c, rejected_c=c_r)
        loss.backward()
        assert loss.item() == pytest.approx(want_loss, abs=1e-6)
        assert s_c.grad.item() == pytest.approx(-want_grad, abs=1e-6)
        assert s_r.grad.item() == pytest.approx(want_grad, abs=1e-6)
    assert m["rewards/margins"].item() == pytest.approx(0.3)  # lambda = 0: the scorer's own gap
    # dpo: the prior adds to the policy side only, so h = 1.3 - (ref_c - ref_r) = 1.3 - 0.5
    loss, m = preference_loss(t(0.5), t(0.2), loss_type="dpo", ref_chosen=t(0.5),
                              ref_rejected=t(0.0), temporal_weight=2.0, chosen_c=c_c, rejected_c=c_r)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.8)), abs=1e-6)
    assert m["rewards/margins"].item() == pytest.approx(0.8, abs=1e-6)
    with pytest.raises(ValueError, match="chosen_c/rejected_c"):
        preference_loss(t(0.5), t(0.2), temporal_weight=1.0)
