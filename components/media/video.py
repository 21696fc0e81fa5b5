"""Decode videos (or lists of encoded frames) to uint8 ``(3, T, S, S)`` clips with PyAV.

Contract
--------
``decode_video(data, spec)`` -> ``(clip, info)``, with ``T = spec.frames``, ``S = spec.size``
and every limit from the ``MediaSpec``:

* ``data`` is either the bytes of a container FFmpeg can demux (MP4/H.264, WebM/VP9, animated
  GIF, MKV, AVI, ... -- see ``CONTAINER_FORMATS``) or a list/tuple/object ndarray of encoded
  frame images (JPEG/PNG/WebP bytes, one per frame, decoded with ``decode_image``). A video
  stream that is only an attached picture (the cover art of an MP3 or M4A) is not a video.
* ``clip`` is ``uint8`` of shape ``(3, T, S, S)`` (C, T, H, W). Every frame has its shorter side
  resized to ``S`` and the centre ``S x S`` crop kept, as for still images.
* ``info`` is ``{"width", "height", "frames_in_clip", "duration_s", "padded", "truncated",
  "format"}``: the source frame size, the number of frames decoded from the source (for
  ``fps`` sampling that stopped early: the container's declared count, or an estimate from
  duration x rate), the duration in seconds (``None`` for a frame list), how many of the T
  output frames are padding, whether the file breaks off (a read or decode error ended it,
  or its frames end well before the duration it declares), and the demuxer name
  (``"frames"`` for a frame list).
* Sampling: without ``fps`` (None or 0), T indices ``round(linspace(0, n-1, T))`` over the n
  frames of the clip; with ``fps > 0``, the frames nearest to times ``0, 1/fps, 2/fps, ...``
  (relative to the first frame) for as long as the clip lasts. Frame lists carry no
  timestamps, so ``fps`` is ignored for them. Fewer than T frames are padded by ``pad``
  (``PAD_POLICIES``): "repeat" the last frame, "loop" from the start, or "reject" the clip.
  A file that breaks off (truncated, or damaged from some point on) keeps the frames before
  the break; when it declares its length (the video's duration, else a frame count), n is
  that declared length, so the sampled frames past the break are missing: padded (or
  rejected) like those of a short clip. An intact file is as long as what decodes (headers
  can be imprecise).
* Memory stays O(T) frames of ``S x S`` whatever the clip's length: see ``_sample_uniform``.
* Anything unusable raises ``DecodeError`` whose ``reason`` names the config key of the limit
  that was hit (``data.video.max_bytes``, ``data.max_pixels``, ``data.video.max_duration_s``,
  ``data.video.max_frames``, ``data.video.max_decoded_pixels``, ``data.decode_timeout_s``,
  ``data.video.frames``/``.pad``). Limits are checked from container metadata before
  decoding and again while decoding, because GIF/WebM often declare no frame count or
  duration. The deadline is checked before every packet and after every frame; one frame's
  decode (and FFmpeg's probe of the first few MB when opening) is not interrupted.

``temporal_consistency(clip)`` is minus the mean squared difference of consecutive frames in
[0, 1] pixel units. ``encode_video(frames (T, H, W, 3))`` writes MP4/WebM/GIF bytes (sample
data and tests).
"""

from __future__ import annotations

import contextvars
import io
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import av
import av.error
import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from .spec import MediaSpec
from .image import Deadline, DecodeError, decode_image

# Not every bad input raises an FFmpegError: PyAV also raises OSError/ValueError/EOFError,
# and a few demuxers surface RuntimeError/IndexError on damaged headers.
_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError, RuntimeError, IndexError)

# Demuxers we accept. Playlist/indirection formats (hls, dash, concat, image2 patterns, ...)
# can make FFmpeg open other files or URLs named inside untrusted bytes, so they are not
# listed. Audio-only containers are listed so an audio file gets the clearer
# "no video stream" reason rather than a format error.
CONTAINER_FORMATS = (
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "gif", "apng", "avi",
    "flv", "mpegts", "mpeg", "ogg", "asf", "h264", "hevc", "m4v", "ivf", "mjpeg", "nut",
    "mp3", "wav", "aac", "flac",
)


