"""Encoded media for tests: real image files as bytes, built in memory (no fixtures here;
pytest fixtures live in tests/conftest.py)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(arr: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
    """`arr` (H, W) or (H, W, C) uint8, saved as a `fmt` file (PIL's format name, e.g. "PNG");
    `kw` goes to `Image.save` (quality, exif, ...)."""
    img = Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo_bytes(size: int = 64, fmt: str = "PNG", seed: int = 0) -> bytes:
    """A `size` x `size` RGB noise picture, the same bytes for the same seed."""
    rng = np.random.default_rng(seed)
    return encode(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), fmt)
