"""Prompt-conditioned scorers without Ray: the tokenizer contract, the model's dependence on
the prompt, and a plain-PyTorch training loop that learns a caption-dependent preference an
image-only scorer cannot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.config import DataConfig, LossConfig
from components.media.spec import MediaSpec
from components.media.text import tokenize
from components.training.models import (
    build_scorer,
    model_options,
    takes_prompt,
    text_contract,
)
from components.training.step import score_pairs, train_step


def test_word_tokens_are_stable_padded_and_truncated():
    ids = tokenize("words", ["A cat, a CAT!", None, float("nan"), "one two three four five"],
                   4, 8192)
    assert ids.dtype == np.int32 and ids.shape == (4, 4)
    assert ids[0, 1] == ids[0, 3] and ids[0, 0] == ids[0, 2]  # case and punctuation ignored
    assert (ids[1] == 0).all() and (ids[2] == 0).all()  # missing prompt: all padding
    assert (ids[3] > 0).all()  # truncated to 4 words
    # CRC-32 buckets: the same ids in any process (no Python hash randomisation).
    import zlib

    assert tokenize("words", ["cat"], 1, 8192)[0, 0] == 1 + zlib.crc32(b"cat") % 8191
    again = tokenize("words", ["A cat, a CAT!"], 4, 8192)
    assert (again[0] == ids[0]).all()
    with pytest.raises(ValueError, match="unknown tokenizer"):
        tokenize("bpe", ["x"], 4, 10)


def test_the_spec_carries_the_scorers_tokenizer():
    for name, modality in (("prompt-bn-cnn", "image"), ("prompt-bn-c3d", "video")):
        spec = MediaSpec.from_config(modality, DataConfig(image_size=32),
                                     text_contract(name, model_options(name, "")))
        assert spec.takes_prompt and spec.text == "words"
        assert MediaSpec.from_dict(spec.to_dict()) == spec  # travels with the model
        assert spec.tokenize(["a cat"]).shape == (1, spec.context_length)
    plain = MediaSpec.from_config("image", DataConfig(), text_contract("bn-cnn", {}))
    assert not plain.takes_prompt


@pytest.mark.parametrize("name,shape", [("prompt-bn-cnn", (4, 3, 32, 32)),
                                        ("prompt-bn-c3d", (4, 3, 4, 32, 32))])
def test_the_score_depends_on_the_prompt(name, shape):
    torch.manual_seed(0)
    model = build_scorer(name).eval()
    assert takes_prompt(model)
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    a = torch.from_numpy(tokenize("words", ["a cat"] * 4, 32, 8192))
    b = torch.from_numpy(tokenize("words", ["a rocket"] * 4, 32, 8192))
    with torch.no_grad():
        s_a, _ = score_pairs(model, x, x, torch.device("cpu"), tokens=a)
        s_b, _ = score_pairs(model, x, x, torch.device("cpu"), tokens=b)
    assert not torch.allclose(s_a, s_b)
    with pytest.raises(ValueError, match="prompt-conditioned"):
        score_pairs(model, x, x, torch.device("cpu"))


def _caption_task(n: int, rng: np.random.Generator):
    """Two flat-colour 'photos' (red, blue); the caption names the preferred one. Each colour
    is chosen as often as rejected, so the image alone says nothing."""
    red = np.zeros((3, 16, 16), np.uint8)
    red[0] = 200
    blue = np.zeros((3, 16, 16), np.uint8)
    blue[2] = 200
    names = np.array(["red", "blue"])
    pick = rng.integers(0, 2, n)
    chosen = np.stack([red if p == 0 else blue for p in pick])
    rejected = np.stack([blue if p == 0 else red for p in pick])
    noise = rng.integers(0, 40, chosen.shape, dtype=np.uint8)
    prompts = [f"a photo of something {c}" for c in names[pick]]
    return (torch.from_numpy(chosen + noise), torch.from_numpy(rejected + noise),
            torch.from_numpy(tokenize("words", prompts, 32, 8192)))


@pytest.mark.parametrize("name", ["prompt-bn-cnn", "bn-cnn"])
def test_only_the_prompt_conditioned_scorer_learns_a_caption_dependent_preference(name):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_scorer(name)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    cpu = torch.device("cpu")
    prompt = takes_prompt(model)
    for _ in range(60):
        c, r, t = _caption_task(16, rng)
        train_step(model, opt, c, r, LossConfig(), cpu, tokens=t if prompt else None)
    c, r, t = _caption_task(200, rng)
    model.eval()
    with torch.no_grad():
        s_c, s_r = score_pairs(model, c, r, cpu, tokens=t if prompt else None)
    accuracy = (s_c > s_r).float().mean().item()
    if prompt:
        assert accuracy > 0.95
    else:  # each colour is chosen half the time: the image-only scorer is at chance
        assert 0.3 < accuracy < 0.7
