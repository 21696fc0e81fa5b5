"""Sample video preference pairs: smooth camera moves over the scikit-image photos.

The preferred clip is a smooth pan and/or zoom over a crop of a photo. The rejected clip shows
the same region with the motion broken in time (``DEFECTS``):

* ``shuffle``: the chosen frames in a permuted order;
* ``stutter``: frames held for 2-3 frames, then a jump to where the (still moving) camera is;
  the camera is taken to move at twice the speed, so each jump is clearly larger than the
  smooth clip's whole-step motion;
* ``flicker``: the chosen frames with brightness alternating up and down frame to frame;
* ``jump``: the second half of the clip continues the move over a different region;
* ``freeze``: the camera stops a third of the way in and the rest of the clip is one held
  frame. A frozen clip is *more* self-similar than the smooth one, so temporal consistency
  alone ranks these pairs the wrong way round: the scorer has to learn that a stall is a
  defect (this is what makes ``loss.temporal_weight`` a trade-off rather than a free win).

Every rejected frame on its own is an ordinary crop of the photo (at most 15-30 % brighter or
darker for flicker), so the defect is only visible across frames. Train and eval use disjoint
photos. Both clips are written with ``components.media.video.encode_video`` as set by a
``ClipEncoding``: MP4 (H.264) by default, or WebM (VP9); yuv420p, at ``fps`` frames per second,
with a keyframe every ``gop`` frames when one is asked for. Frames are square (``size``) or
``(width, height)``: ``size=(1280, 720), frames=72, ClipEncoding("h264", fps=24, gop=48)``
gives 3 s 720p clips at realistic decode costs (the photos are upsampled to get there, so
the clips carry less detail, and fewer bits, than camera footage).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ..media.video import encode_video
from .images import (
    EVAL_PHOTOS,
    PROMPTED_PHOTOS,
    TRAIN_PHOTOS,
    _string_or_binary_table,
    _write_shards,
    load_photo,
    prompted_caption,
    prompted_schedule,
    prompted_split_sizes,
)

DEFECTS = ("shuffle", "stutter", "flicker", "jump", "freeze")
CONTAINERS = {"h264": "mp4", "vp9": "webm"}
"""Codec -> the container ``encode_video`` writes it in."""


@dataclass(frozen=True)
class ClipEncoding:
    """How the sample clips are encoded: ``codec`` (``CONTAINERS``), ``fps`` (frames per
    second) and ``gop`` (a keyframe every ``gop`` frames exactly; None: the encoder's own
    choice). The default is the small demo's: H.264 at 8 fps."""

    codec: str = "h264"
    fps: int = 8
    gop: int | None = None

    def __post_init__(self) -> None:
        if self.codec not in CONTAINERS:
            raise ValueError(f"codec must be one of {sorted(CONTAINERS)}, got {self.codec!r}")
        if self.fps < 1 or (self.gop is not None and self.gop < 1):
            raise ValueError(f"fps and gop must be >= 1, got fps={self.fps}, gop={self.gop}")

    def encode(self, clip: np.ndarray) -> bytes:
        """uint8 ``(T, H, W, 3)`` -> MP4 or WebM bytes."""
        return encode_video(clip, CONTAINERS[self.codec], self.fps, self.gop)


