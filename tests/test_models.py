"""Scorers and the plain-PyTorch train step, without Ray."""

import numpy as np
import pytest
import torch

from components.models import SCORERS, build_scorer
from components.sample_data import degrade, load_photo
from components.train_step import StepSettings, eval_scores, train_step


@pytest.mark.parametrize("name", sorted(SCORERS))
@pytest.mark.parametrize("size", [32, 48, 80])
def test_scorers_are_resolution_agnostic(name, size):
    model = build_scorer(name).eval()
    x = torch.randint(0, 255, (2, 3, size, size), dtype=torch.uint8)
    s_c, s_r = eval_scores(model, x, x, torch.device("cpu"))
    assert s_c.shape == (2,) and s_r.shape == (2,)
    assert torch.allclose(s_c, s_r)  # eval mode: same input, same score


def _pairs(n, size, seed):
    """Clean crops of a real photo vs. the same crops with noise, as uint8 (N, 3, S, S)."""
    rng = np.random.default_rng(seed)
    photo = np.asarray(load_photo("astronaut.png"))
    chosen, rejected = [], []
    from PIL import Image

    for _ in range(n):
        y, x = rng.integers(0, photo.shape[0] - size, 2)
        crop = Image.fromarray(photo[y : y + size, x : x + size])
        chosen.append(np.asarray(crop).transpose(2, 0, 1))
        rejected.append(np.asarray(degrade(crop, "noise", rng)).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(chosen)), torch.from_numpy(np.stack(rejected))


def test_train_step_learns_a_preference():
    torch.manual_seed(0)
    model = build_scorer("bn-cnn")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    c, r = _pairs(64, 32, seed=0)
    tc, tr = _pairs(64, 32, seed=1)  # held-out crops
    dev = torch.device("cpu")
    first = None
    for _ in range(30):
        m = train_step(model, opt, c, r, StepSettings(), dev)
        first = first if first is not None else m["loss"].item()
    assert m["loss"].item() < 0.5 * first
    s_c, s_r = eval_scores(model, tc, tr, dev)
    assert (s_c > s_r).float().mean().item() > 0.9
