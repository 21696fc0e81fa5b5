"""Per-core decode rates of the candidate image and video decoders at realistic sizes.

Media come from ``sample-data``'s writers: 1024 px JPEG (quality 92), PNG and WebP (quality
95) images, and 3 s 1280x720 clips at 24 fps with a keyframe every 48 frames, as H.264 (MP4)
and VP9 (WebM). One process, torch threads = 1. Each case decodes the same items in a loop
until it has used ``--min-cpu-s`` of CPU time, ``--repeats`` times; the figures are medians
over the repeats.

The primary figure is items per CPU-second of this process (``per_core``): on a shared
machine the wall clock also counts the time other processes hold the cores, CPU time does
not. Where a decoder runs threads (PyAV ``thread_type="AUTO"``) every thread's CPU time counts,
so ``per_core`` stays the cost of one item on one core; ``wall`` is items per wall-second.

Images: full decode to an RGB array (what imread_benchmark measures), and decode to the
training input (shorter side to T, centre T x T crop) where a decoder can decode at reduced
scale (libjpeg's 1/2, 1/4, 1/8 IDCT: Pillow ``draft``, simplejpeg ``min_width``, PyTurboJPEG
``scaling_factor``), every array then resized by the same Pillow code. ``decode_image`` rows
are the project's contract path (header check, draft, strip-wise conversion, crop).

Video: the frames of one sampled clip out per CPU-second, for the VideoAlign sampling (2 fps,
448 x 448) and 16 uniform frames at 224 x 224: PyAV decoding every frame in order (one thread,
and frame threads ``"AUTO"``), PyAV seeking to each sampled frame (from the keyframe before
it), torchcodec (``get_frames_at``, exact and approximate seek mode, its own resize) and the
project's ``decode_video``. Optional decoders that are not installed are skipped and listed.

    .venv/bin/python benchmarks/decoders.py [--quick] [--min-cpu-s 1.0] [--repeats 3]
        [--work DIR] [--out benchmarks/decoders.json]

``--work DIR`` keeps the encoded media there and reuses them (encoding VP9 720p takes
minutes on two cores). Prints a markdown table; writes the JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from components.media.image import _centre_crop, decode_image  # noqa: E402
from components.media.spec import MediaSpec  # noqa: E402
from components.media.video import decode_video  # noqa: E402

# Published anchors (decode to an RGB array on one core), quoted in docs/decoders.md.
ANCHORS = {
    "imread_benchmark (ternaus), ImageNet-size JPEG": "Pillow 537-726 images/s per core; "
    "up to ~860 with simplejpeg or torchvision",
    "torchcodec docs, 120 s 1080p H.264, GOP 600": "10 random frames: 1.8 frames/s when "
    "seeking to each; sequential decode 124-155 frames/s",
}


MEDIA_BYTES: dict[str, int] = {}  # mean encoded size per kind of media, for the report


def optional(name: str):
    try:
        return __import__(name)
    except Exception as e:  # not installed, or its native library is missing
        return f"{type(e).__name__}: {e}".splitlines()[0]


# --- media ----------------------------------------------------------------------------------


def image_set(work: str, fmt: str, size: int, pairs: int) -> list[bytes]:
    """Both sides of ``pairs`` pairs, from ``write_image_pairs`` (written once per work dir)."""
    from components.sample.images import write_image_pairs

    out = os.path.join(work, f"images-{fmt}-{size}")
    if not os.path.isdir(os.path.join(out, "eval")):
        write_image_pairs(out, pairs=pairs, size=size, shards=1, seed=7, image_format=fmt)
    rows = pq.read_table(os.path.join(out, "train", "train-00000.parquet")).to_pylist()
    return [r[k] for r in rows for k in ("chosen", "rejected")]


def clip_set(work: str, codec: str, size: tuple[int, int], frames: int, fps: int,
             gop: int) -> list[bytes]:
    """The chosen and rejected clip of one pair, from ``write_video_pairs``."""
    from components.sample.videos import ClipEncoding, write_video_pairs

    out = os.path.join(work, f"clips-{codec}-{size[0]}x{size[1]}-{frames}-{fps}-{gop}")
    if not os.path.isdir(os.path.join(out, "eval")):
        write_video_pairs(out, pairs=2, size=size, frames=frames, shards=1, seed=7,
                          eval_fraction=0.5, encoding=ClipEncoding(codec, fps, gop))
    rows = pq.read_table(os.path.join(out, "train", "part-00000.parquet")).to_pylist()
    return [r[k] for r in rows for k in ("chosen", "rejected")]


# --- timing ---------------------------------------------------------------------------------


def measure(cases: dict[str, Callable], items: list, min_cpu_s: float, repeats: int) -> dict:
    """name -> median over ``repeats`` of (calls per CPU-second, per wall-second). Each repeat
    loops over ``items`` until it has used ``min_cpu_s`` CPU seconds; the repeats of the
    cases are interleaved, so a change in the machine's load falls on all of them alike. One
    untimed pass first; ``sample_output`` is its result for the first item."""
    out = {name: [fn(x) for x in items][0] for name, fn in cases.items()}
    per_core: dict[str, list] = {name: [] for name in cases}
    wall: dict[str, list] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            n, c0, w0 = 0, time.process_time(), time.perf_counter()
            while time.process_time() - c0 < min_cpu_s:
                for x in items:
                    fn(x)
                n += len(items)
            per_core[name].append(n / (time.process_time() - c0))
            wall[name].append(n / (time.perf_counter() - w0))
    return {name: {"per_core": statistics.median(per_core[name]),
                   "wall": statistics.median(wall[name]), "sample_output": out[name]}
            for name in cases}


# --- image decoders -------------------------------------------------------------------------


def fit(arr: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, size, size): shorter side to ``size``, centre crop, by
    ``decode_image``'s own resize (box-reduce, then bilinear). The same for every decoder."""
    return np.asarray(_centre_crop(Image.fromarray(arr), size, None)).transpose(2, 0, 1)


