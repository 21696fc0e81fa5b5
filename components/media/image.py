"""Decode encoded images (JPEG/PNG/WebP, any mode) to uint8 ``(3, S, S)`` arrays."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image


class DecodeError(ValueError):
    """An input that cannot be used; ``reason`` goes into the quarantine record."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def decode_image(data: bytes | None, size: int, max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded bytes -> (uint8 array ``(3, size, size)``, original ``(width, height)``).

    The shorter side is resized to ``size`` and the centre ``size x size`` crop kept, so any
    aspect ratio works. Grayscale, palette, RGBA (composited on white), CMYK and 16-bit inputs
    all become RGB. The pixel count is checked from the header, before the full decode.
    """
    if data is None:
        raise DecodeError("null image")
    if len(data) == 0:
        raise DecodeError("empty image bytes")
    try:
        # Pillow's decompression-bomb guard stays on (nothing here changes process-wide
        # settings); its warning below its error threshold is ours to report, per call.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise DecodeError(f"image is over Pillow's decompression-bomb limit ({e})") from None
    except Exception as e:  # PIL raises several types for unknown formats
        raise DecodeError(f"not a decodable image ({type(e).__name__}: {e})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise DecodeError(f"image is {w}x{h} = {w * h} pixels, over data.max_pixels={max_pixels}")
    if img.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the target is much smaller.
        img.draft("RGB", (size, size))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
        img = _to_rgb(img)
    except Exception as e:
        raise DecodeError(f"corrupt image data ({type(e).__name__}: {e})") from None
    iw, ih = img.size
    scale = size / min(iw, ih)
    nw, nh = max(size, round(iw * scale)), max(size, round(ih * scale))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    return np.ascontiguousarray(arr), (w, h)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        hi = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray((arr / hi * 255.0).clip(0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")
