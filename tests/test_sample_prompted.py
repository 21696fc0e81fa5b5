"""Prompt-dependent sample pairs (components/sample/images.py, videos.py): the caption names the
chosen photo, both sides share degradation and encoding, and every photo is chosen exactly as
often as it is rejected, so only a scorer that reads the caption can beat chance. No Ray."""

from __future__ import annotations

import io
from collections import Counter

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.sample.images import (
    PROMPT_TEMPLATES,
    PROMPTED_DEGRADATIONS,
    PROMPTED_PHOTOS,
    prompted_schedule,
    write_prompted_image_pairs,
)
from components.sample.videos import (
    PROMPTED_DEFECTS,
    PROMPTED_VIDEO_TEMPLATES,
    write_prompted_video_pairs,
)

K = len(PROMPTED_PHOTOS)


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("prompted-images")
    paths = write_prompted_image_pairs(str(d))  # the defaults: 600 pairs, 64 px, 2 shards
    return d, paths


@pytest.fixture(scope="module")
def video_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("prompted-videos")
    paths = write_prompted_video_pairs(str(d), pairs=120, size=32, frames=8, shards=2, seed=3)
    return d, paths


def _read(paths):
    return pa.concat_tables([pq.read_table(p) for p in paths]).to_pylist()


def _caption_names(prompt: str, templates) -> str:
    """The photo a caption names, from the phrase table (exactly one template must match)."""
    hits = [
        photo
        for photo, phrase in PROMPTED_PHOTOS.items()
        for t in templates
        if t.format(x=phrase) == prompt
    ]
    assert len(hits) == 1, (prompt, hits)
    return hits[0]


def test_image_files_and_counts(image_set):
    d, paths = image_set
    names = [p.rsplit("/", 1)[1] for p in paths["train"]]
    assert names == ["train-00000.parquet", "train-00001.parquet"]
    assert [p.rsplit("/", 1)[1] for p in paths["eval"]] == ["eval-00000.parquet"]
    train, ev = _read(paths["train"]), _read(paths["eval"])
    assert (len(train), len(ev)) == (450, 150)
    schema = pq.read_schema(paths["train"][0])
    assert schema.names[:4] == ["pair_id", "prompt", "chosen", "rejected"]
    assert {"photo_chosen", "photo_rejected", "degradation"} <= set(schema.names)
    assert pq.ParquetFile(paths["train"][0]).metadata.row_group(0).num_rows <= 128
    ids = [r["pair_id"] for r in train + ev]
    assert len(set(ids)) == len(ids) == 600


def test_image_balance_exact(image_set):
    _, paths = image_set
    for split in ("train", "eval"):
        rows = _read(paths[split])
        chosen = Counter(r["photo_chosen"] for r in rows)
        rejected = Counter(r["photo_rejected"] for r in rows)
        assert set(chosen) == set(rejected) == set(PROMPTED_PHOTOS)
        n = len(rows) // K
        assert all(chosen[p] == rejected[p] == n for p in PROMPTED_PHOTOS), (chosen, rejected)
        assert all(r["photo_chosen"] != r["photo_rejected"] for r in rows)
    # Same photos in both splits, but no identical images shared between them.
    train, ev = _read(paths["train"]), _read(paths["eval"])
    assert not ({r["chosen"] for r in train} & {r["chosen"] for r in ev})


def test_image_caption_names_chosen_photo(image_set):
    _, paths = image_set
    rows = _read(paths["train"]) + _read(paths["eval"])
    for r in rows:
        assert _caption_names(r["prompt"], PROMPT_TEMPLATES) == r["photo_chosen"]
    assert {r["prompt"].split(" ")[0] for r in rows} > {"a"}  # several templates in use


def test_image_decode_and_shared_degradation(image_set):
    _, paths = image_set
    rows = _read(paths["train"]) + _read(paths["eval"])
    assert {r["degradation"] for r in rows} == set(PROMPTED_DEGRADATIONS)
    blocky = []
    for r in rows:
        a, b = Image.open(io.BytesIO(r["chosen"])), Image.open(io.BytesIO(r["rejected"]))
        assert a.size == b.size == (64, 64)
        assert a.format == b.format == r["format"]
        a.load(), b.load()
        if r["degradation"] == "downsample" and r["format"] == "PNG":
            # Nearest-neighbour upsampling by 3-4x: most horizontal neighbours are equal, on
            # both sides (a clean crop has almost none).
            for im in (a, b):
                x = np.asarray(im.convert("RGB")).astype(int)
                blocky.append(np.mean(np.all(x[:, 1:] == x[:, :-1], axis=-1)))
    assert blocky and min(blocky) > 0.5


