"""Reward heads (``model.head``): the output layer, the train step with the field's objectives,
evaluation and serving of a ``mu_sigma`` (HPSv3) and a ``named`` (VideoAlign) head, without
Ray. The objectives' maths: tests/test_losses.py; through the CLI: test_head_workflow.py."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from components.config import LossConfig
from components.evaluation.metrics import evaluation_report, uncertain_preference
from components.media.spec import MediaSpec
from components.registry.pyfunc import ScorerModel
from components.registry.scorer_files import TrainedScorer, read_scorer, write_scorer
from components.training.models import (
    PROMPT_SCORERS,
    SCORE,
    SCORERS,
    VIDEO_SCORERS,
    RewardHead,
    build_scorer,
    model_options,
    takes_head,
)
from components.training.step import eval_rewards, eval_scores, train_step
from tests.media_bytes import photo_bytes
from tests.test_models import _pairs

CPU = torch.device("cpu")
MU_SIGMA = RewardHead("mu_sigma")
NAMED = RewardHead("named", ("vq", "mq", "ta"), (1.0, 0.5, 2.0))
# mc3_18 and r2plus1d_18 are r3d_18's code path (torchvision's fc), at seconds per build.
# vlm and vlm-video need a checkpoint directory: their heads are tested on tiny checkpoints
# in tests/test_vlm.py and tests/test_vlm_parity.py (HPSv3's mu_sigma, VideoAlign's named).
HEADED = sorted(n for n in [*SCORERS, *VIDEO_SCORERS]
                if takes_head(n) and n not in ("mc3_18", "r2plus1d_18", "vlm", "vlm-video"))


def _inputs(name: str, n: int = 3):
    shape = (n, 3, 4, 24, 24) if name in VIDEO_SCORERS else (n, 3, 24, 24)
    x = torch.randint(0, 255, shape, dtype=torch.uint8)
    tokens = torch.randint(1, 100, (n, 8)) if name in PROMPT_SCORERS else None
    return x, tokens


@pytest.mark.parametrize("name", HEADED)
def test_every_scorer_with_an_output_layer_takes_each_head(name):
    """The last Linear gets width 1, 2 or K; forward is the score (N,) whatever the head; the
    options survive JSON (what scorer.json stores) and rebuild the same architecture."""
    x, tokens = _inputs(name)
    args = (x.float(),) if tokens is None else (x.float(), tokens)
    assert "head" not in model_options(name, "")  # a score head: options as before heads
    for head in (SCORE, MU_SIGMA, NAMED):
        options = json.loads(json.dumps(model_options(name, "", head)))
        model = build_scorer(name, options).eval()
        with torch.no_grad():
            out, score = model(*args, outputs=True), model(*args)
        assert out.shape == (3, head.width) and score.shape == (3,)
        assert torch.allclose(score, head.score(out), atol=1e-6)
        if head != SCORE:
            build_scorer(name, options).load_state_dict(model.state_dict())  # same shapes


def test_the_weighted_total_and_mu_are_what_eval_scores_read():
    torch.manual_seed(0)
    c, r = _pairs(6, 32, seed=0)
    for head in (MU_SIGMA, NAMED):
        model = build_scorer("bn-cnn", model_options("bn-cnn", "", head))
        (r_c, r_r), (s_c, s_r) = eval_rewards(model, c, r, CPU), eval_scores(model, c, r, CPU)
        assert torch.equal(r_c.score, s_c) and torch.equal(r_r.score, s_r)
    assert torch.allclose(r_c.score, r_c.heads @ torch.tensor([1.0, 0.5, 2.0]), atol=1e-6)
    assert r_c.names == ("vq", "mq", "ta") and r_c.log_sigma is None


def test_mu_sigma_with_uncertainty_learns_and_narrows_sigma():
    """Clean crops vs. noisy ones: mu learns the preference on held-out crops, and sigma
    shrinks (the loss rises with sigma everywhere: tests/test_losses.py)."""
    torch.manual_seed(0)
    model = build_scorer("bn-cnn", model_options("bn-cnn", "", MU_SIGMA))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    c, r = _pairs(32, 32, seed=0)
    loss = LossConfig(type="uncertainty")
    sigma0 = eval_rewards(model, c, r, CPU)[0].log_sigma.exp().mean().item()
    first = None
    for _ in range(20):
        m = train_step(model, opt, c, r, loss, CPU)
        first = first if first is not None else m["loss"].item()
    assert m["loss"].item() < 0.5 * first and m["rewards/sigma"].item() > 0
    tc, tr = _pairs(64, 32, seed=1)
    r_c, r_r = eval_rewards(model, tc, tr, CPU)
    assert (r_c.score > r_r.score).float().mean().item() > 0.9
    assert r_c.log_sigma.exp().mean().item() < 0.5 * sigma0  # measured: 0.97 -> 0.04


def test_named_heads_learn_each_on_its_own_with_ties_under_btt():
    """VideoAlign trains each head on its own label (the [B, 3] loss, averaged); here every
    head gets the pair's label: a tie (target 0.5) for the same crop on both sides."""
    torch.manual_seed(0)
    model = build_scorer("bn-cnn", model_options("bn-cnn", "", NAMED))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    c, r = _pairs(32, 32, seed=0)
    c, r = torch.cat([c, c[:8]]), torch.cat([r, c[:8]])  # 8 ties: the same crop twice
    target = torch.cat([torch.ones(32), torch.full((8,), 0.5)])
    loss = LossConfig(type="btt")
    first = None
    for _ in range(20):
        m = train_step(model, opt, c, r, loss, CPU, {"target": target})
        first = first if first is not None else m["loss"].item()
    assert m["loss"].item() < 0.2 * first  # a tie's floor: -log P(tie | h = 0) = log 1.5
    assert m["tie_theta"].item() == 5.0
    assert {"head/vq/accuracy", "head/mq/accuracy", "head/ta/accuracy"} <= set(m)
    tc, tr = _pairs(64, 32, seed=1)
    r_c, r_r = eval_rewards(model, tc, tr, CPU)
    assert ((r_c.heads > r_r.heads).float().mean(0) > 0.9).all()
    assert (r_c.score > r_r.score).float().mean().item() > 0.9


