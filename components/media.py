"""What one encoded item (an image, or a clip) becomes before it reaches a scorer.

A ``MediaSpec`` is the decode contract shared by training (the preprocessing actors), batch
scoring and the registered pyfunc model, so a consumer's bytes go through exactly the
preprocessing the scorer was trained with:

    image: encoded JPEG/PNG/WebP          -> uint8 ``(3, S, S)``
    video: encoded MP4/WebM/GIF container,
           or a list of encoded frames    -> uint8 ``(3, T, S, S)`` and its consistency ``c``
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from components.decode import decode_image


@dataclass(frozen=True)
class MediaSpec:
    modality: str  # "image" | "video"
    size: int  # S: frames/images are resized (shorter side) and centre-cropped to S x S
    max_pixels: int  # per image / per frame, checked from the header
    frames: int = 0  # T (video)
    fps: float = 0.0  # 0 = uniform over the clip
    pad: str = "repeat"
    max_bytes: int = 200_000_000
    max_duration_s: float = 600.0
    max_frames: int = 20_000
    decoder_threads: int = 1

    @classmethod
    def from_config(cls, cfg) -> MediaSpec:
        d, v = cfg.data, cfg.data.video
        if cfg.modality == "image":
            return cls("image", d.image_size, d.max_pixels)
        return cls("video", d.image_size, d.max_pixels, v.frames, v.fps, v.pad, v.max_bytes,
                   v.max_duration_s, v.max_frames, v.decoder_threads)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MediaSpec:
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def apply_to(self, cfg) -> None:
        """Make ``cfg`` prepare data the way this spec decodes (e.g. a registered model's)."""
        cfg.modality, cfg.data.image_size = self.modality, self.size
        if self.video:
            v = cfg.data.video
            v.frames, v.fps, v.pad = self.frames, self.fps, self.pad

    @property
    def video(self) -> bool:
        return self.modality == "video"

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one decoded item: ``(3, S, S)`` or ``(3, T, S, S)``."""
        s = self.size
        return (3, self.frames, s, s) if self.video else (3, s, s)

    @property
    def column(self) -> str:
        """Name of the encoded-bytes column consumers pass (``image`` or ``video``)."""
        return self.modality

    def decode(self, data: Any) -> tuple[np.ndarray, str, float | None]:
        """Encoded item -> (uint8 array of ``shape``, source size "WxH", consistency ``c``).

        ``c`` is ``None`` for images. Raises ``DecodeError`` with the reason.
        """
        if not self.video:
            px, (w, h) = decode_image(data, self.size, self.max_pixels)
            return px, f"{w}x{h}", None
        from components.video import VideoLimits, decode_video, temporal_consistency

        limits = VideoLimits(max_bytes=self.max_bytes, max_pixels=self.max_pixels,
                             max_duration_s=self.max_duration_s, max_frames=self.max_frames)
        px, info = decode_video(data, self.frames, self.size, limits, fps=self.fps or None,
                                pad=self.pad, threads=self.decoder_threads)
        return px, f"{info['width']}x{info['height']}", temporal_consistency(px)
