"""Decoding real encoded bytes of every supported format and mode."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps

from components.media.image import Deadline, DecodeError, decode_image
from components.media.spec import MediaSpec
from tests.media_bytes import encode

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


def test_a_dark_16_bit_greyscale_png_is_scaled_by_its_bit_depth_not_its_range():
    """16-bit samples map 65535 -> 255 whatever the image holds: a dark picture (every value
    <= 255 of 65535) stays dark, not ~257x too bright (#23). Real 16-bit PNG bytes, written
    by Pillow from mode I;16 (older Pillows read them back as mode I, handled alike)."""
    dark = np.linspace(0, 255, 30 * 30).reshape(30, 30).astype(np.uint16)  # all <= 255
    buf = io.BytesIO()
    Image.fromarray(dark).save(buf, "PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode in ("I;16", "I")
    out, _ = decode_image(buf.getvalue(), 30, 10**6)
    np.testing.assert_allclose(out[0].astype(int), np.round(dark / 257).astype(int), atol=1)
    assert out.max() <= 1
    full = (np.linspace(0, 65535, 30 * 30).reshape(30, 30)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(full).save(buf, "PNG")
    out, _ = decode_image(buf.getvalue(), 30, 10**6)
    np.testing.assert_allclose(out[1].astype(int), np.round(full / 257).astype(int), atol=1)


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


# --- hostile and broken input (issue 12) ----------------------------------------------------


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "GIF", "ICO", "PCX", "SGI", "PPM", "EPS"])
def test_formats_outside_the_contract_are_refused_by_name(fmt):
    """Pillow reads all of these; the contract admits JPEG, PNG and WebP only."""
    data = _save(Image.fromarray(RGB), fmt)
    with pytest.raises(DecodeError) as e:
        decode_image(data, 32, 10**6)
    assert e.value.reason == (f"not a decodable image (looks like {fmt}; "
                              "only JPEG, PNG and WebP are accepted)")


def test_a_format_without_a_signature_is_refused():
    """TGA has no magic bytes: Pillow would try its parser on anything; refused all the same."""
    with pytest.raises(DecodeError, match=r"^not a decodable image \(.*JPEG, PNG"):
        decode_image(_save(Image.fromarray(RGB), "TGA"), 32, 10**6)


def test_eps_never_reaches_its_parser_or_ghostscript(monkeypatch):
    from PIL import EpsImagePlugin

    reached = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: reached.append("parser"))
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: reached.append("gs"))
    with pytest.raises(DecodeError, match="looks like EPS"):
        decode_image(_save(Image.fromarray(RGB), "EPS"), 32, 10**6)
    assert reached == []


# Upright test picture: four quadrants of different colours, wider than tall.
_QUADRANTS = {(0, 0): (255, 0, 0), (0, 1): (0, 255, 0), (1, 0): (0, 0, 255), (1, 1): (255, 255, 0)}
# Pillow's ImageOps.exif_transpose turns orientation o with transpose _TURN[o]; storing the
# upright picture turned by the inverse makes a file that displays upright.
_INVERSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_270}


def _upright_picture(h: int = 40, w: int = 60) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    for (r, c), colour in _QUADRANTS.items():
        arr[r * h // 2:(r + 1) * h // 2, c * w // 2:(c + 1) * w // 2] = colour
    return Image.fromarray(arr)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(fmt, orientation):
    upright = _upright_picture()
    stored = upright.transpose(_INVERSE[orientation]) if orientation != 1 else upright
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    data = _save(stored, fmt, exif=exif.tobytes(), quality=95)
    # The file is what we think it is: Pillow's own full-size transpose shows it upright.
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert reference.size == (60, 40)
    out, (w, h) = decode_image(data, 32, 10**6)
    assert (w, h) == stored.size  # the header's size, as stored
    for (r, c), colour in _QUADRANTS.items():  # 8x8 px well inside each quadrant of the crop
        patch = out[:, 4 + 20 * r:12 + 20 * r, 4 + 20 * c:12 + 20 * c].reshape(3, -1).mean(axis=1)
        assert np.abs(patch - colour).max() < 30, (orientation, (r, c), patch)


def test_same_pixels_as_resizing_the_whole_image_then_cropping():
    """The decoder resamples only the source box of the centre crop, box-reducing it a strip
    at a time; the result is what converting, resizing and cropping the whole image gives."""
    photo = Image.fromarray(RNG.integers(0, 255, (300, 500, 3), dtype=np.uint8)).convert("RGBA")
    photo.putalpha(Image.linear_gradient("L").resize((500, 300)))
    rgb = Image.alpha_composite(Image.new("RGBA", photo.size, (255,) * 4), photo).convert("RGB")
    for size in (24, 64, 250):
        out, _ = decode_image(_save(photo, "PNG"), size, 10**6)
        nw = round(500 * size / 300)
        ref = rgb.resize((nw, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        ref = np.asarray(ref.crop(((nw - size) // 2, 0, (nw - size) // 2 + size, size)))
        assert np.abs(out.transpose(1, 2, 0).astype(int) - ref).max() <= 1, size


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
def test_a_highly_compressed_image_costs_one_full_size_copy(tmp_path):
    """A flat 4000 x 4000 RGBA PNG is ~60 KB and a 61 MiB raster. Converting, compositing and
    resizing the whole image (the old decoder) raised peak memory by 304 MiB, 5 rasters; now
    the raster is the one full-size copy, plus strips (64 MiB). Peak RSS is measured in a
    fresh process, as VmHWM: getrusage's ru_maxrss would start from pytest's peak."""
    img = Image.new("RGBA", (4000, 4000), (255, 0, 0, 128))
    img.paste((0, 0, 255, 255), (0, 0, 4000, 2000))
    img.save(tmp_path / "flat.png")
    Image.new("RGBA", (300, 300), (1, 2, 3, 4)).save(tmp_path / "small.png")
    assert (tmp_path / "flat.png").stat().st_size < 200_000
    code = f"""
from components.media.image import decode_image

def peak():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024

decode_image(open({str(tmp_path / "small.png")!r}, "rb").read(), 64, 10**8)  # warm up
data = open({str(tmp_path / "flat.png")!r}, "rb").read()
before = peak()
out, _ = decode_image(data, 64, 10**8)
print(peak() - before, *out[:, 5, 32], *out[:, 60, 32])
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    grew, *pixels = map(int, res.stdout.split())
    raster = 4000 * 4000 * 4
    assert grew < 1.5 * raster, f"peak grew {grew / 2**20:.0f} MiB for a {raster / 2**20:.0f} MiB raster"
    assert pixels == [0, 0, 255, 255, 127, 127]  # top blue; red at alpha 128/255 on white


def test_deadline_names_its_config_key():
    png = encode(RGB, "PNG")
    with pytest.raises(DecodeError, match=r"^decode exceeded 1e-09 s \(data\.decode_timeout_s\)"):
        decode_image(png, 32, 10**6, Deadline.start(1e-9))
    spec = MediaSpec("image", 32, 10**6, decode_timeout_s=1e-9)
    with pytest.raises(DecodeError, match="decode exceeded"):
        spec.decode(png)
    assert MediaSpec("image", 32, 10**6).decode(png)[0].shape == (3, 32, 32)  # 30 s default


def test_deadline_is_checked_while_converting_a_large_image(monkeypatch):
    """A clock that moves one second per reading: the header and the pixel decode pass a
    5 s deadline, the strip-by-strip conversion of a 3000 x 3000 image does not."""
    import components.media.image as image_module

    ticks = iter(range(10**6))
    monkeypatch.setattr(image_module, "monotonic", lambda: float(next(ticks)))
    data = _save(Image.new("L", (3000, 3000), 90), "PNG")
    with pytest.raises(DecodeError, match=r"decode exceeded 5 s .* converting the image \(row \d+"):
        decode_image(data, 64, 10**8, Deadline.start(5.0))


def test_decode_settings_come_from_the_config():
    from components.config import ConfigError, DataConfig, load_config

    d = DataConfig(decode_timeout_s=7.5)
    d.video.max_decoded_pixels = 123_456
    assert MediaSpec.from_config("image", d).decode_timeout_s == 7.5
    video = MediaSpec.from_config("video", d)
    assert (video.decode_timeout_s, video.max_decoded_pixels) == (7.5, 123_456)
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["data.decode_timeout_s=0", "data.video.max_decoded_pixels=0"],
                    require_train=False, modality="video")
    assert "data.decode_timeout_s" in str(e.value) and "max_decoded_pixels" in str(e.value)


