"""Decode encoded images (JPEG/PNG/WebP, any mode) to uint8 ``(3, S, S)`` arrays.

Hostile input is bounded per call, without touching Pillow's process-wide settings:

* only ``ACCEPTED_FORMATS`` are parsed (Pillow's ``formats=`` allow-list): TIFF, BMP, GIF,
  ICO, EPS (which Pillow renders with Ghostscript), ... are refused before any of their
  parsers runs;
* the pixel count is checked from the header (``data.max_pixels``) before the pixels are
  decoded, and JPEGs decode at 1/2 .. 1/8 scale when the target is much smaller (``draft``);
* Pillow decodes, except a still RGB WebP: after Pillow has read its header, torchvision's
  ``decode_webp`` decodes its pixels (measured faster, the same pixels; ``_fast_pixels``,
  docs/decoders.md), and any error there goes back to Pillow, so the output and the errors
  are Pillow's whichever decoder ran (the full-size raster then briefly exists twice:
  libwebp's RGB buffer and Pillow's copy of it);
* memory: the decoded image is the one full-size copy. Only the part the centre crop reads
  is converted to RGB, a strip at a time, each strip box-reduced (``reduce``) on the way. A
  flat 4000 x 4000 RGBA PNG (60 KB, a 61 MiB raster) raised peak memory by 304 MiB when the
  whole image was converted, composited on white and resized; now by 64 MiB;
* a ``Deadline`` (``data.decode_timeout_s``) is checked after the header, after the pixel
  decode and between strips. Pillow decodes the pixels in one call that cannot be
  interrupted; its cost is what the pixel limit and ``draft`` bound.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from time import monotonic

import numpy as np
from PIL import ExifTags, Image, ImageOps

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
"""What the data contract admits; Pillow's other parsers never see the bytes."""
REDUCING_GAP = 3.0
"""Box-reduce by an integer factor while the result stays >= 3x the target, then resample
bilinearly (Pillow's ``reducing_gap``)."""
_STRIP_PIXELS = 1 << 18  # source pixels converted at a time (1 MB of RGBA)


class DecodeError(ValueError):
    """An input that cannot be used; ``reason`` goes into the quarantine record."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


_SETUP_S = 0.0
"""Seconds this process spent loading decoders on first use (``_webp_decoder``): not charged
to the deadline of the item that happened to need them first. Importing torch and
torchvision takes about 2 s on an idle core and longer on a loaded one; charged to the item,
it refused the first WebP of a fresh process at a 0.2 s budget (tests/test_decode.py)."""
_WEBP: tuple | None = None  # (torch, torchvision.io), or () when unavailable

FAST_WEBP_MIN_PIXELS = 512 * 512
"""The smallest still WebP (width x height) whose pixels come from torchvision. Loading torch
and torchvision costs a process 2-3 CPU-s (2.4 in a decode actor of the image workflow);
the decode it saves is about 0.1 ms a picture at 256 px, 0.5 ms at 512 px and 1.2 ms at
1024 px (one core of the 2-core test machine; docs/decoders.md has the 1024 px run). So a
process that decodes only small WebPs (thumbnails, the test sets) never loads them; the
first large WebP loads them, once for the process."""


def _webp_decoder() -> tuple:
    """torchvision's WebP decoder, loaded once per process (its load time goes to
    ``_SETUP_S``); ``()`` when torchvision cannot be imported."""
    global _WEBP, _SETUP_S
    if _WEBP is None:
        began = monotonic()
        try:
            import torch
            import torchvision.io

            _WEBP = (torch, torchvision.io)
        except Exception:  # no torchvision: Pillow decodes every WebP
            _WEBP = ()
        _SETUP_S += monotonic() - began
    return _WEBP


@dataclass(frozen=True)
class Deadline:
    """The wall-clock budget of one item's decode (``data.decode_timeout_s``).

    Decoders call ``check`` between the steps they control; a step in progress (one Pillow
    decode, one FFmpeg frame) is not interrupted.
    """

    timeout_s: float
    ends: float  # time.monotonic() at which it expires
    setup_s: float = 0.0  # the process's decoder setup time (_SETUP_S) when it started

    @classmethod
    def start(cls, timeout_s: float) -> Deadline:
        return cls(timeout_s, monotonic() + timeout_s, _SETUP_S)

    def check(self, progress: str) -> None:
        """Raise ``DecodeError`` when the deadline has passed; ``progress`` says how far the
        decode got (``"after decoding 12 frames"``). A decoder's one-time setup in this
        process (loading torchvision for the first WebP) is not the item's time."""
        if monotonic() - (_SETUP_S - self.setup_s) > self.ends:
            raise DecodeError(
                f"decode exceeded {self.timeout_s:g} s (data.decode_timeout_s) {progress}"
            )


