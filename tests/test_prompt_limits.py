"""Prompt length limits (``data.max_prompt_chars``, ``data.max_prompt_tokens``) are applied
before any tokenizer runs, in training (the decode actor), scoring (the candidate decoder)
and serving (pyfunc ``predict``), from the same ``MediaSpec`` (#23).

The hostile input: one caption of 100,000 random letters without a space. open_clip's BPE
took 145 s on it (46 s at 50,000 letters; superlinear in the length of one word). A refused
prompt must never reach the tokenizer: open_clip caches every word it has run BPE on, so
the cache says whether it did (no mocks)."""

from __future__ import annotations

import string

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from components.config import ConfigError, DataConfig, load_config
from components.datasets.contract import OK, QUARANTINED
from components.media.spec import MediaSpec
from components.training.clip import _tokenizer as clip_tokenizer
from tests.media_bytes import photo_bytes

RNG = np.random.default_rng(23)
LONG_WORD = "".join(RNG.choice(list(string.ascii_lowercase), 100_000))
MANY_WORDS = " ".join(["cat"] * 300)  # 1,199 characters, 300 words


def _clip_spec(**limits) -> MediaSpec:
    data = DataConfig(image_size=32, **limits)
    return MediaSpec.from_config("image", data, {"text": "clip", "context_length": 77,
                                                 "vocab_size": 0})


def _bpe_saw(word: str) -> bool:
    """Whether open_clip's BPE ran on ``word`` (it caches each word it encodes, once)."""
    return any(word[:1000] in key for key in clip_tokenizer().cache)


def test_the_limits_are_config_keys_carried_by_the_spec():
    cfg = load_config(None, ["data.train=x", "data.max_prompt_chars=500",
                             "data.max_prompt_tokens=40"])
    spec = MediaSpec.from_config("image", cfg.data)
    assert (spec.max_prompt_chars, spec.max_prompt_tokens) == (500, 40)
    assert MediaSpec.from_dict(spec.to_dict()) == spec  # travels with the registered model
    old = {k: v for k, v in spec.to_dict().items() if not k.startswith("max_prompt")}
    assert MediaSpec.from_dict(old).max_prompt_chars == DataConfig().max_prompt_chars
    with pytest.raises(ConfigError, match=r"data.max_prompt_chars=0: must be an integer"):
        load_config(None, ["data.train=x", "data.max_prompt_chars=0"])


def test_a_long_prompt_is_refused_by_characters_then_by_words_without_tokenising():
    spec = _clip_spec()
    assert spec.prompt_problem("a red cat on a mat") is None
    assert spec.prompt_problem(None) is None and spec.prompt_problem(float("nan")) is None
    assert spec.prompt_problem(LONG_WORD) == (
        "prompt is 100000 characters, over data.max_prompt_chars=2000; shorten it")
    assert spec.prompt_problem(MANY_WORDS) == (
        "prompt has 300 words, more tokens than data.max_prompt_tokens=256; shorten it")
    # tokenize never hands a refused prompt to the BPE: it returns at once, the long word
    # absent from the BPE's cache, and the refused rows are the empty prompt.
    ids = spec.tokenize([LONG_WORD, "a red cat", MANY_WORDS])
    assert ids.shape == (3, 77)
    assert not _bpe_saw(LONG_WORD)
    empty = spec.tokenize([""])[0]
    np.testing.assert_array_equal(ids[0], empty)
    np.testing.assert_array_equal(ids[2], empty)
    assert (ids[1] != empty).any()


def _pair_batch(prompts: list[str]) -> dict[str, np.ndarray]:
    n = len(prompts)
    image = photo_bytes(40, "PNG")
    return {
        "pair_id": np.array([f"p{i}" for i in range(n)], dtype=object),
        "prompt": np.array(prompts, dtype=object),
        "shard": np.array(["s.parquet"] * n, dtype=object),
        "row": np.arange(n),
        "meta": np.array(["{}"] * n, dtype=object),
        "content_hash": np.array([f"h{i}" for i in range(n)], dtype=object),
        "target": np.ones(n), "margin": np.zeros(n), "weight": np.ones(n),
        "split": np.array(["train"] * n, dtype=object),
        "status": np.array([OK] * n, dtype=object),
        "reason": np.array([""] * n, dtype=object),
        "chosen": np.array([image] * n, dtype=object),
        "rejected": np.array([photo_bytes(40, "PNG", seed=1)] * n, dtype=object),
    }