def pillow_full(b: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(b)) as img:
        return np.asarray(img.convert("RGB"))


def pillow_draft(b: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(b)) as img:
        img.draft("RGB", (size, size))
        return np.asarray(img.convert("RGB"))


def image_decoders(fmt: str, libs: dict) -> dict[str, tuple[Callable, bool]]:
    """name -> (bytes, target|None -> array, scaled): full decoders take target None."""
    import torch
    import torchvision.io as tvio

    def tv(fn):
        return lambda b: fn(torch.frombuffer(bytearray(b), dtype=torch.uint8)).permute(1, 2, 0).numpy()

    dec: dict[str, tuple[Callable, bool]] = {"pillow": (lambda b, t: pillow_full(b), False)}
    if fmt == "jpeg":
        dec["pillow draft"] = (lambda b, t: pillow_draft(b, t), True)
        tv_jpeg = tv(tvio.decode_jpeg)
        dec["torchvision decode_jpeg"] = (lambda b, t: tv_jpeg(b), False)
        sj = libs["simplejpeg"]
        if not isinstance(sj, str):
            dec["simplejpeg"] = (lambda b, t: sj.decode_jpeg(
                b, "RGB", fastdct=False, fastupsample=False), False)
            dec["simplejpeg scaled"] = (lambda b, t: sj.decode_jpeg(
                b, "RGB", fastdct=False, fastupsample=False, min_height=t, min_width=t), True)
        tj = libs["turbojpeg"]
        if not isinstance(tj, str):
            jpeg = tj.TurboJPEG()

            def tj_scaled(b, t):
                w, h, _, _ = jpeg.decode_header(b)
                f = max((k for k in (1, 2, 4, 8) if min(w, h) / k >= t), default=1)
                return jpeg.decode(b, pixel_format=tj.TJPF_RGB, scaling_factor=(1, f))

            dec["pyturbojpeg"] = (lambda b, t: jpeg.decode(b, pixel_format=tj.TJPF_RGB), False)
            dec["pyturbojpeg scaled"] = (tj_scaled, True)
    elif fmt == "png":
        tv_png = tv(tvio.decode_png)
        dec["torchvision decode_png"] = (lambda b, t: tv_png(b), False)
    elif fmt == "webp":
        tv_webp = tv(tvio.decode_webp)
        dec["torchvision decode_webp"] = (lambda b, t: tv_webp(b), False)
    return dec


