"""Video decoding with PyAV on real encoded bytes (MP4/H.264, WebM/VP9, GIF, frame lists)."""

from __future__ import annotations

import dataclasses
import io
import os
import re

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import ExifTags, Image

from components.config import PAD_POLICIES
from components.media.image import DecodeError
from components.media.spec import MediaSpec
from components.media.video import decode_video as decode_with_spec
from components.media.video import encode_video, temporal_consistency
from components.sample.images import EVAL_PHOTOS, TRAIN_PHOTOS, load_photo
from components.sample.videos import DEFECTS, write_video_pairs


def VideoLimits(max_bytes=200_000_000, max_pixels=4096 * 2160, max_duration_s=600.0,
                max_frames=20_000) -> dict:
    """The limit fields of a MediaSpec (defaults as the config's)."""
    return {"max_bytes": max_bytes, "max_pixels": max_pixels, "max_duration_s": max_duration_s,
            "max_frames": max_frames}


LIMITS = VideoLimits()


def decode_video(data, frames, size, limits=LIMITS, fps=None, pad="repeat", threads=1):
    """The production decoder, called with the MediaSpec these arguments describe (a bad
    argument raises ValueError when the spec is built, as the spec validates itself)."""
    spec = MediaSpec("video", size, frames=frames, fps=fps or 0.0, pad=pad,
                     decoder_threads=threads, **limits)
    return decode_with_spec(data, spec)
FORMATS = ("mp4", "webm", "gif")


def ramp(n: int, h: int = 32, w: int = 32) -> np.ndarray:
    """n flat frames; frame i has value 20*i, so a decoded value tells which frame it was."""
    return np.stack([np.full((h, w, 3), 20 * i, np.uint8) for i in range(n)])


def index_of(clip: np.ndarray) -> list[int]:
    """Frame indices of a decoded ramp clip (codecs shift flat values by a few levels)."""
    return [int(round(v / 20)) for v in clip.reshape(3, clip.shape[1], -1).mean(axis=(0, 2))]


def photo_clip(n: int = 6, h: int = 64, w: int = 64) -> np.ndarray:
    """A slow pan over the astronaut photo: realistic texture for round-trip error checks."""
    img = load_photo("astronaut.png").convert("RGB")
    return np.stack([
        np.asarray(img.resize((w, h), Image.Resampling.BILINEAR, box=(100 + 4 * i, 40, 356 + 4 * i, 40 + 256 * h / w)))
        for i in range(n)
    ])


def shrink(frames: np.ndarray, size: int) -> np.ndarray:
    """Reference: (T, H, W, 3) square frames resized to (3, T, size, size) with PIL."""
    out = [np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BOX)) for f in frames]
    return np.stack(out).transpose(3, 0, 1, 2)


@pytest.mark.parametrize("fmt,tol", [("mp4", 6.0), ("webm", 6.0), ("gif", 8.0)])
def test_container_round_trip(fmt, tol):
    src = photo_clip()
    clip, info = decode_video(encode_video(src, fmt), frames=6, size=32, limits=LIMITS)
    assert clip.shape == (3, 6, 32, 32) and clip.dtype == np.uint8
    err = np.abs(clip.astype(float) - shrink(src, 32)).mean()
    assert err < tol, f"{fmt}: mean abs error {err:.2f}"
    assert (info["width"], info["height"], info["frames_in_clip"], info["padded"]) == (64, 64, 6, 0)
    assert info["duration_s"] == pytest.approx(6 / 8, abs=0.02)
    assert isinstance(info["format"], str) and info["format"]


