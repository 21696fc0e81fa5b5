"""The DPO objective family's properties, soft labels, the evaluation maths and the gate.

Hand-computed: logsigmoid(2) = -0.126928, logsigmoid(-2) = -2.126928, log 2 = 0.693147.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from components.config import GateConfig, LossConfig
from components.evaluation.metrics import (
    evaluation_report,
    expected_calibration_error,
    tie_aware_accuracy,
)
from components.registry.gate import decide, paired_bootstrap
from components.training.losses import PairTerms, preference_loss

scores = st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=16)
betas = st.floats(0.01, 10.0)
TYPES = ("bt", "dpo", "ipo", "hinge")


def t(v):
    return torch.tensor(v, dtype=torch.float32)


def _pair(a, b):
    n = min(len(a), len(b))
    return t(a[:n]), t(b[:n])


@settings(max_examples=60, deadline=None)
@given(scores, scores, betas, st.floats(0.0, 1.0))
def test_swapping_chosen_and_rejected_with_the_flipped_label_mirrors_the_loss(a, b, beta, p):
    s_c, s_r = _pair(a, b)
    target = torch.full_like(s_c, p)
    for lt in ("bt", "dpo"):
        ref = {"ref_chosen": torch.zeros_like(s_c), "ref_rejected": torch.zeros_like(s_c)}
        l1, m1 = preference_loss(s_c, s_r, LossConfig(type=lt, beta=beta), PairTerms(target=target, **ref))
        l2, m2 = preference_loss(s_r, s_c, LossConfig(type=lt, beta=beta), PairTerms(target=1 - target, **ref))
        assert l1.item() == pytest.approx(l2.item(), rel=1e-4, abs=1e-3)
        assert m1["rewards/margins"].item() == pytest.approx(-m2["rewards/margins"].item(), rel=1e-4, abs=1e-2)


@settings(max_examples=60, deadline=None)
@given(scores, scores, betas, st.floats(-100, 100))
def test_adding_a_constant_to_every_score_changes_nothing(a, b, beta, c):
    s_c, s_r = _pair(a, b)
    s_c, s_r = s_c / 100, s_r / 100  # keep s + c exact enough in fp32
    for lt in TYPES:
        ref = {"ref_chosen": s_c * 0.5, "ref_rejected": s_r * 0.5} if lt == "dpo" else {}
        l1, _ = preference_loss(s_c, s_r, LossConfig(type=lt, beta=beta), PairTerms(**ref))
        l2, _ = preference_loss(s_c + c, s_r + c, LossConfig(type=lt, beta=beta), PairTerms(**ref))
        assert l1.item() == pytest.approx(l2.item(), rel=1e-3, abs=1e-3), lt


@settings(max_examples=40, deadline=None)
@given(scores, scores, betas)
def test_dpo_with_the_reference_equal_to_the_policy_is_log2(a, b, beta):
    s_c, s_r = _pair(a, b)
    loss, _ = preference_loss(s_c, s_r, LossConfig(type="dpo", beta=beta), PairTerms(ref_chosen=s_c, ref_rejected=s_r))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(scores, scores, betas)
def test_gradients_are_finite_for_scores_up_to_1e4(a, b, beta):
    for lt in (*TYPES, "robust"):
        s_c, s_r = _pair(a, b)
        s_c.requires_grad_()
        s_r.requires_grad_()
        kw = {"ref_chosen": torch.zeros_like(s_c), "ref_rejected": torch.zeros_like(s_c)} if lt == "dpo" else {}
        smooth = 0.1 if lt == "robust" else 0.0
        loss, _ = preference_loss(s_c, s_r, LossConfig(type=lt, beta=beta, label_smoothing=smooth),
                                  PairTerms(**kw))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s_c.grad).all() and torch.isfinite(s_r.grad).all(), lt


def test_soft_labels_ties_margins_and_weights_by_hand():
    # A tie (target 0.5), h = 2: -0.5 logsigmoid(2) - 0.5 logsigmoid(-2) = 0.5 * (0.126928 + 2.126928)
    loss, _ = preference_loss(t([2.0]), t([0.0]), pair=PairTerms(target=t([0.5])))
    assert loss.item() == pytest.approx(1.126928, abs=1e-5)
    # Soft label 0.7: 0.7 * 0.126928 + 0.3 * 2.126928 = 0.726928
    loss, _ = preference_loss(t([2.0]), t([0.0]), pair=PairTerms(target=t([0.7])))
    assert loss.item() == pytest.approx(0.726928, abs=1e-5)
    # Margin 2 on h = 2 leaves z = 0: log 2
    loss, _ = preference_loss(t([2.0]), t([0.0]), pair=PairTerms(margin=t([2.0])))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    # Weights: (3 * 0.126928 + 1 * log 2) / 4
    loss, _ = preference_loss(t([2.0, 0.0]), t([0.0, 0.0]), pair=PairTerms(weight=t([3.0, 1.0])))
    assert loss.item() == pytest.approx((3 * 0.126928 + math.log(2)) / 4, abs=1e-5)
    # DPO implicit rewards: beta * (s - s_ref) = 0.5 * (3 - 1) = 1 and 0.5 * (1 - 2) = -0.5
    loss, m = preference_loss(t([3.0]), t([1.0]), LossConfig(type="dpo", beta=0.5),
                              PairTerms(ref_chosen=t([1.0]), ref_rejected=t([2.0])))
    assert m["rewards/chosen"].item() == pytest.approx(1.0)
    assert m["rewards/rejected"].item() == pytest.approx(-0.5)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.5))), abs=1e-6)


def test_expected_calibration_error_by_hand():
    # beta = 1; deltas with sigmoid 0.8808 (log 7.39) : four pairs, 3 right (delta > 0), 1 wrong.
    d = np.array([2.0, 2.0, 2.0, -2.0])
    ece, table = expected_calibration_error(d, 1.0)
    # All in one bin: confidence 0.8808, accuracy of "p > 0.5" = 0.75 -> ECE = 0.1308
    assert ece == pytest.approx(abs(0.75 - 1 / (1 + math.exp(-2))), abs=1e-4)
    assert sum(b["n"] for b in table) == 4


def test_tie_aware_accuracy_rewards_predicting_ties():
    ids = [f"p{i}" for i in range(400)]
    rng = np.random.default_rng(0)
    is_tie = rng.random(400) < 0.3
    delta = np.where(is_tie, rng.normal(0, 0.05, 400), rng.uniform(0.5, 2.0, 400))
    r = tie_aware_accuracy(ids, delta, is_tie)
    assert r["tie_accuracy"] > 0.95  # a threshold between 0.05-ish and 0.5 separates them
    assert 0.0 < r["tie_threshold"] < 0.5


def test_evaluation_report_counts_ties_and_slices():
    df = pd.DataFrame({
        "pair_id": ["a", "b", "c", "d"],
        "s_chosen": [2.0, 1.0, 0.0, 3.0],
        "s_rejected": [1.0, 2.0, 0.0, 0.0],
        "target": [1.0, 1.0, 0.5, 1.0],
        "meta": ['{"src": "x"}', '{"src": "x"}', '{"src": "y"}', '{"src": "y"}'],
    })
    r = evaluation_report(df, LossConfig(), ["src"])
    m = r.metrics
    assert m["eval/accuracy"] == pytest.approx(2 / 3)  # the tie is not a strict pair
    assert m["eval/ties"] == 1.0 and "eval/tie_accuracy" in m
    assert m["eval/slice/src/x/accuracy"] == 0.5 and m["eval/slice/src/y/accuracy"] == 1.0


GATE = GateConfig(min_delta=0.02, confidence=0.95, bootstrap_samples=2000, min_accuracy=0.55)


def test_gate_promotes_a_better_challenger_and_not_a_worse_one():
    rng = np.random.default_rng(1)
    champ = (rng.random(400) < 0.7).astype(float)
    better = np.where(rng.random(400) < 0.5, 1.0, champ)  # strictly more right answers
    worse = np.where(rng.random(400) < 0.5, 0.0, champ)
    gate = GateConfig(min_accuracy=0.0)  # the bootstrap rule alone (the floor: next test)
    d = decide("2", better, "1", champ, gate)
    assert d.promote and d.difference > 0 and d.ci_low > -0.02
    d = decide("3", worse, "1", champ, gate)
    assert not d.promote and d.difference < 0
    assert "paired-bootstrap" in d.rule and d.pairs == 400
    same = decide("4", champ.copy(), "1", champ, gate)
    assert not same.promote  # equal is not better
    first = decide("1", champ, None, None, gate)
    assert first.promote and first.rule == "no champion yet"


def test_no_version_below_the_accuracy_floor_is_promoted_not_even_the_first():
    chance = np.array([1.0, 0.0] * 50)  # 0.5: what a model that learned nothing gets
    first = decide("1", chance, None, None, GATE)
    assert not first.promote and "gate.min_accuracy=0.55" in first.rule
    zero = decide("1", np.zeros(40), None, None, GATE)
    assert not zero.promote
    champ = np.zeros(100)
    assert not decide("2", chance, "1", champ, GATE).promote  # better, but still below


def test_paired_bootstrap_interval_contains_the_difference():
    a = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 1], float)
    b = np.array([1, 0, 1, 0, 1, 0, 0, 1, 0, 1], float)
    diff, lo, hi = paired_bootstrap(a, b, 2000, 0.95)
    assert diff == pytest.approx(0.3)
    assert lo <= diff <= hi and lo >= 0.0  # a never worse than b on any pair
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:5], 100, 0.95)
