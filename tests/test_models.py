"""Scorers and the plain-PyTorch train step, without Ray."""

import numpy as np
import pytest
import torch

from components.config import LossConfig
from components.sample.images import degrade, load_photo
from components.training.models import PROMPT_SCORERS, SCORERS, VIDEO_SCORERS, build_scorer
from components.training.step import eval_scores, train_step

# Prompt-conditioned scorers take (image, prompt): tests/test_prompt_scorers.py, test_clip.py.
IMAGE_ONLY = sorted(set(SCORERS) - set(PROMPT_SCORERS))
VIDEO_ONLY = sorted(set(VIDEO_SCORERS) - set(PROMPT_SCORERS))


@pytest.mark.parametrize("name", IMAGE_ONLY)
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
        m = train_step(model, opt, c, r, LossConfig(), dev)
        first = first if first is not None else m["loss"].item()
    assert m["loss"].item() < 0.5 * first
    s_c, s_r = eval_scores(model, tc, tr, dev)
    assert (s_c > s_r).float().mean().item() > 0.9


@pytest.mark.parametrize("name", VIDEO_ONLY)
@pytest.mark.parametrize("shape", [(4, 32, 32), (8, 48, 40)])
def test_video_scorers_take_any_length_and_size(name, shape):
    """(N, 3, T, H, W) uint8 -> (N,), for clip lengths and sizes the seed's fixed head rejected."""
    model = build_scorer(name).eval()
    x = torch.randint(0, 255, (2, 3, *shape), dtype=torch.uint8)
    s_c, s_r = eval_scores(model, x, x.flip(2), torch.device("cpu"))
    assert s_c.shape == (2,) and torch.isfinite(s_c).all() and torch.isfinite(s_r).all()


def test_video_train_step_learns_temporal_order():
    """Smooth pans over a photo vs the same frames shuffled: bn-c3d learns to tell them apart
    on held-out pans, from pixels alone (temporal_weight = 0)."""
    torch.manual_seed(0)
    photo = np.asarray(load_photo("coffee.png"))

    def clips(n, seed):
        rng = np.random.default_rng(seed)
        good, bad = [], []
        for _ in range(n):
            y, x = rng.integers(0, 200, 2)
            frames = np.stack([photo[y : y + 24, x + 3 * k : x + 3 * k + 24] for k in range(8)])
            good.append(frames.transpose(3, 0, 1, 2))
            bad.append(frames[rng.permutation(8)].transpose(3, 0, 1, 2))
        return torch.from_numpy(np.stack(good)), torch.from_numpy(np.stack(bad))

    model = build_scorer("bn-c3d")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    c, r = clips(32, 0)
    dev = torch.device("cpu")
    for _ in range(25):
        train_step(model, opt, c, r, LossConfig(), dev)
    tc, tr = clips(32, 1)
    s_c, s_r = eval_scores(model, tc, tr, dev)
    assert (s_c > s_r).float().mean().item() > 0.8