def test_training_quarantines_the_row_with_the_reason():
    from components.datasets.decoder import PairDecoder

    decoder = PairDecoder(_clip_spec().to_dict())
    table = decoder(_pair_batch(["a red cat", LONG_WORD, MANY_WORDS]))
    assert table.column("status").to_pylist() == [OK, QUARANTINED, QUARANTINED]
    reasons = table.column("reason").to_pylist()
    assert "data.max_prompt_chars=2000" in reasons[1]
    assert "data.max_prompt_tokens=256" in reasons[2]
    assert not _bpe_saw(LONG_WORD)


def test_scoring_quarantines_the_candidate_with_the_reason():
    from components.evaluation.batch_scoring import CandidateDecoder

    batch = pa.table({"id": [1, 2], "image": [photo_bytes(40, "PNG")] * 2,
                      "caption": ["a red cat", LONG_WORD]})
    out = CandidateDecoder(_clip_spec().to_dict(), prompt_column="caption")(batch)
    assert out.column("_status").to_pylist() == [OK, QUARANTINED]
    assert "data.max_prompt_chars=2000" in out.column("_reason").to_pylist()[1]
    assert not _bpe_saw(LONG_WORD)


def test_serving_reports_the_row_as_it_reports_a_bad_image(tmp_path):
    """pyfunc ``predict`` refuses a batch with an unusable row, naming each such row (as for
    an image that does not decode); the limits come from the model's own spec."""
    from components.registry.pyfunc import ScorerModel
    from components.registry.scorer_files import TrainedScorer, read_scorer, write_scorer
    from components.training.models import build_scorer, model_options, text_contract

    torch.manual_seed(0)
    options = model_options("prompt-bn-cnn", "")
    spec = MediaSpec.from_config("image", DataConfig(image_size=32, max_prompt_chars=100),
                                 text_contract("prompt-bn-cnn", options))
    write_scorer(str(tmp_path / "m"), TrainedScorer(
        "prompt-bn-cnn", build_scorer("prompt-bn-cnn", options).state_dict(), spec,
        options=options))
    model = ScorerModel()
    model.load(read_scorer(str(tmp_path / "m")))  # load_context less the manifest check
    assert model.spec.max_prompt_chars == 100  # the limit read back from scorer.json
    images = [photo_bytes(40, "PNG", seed=i) for i in range(3)]
    ok = model.predict(None, pd.DataFrame({"image": images, "prompt": ["a cat"] * 3}))
    assert ok.shape == (3,) and np.isfinite(ok).all()
    with pytest.raises(ValueError) as e:
        model.predict(None, pd.DataFrame({"image": [images[0], b"not an image", images[2]],
                                          "prompt": ["a cat", "a dog", LONG_WORD]}))
    text = str(e.value)
    assert "row 1: not a decodable image" in text
    assert "row 2: prompt is 100000 characters, over data.max_prompt_chars=100" in text


def test_the_serve_application_answers_an_item_error_before_decoding():
    """The Ray Serve application decodes each item with the model's spec (``_decode``); a
    prompt over the limits is that item's error, before the decode and the tokenizer. (No
    Serve instance is started: the function the replicas call.)"""
    import time
    from types import SimpleNamespace

    from components.serving.service import _decode, _Item

    model = SimpleNamespace(spec=_clip_spec())
    deadline = time.monotonic() + 60
    bad = _decode(_Item(model, photo_bytes(40, "PNG"), LONG_WORD, False, deadline))
    assert bad == "prompt is 100000 characters, over data.max_prompt_chars=2000; shorten it"
    px, c = _decode(_Item(model, photo_bytes(40, "PNG"), "a red cat", False, deadline))
    assert px.shape == (3, 32, 32) and c == 0.0