def image_cases(work, a, libs) -> list[dict]:
    rows = []
    for fmt in ("jpeg", "png", "webp"):
        items = image_set(work, fmt, a.image_size, a.image_pairs)
        cases: dict[tuple, Callable] = {}
        for name, (fn, scaled) in image_decoders(fmt, libs).items():
            if not scaled:  # full decode, as the anchors measure it
                cases[(name, "full", fn)] = lambda b, fn=fn: fn(b, None)
            for t in a.targets:
                label = f"{name} + resize" if scaled else f"{name} (full) + resize"
                cases[(label, t, fn)] = lambda b, fn=fn, t=t: fit(fn(b, t), t)
        for t in a.targets:
            cases[("decode_image (project)", t, None)] = lambda b, t=t: decode_image(b, t, 1 << 30)[0]
        timed = measure(cases, items, a.min_cpu_s, a.repeats)
        for (label, t, fn), r in timed.items():
            # Pixels against the reference: Pillow's full decode, or decode_image's output.
            if t == "full":
                diff = max(float(np.abs(fn(b, None).astype(int) - pillow_full(b)).max())
                           for b in items)
            else:
                diff = max(float(np.abs(cases[(label, t, fn)](b).astype(int)
                                        - decode_image(b, t, 1 << 30)[0]).max()) for b in items)
            rows.append(_image_row(fmt, label, t, r, diff))
        print(f"  {fmt}", file=sys.stderr, flush=True)
        MEDIA_BYTES[f"{fmt} {a.image_size} px"] = int(statistics.mean(len(b) for b in items))
    return rows


def _image_row(fmt, decoder, target, r, diff) -> dict:
    return {"format": fmt, "decoder": decoder, "output": target,
            "images_per_s_per_core": round(r["per_core"], 1),
            "images_per_s_wall": round(r["wall"], 1), "max_abs_diff": diff}


# --- video decoders -------------------------------------------------------------------------


def sampled_indices(n: int, fps_in: float, mode: dict) -> list[int]:
    """The source frames a sampling keeps: uniform (``round(linspace)``) or nearest to k/fps."""
    if mode["fps"]:
        return [min(n - 1, round(k / mode["fps"] * fps_in)) for k in range(mode["frames"])]
    return [int(i) for i in np.rint(np.linspace(0, n - 1, mode["frames"]))]


def pyav_fit(frame, size: int) -> np.ndarray:
    from components.media.video import _fit

    return _fit(frame, size)


def _length(container, stream) -> int:
    """Frames in the clip: declared (MP4), else duration x rate (WebM declares no count)."""
    if stream.frames:
        return int(stream.frames)
    seconds = (float(stream.duration * stream.time_base) if stream.duration
               else container.duration / 1e6)
    return round(seconds * float(stream.average_rate))


def pyav_sequential(b: bytes, mode: dict, threads: str) -> tuple[np.ndarray, int]:
    """Decode every frame up to the last sampled one; convert the sampled ones."""
    import av

    with av.open(io.BytesIO(b)) as c:
        s = c.streams.video[0]
        if threads == "auto":
            s.thread_type = "AUTO"  # frame + slice threads, one per core
            s.codec_context.thread_count = 0
        else:
            s.codec_context.thread_count = 1
        want = sampled_indices(_length(c, s), float(s.average_rate), mode)
        last, out, decoded = max(want), {}, 0
        for i, frame in enumerate(c.decode(s)):
            decoded += 1
            if i in want:
                out[i] = pyav_fit(frame, mode["size"])
            if i >= last:
                break
    return np.stack([out[i] for i in want], 1), decoded