def test_non_square_is_centre_cropped():
    """96x48 frames: red | green | blue bands of 24 | 48 | 24 columns; the centre square is green."""
    frame = np.zeros((48, 96, 3), np.uint8)
    frame[:, :24] = (255, 0, 0)
    frame[:, 24:72] = (0, 255, 0)
    frame[:, 72:] = (0, 0, 255)
    clip, info = decode_video(encode_video(np.stack([frame] * 4), "mp4"), 2, 16, LIMITS)
    assert (info["width"], info["height"]) == (96, 48)
    inner = clip[:, :, 2:-2, 2:-2].astype(int)  # away from the chroma-subsampled band edges
    assert inner[1].min() > 200 and inner[0].max() < 60 and inner[2].max() < 60


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_frame_list(image_format):
    src = photo_clip(n=5)
    items = []
    for f in src:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, image_format, quality=95)
        items.append(buf.getvalue())
    for data in (items, tuple(items), np.array(items, dtype=object)):
        clip, info = decode_video(data, frames=5, size=32, limits=LIMITS)
        assert clip.shape == (3, 5, 32, 32) and clip.dtype == np.uint8
        assert np.abs(clip.astype(float) - shrink(src, 32)).mean() < 5.0
        assert info["format"] == "frames" and info["frames_in_clip"] == 5 and info["padded"] == 0
        assert (info["width"], info["height"]) == (64, 64)
    clip, _ = decode_video(items, frames=3, size=16, limits=LIMITS)
    expect = shrink(src, 16)[:, [0, 2, 4]]
    assert np.abs(clip.astype(float) - expect).mean() < 5.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_uniform_sampling_picks_linspace_indices(fmt):
    """10 frames, T frames -> round(linspace(0, 9, T)): T=4 -> 0,3,6,9; T=5 -> 0,2,4,7,9
    (numpy rounds 4.5 to 4 and 6.75 to 7); T=1 -> 0; T=10 -> all."""
    data = encode_video(ramp(10), fmt)
    for t, expect in ((4, [0, 3, 6, 9]), (5, [0, 2, 4, 7, 9]), (1, [0]), (10, list(range(10)))):
        clip, info = decode_video(data, frames=t, size=16, limits=LIMITS)
        assert index_of(clip) == expect, (fmt, t)
        assert info["frames_in_clip"] == 10 and info["padded"] == 0


def test_uniform_sampling_frame_list():
    items = []
    for f in ramp(10):
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, "PNG")
        items.append(buf.getvalue())
    clip, _ = decode_video(items, frames=4, size=8, limits=LIMITS)
    assert index_of(clip) == [0, 3, 6, 9]


@pytest.mark.parametrize("fmt", FORMATS)
def test_fps_sampling(fmt):
    """Source: 10 frames at 8 fps (frame i at i/8 s, clip lasts 1.25 s).
    fps=4, T=4: times 0, .25, .5, .75 -> frames 0, 2, 4, 6.
    fps=3, T=6: times 0, .33, .67, 1.0 -> nearest frames 0, 3 (.375), 5 (.625), 8; 1.33 s and
    1.67 s are past the end, so 2 frames are padding (repeat the last)."""
    data = encode_video(ramp(10), fmt, fps=8)
    clip, info = decode_video(data, frames=4, size=16, limits=LIMITS, fps=4)
    assert index_of(clip) == [0, 2, 4, 6] and info["padded"] == 0
    clip, info = decode_video(data, frames=6, size=16, limits=LIMITS, fps=3)
    assert index_of(clip) == [0, 3, 5, 8, 8, 8] and info["padded"] == 2
    clip, info = decode_video(data, frames=3, size=16, limits=LIMITS, fps=8)
    assert index_of(clip) == [0, 1, 2]
    clip, info = decode_video(data, frames=4, size=16, limits=LIMITS, fps=0)  # 0 = uniform
    assert index_of(clip) == [0, 3, 6, 9]


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_pad_policies(fmt):
    """3 frames (0, 1, 2), T=5: repeat -> 0,1,2,2,2; loop -> 0,1,2,0,1; reject raises."""
    data = encode_video(ramp(3), fmt)
    assert PAD_POLICIES == ("repeat", "loop", "reject")
    clip, info = decode_video(data, 5, 16, LIMITS, pad="repeat")
    assert index_of(clip) == [0, 1, 2, 2, 2] and info["padded"] == 2 and info["frames_in_clip"] == 3
    clip, info = decode_video(data, 5, 16, LIMITS, pad="loop")
    assert index_of(clip) == [0, 1, 2, 0, 1] and info["padded"] == 2
    with pytest.raises(DecodeError, match="fewer than data.video.frames=5 and data.video.pad=reject"):
        decode_video(data, 5, 16, LIMITS, pad="reject")
    clip, info = decode_video(data, 3, 16, LIMITS, pad="reject")
    assert info["padded"] == 0