def decode_video(data: Any, spec: MediaSpec) -> tuple[np.ndarray, dict]:
    """Encoded video bytes or a list of encoded frames -> (uint8 ``(3, T, S, S)``, info) with
    ``T = spec.frames`` and ``S = spec.size``; every limit comes from ``spec``.

    See the module docstring for sampling, padding and the info dict. Raises ``DecodeError``
    for bad data, and when the decode runs past ``spec.decode_timeout_s``.
    """
    if not spec.video:
        raise ValueError(f"decode_video needs a video MediaSpec, got modality={spec.modality!r}")
    deadline = Deadline.start(spec.decode_timeout_s)
    if data is None:
        raise DecodeError("null video")
    if isinstance(data, (list, tuple)) or (isinstance(data, np.ndarray) and data.dtype.kind in "OS"):
        return _decode_frame_list(list(data), spec, deadline)
    if isinstance(data, np.ndarray):
        data = data.tobytes()
    data = bytes(data)
    if len(data) == 0:
        raise DecodeError("empty video bytes")
    if len(data) > spec.max_bytes:
        raise DecodeError(
            f"video is {len(data)} bytes, over data.video.max_bytes={spec.max_bytes}"
        )
    return _decode_container(data, spec, deadline)


def temporal_consistency(frames: np.ndarray) -> float:
    """``-mean((x[:, 1:] - x[:, :-1]) ** 2)`` for a uint8 ``(3, T, H, W)`` clip scaled to [0, 1].

    Every consecutive pair has the same number of elements, so this is minus the mean over t
    of MSE(frame_t, frame_t+1). 0.0 for a still (or single-frame) clip; -1.0 at worst.
    """
    if frames.ndim != 4:
        raise ValueError(f"expected (3, T, H, W), got shape {frames.shape}")
    if frames.shape[1] < 2:
        return 0.0
    x = frames.astype(np.float64) / 255.0
    return float(-np.mean((x[:, 1:] - x[:, :-1]) ** 2))