def _frame_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``size`` (square side, or ``(width, height)``) -> ``(width, height)``, both even."""
    w, h = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if w < 2 or h < 2 or w % 2 or h % 2:
        raise ValueError(f"frame width and height must be even (yuv420p), got {w}x{h}")
    return w, h

# Camera speed per frame as a fraction of the crop side (0.3-0.7 px at 32 px): slow enough
# that consecutive frames stay strongly correlated, fast enough that the motion is visible.
_SPEED = (0.010, 0.022)


def write_video_pairs(
    out: str,
    pairs: int = 160,
    size: int | tuple[int, int] = 32,
    frames: int = 8,
    shards: int = 2,
    seed: int = 0,
    eval_fraction: float = 0.25,
    encoding: ClipEncoding = ClipEncoding(),
) -> dict:
    """Write ``out/{train,eval}/part-XXXXX.parquet``; returns the split folders and pair counts.

    Columns: ``pair_id``, ``prompt``, ``chosen`` (video bytes), ``rejected`` (video bytes),
    ``photo``, ``defect``. ``round(pairs * eval_fraction)`` pairs go to eval (photos from
    ``EVAL_PHOTOS``), the rest to train (``TRAIN_PHOTOS``). Frames are ``size`` (a square
    side, or ``(width, height)``), both even. Deterministic given ``seed``.
    """
    n_eval = round(pairs * eval_fraction)
    n_train = pairs - n_eval
    if n_eval < 1 or n_train < 1:
        raise ValueError(f"pairs={pairs} with eval_fraction={eval_fraction} leaves a split empty")
    size = _frame_size(size)
    if frames < 4:
        raise ValueError(f"frames must be >= 4, got {frames}")
    written: dict = {"pairs": {}}
    for split, photos, n, split_seed in (
        ("train", TRAIN_PHOTOS, n_train, seed),
        ("eval", EVAL_PHOTOS, n_eval, seed + 1000),
    ):
        rows = _pairs(photos, n, size, frames, split_seed, split, encoding)
        folder = os.path.join(out, split)
        os.makedirs(folder, exist_ok=True)
        table = pa.table(
            {
                "pair_id": pa.array([r["pair_id"] for r in rows], pa.string()),
                "prompt": pa.array([r["prompt"] for r in rows], pa.string()),
                "chosen": pa.array([r["chosen"] for r in rows], pa.binary()),
                "rejected": pa.array([r["rejected"] for r in rows], pa.binary()),
                "photo": pa.array([r["photo"] for r in rows], pa.string()),
                "defect": pa.array([r["defect"] for r in rows], pa.string()),
            }
        )
        per = -(-table.num_rows // max(1, shards))
        for k in range(max(1, shards)):
            part = table.slice(k * per, per)
            if part.num_rows:
                pq.write_table(part, os.path.join(folder, f"part-{k:05d}.parquet"), row_group_size=64)
        written[split] = folder
        written["pairs"][split] = n
    return written


def _pairs(photos, n, size: tuple[int, int], frames, seed, prefix,
           encoding: ClipEncoding) -> list[dict]:
    rng = np.random.default_rng(seed)
    loaded = {p: load_photo(p).convert("RGB") for p in photos}
    rows = []
    for i in range(n):
        name = photos[i % len(photos)]
        img = loaded[name]
        move = _random_move(img.size, frames, rng, size[0] / size[1])
        chosen = np.stack([_render(img, move.box(p), size) for p in range(frames)])
        defect = DEFECTS[int(rng.integers(len(DEFECTS)))]
        rejected = _break(defect, img, move, chosen, size, rng)
        rows.append(
            {
                "pair_id": f"{prefix}-{i:06d}",
                "prompt": f"a smooth camera move over a photo: {name.rsplit('.', 1)[0].replace('_', ' ')}",
                "chosen": encoding.encode(chosen),
                "rejected": encoding.encode(rejected),
                "photo": name,
                "defect": defect,
            }
        )
    return rows


class _Move:
    """Crop box centred on ``(cx, cy)``, ``side`` high and ``aspect * side`` wide, at position
    ``p`` (in chosen-clip frame steps).

    The chosen clip covers ``p = 0 .. frames-1``; the move is defined (and inside the photo)
    up to ``p = 2 * (frames-1)`` so a stutter can run ahead of it. ``offset`` shifts the
    centre, for the jump defect.
    """

    def __init__(self, cx, cy, side, dx, dy, dlog, frames, aspect=1.0):
        self.cx, self.cy, self.side = cx, cy, side
        self.dx, self.dy, self.dlog = dx, dy, dlog  # per step: centre shift (px), log-zoom
        self.frames, self.aspect = frames, aspect  # aspect: frame width / height

    def box(self, p: float, offset: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float, float, float]:
        s = self.side * math.exp(self.dlog * p)
        cx, cy = self.cx + self.dx * p + offset[0], self.cy + self.dy * p + offset[1]
        return (cx - self.aspect * s / 2, cy - s / 2, cx + self.aspect * s / 2, cy + s / 2)

    def inside(self, w: int, h: int, offset=(0.0, 0.0), last: float | None = None) -> bool:
        # Centre is linear and the half-side convex in p, so the extreme positions suffice.
        last = 2 * (self.frames - 1) if last is None else last
        for p in (0.0, last):
            x0, y0, x1, y1 = self.box(p, offset)
            if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                return False
        return True


def _random_move(wh: tuple[int, int], frames: int, rng: np.random.Generator,
                 aspect: float = 1.0) -> _Move:
    w, h = wh
    for _ in range(200):
        side = min(w / aspect, h) * rng.uniform(0.3, 0.55)
        speed = rng.uniform(*_SPEED) * side  # px per step, at the crop's scale
        kind = rng.choice(["pan", "zoom", "both"])
        pan_share = {"pan": 1.0, "zoom": 0.0, "both": rng.uniform(0.4, 0.8)}[kind]
        angle = rng.uniform(0, 2 * math.pi)
        dx, dy = pan_share * speed * math.cos(angle), pan_share * speed * math.sin(angle)
        # A zoom moves the crop's edges by side/2 * dlog per step.
        dlog = (1 - pan_share) * 2 * speed / side * rng.choice([-1.0, 1.0])
        half_w = aspect * side / 2
        cx, cy = rng.uniform(half_w, w - half_w), rng.uniform(side / 2, h - side / 2)
        move = _Move(cx, cy, side, dx, dy, dlog, frames, aspect)
        if move.inside(w, h):
            return move
    raise RuntimeError(f"could not place a camera move in a {w}x{h} photo")  # pragma: no cover


def _render(img: Image.Image, box, size: tuple[int, int]) -> np.ndarray:
    frame = img.resize(size, Image.Resampling.BILINEAR, box=box)
    return np.asarray(frame, dtype=np.uint8)


def _break(defect, img, move: _Move, chosen: np.ndarray, size: tuple[int, int], rng) -> np.ndarray:
    t = len(chosen)
    if defect == "shuffle":
        # Rejection-sample a permutation with at most one pair of frames still in order, so
        # the clip is jerky throughout rather than mostly smooth.
        for _ in range(1000):
            perm = rng.permutation(t)
            if np.sum(np.diff(perm) == 1) <= 1 and np.abs(np.diff(perm)).sum() >= 2 * (t - 1):
                break
        return chosen[perm]
    if defect == "stutter":
        hold = int(rng.integers(2, 4))
        return np.stack([_render(img, move.box(2.0 * hold * (k // hold)), size) for k in range(t)])
    if defect == "flicker":
        amp = rng.uniform(0.15, 0.3)
        phase = int(rng.integers(2))
        gains = 1.0 + amp * np.where((np.arange(t) + phase) % 2 == 0, 1.0, -1.0)
        out = chosen.astype(np.float32) * gains[:, None, None, None]
        return out.clip(0, 255).astype(np.uint8)
    if defect == "jump":
        w, h = img.size
        offset = None
        for _ in range(200):
            r = move.side * rng.uniform(0.5, 1.0)
            a = rng.uniform(0, 2 * math.pi)
            cand = (r * math.cos(a), r * math.sin(a))
            if move.inside(w, h, cand, last=t - 1):
                offset = cand
                break
        half = t // 2
        if offset is None:
            # Photo too small to move the crop far enough: continue mirrored instead.
            tail = chosen[half:, :, ::-1]
        else:
            tail = np.stack([_render(img, move.box(p, offset), size) for p in range(half, t)])
        return np.concatenate([chosen[:half], tail])
    if defect == "freeze":
        stop = t // 3
        return np.concatenate([chosen[: stop + 1], np.repeat(chosen[stop : stop + 1], t - stop - 1, 0)])
    raise ValueError(f"unknown defect {defect!r}")


# --- Prompt-dependent clips -----------------------------------------------------------------
#
# As ``write_prompted_image_pairs`` (components/sample/images.py), for clips: the caption names
# one of ``PROMPTED_PHOTOS``; the chosen clip is a camera move over that photo, the rejected one
# the same kind of move over another photo. Both moves are drawn from the same random state
# (same relative crop size, speed, direction and zoom; only the placement can differ, as the
# photos differ in size) and both get the same temporal defect ("none" or one of ``DEFECTS``,
# with the same strength), so neither clip is better made than the other.

PROMPTED_VIDEO_TEMPLATES = ("a video of {x}", "{x}", "a clip showing {x}", "a camera move over {x}")
PROMPTED_DEFECTS = ("none",) + DEFECTS


def write_prompted_video_pairs(
    out: str,
    pairs: int = 240,
    size: int | tuple[int, int] = 32,
    frames: int = 8,
    shards: int = 2,
    eval_share: float = 0.25,
    seed: int = 0,
    encoding: ClipEncoding = ClipEncoding(),
) -> dict[str, list[str]]:
    """Write prompt-dependent clip pairs to ``out/{train,eval}/part-XXXXX.parquet`` (train in
    ``shards`` files, eval in one); returns the paths per split.

    Columns: ``pair_id``, ``prompt``, ``chosen``, ``rejected`` (MP4 bytes), ``photo_chosen``,
    ``photo_rejected``, ``defect`` (shared by both clips). ``round(pairs * eval_share)`` pairs
    go to eval; train and eval use the same photos. With the defaults (180 train, 60 eval, 6
    photos) every photo is chosen exactly as often as it is rejected in each split. ``size``
    and ``encoding`` as for ``write_video_pairs``.
    """
    n_train, n_eval = prompted_split_sizes(pairs, eval_share, len(PROMPTED_PHOTOS))
    size = _frame_size(size)
    if frames < 4:
        raise ValueError(f"frames must be >= 4, got {frames}")
    written: dict[str, list[str]] = {}
    for split, n, n_shards, split_seed in (
        ("train", n_train, shards, seed),
        ("eval", n_eval, 1, seed + 1000),
    ):
        rows = _prompted_rows(n, size, frames, split_seed, split, encoding)
        written[split] = _write_shards(
            _string_or_binary_table(rows), os.path.join(out, split), "part", n_shards, 64
        )
    return written


def _prompted_rows(n, size: tuple[int, int], frames, seed, split,
                   encoding: ClipEncoding) -> list[dict]:
    rng = np.random.default_rng(seed)
    names = list(PROMPTED_PHOTOS)
    loaded = {p: load_photo(p).convert("RGB") for p in names}
    rows = []
    for i, (a, b) in enumerate(prompted_schedule(n, len(names), rng)):
        good, bad = names[a], names[b]
        defect = PROMPTED_DEFECTS[int(rng.integers(len(PROMPTED_DEFECTS)))]
        move_seed, defect_seed = (int(x) for x in rng.integers(2**63, size=2))
        clips = []
        for name in (good, bad):
            img = loaded[name]
            move = _random_move(img.size, frames, np.random.default_rng(move_seed),
                                size[0] / size[1])
            clip = np.stack([_render(img, move.box(p), size) for p in range(frames)])
            if defect != "none":
                clip = _break(defect, img, move, clip, size, np.random.default_rng(defect_seed))
            clips.append(encoding.encode(clip))
        rows.append(
            {
                "pair_id": f"prompted-{split}-{i:06d}",
                "prompt": prompted_caption(good, rng, PROMPTED_VIDEO_TEMPLATES),
                "chosen": clips[0],
                "rejected": clips[1],
                "photo_chosen": good,
                "photo_rejected": bad,
                "defect": defect,
            }
        )
    return rows
