"""Training-time augmentation of decoded pairs (``data.augment=true``, streaming mode only).

Images: a random resized crop (area ``min_scale``..1 of the decoded ``S x S`` image, aspect
3/4..4/3, resized back to ``S x S``) and a horizontal flip with probability 1/2. Clips: the
same crop and flip on every frame, and a jitter of the sampled frame positions (each of the
T positions moves by up to half a sampling step; media/video.py).

**Both sides of a pair share one draw.** A preference label compares the two items as a
person saw them: a crop that cuts the artefact out of one side and not the other, or a
different set of frames, would change what the label is about, and a model could learn the
transform instead of the content. A shared draw keeps the comparison fair while each epoch
still shows a new view of the pair.

The draw is a function of ``(seed, pair_id, k)`` where ``k`` counts how many times this process
has drawn for that pair, so epochs differ and a run on the same actor layout repeats.
"""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Draw:
    box: tuple[float, float, float, float]  # crop (left, top, right, bottom) in pixels
    flip: bool
    frame_offsets: np.ndarray  # (T,) in [-0.5, 0.5]: clips only


class PairAugment:
    def __init__(self, seed: int = 0, min_scale: float = 0.6, flip: bool = True,
                 frames: int = 0) -> None:
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        self.seed, self.min_scale, self.flip, self.frames = seed, min_scale, flip, frames
        self.seen: dict[str, int] = {}

    def draw(self, pair_id: str, size: int) -> Draw:
        k = self.seen.get(pair_id, 0)
        self.seen[pair_id] = k + 1
        rng = np.random.default_rng([self.seed, zlib.crc32(pair_id.encode()), k])
        area = rng.uniform(self.min_scale, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w = min(size, size * np.sqrt(area * aspect))
        h = min(size, size * np.sqrt(area / aspect))
        left = rng.uniform(0, size - w)
        top = rng.uniform(0, size - h)
        flip = bool(self.flip and rng.random() < 0.5)
        offsets = rng.uniform(-0.5, 0.5, self.frames) if self.frames else np.zeros(0)
        return Draw((left, top, left + w, top + h), flip, offsets)

    @contextlib.contextmanager
    def sampling(self, draw: Draw):
        """Decode clips inside this block to sample frames with the draw's jitter."""
        if not self.frames:
            yield
            return
        from .video import FRAME_JITTER

        token = FRAME_JITTER.set(draw.frame_offsets)
        try:
            yield
        finally:
            FRAME_JITTER.reset(token)

    def apply(self, draw: Draw, item: np.ndarray) -> np.ndarray:
        """uint8 ``(3, S, S)`` or ``(3, T, S, S)`` -> the same shape, cropped and flipped."""
        if item.ndim == 3:
            return _crop_flip(item, draw)
        return np.stack([_crop_flip(item[:, t], draw) for t in range(item.shape[1])], axis=1)


def _crop_flip(chw: np.ndarray, draw: Draw) -> np.ndarray:
    size = chw.shape[-1]
    img = Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)))
    img = img.resize((size, size), Image.BILINEAR, box=draw.box)
    if draw.flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img).transpose(2, 0, 1)