def encode_video(frames: np.ndarray, fmt: str = "mp4", fps: int = 8, gop: int | None = None) -> bytes:
    """uint8 ``(T, H, W, 3)`` RGB frames -> encoded bytes.

    ``fmt``: "mp4" (libx264, else mpeg4), "webm" (libvpx-vp9, else libvpx) or "gif" (palette
    per frame). MP4 and WebM use yuv420p, so H and W must be even. ``gop``: a keyframe every
    ``gop`` frames exactly (no scene-cut keyframes in between); None leaves the encoder's own
    choice (x264: at most every 250 frames, plus scene cuts). The bytes are reproducible:
    encoders run single-threaded, x264 without macroblock-tree and muxers in bitexact mode
    (see the comments below).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if t < 1:
        raise ValueError("no frames to encode")
    if fmt in ("mp4", "webm") and (h % 2 or w % 2):
        raise ValueError(f"{fmt} uses yuv420p: height and width must be even, got {h}x{w}")
    if fmt == "mp4":
        codec = _encoder("libx264", "mpeg4")
        # mbtree=0: x264's AVX-512 macroblock-tree kernel (mbtree_propagate_list) handles 8
        # macroblocks per step with no tail, so when the width is not a multiple of 128 px the
        # lanes past the end of a row (uninitialised memory) add to the costs. On an AVX-512
        # CPU the same frames then give different bytes from call to call (threads=1 does not
        # help). Without macroblock-tree the bytes are the same at every x86 SIMD level.
        options = (
            {"crf": "18", "preset": "veryfast", "threads": "1", "mbtree": "0"}
            if codec == "libx264" else {}
        )
        pix_fmt, container_fmt = "yuv420p", "mp4"
    elif fmt == "webm":
        codec = _encoder("libvpx-vp9", "libvpx")
        options = {"crf": "20", "b": "0", "deadline": "good", "cpu-used": "4"}
        pix_fmt, container_fmt = "yuv420p", "webm"
    elif fmt == "gif":
        codec, options, pix_fmt, container_fmt = "gif", {}, "pal8", "gif"
    else:
        raise ValueError(f"fmt must be mp4, webm or gif, got {fmt!r}")
    if gop is not None:
        if gop < 1 or fmt == "gif":
            raise ValueError(f"gop must be >= 1 frames, for mp4 or webm; got {gop} for {fmt}")
        # g = keyint_min: a fixed interval (libvpx only honours kf_min_dist when they are
        # equal); sc_threshold=0: no extra keyframe at a scene cut (x264).
        options = {**options, "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}

    buf = io.BytesIO()
    # fflags=+bitexact: the Matroska/WebM muxer otherwise writes random segment and track UIDs
    # (and muxers tag their library version), so the container bytes would differ per call.
    with av.open(buf, mode="w", format=container_fmt, options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.codec_context.thread_count = 1
        if codec == "mpeg4":
            stream.codec_context.bit_rate = max(200_000, 8 * w * h * fps)
        for i, arr in enumerate(frames):
            frame = _pal8_frame(arr) if pix_fmt == "pal8" else av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


# --- decoding -------------------------------------------------------------------------------


def _decode_frame_list(items: list, spec: MediaSpec, deadline: Deadline):
    n = len(items)
    if n == 0:
        raise DecodeError("empty frame list")
    if n > spec.max_frames:
        raise DecodeError(f"clip has {n} frames, over data.video.max_frames={spec.max_frames}")
    total = sum(len(b) for b in items if b is not None)
    if total > spec.max_bytes:
        raise DecodeError(f"frame list is {total} bytes, over data.video.max_bytes={spec.max_bytes}")
    picked = _uniform_indices(n, spec.frames)
    decoded: dict[int, np.ndarray] = {}
    width = height = pixels = 0
    for i in sorted(set(picked)):  # only the sampled frames are decoded
        try:
            decoded[i], (w, h) = decode_image(items[i], spec.size, spec.max_pixels, deadline)
        except DecodeError as e:
            raise DecodeError(f"frame {i}: {e.reason}") from None
        pixels += w * h
        _check_budget(pixels, len(decoded), w, h, spec)
        if not width:
            width, height = w, h
    clip, padded = _assemble([decoded[i] for i in picked], spec.frames, spec.pad)
    info = {"width": width, "height": height, "frames_in_clip": n, "duration_s": None,
            "padded": padded, "truncated": False, "format": "frames"}
    return clip, info


def _open(data: bytes):
    try:
        return av.open(
            io.BytesIO(data), mode="r", metadata_errors="ignore",
            options={"format_whitelist": ",".join(CONTAINER_FORMATS)},
        )
    except _AV_ERRORS as e:
        raise DecodeError(f"not a decodable video ({type(e).__name__}: {e})") from None


def _video_stream(container, fmt: str):
    """The first video stream that is not an attached picture (cover art is a one-frame
    "video" stream with the ``attached_pic`` disposition, in MP3, M4A, ...)."""
    if not container.streams:
        raise DecodeError(f"not a decodable video (no streams in {fmt} container; truncated?)")
    video = [s for s in container.streams.video
             if not s.disposition & av.stream.Disposition.attached_pic]
    if not video:
        if container.streams.video:
            raise DecodeError(f"no video stream (only an attached picture) in {fmt} container")
        kinds = sorted({s.type for s in container.streams})
        raise DecodeError(f"no video stream (audio only?) in {fmt} container with streams {kinds}")
    if video[0].codec_context is None:  # e.g. an MP4 whose codec header is cut off
        raise DecodeError(f"not a decodable video (no decoder for the video stream of the {fmt} "
                          "container; damaged or truncated header?)")
    return video[0]


def _decode_container(data: bytes, spec: MediaSpec, deadline: Deadline):
    fps = spec.fps or None  # config uses data.video.fps=0 for uniform sampling
    with _open(data) as container:
        fmt = container.format.name
        stream = _video_stream(container, fmt)
        index = stream.index
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        _check_pixels(width, height, spec)
        duration = _declared_duration(container, stream)
        if duration is not None and duration > spec.max_duration_s:
            raise DecodeError(
                f"video lasts {duration:g} s, over data.video.max_duration_s={spec.max_duration_s}"
            )
        declared = int(stream.frames or 0)
        if declared > spec.max_frames:
            raise DecodeError(
                f"video declares {declared} frames, over data.video.max_frames={spec.max_frames}"
            )
        if fps is None and declared * width * height > spec.max_decoded_pixels:
            # Uniform sampling decodes every frame (fps sampling stops early: checked as it goes).
            raise DecodeError(
                f"video declares {declared} frames of {width}x{height} = "
                f"{declared * width * height} pixels to decode, over "
                f"data.video.max_decoded_pixels={spec.max_decoded_pixels}"
            )
        rate = stream.average_rate or stream.guessed_rate
        rate = float(rate) if rate else None
        length = _DeclaredLength.of(container, stream, declared, rate)
        if fps is not None:
            scan = _scan_fps(container, stream, spec, rate, fps, deadline)
        elif declared:
            hint = declared
            scan = _scan(container, stream, spec, rate, deadline, _uniform_indices(hint, spec.frames))
        else:
            hint, scan = _count_packets(container, stream, spec, deadline), None

    shortfall, truncated = None, False
    if fps is None:
        scan, grid = _sample_uniform(data, index, spec, rate, deadline, hint, scan, length)
        picked = [scan.kept[i] for i in _uniform_indices(grid, spec.frames) if i in scan.kept]
        frames_in_clip, truncated = scan.n, length.breaks_off(scan)
        if grid > scan.n:
            shortfall = (f"clip breaks off after {scan.n} of the {grid} frames it declares "
                         f"(truncated or damaged), leaving {len(picked)} of its sampled frames")
    else:
        picked = scan.picked
        frames_in_clip = scan.n
        if scan.stopped_early:
            if declared:
                frames_in_clip = declared
            elif duration is not None and rate:
                frames_in_clip = round(duration * rate)
        elif length.breaks_off(scan):
            truncated = True
            shortfall = (f"clip breaks off after {scan.n} frames (truncated or damaged), "
                         f"leaving {len(picked)} sampled frames")
    if not width:
        width, height = scan.first_size
    if duration is None:
        duration = scan.last_t + (1.0 / rate if rate else 0.0)
    clip, padded = _assemble(picked, spec.frames, spec.pad, shortfall)
    info = {"width": width, "height": height, "frames_in_clip": int(frames_in_clip),
            "duration_s": float(duration), "padded": padded, "truncated": truncated,
            "format": fmt}
    return clip, info


def _sample_uniform(data, index, spec, rate, deadline, hint, scan,
                    length: _DeclaredLength) -> tuple[_Scan, int]:
    """Decode the clip keeping only the frames at ``round(linspace(0, n-1, T))``: O(T) memory.

    Those indices depend on n, which WebM, MKV and GIF need not declare and which an MP4
    header can get wrong (edit lists, a damaged index). Keeping every resized frame until n
    is known would hold up to ``data.video.max_frames`` of them (20,000 x 3 x 224 x 224 bytes
    = 3 GB), and reservoir or stride sampling would pick other frames than the uniform ones.
    So n is fixed before decoding: the declared count, else ``hint``, the number of video
    packets (one per frame for these codecs; demuxing without decoding costs little). When
    the decode finds another n, it runs once more with the indices of the n it found: the
    same frames as for a correct header, at twice the decode cost for a wrong one only.
    A clip that breaks off before its declared length is that length with the end missing.
    ``scan`` is the first pass when the caller already ran it. Returns (scan, n).
    """
    if scan is None:
        scan = _rescan(data, index, spec, rate, deadline, hint)
    grid = scan.n + length.missing(scan)
    if grid != hint:
        scan = _rescan(data, index, spec, rate, deadline, grid)
    return scan, grid


def _rescan(data, index, spec, rate, deadline, n: int) -> _Scan:
    with _open(data) as container:
        stream = container.streams[index]
        return _scan(container, stream, spec, rate, deadline, _uniform_indices(n, spec.frames))


def _count_packets(container, stream, spec: MediaSpec, deadline: Deadline) -> int:
    """Video packets in the container, read without decoding (stops past ``max_frames``:
    the decode then enforces that limit)."""
    n = 0
    try:
        for packet in container.demux(stream):
            deadline.check(f"counting the video's packets ({n} so far)")
            if packet.size:
                n += 1
            if n > spec.max_frames:
                break
    except _AV_ERRORS:
        pass  # a file that breaks off: the decode finds out where
    return n


@dataclass(frozen=True)
class _DeclaredLength:
    """How long the container says the video is, to tell a file that breaks off from one
    whose header is merely imprecise.

    ``duration_s`` is the video's own declared duration: the stream's, or the container's
    when the video is its only stream (with audio, the container's is the longest track's).
    FFmpeg applies MP4 edit lists to it but not to the frame count, so it is the better
    measure; without it, ``frames`` is the declared frame count (0: none).
    """

    duration_s: float | None
    frames: int
    rate: float | None

    @classmethod
    def of(cls, container, stream, declared: int, rate: float | None) -> _DeclaredLength:
        own = stream.duration is not None and stream.duration > 0 and stream.time_base
        duration = _declared_duration(container, stream) if own or len(container.streams) == 1 else None
        return cls(duration, declared, rate)

    def missing(self, scan: _Scan) -> int:
        """Frames the decoded clip lacks at its end. A read/decode error proves the file
        breaks off, and the declared length says how much is gone; without an error the
        frames must end well before the declared duration (by more than 2 frame intervals
        and 2%: muxers round the last frame's duration, a cut file falls short by far more).
        """
        if self.duration_s is None or not self.rate:
            return max(0, self.frames - scan.n) if scan.error is not None else 0
        short = self.duration_s - (scan.last_t + 1.0 / self.rate)
        if scan.error is None and short <= max(2.0 / self.rate, 0.02 * self.duration_s):
            return 0
        return max(0, round(short * self.rate))

    def breaks_off(self, scan: _Scan) -> bool:
        return scan.error is not None or self.missing(scan) > 0


def _declared_duration(container, stream) -> float | None:
    # The video stream's own duration first: the container's is the longest stream, which
    # may be a longer audio track.
    if stream.duration is not None and stream.duration > 0 and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base  # microseconds
    return None


def _check_pixels(w: int, h: int, limits: MediaSpec) -> None:
    if w * h > limits.max_pixels:
        raise DecodeError(
            f"video is {w}x{h} = {w * h} pixels per frame, over data.max_pixels={limits.max_pixels}"
        )


def _check_budget(pixels: int, frames: int, w: int, h: int, spec: MediaSpec) -> None:
    if pixels > spec.max_decoded_pixels:
        raise DecodeError(
            f"video decodes {pixels} pixels in its first {frames} frames ({w}x{h}), over "
            f"data.video.max_decoded_pixels={spec.max_decoded_pixels}"
        )


@dataclass
class _Scan:
    n: int = 0  # frames decoded
    pixels: int = 0  # width x height summed over the decoded frames
    last_t: float = 0.0  # time of the last decoded frame, relative to the first
    first_size: tuple[int, int] = (0, 0)
    kept: dict = field(default_factory=dict)  # uniform mode: index -> (3, S, S)
    picked: list = field(default_factory=list)  # fps mode: output frames in order
    stopped_early: bool = False
    error: str | None = None  # the read/decode error that ended the clip early, if any


def _decoded(container, stream, deadline: Deadline, scan: _Scan):
    """The stream's frames in order. A read or decode error ends the clip there (a file cut
    inside a frame, or damaged from there on; one cut at a frame boundary just ends): the
    decoder is drained, so the frames it holds back for reordering (B-frames) are kept."""
    packets = container.demux(stream)
    while True:
        deadline.check(f"after decoding {scan.n} frames")
        try:
            packet = next(packets, None)
            if packet is None:
                return
            frames = packet.decode()
        except _AV_ERRORS as e:
            scan.error = f"{type(e).__name__}: {e}"
            break
        yield from frames
    try:
        held = stream.codec_context.decode(None)
    except _AV_ERRORS:
        return
    yield from held


def _frames(container, stream, spec: MediaSpec, rate: float | None, deadline: Deadline, scan: _Scan):
    """Yield ``(index, time relative to the first frame, frame)``, enforcing limits as we go.

    An error before any frame is a DecodeError; after some, the clip ends there.
    """
    ctx = stream.codec_context
    ctx.thread_count = max(1, int(spec.decoder_threads))
    if ctx.thread_count > 1:
        ctx.thread_type = "AUTO"
    t0 = None
    for frame in _decoded(container, stream, deadline, scan):
        i = scan.n
        if i >= spec.max_frames:
            raise DecodeError(
                f"video has more than {spec.max_frames} frames, over data.video.max_frames={spec.max_frames}"
            )
        _check_pixels(frame.width, frame.height, spec)
        _check_budget(scan.pixels + frame.width * frame.height, i + 1, frame.width, frame.height, spec)
        t = _frame_time(frame, stream, i, rate)
        if t0 is None:
            t0, scan.first_size = t, (frame.width, frame.height)
        t -= t0
        if t > spec.max_duration_s:
            raise DecodeError(
                f"video runs past {spec.max_duration_s} s, over data.video.max_duration_s={spec.max_duration_s}"
            )
        scan.n, scan.last_t = i + 1, t
        scan.pixels += frame.width * frame.height
        yield i, t, frame
        deadline.check(f"after decoding {scan.n} frames")
    if scan.n == 0:
        why = scan.error or "no frames decoded; truncated?"
        raise DecodeError(f"not a decodable video ({why})")


def _frame_time(frame, stream, i: int, rate: float | None) -> float:
    """Seconds from the stream's start. Frames drained from the decoder carry a pts but no
    time base (their ``time`` is NaN); frames without a pts get their index / rate."""
    t = frame.time
    if t is not None and math.isfinite(t):
        return t
    if frame.pts is not None and stream.time_base:
        return float(frame.pts * stream.time_base)
    return i / rate if rate else float(i)


def _scan(container, stream, spec: MediaSpec, rate, deadline: Deadline, wanted: list[int]) -> _Scan:
    """Decode every frame; keep the resized ones whose index is in ``wanted``."""
    scan = _Scan()
    wanted_set = set(wanted)
    for i, _, frame in _frames(container, stream, spec, rate, deadline, scan):
        if i in wanted_set:
            scan.kept[i] = _fit(frame, spec.size)
    return scan


def _scan_fps(container, stream, spec: MediaSpec, rate, fps: float, deadline: Deadline) -> _Scan:
    """Frames nearest to times k/fps for k < T; stops decoding once all are found."""
    scan = _Scan()
    count, size = spec.frames, spec.size
    targets = np.arange(count) / fps
    cache: list = [-1, None]  # a frame nearest to several targets is resized once

    def take(i, frame):
        if cache[0] != i:
            cache[:] = [i, _fit(frame, size)]
        scan.picked.append(cache[1])

    prev = None  # (index, time, frame) of the previous frame
    interval = 1.0 / rate if rate else 0.0
    for i, t, frame in _frames(container, stream, spec, rate, deadline, scan):
        while len(scan.picked) < count and targets[len(scan.picked)] <= t:
            target = targets[len(scan.picked)]
            if prev is not None and target - prev[1] < t - target:
                take(prev[0], prev[2])
            else:
                take(i, frame)
        if len(scan.picked) == count:
            scan.stopped_early = True
            return scan
        if prev is not None:
            interval = t - prev[1]
        prev = (i, t, frame)
    # Targets after the last frame still belong to it for half a frame interval.
    while len(scan.picked) < count and targets[len(scan.picked)] <= prev[1] + interval / 2 + 1e-9:
        take(prev[0], prev[2])
    return scan


def _fit(frame, size: int) -> np.ndarray:
    """Shorter side to ``size``, centre crop -> uint8 ``(3, size, size)``; nothing full-size kept."""
    w, h = frame.width, frame.height
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    # AREA averages the source pixels when shrinking (no aliasing); it is also faster than
    # BILINEAR in swscale.
    interp = "AREA" if scale < 1 else "BILINEAR"
    # threads=1: each call builds a new scaler, and swscale's default (one thread per CPU)
    # spent ~1 ms per frame starting threads, far more than the scaling itself.
    try:
        rgb = frame.to_ndarray(width=nw, height=nh, format="rgb24", interpolation=interp, threads=1)
    except _AV_ERRORS as e:
        raise DecodeError(f"cannot convert {frame.format.name} frame to RGB ({type(e).__name__}: {e})") from None
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(rgb[top:top + size, left:left + size].transpose(2, 0, 1))


# Augmentation (media/augment.py): per-frame offsets in [-0.5, 0.5] of the sampling step, set
# for the decode of one pair's two clips, so both are sampled with the same jitter.
FRAME_JITTER: contextvars.ContextVar[np.ndarray | None] = contextvars.ContextVar(
    "frame_jitter", default=None)


def _uniform_indices(n: int, count: int) -> list[int]:
    if n >= count:
        base = np.linspace(0, n - 1, count)
        jitter = FRAME_JITTER.get()
        if jitter is not None and count > 1:  # still increasing: |offset| <= half a step
            base = np.clip(base + jitter[:count] * (n - 1) / (count - 1), 0, n - 1)
        return sorted(int(i) for i in np.rint(base))
    return list(range(n))


def _assemble(picked: list[np.ndarray], count: int, pad: str,
              shortfall: str | None = None) -> tuple[np.ndarray, int]:
    """Pad ``picked`` to ``count`` frames by ``pad``; ``shortfall`` says why frames are
    missing in the reject reason (default: the clip is short)."""
    m = len(picked)
    if m < count:
        if pad == "reject":
            why = shortfall or f"clip has {m} frames"
            raise DecodeError(
                f"{why}, fewer than data.video.frames={count} and data.video.pad=reject"
            )
        if pad == "loop":
            picked = [picked[i % m] for i in range(count)]
        else:
            picked = picked + [picked[-1]] * (count - m)
    return np.stack(picked[:count], axis=1), max(0, count - m)


# --- encoding -------------------------------------------------------------------------------


def _encoder(*names: str) -> str:
    for name in names:
        try:
            av.Codec(name, "w")
            return name
        except Exception:  # UnknownCodecError / ValueError depending on the PyAV version
            continue
    raise RuntimeError(f"none of the encoders {names} is in this PyAV build")


def _pal8_frame(arr: np.ndarray) -> av.VideoFrame:
    # swscale cannot convert rgb24 to pal8, and the fixed rgb8 palette posterises photos, so
    # each frame gets its own palette (octree: 10-40x faster than median cut, about as close).
    q = Image.fromarray(arr).quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    rgb = np.zeros((256, 3), np.uint8)
    pal = np.asarray(q.getpalette()[: 256 * 3], np.uint8).reshape(-1, 3)
    rgb[: len(pal)] = pal
    argb = np.concatenate([np.full((256, 1), 255, np.uint8), rgb], axis=1)
    return av.VideoFrame.from_ndarray((np.asarray(q), argb), format="pal8")
