"""Fuzz the decode path with mutated real files (#23): JPEG, PNG and WebP through the image
decoder, MP4 and WebM (and frame lists) through the video decoder, all through
``MediaSpec.decode``, the function the decode actors, batch scoring and the served model call.

Seeds are real encodings of a scikit-image photo (Pillow, PyAV); mutations are bit flips,
truncation, insertion, overwriting with boundary values (header fields: sizes, counts) and
splicing two files. Every input must either decode within the spec's limits (the spec's
shape, uint8) or raise the product's ``DecodeError``; no other exception escapes, and no
decode runs far past the spec's ``decode_timeout_s``."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from components.media.image import DecodeError
from components.media.spec import MediaSpec
from components.media.video import encode_video

# Small limits keep each example cheap: a mutated header that declares a huge size or frame
# count is refused from the header, which is what the limits are for.
IMAGE_SPEC = MediaSpec("image", 32, max_pixels=1_000_000, decode_timeout_s=2.0)
VIDEO_SPEC = MediaSpec("video", 16, max_pixels=250_000, frames=4, max_frames=400,
                       max_decoded_pixels=20_000_000, max_bytes=5_000_000,
                       decode_timeout_s=2.0)
# Slack over decode_timeout_s: the deadline is checked between steps (one frame, one Pillow
# decode), and the machine may be busy. A hang is minutes, not seconds.
OVERRUN_S = 30.0


def _photo() -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((48, 40)))  # (40, 48, 3)


def _image_seeds() -> dict[str, list[bytes]]:
    rgb = _photo()
    img = Image.fromarray(rgb)

    def save(im: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    grey16 = Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257)
    return {
        "JPEG": [save(img, "JPEG", quality=80), save(img, "JPEG", progressive=True),
                 save(img.convert("L"), "JPEG"), save(img.convert("CMYK"), "JPEG")],
        "PNG": [save(img, "PNG"), save(img.convert("RGBA"), "PNG"), save(grey16, "PNG"),
                save(img.convert("P"), "PNG"), save(img, "PNG", optimize=True)],
        "WebP": [save(img, "WEBP", quality=70), save(img.convert("RGBA"), "WEBP", lossless=True)],
    }


def _video_seeds() -> dict[str, list[bytes]]:
    frames = np.stack([np.roll(_photo()[:40, :48], 3 * t, axis=1) for t in range(6)])
    return {"MP4": [encode_video(frames, "mp4")], "WebM": [encode_video(frames, "webm")]}


IMAGES = _image_seeds()
VIDEOS = _video_seeds()
ALL = [b for seeds in (*IMAGES.values(), *VIDEOS.values()) for b in seeds]
BOUNDARY = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
            b"\x00\x00\x00\x01", b"\xff\xfe", b"\x00", b"\xff"]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """One seed with 1-4 mutations; positions favour the first 64 bytes (the headers)."""
    data = bytearray(draw(st.sampled_from(seeds)))

    def position(n: int) -> int:
        return draw(st.one_of(st.integers(0, min(63, n - 1)), st.integers(0, n - 1)))

    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite", "splice"]))
        i = position(len(data))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            data = data[:i]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif op == "overwrite":
            value = draw(st.sampled_from(BOUNDARY))
            data[i:i + len(value)] = value
        else:  # splice: this file's head, another file's tail
            other = draw(st.sampled_from(ALL))
            data = data[:i] + other[draw(st.integers(0, len(other) - 1)):]
    return bytes(data)


def _decodes_within_limits_or_refuses(spec: MediaSpec, data) -> None:
    started = time.monotonic()
    try:
        px, size, c = spec.decode(data)
    except DecodeError as e:
        assert e.reason  # a reason for the quarantine record
    else:
        assert px.dtype == np.uint8 and px.shape == spec.shape
        w, h = (int(v) for v in size.split("x"))
        assert w * h <= spec.max_pixels
        assert (c is None) == (not spec.video)
        if c is not None:
            assert -1.0 <= c <= 0.0
    assert time.monotonic() - started < spec.decode_timeout_s + OVERRUN_S


FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_the_seeds_decode():
    for seeds in IMAGES.values():
        for b in seeds:
            assert IMAGE_SPEC.decode(b)[0].shape == IMAGE_SPEC.shape
    for seeds in VIDEOS.values():
        for b in seeds:
            assert VIDEO_SPEC.decode(b)[0].shape == VIDEO_SPEC.shape


@pytest.mark.parametrize("fmt", sorted(IMAGES))
@FUZZ
@given(data=st.data())
def test_mutated_images_decode_within_limits_or_raise_decode_error(fmt, data):
    _decodes_within_limits_or_refuses(IMAGE_SPEC, data.draw(mutated(IMAGES[fmt])))


@pytest.mark.parametrize("fmt", sorted(VIDEOS))
@FUZZ
@given(data=st.data())
def test_mutated_videos_decode_within_limits_or_raise_decode_error(fmt, data):
    _decodes_within_limits_or_refuses(VIDEO_SPEC, data.draw(mutated(VIDEOS[fmt])))


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_mutated_frame_lists_and_crossed_inputs_decode_or_raise_decode_error(data):
    """A clip as a list of mutated encoded frames; video bytes given to the image decoder
    and image bytes to the video decoder (FFmpeg demuxes some image formats)."""
    images = [b for seeds in IMAGES.values() for b in seeds]
    frames = data.draw(st.lists(mutated(images), min_size=1, max_size=5))
    _decodes_within_limits_or_refuses(VIDEO_SPEC, frames)
    _decodes_within_limits_or_refuses(VIDEO_SPEC, data.draw(mutated(images)))
    _decodes_within_limits_or_refuses(IMAGE_SPEC, data.draw(mutated(ALL)))