def test_pad_policies_fps_and_frame_list():
    clip, info = decode_video(encode_video(ramp(3), "webm"), 4, 16, LIMITS, fps=8, pad="loop")
    assert index_of(clip) == [0, 1, 2, 0] and info["padded"] == 1
    items = [encode_png(f) for f in ramp(2)]
    clip, info = decode_video(items, 4, 8, LIMITS, pad="repeat")
    assert index_of(clip) == [0, 1, 1, 1] and info["padded"] == 2
    with pytest.raises(DecodeError, match="data.video.pad=reject"):
        decode_video(items, 4, 8, LIMITS, pad="reject")


def encode_png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("fmt", FORMATS)
def test_limits_name_their_config_key(fmt):
    data = encode_video(ramp(10, h=48, w=64), fmt, fps=8)  # 64x48, 10 frames, 1.25 s
    cases = [
        (VideoLimits(max_bytes=len(data) - 1), "data.video.max_bytes"),
        (VideoLimits(max_pixels=64 * 48 - 1), "data.max_pixels"),
        (VideoLimits(max_duration_s=1.0), "data.video.max_duration_s"),
        (VideoLimits(max_frames=9), "data.video.max_frames"),
    ]
    for limits, key in cases:
        with pytest.raises(DecodeError, match=key.replace(".", r"\.")) as e:
            decode_video(data, 4, 16, limits)
        assert key in e.value.reason
    # At the limit exactly, it decodes.
    edge = VideoLimits(max_bytes=len(data), max_pixels=64 * 48, max_duration_s=1.3, max_frames=10)
    assert decode_video(data, 4, 16, edge)[0].shape == (3, 4, 16, 16)


def test_max_frames_enforced_while_decoding():
    """WebM declares no frame count, so the limit must be enforced as frames are decoded."""
    data = encode_video(ramp(10), "webm")
    with av.open(io.BytesIO(data)) as c:
        assert not c.streams.video[0].frames  # unknown up front
    with pytest.raises(DecodeError, match="more than 6 frames.*data.video.max_frames=6"):
        decode_video(data, 4, 16, VideoLimits(max_frames=6))


def test_frame_list_limits():
    items = [encode_png(f) for f in ramp(4, h=40, w=50)]
    with pytest.raises(DecodeError, match="data.video.max_frames=3"):
        decode_video(items, 2, 8, VideoLimits(max_frames=3))
    with pytest.raises(DecodeError, match="data.max_pixels=1999"):
        decode_video(items, 2, 8, VideoLimits(max_pixels=1999))
    with pytest.raises(DecodeError, match="data.video.max_bytes"):
        decode_video(items, 2, 8, VideoLimits(max_bytes=sum(map(len, items)) - 1))
    with pytest.raises(DecodeError, match="frame 1"):
        decode_video([items[0], b"not an image", items[2]], 3, 8, LIMITS)