def pyav_seek(b: bytes, mode: dict) -> tuple[np.ndarray, int]:
    """For each sampled frame: seek to the keyframe at or before it, decode up to it."""
    import av

    with av.open(io.BytesIO(b)) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        rate = float(s.average_rate)
        want, out, decoded = sampled_indices(_length(c, s), rate, mode), [], 0
        start = s.start_time or 0
        for i in want:
            target = start + int(i / rate / s.time_base)
            c.seek(target, backward=True, any_frame=False, stream=s)
            for frame in c.decode(s):
                decoded += 1
                if frame.pts is not None and frame.pts >= target - 1:
                    out.append(pyav_fit(frame, mode["size"]))
                    break
    return np.stack(out, 1), decoded


def torchcodec_sample(b: bytes, mode: dict, seek_mode: str, tc) -> tuple[np.ndarray, int]:
    from torchcodec.transforms import CenterCrop, Resize

    size, (w, h) = mode["size"], mode["source"]  # every clip of a set has the same size
    nh, nw = (size, max(size, round(w * size / h))) if h <= w else (max(size, round(h * size / w)), size)
    dec = tc.decoders.VideoDecoder(b, seek_mode=seek_mode, num_ffmpeg_threads=1,
                                   transforms=[Resize((nh, nw)), CenterCrop((size, size))])
    n = dec.metadata.num_frames
    want = sampled_indices(n, float(dec.metadata.average_fps), mode)
    frames = dec.get_frames_at(want).data  # (T, 3, S, S) uint8
    return frames.numpy().transpose(1, 0, 2, 3), -1