@pytest.mark.parametrize("modality", ["image", "video"])
@pytest.mark.parametrize("value", ["photos/a.jpg", 3.5, 12, float("nan")])
def test_a_value_that_is_not_bytes_is_a_decode_error_not_a_crash(modality, value):
    """What a consumer's DataFrame may hold in the media column: a path, a number, NaN."""
    from components.media.spec import MediaSpec

    spec = MediaSpec(modality, 16, 10**6, frames=2 if modality == "video" else 0)
    with pytest.raises(DecodeError) as e:
        spec.decode(value)
    if isinstance(value, float) and value != value:
        assert e.value.reason == f"null {modality}"
    else:
        assert f"got a {type(value).__name__} value" in e.value.reason


def test_loading_the_webp_decoder_is_not_charged_to_the_first_items_deadline():
    """The first large WebP in a process loads torchvision's decoder (torch + torchvision: about
    2 s on an idle core, far more on a busy one). That one-time load is not the item's decode
    time: under a 0.2 s ``data.decode_timeout_s`` the first WebP of a fresh process decodes
    (through torchvision, which was not loaded before), and a decode that really runs past
    its deadline is still refused."""
    script = (
        "import sys, time\n"
        "from components.media.image import Deadline, DecodeError\n"
        "from components.media.spec import MediaSpec\n"
        "from tests.media_bytes import photo_bytes\n"
        "assert 'torchvision' not in sys.modules\n"
        "spec = MediaSpec('image', 32, 10**8, decode_timeout_s=0.2)\n"
        "began = time.monotonic()\n"
        "pixels, size, _ = spec.decode(photo_bytes(512, 'WEBP'))\n"
        "assert 'torchvision' in sys.modules and pixels.shape == (3, 32, 32), size\n"
        "print('first', round(time.monotonic() - began, 2))\n"
        "late = Deadline.start(0.01)\n"
        "time.sleep(0.05)\n"
        "try:\n"
        "    late.check('after the header')\n"
        "except DecodeError as e:\n"
        "    print('refused', e.reason)\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first = float(out.stdout.split("first ")[1].split()[0])
    assert first > 0.2  # the load itself took longer than the budget: the case this covers
    assert "refused decode exceeded 0.01 s (data.decode_timeout_s) after the header" in out.stdout