def test_image_only_cue_is_at_chance(image_set):
    """Encoded size is a strong photo cue (texture), yet 'bigger file wins' is at chance."""
    _, paths = image_set
    rows = _read(paths["train"]) + _read(paths["eval"])
    acc = np.mean([len(r["chosen"]) > len(r["rejected"]) for r in rows])
    assert 0.4 < acc < 0.6, acc


def test_image_deterministic_and_errors(tmp_path):
    a = write_prompted_image_pairs(str(tmp_path / "a"), pairs=40, size=32, seed=5)
    b = write_prompted_image_pairs(str(tmp_path / "b"), pairs=40, size=32, seed=5)
    assert _read(a["train"]) == _read(b["train"]) and _read(a["eval"]) == _read(b["eval"])
    # 40 pairs -> 30 train / 10 eval: not divisible by K, counts within one.
    for split in ("train", "eval"):
        rows = _read(a[split])
        c = Counter(r["photo_chosen"] for r in rows)
        rj = Counter(r["photo_rejected"] for r in rows)
        assert all(abs(c[p] - rj[p]) <= 1 for p in PROMPTED_PHOTOS)
    with pytest.raises(ValueError):
        write_prompted_image_pairs(str(tmp_path / "c"), pairs=K)  # eval takes some: train < K
    with pytest.raises(ValueError):
        write_prompted_image_pairs(str(tmp_path / "d"), pairs=K + 1, eval_share=0.01)  # eval empty
    with pytest.raises(ValueError):
        write_prompted_image_pairs(str(tmp_path / "e"), eval_share=0.0)
    ok = write_prompted_image_pairs(str(tmp_path / "f"), pairs=K + 1, eval_share=0.1, size=16)
    once = Counter(dict.fromkeys(PROMPTED_PHOTOS, 1))
    assert Counter(r["photo_chosen"] for r in _read(ok["train"])) == once


@pytest.mark.parametrize("n", [1, 5, 6, 7, 13, 30, 31])
def test_schedule_balance(n):
    s = prompted_schedule(n, K, np.random.default_rng(n))
    assert len(s) == n and all(a != b for a, b in s)
    c, r = Counter(a for a, _ in s), Counter(b for _, b in s)
    assert all(abs(c[i] - r[i]) <= 1 for i in range(K))
    if n % K == 0:
        assert all(c[i] == r[i] == n // K for i in range(K))


def _frames(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_video_pairs(video_set):
    _, paths = video_set
    names = [p.rsplit("/", 1)[1] for p in paths["train"]]
    assert names == ["part-00000.parquet", "part-00001.parquet"]
    train, ev = _read(paths["train"]), _read(paths["eval"])
    assert (len(train), len(ev)) == (90, 30)
    ids = [r["pair_id"] for r in train + ev]
    assert len(set(ids)) == len(ids)
    for rows in (train, ev):
        c = Counter(r["photo_chosen"] for r in rows)
        rj = Counter(r["photo_rejected"] for r in rows)
        assert all(c[p] == rj[p] == len(rows) // K for p in PROMPTED_PHOTOS)
    assert {r["defect"] for r in train + ev} <= set(PROMPTED_DEFECTS)
    assert "none" in {r["defect"] for r in train + ev}
    for r in train[:20] + ev[:10]:
        assert _caption_names(r["prompt"], PROMPTED_VIDEO_TEMPLATES) == r["photo_chosen"]
        a, b = _frames(r["chosen"]), _frames(r["rejected"])
        assert a.shape == b.shape == (8, 32, 32, 3)
        if r["defect"] == "freeze":  # the shared defect shows on both clips: a held tail
            for clip in (a, b):  # (up to H.264 noise)
                tail = clip[3:].astype(int)
                assert np.abs(np.diff(tail, axis=0)).mean() < 3.0


def test_video_errors(tmp_path):
    with pytest.raises(ValueError):
        write_prompted_video_pairs(str(tmp_path / "a"), pairs=4)
    with pytest.raises(ValueError):
        write_prompted_video_pairs(str(tmp_path / "b"), size=31)