def video_cases(work, a, libs) -> list[dict]:
    modes = {"VideoAlign: 2 fps, 448 px": {"fps": 2, "frames": int(2 * a.seconds), "size": 448,
                                           "source": a.clip_size},
             "16 frames, 224 px": {"fps": 0, "frames": 16, "size": 224, "source": a.clip_size}}
    if a.quick:
        modes = {k: {**m, "size": m["size"] // 8} for k, m in modes.items()}
    rows = []
    for codec in ("h264", "vp9"):
        clips = clip_set(work, codec, a.clip_size, int(a.seconds * a.fps), a.fps, a.gop)
        for label, mode in modes.items():
            spec = {t: MediaSpec("video", mode["size"], 1 << 24, frames=mode["frames"],
                                 fps=float(mode["fps"]), decoder_threads=t) for t in (1, 2)}
            methods: dict[str, Callable] = {
                "pyav sequential, 1 thread": lambda b, m=mode: pyav_sequential(b, m, "1"),
                "pyav sequential, AUTO threads": lambda b, m=mode: pyav_sequential(b, m, "auto"),
                "pyav seek per frame": lambda b, m=mode: pyav_seek(b, m),
                "decode_video (project), 1 thread": lambda b, s=spec[1]: (decode_video(b, s)[0], -1),
                "decode_video (project), decoder_threads=2":
                    lambda b, s=spec[2]: (decode_video(b, s)[0], -1),
            }
            tc = libs["torchcodec"]
            if not isinstance(tc, str):
                for sm in ("exact", "approximate"):
                    methods[f"torchcodec {sm}"] = lambda b, m=mode, sm=sm, tc=tc: torchcodec_sample(b, m, sm, tc)
            ours = [decode_video(b, spec[1])[0] for b in clips]
            timed = measure(methods, clips, a.min_cpu_s, a.repeats)
            for name, fn in methods.items():
                r = timed[name]
                outs = [fn(b)[0] for b in clips]
                diff = max(float(np.abs(o.astype(int) - p).mean()) for o, p in zip(outs, ours, strict=True))
                rows.append({
                    "codec": codec, "sampling": label, "decoder": name,
                    "frames_out": mode["frames"],
                    "frames_decoded": r["sample_output"][1] if r["sample_output"][1] >= 0 else None,
                    "clips_per_s_per_core": round(r["per_core"], 2),
                    "frames_per_s_per_core": round(r["per_core"] * mode["frames"], 1),
                    "frames_per_s_wall": round(r["wall"] * mode["frames"], 1),
                    "mean_abs_diff_vs_decode_video": round(diff, 2),
                })
                print(f"  {codec} {label} {name}", file=sys.stderr, flush=True)
        MEDIA_BYTES[f"{codec} clip"] = int(statistics.mean(len(b) for b in clips))
    return rows


# --- report ---------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    lines = ["| format | decoder | output | images/s per core | images/s wall | max abs diff |",
             "|---|---|---|---|---|---|"]
    for r in result["images"]:
        out = "full RGB" if r["output"] == "full" else f"{r['output']} px"
        lines.append(f"| {r['format']} | {r['decoder']} | {out} | {r['images_per_s_per_core']} "
                     f"| {r['images_per_s_wall']} | {r['max_abs_diff']:g} |")
    lines += ["", "| codec | sampling | decoder | frames decoded | frames/s per core | "
              "clips/s per core | frames/s wall | mean abs diff |", "|---|---|---|---|---|---|---|---|"]
    for r in result["video"]:
        dec = "" if r["frames_decoded"] is None else r["frames_decoded"]
        lines.append(f"| {r['codec']} | {r['sampling']} | {r['decoder']} | {dec} | "
                     f"{r['frames_per_s_per_core']} | {r['clips_per_s_per_core']} | "
                     f"{r['frames_per_s_wall']} | {r['mean_abs_diff_vs_decode_video']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny media and timings (smoke test)")
    p.add_argument("--min-cpu-s", type=float, default=1.0, help="CPU seconds per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", help="keep (and reuse) the encoded media here")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "decoders.json"))
    p.add_argument("--only", choices=["images", "video"], help="run one half; the other half "
                   "of an existing --out file is kept")
    a = p.parse_args()
    a.image_size, a.image_pairs, a.targets = 1024, 8, (224, 448)
    a.clip_size, a.seconds, a.fps, a.gop = (1280, 720), 3.0, 24, 48
    if a.quick:
        a.image_size, a.targets, a.min_cpu_s, a.repeats = 256, (64,), 0.05, 1
        a.clip_size, a.seconds, a.fps, a.gop = (128, 72), 2.0, 8, 4
    import torch

    torch.set_num_threads(1)
    libs = {name: optional(name) for name in ("simplejpeg", "turbojpeg", "torchcodec")}
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or tmp
        os.makedirs(work, exist_ok=True)
        load0 = os.getloadavg()
        old = {}
        if a.only and os.path.exists(a.out):
            with open(a.out) as f:
                old = json.load(f)
        result = {
            "command": "python benchmarks/decoders.py " + " ".join(sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "loadavg_start": load0},
            "versions": _versions(libs),
            "skipped": {k: v for k, v in libs.items() if isinstance(v, str)},
            "media": {"images": f"{a.image_size} px, {a.image_pairs} pairs minus eval, both sides",
                      "clips": f"{a.clip_size[0]}x{a.clip_size[1]}, {a.seconds:g} s at "
                               f"{a.fps} fps, keyframe every {a.gop} frames, 2 clips"},
            "method": f"median of {a.repeats} repeats of >= {a.min_cpu_s} CPU-s each",
            "anchors": ANCHORS,
            "images": old.get("images", []) if a.only == "video" else image_cases(work, a, libs),
            "video": old.get("video", []) if a.only == "images" else video_cases(work, a, libs),
        }
        result["media_bytes"] = {**old.get("media_bytes", {}), **MEDIA_BYTES}
        result["machine"]["loadavg_end"] = os.getloadavg()
        # Which command and method produced each half (with --only, the other half's stay).
        result["runs"] = {**old.get("runs", {}), **{half: {"command": result["command"],
                                                            "method": result["method"]}
                                                     for half in ((a.only,) if a.only
                                                                  else ("images", "video"))}}
        if a.only:
            result["machine"] = {**old.get("machine", {}),
                                 **{f"{a.only}_{k}": v for k, v in result["machine"].items()}}
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(markdown(result))


def _versions(libs: dict) -> dict:
    import av
    import PIL
    import torch
    import torchvision

    v = {"pillow": PIL.__version__, "av": av.__version__, "torch": torch.__version__,
         "torchvision": torchvision.__version__}
    for name, mod in libs.items():
        if not isinstance(mod, str):
            v[name] = getattr(mod, "__version__", "?")
    return v


if __name__ == "__main__":
    main()