def test_eval_reports_uncertainty_calibration_and_per_head_accuracy():
    """Hand-computed: 4 pairs, delta = s_c - s_r = [2, 1, -1, 0.5], log sigma 0 on both
    sides (sigma_z = sqrt 2), beta = 1: p = sigmoid(delta / sqrt(1 + pi * 2 / 8))
    = sigmoid(delta / 1.336376) = [0.8171, 0.6788, 0.3212, 0.5925]; folded confidence
    [0.8171, 0.6788, 0.6788, 0.5925], correct [1, 1, 0, 1]; bins of width 0.05 from 0.5:
    ECE = 1/4 |1 - 0.8171| + 2/4 |0.5 - 0.6788| + 1/4 |1 - 0.5925| = 0.2370."""
    df = pd.DataFrame({"pair_id": list("abcd"), "target": [1.0] * 4,
                       "s_chosen": [2.0, 1.0, -1.0, 0.5], "s_rejected": [0.0] * 4,
                       "chosen_log_sigma": [0.0] * 4, "rejected_log_sigma": [0.0] * 4})
    rep = evaluation_report(df, LossConfig(type="uncertainty"))
    p = uncertain_preference(np.array([2, 1, -1, 0.5]), np.full(4, math.sqrt(2)), 1.0)
    assert p == pytest.approx([0.8171, 0.6788, 0.3212, 0.5925], abs=1e-4)
    assert rep.metrics["eval/uncertainty/ece"] == pytest.approx(0.2370, abs=1e-4)
    assert rep.metrics["eval/uncertainty/sigma"] == pytest.approx(math.sqrt(2))
    assert sum(row["n"] for row in rep.uncertainty_reliability) == 4
    assert rep.metrics["eval/accuracy"] == 0.75

    named = pd.DataFrame({"pair_id": list("abc"), "target": [1.0, 1.0, 0.5],
                          "s_chosen": [3.0, 1.0, 0.0], "s_rejected": [0.0, 2.0, 0.0],
                          "chosen_head_vq": [1.0, 1.0, 0.0], "rejected_head_vq": [0.0, 0.0, 0.0],
                          "chosen_head_ta": [1.0, 0.0, 0.0], "rejected_head_ta": [0.0, 1.0, 0.0]})
    rep = evaluation_report(named, LossConfig(type="btt"))
    assert rep.metrics["eval/accuracy"] == 0.5  # the total, on the two non-tie pairs
    assert rep.metrics["eval/head/vq/accuracy"] == 1.0
    assert rep.metrics["eval/head/ta/accuracy"] == 0.5
    assert "eval/uncertainty/ece" not in rep.metrics


def test_the_probit_probability_is_within_002_of_the_expectation():
    from scipy import integrate
    from scipy.special import expit

    worst = 0.0
    for m in np.linspace(-8, 8, 33):
        for s in (0.1, 1.0, 2.0, 5.0, 15.0):
            exact = integrate.quad(lambda x, m=m, s=s: expit(m + s * x) * math.exp(-x * x / 2),
                                   -40, 40, points=[-m / s], limit=200)[0] / math.sqrt(2 * math.pi)
            worst = max(worst, abs(exact - uncertain_preference(np.array(m), np.array(s), 1.0)))
    assert worst < 0.02


def _served(tmp_path, head: RewardHead) -> ScorerModel:
    torch.manual_seed(0)
    options = model_options("bn-cnn", "", head)
    scorer = TrainedScorer("bn-cnn", build_scorer("bn-cnn", options).state_dict(),
                           MediaSpec("image", 32, 40_000_000), options=options)
    write_scorer(str(tmp_path / head.kind), scorer)
    model = ScorerModel()
    model.load(read_scorer(str(tmp_path / head.kind)))  # what load_context does once verified
    return model


def test_serving_answers_the_score_and_for_named_heads_a_column_each(tmp_path):
    images = pd.DataFrame({"image": [photo_bytes(40, "PNG", seed=i) for i in range(3)]})
    mu = _served(tmp_path, MU_SIGMA).predict(None, images)
    assert isinstance(mu, np.ndarray) and mu.shape == (3,)  # the score contract: mu
    table = _served(tmp_path, NAMED).predict(None, images)
    assert list(table.columns) == ["score", "vq", "mq", "ta"] and len(table) == 3
    total = table["vq"] + 0.5 * table["mq"] + 2.0 * table["ta"]
    np.testing.assert_allclose(table["score"], total, rtol=1e-5, atol=1e-6)
