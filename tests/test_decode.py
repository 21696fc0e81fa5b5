"""Decoding real encoded bytes of every supported format and mode."""

import io

import numpy as np
import pytest
from PIL import Image

from components.media.image import DecodeError, decode_image
from tests.conftest import encode

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 255, (40, 60, 3), dtype=np.uint8)  # H=40, W=60: not square


@pytest.mark.parametrize(
    "fmt,kw", [("JPEG", {"quality": 90}), ("PNG", {}), ("WEBP", {"quality": 90}), ("WEBP", {"lossless": True})]
)
def test_rgb_formats_decode_to_uint8_chw(fmt, kw):
    arr, (w, h) = decode_image(encode(RGB, fmt, **kw), 32, 10**6)
    assert arr.dtype == np.uint8 and arr.shape == (3, 32, 32)
    assert (w, h) == (60, 40)
    assert arr.std() > 20  # real pixels, not a blank


def test_lossless_decode_keeps_pixels_and_crops_the_centre():
    # A 48x32 PNG resized by 1.0 (shorter side 32 -> 32): the centre crop is columns 8..40.
    arr = RNG.integers(0, 255, (32, 48, 3), dtype=np.uint8)
    out, _ = decode_image(encode(arr, "PNG"), 32, 10**6)
    np.testing.assert_array_equal(out, arr[:, 8:40].transpose(2, 0, 1))


def test_modes_become_rgb():
    gray = RNG.integers(0, 255, (30, 30), dtype=np.uint8)
    out, _ = decode_image(encode(gray, "PNG"), 30, 10**6)
    assert out.shape == (3, 30, 30)
    np.testing.assert_array_equal(out[0], gray)
    np.testing.assert_array_equal(out[1], gray)

    rgba = np.zeros((30, 30, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:, :15, 3] = 255  # left half opaque red, right half transparent
    out, _ = decode_image(encode(rgba, "PNG", mode="RGBA"), 30, 10**6)
    assert tuple(out[:, 5, 5]) == (255, 0, 0)
    assert tuple(out[:, 5, 25]) == (255, 255, 255)  # transparent -> white background

    pal = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buf = io.BytesIO()
    pal.save(buf, "PNG")
    out, _ = decode_image(buf.getvalue(), 32, 10**6)
    assert out.shape == (3, 32, 32) and out.std() > 10

    la = Image.fromarray(gray).convert("LA")
    buf = io.BytesIO()
    la.save(buf, "PNG")
    assert decode_image(buf.getvalue(), 16, 10**6)[0].shape == (3, 16, 16)

    g16 = (gray.astype(np.uint16) * 257)
    buf = io.BytesIO()
    Image.fromarray(g16).save(buf, "PNG")
    out, _ = decode_image(buf.getvalue(), 30, 10**6)
    np.testing.assert_allclose(out[0].astype(int), gray.astype(int), atol=1)


def test_large_jpeg_is_downscaled():
    big = np.repeat(np.repeat(RGB, 10, axis=0), 10, axis=1)  # 400 x 600
    out, (w, h) = decode_image(encode(big, "JPEG", quality=90), 64, 10**7)
    assert out.shape == (3, 64, 64) and (w, h) == (600, 400)


def test_bad_inputs_raise_decode_error_with_reason():
    with pytest.raises(DecodeError, match="null image"):
        decode_image(None, 32, 10**6)
    with pytest.raises(DecodeError, match="empty"):
        decode_image(b"", 32, 10**6)
    with pytest.raises(DecodeError, match="not a decodable image"):
        decode_image(b"definitely not an image", 32, 10**6)
    png = encode(RGB, "PNG")
    with pytest.raises(DecodeError, match="corrupt"):
        decode_image(png[: len(png) // 2], 32, 10**6)


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    # Truncated data that would fail to decode: the limit must fire first, proving that the
    # check reads only the header.
    png = encode(RGB, "PNG")
    with pytest.raises(DecodeError, match="over data.max_pixels=1000"):
        decode_image(png[: len(png) // 2], 32, 1000)