def decode_image(
    data: bytes | None, size: int, max_pixels: int, deadline: Deadline | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded bytes -> (uint8 array ``(3, size, size)``, original ``(width, height)``).

    The shorter side is resized to ``size`` and the centre ``size x size`` crop kept, so any
    aspect ratio works; the EXIF orientation is applied, so the crop is upright. Grayscale,
    palette, RGBA (composited on white), CMYK and 16-bit inputs all become RGB. Only JPEG,
    PNG and WebP are opened; the pixel count is checked from the header, before the full
    decode. ``deadline`` (shared by the frames of a clip) is checked between steps.
    """
    if data is None:
        raise DecodeError("null image")
    if len(data) == 0:
        raise DecodeError("empty image bytes")
    img = _open(bytes(data))
    w, h = img.size
    if w * h > max_pixels:
        raise DecodeError(f"image is {w}x{h} = {w * h} pixels, over data.max_pixels={max_pixels}")
    if deadline:
        deadline.check("after reading the image header")
    if img.format in ("JPEG", "MPO"):  # MPO: a JPEG with more pictures after the first
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the target is much smaller.
        img.draft("RGB", (size, size))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = _fast_pixels(data, img)
            if pixels is None:
                img.load()
                pixels = img
            # After the load: a PNG's getexif() loads the image itself, and _orientation
            # swallows errors, so reading it first would hide a corrupt PNG's decode error
            # (Pillow then hands back the zero-filled raster on the next load()).
            orientation = _orientation(img)
            crop = _centre_crop(pixels, size, deadline)
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(f"corrupt image data ({type(e).__name__}: {e})") from None
    del img, pixels  # the full-size raster: freed before the (small) rest
    if orientation != 1:
        crop = _upright(crop, orientation)
    arr = np.asarray(crop, dtype=np.uint8).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    return np.ascontiguousarray(arr), (w, h)


def _open(data: bytes) -> Image.Image:
    try:
        # Pillow's decompression-bomb guard stays on (nothing here changes process-wide
        # settings); its warning below its error threshold is ours to report, per call.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
    except Image.DecompressionBombError as e:
        raise DecodeError(f"image is over Pillow's decompression-bomb limit ({e})") from None
    except Image.UnidentifiedImageError:
        raise DecodeError(f"not a decodable image ({_refused_format(data[:16])})") from None
    except Exception as e:  # an accepted format's parser raises several types on bad headers
        raise DecodeError(f"not a decodable image ({type(e).__name__}: {e})") from None


def _fast_pixels(data: bytes, img: Image.Image) -> Image.Image | None:
    """``img``'s pixels (its header read by Pillow) from a faster decoder that gives the same
    pixels as Pillow, or None: Pillow decodes them.

    Measured per core on 1024 px images (docs/decoders.md): a WebP's full decode is about 1.35x
    as fast through torchvision's ``decode_webp`` as through Pillow, which goes through
    libwebp's animation decoder for every WebP (about 1.1x end to end to a 224 px input, the
    resize being the same); the pixels were identical. Only a still RGB WebP is taken (an
    alpha channel is composited by ``_to_rgb``, animations keep Pillow's first frame); a
    result of another size, or any error, falls back to Pillow, which then gives the pixels
    or the error it always gave. JPEGs stay with Pillow: its ``draft`` already decodes at
    reduced scale, and neither simplejpeg nor PyTurboJPEG at that scale was faster.
    """
    if img.format != "WEBP" or img.mode != "RGB" or getattr(img, "is_animated", False):
        return None
    if img.width * img.height < FAST_WEBP_MIN_PIXELS:
        return None
    decoder = _webp_decoder()
    if not decoder:
        return None
    torch, tv_io = decoder
    try:
        chw = tv_io.decode_webp(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                tv_io.ImageReadMode.RGB)
    except Exception:  # a decoder's complaint; Pillow decides whether the bytes are usable
        return None
    if tuple(chw.shape) != (3, img.height, img.width):
        return None
    return Image.fromarray(chw.permute(1, 2, 0).numpy())  # (H, W, 3): libwebp's own buffer


def _refused_format(prefix: bytes) -> str:
    """Why Pillow found no accepted format: the refused format whose signature the bytes
    match (only the plugins' signature tests run, never their parsers; a few signatures are
    weak, hence "looks like"), else not image data we know."""
    for name, (_, accept) in Image.OPEN.items():
        if name in ACCEPTED_FORMATS or accept is None:
            continue
        try:
            matched = accept(prefix) is True
        except Exception:  # a signature test on hostile bytes; not ours to report
            continue
        if matched:
            return f"looks like {name}; only JPEG, PNG and WebP are accepted"
    return "not JPEG, PNG or WebP data"


def _orientation(img: Image.Image) -> int:
    """The EXIF (or XMP) orientation, 1 (upright) when absent or unreadable: a damaged
    metadata block does not make the pixels unusable."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return 1
    return value if value in range(1, 9) else 1


def _upright(crop: Image.Image, orientation: int) -> Image.Image:
    """Apply the source's orientation to the ``size x size`` crop: a rotation or flip of the
    whole image moves its centre square onto itself (to a pixel of rounding), so turning the
    small crop is the same as turning the full-size image first, without the full-size copy.
    """
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    crop.info["exif"] = exif.tobytes()
    return ImageOps.exif_transpose(crop)


def _centre_crop(img: Image.Image, size: int, deadline: Deadline | None) -> Image.Image:
    """Shorter side resized to ``size``, centre ``size x size`` crop, as RGB.

    The same output pixels as resizing the whole image and then cropping, but computed from
    the source box those pixels come from: Pillow's ``resize(box=...)`` samples exactly
    there, and only that box (plus the filter's reach) is converted and reduced.
    """
    iw, ih = img.size
    scale = size / min(iw, ih)
    nw, nh = max(size, round(iw * scale)), max(size, round(ih * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    sx, sy = iw / nw, ih / nh  # source pixels per output pixel
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    fx, fy = max(1, int(sx / REDUCING_GAP)), max(1, int(sy / REDUCING_GAP))
    # The bilinear filter reads up to one output pixel (sx, sy source pixels) beyond the box;
    # whole reduce blocks on the grid of a whole-image reduce, so the pixels are the same.
    x0, y0 = _down(max(0, box[0] - sx - 1), fx), _down(max(0, box[1] - sy - 1), fy)
    x1, y1 = min(iw, _up(box[2] + sx + 1, fx)), min(ih, _up(box[3] + sy + 1, fy))
    rgb = _reduced_rgb(img, (x0, y0, x1, y1), fx, fy, deadline)
    inner = ((box[0] - x0) / fx, (box[1] - y0) / fy, (box[2] - x0) / fx, (box[3] - y0) / fy)
    return rgb.resize((size, size), Image.Resampling.BILINEAR, box=inner)


def _down(x: float, step: int) -> int:
    return math.floor(x) // step * step


def _up(x: float, step: int) -> int:
    return -(-math.ceil(x) // step) * step


def _reduced_rgb(img: Image.Image, region: tuple[int, int, int, int], fx: int, fy: int,
                 deadline: Deadline | None) -> Image.Image:
    """``region`` of ``img`` as RGB, box-reduced by ``(fx, fy)``, converted a strip at a time
    so no second full-size copy exists. Strips are whole multiples of ``fy`` rows, so the
    reduction is the same as reducing the region in one go."""
    x0, y0, x1, y1 = region
    out = Image.new("RGB", (math.ceil((x1 - x0) / fx), math.ceil((y1 - y0) / fy)))
    rows = max(fy, _STRIP_PIXELS // max(1, x1 - x0) // fy * fy)
    for top in range(y0, y1, rows):
        strip = _to_rgb(img.crop((x0, top, x1, min(top + rows, y1))))
        if fx > 1 or fy > 1:
            strip = strip.reduce((fx, fy))
        out.paste(strip, (0, (top - y0) // fy))
        if deadline:
            deadline.check(f"converting the image (row {top} of {img.height})")
    return out


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
"""Pillow's modes of a 16-bit greyscale PNG (``I`` in older Pillows): samples 0..65535."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in SIXTEEN_BIT_MODES:
        # Scaled by the bit depth (65535 -> 255), never by the values present: a dark image
        # (every sample <= 255) stays dark. PNG encoders scale lower sample depths (sBIT) up
        # to the full 16 bits, so this holds for them too.
        arr = np.asarray(img, dtype=np.float32)
        img = Image.fromarray(np.rint(arr * (255.0 / 65535.0)).clip(0, 255).astype(np.uint8), "L")
    return img.convert("RGB")