def test_corrupt_and_truncated():
    rng = np.random.default_rng(0)
    for _ in range(5):
        with pytest.raises(DecodeError, match="not a decodable video"):
            decode_video(rng.bytes(4000), 4, 16, LIMITS)
    # The MP4 index (moov) is written after the frames, so any of these cuts loses it. (Cutting
    # only the trailing metadata atom still decodes: FFmpeg needs the index, not the tags.)
    mp4 = encode_video(photo_clip(), "mp4")
    for cut in (len(mp4) // 2, len(mp4) * 3 // 4, 40):
        with pytest.raises(DecodeError, match="not a decodable video"):
            decode_video(mp4[:cut], 4, 16, LIMITS)
    # A GIF cut after some frames keeps those (cut inside a frame or at a boundary alike),
    # and the rest is padding; cut before the first frame is complete, it is an error.
    gif = encode_video(photo_clip(), "gif")
    for cut in (len(gif) // 3, len(gif) // 3 + 100):
        clip, info = decode_video(gif[:cut], 4, 16, LIMITS)
        assert 1 <= info["frames_in_clip"] < 6 and info["padded"] == 4 - info["frames_in_clip"]
    for cut in (100, 800):
        with pytest.raises(DecodeError, match="not a decodable video"):
            decode_video(gif[:cut], 4, 16, LIMITS)


def test_audio_only_has_no_video_stream():
    rate = 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate // 4) / rate)).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as c:
        stream = c.add_stream("aac", rate=rate)
        frame = av.AudioFrame.from_ndarray(tone[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        c.mux(stream.encode(frame))
        c.mux(stream.encode(None))
    with pytest.raises(DecodeError, match="no video stream"):
        decode_video(buf.getvalue(), 4, 16, LIMITS)


@pytest.mark.parametrize("data", [None, b"", bytearray(), [], ()])
def test_null_and_empty(data):
    with pytest.raises(DecodeError):
        decode_video(data, 4, 16, LIMITS)


def test_bad_arguments_are_value_errors():
    data = encode_video(ramp(3), "mp4")
    with pytest.raises(ValueError, match="pad"):
        decode_video(data, 4, 16, LIMITS, pad="mirror")
    with pytest.raises(ValueError):
        decode_video(data, 0, 16, LIMITS)
    with pytest.raises(ValueError, match="even"):
        encode_video(ramp(2, h=31, w=32), "mp4")


def test_threads_do_not_change_the_result():
    data = encode_video(photo_clip(n=8), "mp4")
    one, _ = decode_video(data, 8, 32, LIMITS, threads=1)
    two, _ = decode_video(data, 8, 32, LIMITS, threads=2)
    assert np.array_equal(one, two)


def test_temporal_consistency_by_hand():
    """c = -mean((x[:, 1:] - x[:, :-1])**2) with x = pixels / 255.
    * frames 0, 255: one pair, every pixel differs by 1.0 -> c = -1.0
    * frames 0, 51, 51: pair MSEs (51/255)^2 = 0.2^2 = 0.04 and 0 -> c = -(0.04 + 0)/2 = -0.02
    * half the pixels of frame 2 differ by 0.2 from frame 1: MSE = 0.04 / 2 -> c = -0.02
    * a single frame or a still clip -> 0.0."""
    def clip(*values):
        return np.stack([np.full((3, 4, 4), v, np.uint8) for v in values], axis=1)

    assert temporal_consistency(clip(0, 255)) == pytest.approx(-1.0)
    assert temporal_consistency(clip(0, 51, 51)) == pytest.approx(-0.02)
    half = clip(0, 0)
    half[:, 1, :2] = 51
    assert temporal_consistency(half) == pytest.approx(-0.02)
    assert temporal_consistency(clip(7)) == 0.0
    assert temporal_consistency(clip(9, 9, 9)) == 0.0


def test_write_video_pairs(tmp_path):
    out = write_video_pairs(str(tmp_path), pairs=80, size=32, frames=8, shards=2, seed=0)
    assert out["pairs"] == {"train": 60, "eval": 20}
    assert out["train"] == os.path.join(str(tmp_path), "train")
    assert sorted(os.listdir(out["train"])) == ["part-00000.parquet", "part-00001.parquet"]
    tables = {s: pq.read_table(out[s]) for s in ("train", "eval")}
    assert {s: t.num_rows for s, t in tables.items()} == {"train": 60, "eval": 20}
    assert tables["train"].column_names == ["pair_id", "prompt", "chosen", "rejected", "photo", "defect"]
    rows = {s: t.to_pylist() for s, t in tables.items()}
    ids = [r["pair_id"] for s in rows for r in rows[s]]
    assert len(set(ids)) == len(ids)
    train_photos = {r["photo"] for r in rows["train"]}
    eval_photos = {r["photo"] for r in rows["eval"]}
    assert train_photos <= set(TRAIN_PHOTOS) and eval_photos <= set(EVAL_PHOTOS)
    assert not train_photos & eval_photos
    assert {r["defect"] for s in rows for r in rows[s]} <= set(DEFECTS)
    better: dict[str, list[bool]] = {}
    for r in rows["train"] + rows["eval"]:
        chosen, info = decode_video(r["chosen"], 8, 32, LIMITS)
        rejected, _ = decode_video(r["rejected"], 8, 32, LIMITS)
        assert chosen.shape == rejected.shape == (3, 8, 32, 32)
        assert info["frames_in_clip"] == 8 and info["padded"] == 0
        better.setdefault(r["defect"], []).append(
            temporal_consistency(chosen) > temporal_consistency(rejected))
    # Broken motion is less consistent than smooth motion; a frozen clip is more consistent.
    assert set(better) == set(DEFECTS)
    assert np.mean([b for d, v in better.items() if d != "freeze" for b in v]) > 0.9
    assert not any(better["freeze"])


def test_write_video_pairs_is_deterministic(tmp_path):
    a = write_video_pairs(str(tmp_path / "a"), pairs=8, seed=3)
    b = write_video_pairs(str(tmp_path / "b"), pairs=8, seed=3)
    for split in ("train", "eval"):
        assert pq.read_table(a[split]).equals(pq.read_table(b[split]))


# --- hostile and broken input (issue 12) ----------------------------------------------------


def numbered(n: int, noise: int = 0, seed: int = 0) -> np.ndarray:
    """n frames of 64x64 whose index is written in 8 vertical stripes (bit b of i: stripe b
    is bright), for clips longer than ``ramp`` can number. ``noise`` (+-) makes every frame
    costly to encode, so a cut lands in the middle of the clip."""
    rng = np.random.default_rng(seed)
    bits = (np.arange(n)[:, None] >> np.arange(8)) & 1  # (n, 8)
    stripes = np.where(bits, 200, 50).astype(np.int16)
    frames = np.repeat(np.repeat(stripes[:, None, :, None], 64, axis=1), 8, axis=2)  # (n, 64, 64, 1)
    frames = frames + rng.integers(-noise, noise + 1, (n, 64, 64, 3)) if noise else frames
    return np.broadcast_to(frames, (n, 64, 64, 3)).clip(0, 255).astype(np.uint8)


def numbers_of(clip: np.ndarray) -> list[int]:
    """Frame indices of a decoded ``numbered`` clip (decoded at size 64, so unscaled)."""
    means = clip.astype(float).mean(axis=(0, 2)).reshape(clip.shape[1], 8, 8).mean(axis=2)
    return [int(sum(1 << b for b in range(8) if m[b] > 125)) for m in means]


def uniform(n: int, t: int) -> list[int]:
    return [int(i) for i in np.rint(np.linspace(0, n - 1, t))]


def remux(data: bytes, fmt: str, tmp_path, movflags: str = "", shift: int = 0) -> bytes:
    """The same packets in another container (``movflags=+faststart``: MP4 index first, which
    needs a real file); ``shift`` moves the timestamps back by that many frames, so an MP4
    edit list hides them (the header still counts them)."""
    path = tmp_path / f"remux.{fmt}"
    opts = {"movflags": movflags} if movflags else {}
    with av.open(io.BytesIO(data)) as src, av.open(str(path), "w", format=fmt, options=opts) as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is None:
                continue
            step = packet.duration or 0
            packet.pts, packet.dts = packet.pts - shift * step, packet.dts - shift * step
            packet.stream = out
            dst.mux(packet)
    return path.read_bytes()


@pytest.fixture
def fit_calls(monkeypatch):
    """How many frames the decoder resized and kept (every kept frame goes through _fit)."""
    import components.media.video as video_module

    calls = []
    real = video_module._fit

    def counting(frame, size):
        calls.append(frame.pts)
        return real(frame, size)

    monkeypatch.setattr(video_module, "_fit", counting)
    return calls


def test_numbered_frames_round_trip():
    clip, _ = decode_video(encode_video(numbered(12, noise=30), "webm"), 12, 64)
    assert numbers_of(clip) == list(range(12))


@pytest.mark.parametrize("fmt", FORMATS + ("mkv",))
def test_uniform_sampling_keeps_t_frames_whatever_the_length(fmt, fit_calls, tmp_path):
    """150 frames, T=8. WebM, MKV and (for FFmpeg) GIF declare no frame count: the decoder
    used to keep all 150 resized frames until it knew n. Now it keeps T, and picks the same
    frames as for an MP4, whose header declares n."""
    data = encode_video(numbered(150), "mp4" if fmt == "mkv" else fmt)
    if fmt == "mkv":
        data = remux(data, "matroska", tmp_path)
    clip, info = decode_video(data, 8, 64)
    assert numbers_of(clip) == uniform(150, 8) == [0, 21, 43, 64, 85, 106, 128, 149]
    assert info["frames_in_clip"] == 150 and info["padded"] == 0 and not info["truncated"]
    assert len(fit_calls) == 8


def test_a_wrong_frame_count_costs_a_second_pass_not_memory(fit_calls, tmp_path):
    """An MP4 edit list hides the first 2 of 40 frames; the header still counts 40. The
    first pass keeps the frames for n=40, finds 38, and decodes again for n=38."""
    data = remux(encode_video(numbered(40), "mp4"), "mp4", tmp_path, shift=2)
    with av.open(io.BytesIO(data)) as c:
        assert c.streams.video[0].frames == 40
    clip, info = decode_video(data, 5, 64)
    assert numbers_of(clip) == [2 + i for i in uniform(38, 5)] == [2, 11, 20, 30, 39]
    assert info["frames_in_clip"] == 38 and not info["truncated"]
    # Pass 1 kept uniform(40, 5) = 0, 10, 20, 29 (39 is past the end); pass 2 kept 5.
    assert len(fit_calls) == 4 + 5


@pytest.mark.parametrize("fmt", ["webm", "mp4-faststart", "mkv"])
def test_a_clip_cut_short_is_padded_and_says_so(fmt, tmp_path):
    """24 frames cut at 60% of the bytes. The container still declares 24 frames' worth (a
    count or a duration): the frames sampled for n=24 that are past the cut are padding, by
    data.video.pad, and reject quarantines the clip."""
    src = encode_video(numbered(24, noise=40), "webm" if fmt == "webm" else "mp4")
    if fmt == "mp4-faststart":
        src = remux(src, "mp4", tmp_path, movflags="+faststart")
    elif fmt == "mkv":
        src = remux(src, "matroska", tmp_path)
    data = src[: len(src) * 6 // 10]
    clip, info = decode_video(data, 8, 64, pad="repeat")
    n = info["frames_in_clip"]
    assert 1 <= n < 24 and info["truncated"]
    present = [i for i in uniform(24, 8) if i < n]
    assert numbers_of(clip) == present + [present[-1]] * (8 - len(present))
    assert info["padded"] == 8 - len(present) > 0
    clip, info = decode_video(data, 8, 64, pad="loop")
    assert numbers_of(clip) == [present[i % len(present)] for i in range(8)]
    with pytest.raises(DecodeError, match=rf"breaks off after {n} of the 24 frames .*"
                                          r"data\.video\.pad=reject"):
        decode_video(data, 8, 64, pad="reject")
    # The intact file is neither truncated nor padded.
    clip, info = decode_video(src, 8, 64, pad="reject")
    assert numbers_of(clip) == uniform(24, 8) and not info["truncated"] and info["padded"] == 0


@pytest.mark.parametrize("fmt", FORMATS + ("mp4-faststart",))
def test_any_cut_is_a_result_or_a_decode_error(fmt, tmp_path):
    """Cutting a file anywhere never raises anything but DecodeError (an MP4 cut inside its
    codec header used to raise AttributeError)."""
    data = encode_video(ramp(12), fmt.split("-")[0])
    if fmt == "mp4-faststart":
        data = remux(data, "mp4", tmp_path, movflags="+faststart")
    for cut in range(1, len(data), max(1, len(data) // 60)):
        try:
            clip, info = decode_video(data[:cut], 4, 16)
        except DecodeError:
            continue
        assert clip.shape == (3, 4, 16, 16) and 1 <= info["frames_in_clip"] <= 12


def test_the_deadline_stops_a_clip_decode():
    for data in (encode_video(ramp(4), "mp4"), encode_video(ramp(4), "webm"),
                 encode_video(ramp(4), "gif"), [encode_png(f) for f in ramp(4)]):
        spec = MediaSpec("video", 16, 10**6, frames=4, decode_timeout_s=1e-9)
        with pytest.raises(DecodeError, match=r"decode exceeded 1e-09 s \(data\.decode_timeout_s\)"):
            decode_with_spec(data, spec)


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_the_deadline_is_checked_between_frames(fmt, monkeypatch, fit_calls):
    """A clock that moves one second per reading and a 100 s deadline: the decode (read
    twice per frame, after counting WebM's 60 packets once each) stops part way through the
    60 frames, saying how far it got."""
    import components.media.image as image_module

    ticks = iter(range(10**6))
    monkeypatch.setattr(image_module, "monotonic", lambda: float(next(ticks)))
    spec = MediaSpec("video", 16, 10**6, frames=60, decode_timeout_s=100.0)
    with pytest.raises(DecodeError, match=r"decode exceeded 100 s") as e:
        decode_with_spec(encode_video(numbered(60), fmt), spec)
    done = int(re.search(r"after decoding (\d+) frames", e.value.reason).group(1))
    assert 10 <= done < 60 and len(fit_calls) == done


@pytest.mark.parametrize("fmt", FORMATS)
def test_decoded_pixel_budget(fmt):
    """40 frames of 64x48 = 122,880 pixels to decode. A budget of 10 frames' worth stops the
    decode at the 11th frame (or before decoding, when the header declares the count);
    sampling at fps decodes only up to the frames it needs."""
    data = encode_video(numbered(40)[:, :48], fmt)
    frame = 64 * 48
    limits = {**LIMITS, "max_decoded_pixels": 10 * frame}
    spec = MediaSpec("video", 16, frames=4, **limits)
    with pytest.raises(DecodeError, match=r"data\.video\.max_decoded_pixels=30720") as e:
        decode_with_spec(data, spec)
    declared = re.search(r"declares (\d+) frames of 64x48", e.value.reason)
    if declared:
        assert int(declared.group(1)) == 40
    else:
        assert "in its first 11 frames (64x48)" in e.value.reason
    # fps=8, T=4 needs frames 0..3: within the budget.
    assert decode_with_spec(data, dataclasses.replace(spec, fps=8.0))[0].shape == (3, 4, 16, 16)
    # At the budget exactly, it decodes.
    exact = MediaSpec("video", 16, frames=4, **{**LIMITS, "max_decoded_pixels": 40 * frame})
    assert decode_with_spec(data, exact)[1]["frames_in_clip"] == 40


def test_decoded_pixel_budget_frame_list():
    items = [encode_png(f) for f in ramp(6, h=40, w=50)]
    spec = MediaSpec("video", 8, frames=3, **{**LIMITS, "max_decoded_pixels": 2 * 2000})
    with pytest.raises(DecodeError, match=r"frames \(50x40\), over data\.video\.max_decoded_pixels=4000"):
        decode_with_spec(items, spec)


def _audio_with_cover(fmt: str, codec: str) -> bytes:
    """A quarter second of tone with a JPEG cover picture (an ``attached_pic`` stream)."""
    rate = 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate // 4) / rate)).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as c:
        audio = c.add_stream(codec, rate=rate)
        cover = c.add_stream("mjpeg")
        cover.width = cover.height = 32
        cover.pix_fmt = "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        packet = av.Packet(encode_jpeg(np.full((32, 32, 3), 200, np.uint8)))
        packet.stream, packet.pts, packet.dts = cover, 0, 0
        c.mux(packet)
        frame = av.AudioFrame.from_ndarray(tone[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        c.mux(audio.encode(frame))
        c.mux(audio.encode(None))
    return buf.getvalue()


def encode_jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("fmt,codec", [("mp3", "libmp3lame"), ("mp4", "aac")])
def test_cover_art_is_not_a_video(fmt, codec):
    """An MP3 or M4A with cover art has a one-picture "video" stream: it decoded as a still
    clip of T repeated frames."""
    data = _audio_with_cover(fmt, codec)
    with av.open(io.BytesIO(data)) as c:
        assert [s.type for s in c.streams] == ["audio", "video"]
    with pytest.raises(DecodeError, match=r"no video stream \(only an attached picture\)"):
        decode_video(data, 4, 16)


def test_frames_of_a_list_go_through_the_image_decoder():
    """The image rules hold for frame lists: contract formats only, EXIF orientation."""
    buf = io.BytesIO()
    Image.fromarray(ramp(1)[0]).save(buf, "BMP")
    with pytest.raises(DecodeError, match=r"^frame 1: not a decodable image \(looks like BMP"):
        decode_video([encode_png(ramp(1)[0]), buf.getvalue()], 2, 8)
    top_red = np.zeros((32, 32, 3), np.uint8)
    top_red[:16, :, 0] = 255
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 3  # stored upside down
    buf = io.BytesIO()
    Image.fromarray(top_red[::-1, ::-1].copy()).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    clip, _ = decode_video([buf.getvalue()] * 2, 2, 32)
    assert clip[0, 0, :12].mean() > 200 and clip[0, 0, 20:].mean() < 50
