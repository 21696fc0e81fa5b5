"""benchmarks/decoders.py compares like with like: its PyAV sequential and seeking decoders
pick the same frames as ``decode_video`` and give the same pixels, and its reduced-scale JPEG
decoders give ``decode_image``'s pixels. And the decoder it led to adopt (torchvision's
``decode_webp`` for a still RGB WebP) changes neither the pixels nor the hardening: the pixel
budget is checked first, RGBA and animated WebPs stay with Pillow, errors are Pillow's.
Small media, no Ray: seconds."""

from __future__ import annotations

import importlib.util
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torchvision.io
from PIL import Image

from components.media import image as image_mod
from components.media.image import DecodeError, decode_image
from components.media.spec import MediaSpec
from components.media.video import decode_video
from components.sample.videos import ClipEncoding, write_video_pairs

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("decoders_bench", ROOT / "benchmarks" / "decoders.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    d = tmp_path_factory.mktemp("bench-clips")
    write_video_pairs(str(d), pairs=2, size=(64, 36), frames=24, shards=1, eval_fraction=0.5,
                      encoding=ClipEncoding("h264", fps=8, gop=8))
    import pyarrow.parquet as pq

    return pq.read_table(d / "train" / "part-00000.parquet").column("chosen")[0].as_py()


@pytest.mark.parametrize("mode", [{"fps": 2, "frames": 6, "size": 32, "source": (64, 36)},
                                  {"fps": 0, "frames": 5, "size": 16, "source": (64, 36)}])
def test_pyav_decoders_match_decode_video(clip, mode):
    spec = MediaSpec("video", mode["size"], 1 << 20, frames=mode["frames"], fps=mode["fps"])
    ours = decode_video(clip, spec)[0]
    seq, decoded = bench.pyav_sequential(clip, mode, "1")
    seek, _ = bench.pyav_seek(clip, mode)
    assert seq.shape == ours.shape == (3, mode["frames"], mode["size"], mode["size"])
    np.testing.assert_array_equal(seq, ours)
    np.testing.assert_array_equal(seek, ours)
    want = bench.sampled_indices(24, 8.0, mode)
    assert decoded == max(want) + 1  # sequential stops at the last sampled frame


def test_scaled_jpeg_decode_matches_decode_image():
    rng = np.random.default_rng(0)
    arr = np.kron(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)  # 240 x 320
    b = buf.getvalue()
    for t in (48, 100):
        np.testing.assert_array_equal(bench.fit(bench.pillow_draft(b, t), t),
                                      decode_image(b, t, 1 << 20)[0])


def test_the_markdown_table_has_a_row_per_case():
    result = {"images": [{"format": "jpeg", "decoder": "pillow", "output": "full",
                          "images_per_s_per_core": 500.0, "images_per_s_wall": 400.0,
                          "max_abs_diff": 0.0}],
              "video": [{"codec": "h264", "sampling": "16 frames, 224 px", "decoder": "x",
                         "frames_decoded": 72, "frames_per_s_per_core": 10.0,
                         "clips_per_s_per_core": 0.6, "frames_per_s_wall": 9.0,
                         "mean_abs_diff_vs_decode_video": 0.0}]}
    text = bench.markdown(result)
    assert "| jpeg | pillow | full RGB | 500.0 | 400.0 | 0 |" in text
    assert "| h264 | 16 frames, 224 px | x | 72 | 10.0 | 0.6 | 9.0 | 0.0 |" in text


# --- the adopted WebP fast path (components.media.image._fast_pixels) ------------------------
#
# A still RGB WebP's pixels come from torchvision's decode_webp once Pillow has read (and the
# pixel budget has passed) the header; everything else, and every error, is Pillow's.

def _webp(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "WEBP", **kw)
    return buf.getvalue()


def _photo_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: lossy WebP has both flat and busy blocks to upsample."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def decode_webp_calls(monkeypatch):
    """Every call of torchvision's decode_webp made by decode_image, recorded."""
    calls = []
    real = torchvision.io.decode_webp

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_webp", spy)
    return calls


@pytest.fixture
def webp_calls(decode_webp_calls, monkeypatch):
    """``decode_webp_calls`` with the fast path taken at every size (``FAST_WEBP_MIN_PIXELS=0``),
    so the small pictures below check its pixels and its hardening; the size rule itself is
    tested on its own."""
    monkeypatch.setattr(image_mod, "FAST_WEBP_MIN_PIXELS", 0)
    return decode_webp_calls


def _pillow_only(monkeypatch, b: bytes, size: int, max_pixels: int = 1 << 24):
    """decode_image's result with the fast path turned off: Pillow decodes every pixel."""
    with monkeypatch.context() as m:
        m.setattr(image_mod, "_fast_pixels", lambda data, img: None)
        return decode_image(b, size, max_pixels)


def test_only_webps_of_the_size_where_it_pays_take_the_fast_path(decode_webp_calls,
                                                                 monkeypatch):
    """Below ``FAST_WEBP_MIN_PIXELS`` Pillow decodes (the process need not load torchvision for
    a gain under a millisecond); from it, torchvision does, with Pillow's pixels."""
    calls = decode_webp_calls
    side = int(image_mod.FAST_WEBP_MIN_PIXELS ** 0.5)
    small = _webp(_photo_like(side - 1, side), quality=85)
    assert decode_image(small, 32, 1 << 24)[0].shape == (3, 32, 32) and calls == []
    large = _webp(_photo_like(side, side), quality=85)
    ours = decode_image(large, 64, 1 << 24)[0]
    assert len(calls) == 1
    np.testing.assert_array_equal(ours, _pillow_only(monkeypatch, large, 64)[0])


@pytest.mark.parametrize("kw", [{"quality": 80}, {"quality": 95}, {"lossless": True}])
def test_still_rgb_webp_decodes_to_pillows_pixels(kw, webp_calls, monkeypatch):
    b = _webp(_photo_like(150, 212), **kw)
    with Image.open(io.BytesIO(b)) as img:
        assert img.mode == "RGB"
        pillow_full = np.asarray(img.convert("RGB"))
        fast = image_mod._fast_pixels(b, img)
    assert fast is not None and webp_calls
    np.testing.assert_array_equal(np.asarray(fast), pillow_full)  # the full raster, exactly
    for size in (32, 150):
        ours, wh = decode_image(b, size, 1 << 24)
        pillow, pillow_wh = _pillow_only(monkeypatch, b, size)
        assert wh == pillow_wh == (212, 150)
        np.testing.assert_array_equal(ours, pillow)


def test_webp_exif_orientation_is_the_same_on_the_fast_path(webp_calls, monkeypatch):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise
    b = _webp(_photo_like(80, 120, seed=1), quality=90, exif=exif.tobytes())
    ours = decode_image(b, 40, 1 << 24)[0]
    assert webp_calls
    np.testing.assert_array_equal(ours, _pillow_only(monkeypatch, b, 40)[0])


def test_rgba_and_animated_webp_take_pillows_path(webp_calls):
    rgba = np.dstack([_photo_like(64, 64), np.full((64, 64), 128, np.uint8)])
    still_rgba = _webp(rgba, lossless=True)
    frames = [Image.fromarray(_photo_like(64, 64, seed=s)) for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=100,
                   quality=90)
    animated = buf.getvalue()
    with Image.open(io.BytesIO(animated)) as img:
        assert img.is_animated
    for b in (still_rgba, animated):
        with Image.open(io.BytesIO(b)) as img:
            assert image_mod._fast_pixels(b, img) is None
        out, wh = decode_image(b, 32, 1 << 24)
        assert out.shape == (3, 32, 32) and wh == (64, 64)
    assert webp_calls == []  # torchvision never saw them
    # The animation's first frame, as Pillow gives it; the alpha composited on white.
    with Image.open(io.BytesIO(animated)) as img:
        first = img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
    assert np.abs(decode_image(animated, 32, 1 << 24)[0].transpose(1, 2, 0).astype(int)
                  - np.asarray(first)).mean() < 8


def test_webp_over_the_pixel_budget_is_refused_before_any_decode(webp_calls):
    b = _webp(_photo_like(100, 120), quality=80)
    with pytest.raises(DecodeError) as e:
        decode_image(b, 32, max_pixels=120 * 100 - 1)
    assert e.value.reason == "image is 120x100 = 12000 pixels, over data.max_pixels=11999"
    assert webp_calls == []
    decode_image(b, 32, max_pixels=120 * 100)  # at the budget: decoded, on the fast path
    assert len(webp_calls) == 1


def test_truncated_webp_is_a_decode_error(webp_calls):
    b = _webp(_photo_like(96, 128), quality=80)
    for cut in (40, len(b) // 2, len(b) - 10):
        with pytest.raises(DecodeError, match="not a decodable image"):
            decode_image(b[:cut], 32, 1 << 24)  # Pillow's header read refuses it
    assert webp_calls == []
    # Cut, with the RIFF and VP8 chunk sizes patched to the new length: the header reads, so
    # torchvision gets the bytes and fails; Pillow then decodes and gives its error.
    t = bytearray(b[:-10])
    t[4:8], t[16:20] = struct.pack("<I", len(t) - 8), struct.pack("<I", len(t) - 20)
    with pytest.raises(DecodeError, match="corrupt image data"):
        decode_image(bytes(t), 32, 1 << 24)
    assert len(webp_calls) == 1


def test_fast_path_errors_and_size_mismatches_fall_back_to_pillow(monkeypatch):
    import torch

    b = _webp(_photo_like(64, 80), quality=85)
    want = _pillow_only(monkeypatch, b, 32)[0]
    for fake in (lambda *a, **k: (_ for _ in ()).throw(RuntimeError("libwebp says no")),
                 lambda *a, **k: torch.zeros((3, 8, 8), dtype=torch.uint8)):
        monkeypatch.setattr(torchvision.io, "decode_webp", fake)
        np.testing.assert_array_equal(decode_image(b, 32, 1 << 24)[0], want)


def test_corrupt_png_stream_is_a_decode_error():
    """A PNG whose zlib stream is broken (chunk CRCs intact). Pillow's PNG getexif() loads the
    image; were the orientation read before the load, its swallowed error would leave Pillow
    handing back a zero-filled raster on the next load()."""
    buf = io.BytesIO()
    Image.fromarray(_photo_like(64, 64)).save(buf, "PNG")
    b = bytearray(buf.getvalue())
    i = b.index(b"IDAT")
    n = struct.unpack(">I", b[i - 4:i])[0]
    b[i + 6:i + 44] = b"\xff" * 38
    b[i + 4 + n:i + 8 + n] = struct.pack(">I", zlib.crc32(b[i:i + 4 + n]))
    with pytest.raises(DecodeError, match="corrupt image data"):
        decode_image(bytes(b), 32, 1 << 24)
