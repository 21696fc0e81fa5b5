"""One prepared run for a lent GPU: training speed, MFU and peak memory of the field-size
scorers, and how many decode cores keep one GPU fed. Plain PyTorch (no Ray, no MLflow, no
PyAV needed): the project's own ``train_step``, scorers and decode, on random weights.

    python benchmarks/gpu_suite.py --out benchmarks/out/gpu_suite.json   # lent GPU, < 8 min
    python benchmarks/gpu_suite.py --device cpu --smoke --out /tmp/smoke.json  # CPU, < 1 min

Workloads (bf16 autocast over fp32 weights, AdamW, the default DPO loss; what
``train.amp`` does on CUDA), random init at the published sizes, nothing downloads:

- ``bn-cnn``: 224 x 224 images; ``bn-c3d``: 16 x 112 x 112 clips;
- ``hf-clip`` with CLIP ViT-L/14 sizes at 224 px (transformers ``CLIPConfig``; the ``clip``
  scorer needs open_clip, which the lent machine may not have), prompts through its tokenizer;
- ``vlm``: Qwen2-VL-2B sizes at 448 x 448 (HPSv3's 256*28*28 pixel budget), the whole
  conversation through the chat template.

The ``hf-clip`` and ``vlm`` model directories (a config at the published sizes, a small
tokenizer trained by tests/tiny_checkpoints.py's helpers, processor files; no weights that
are read) go to a temporary directory, and the project's ``model_options`` reads them as a run
reads ``model.pretrained``; the weights are the scorer's own random init, built on the device.
The tokenizer is not Qwen's: the conversation is ~136 ids where Qwen's would be ~60 (docs/gpu.md).

Per workload: one step under ``FlopCounterMode`` (FLOPs of matmuls, convolutions and
attention, forward and backward), ``--warmup`` steps, ``--steps`` timed steps; pairs/s,
achieved TFLOP/s, MFU against the card's dense bf16 peak (``PEAK_BF16_TFLOPS``), peak
allocated memory. Out of memory: the batch halves and the step is retried.

Decode: ``--decode-procs`` processes (default: every core) decode 1024 px JPEGs and PNGs made
here (smooth random content with sensor-like noise) through ``MediaSpec.decode``, the decode
actors' own call, at each model's input size; clips (854 x 480 MP4) only when PyAV imports.
Per model: decode cores per GPU = 2 items per pair x pairs/s / items/s per core, and the
fraction of each step the GPU would wait for input when ``--cores`` cores decode.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import io
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from components.config import LoraConfig, LossConfig  # noqa: E402
from components.media.spec import MediaSpec  # noqa: E402
from components.training.models import (  # noqa: E402
    build_scorer,
    model_options,
    text_contract,
    to_memory_format,
)
from components.training.step import train_step  # noqa: E402

PEAK_BF16_TFLOPS = (  # dense (no 2:4 sparsity), by a substring of torch.cuda.get_device_name
    ("H200", 989.0),  # H200 SXM/NVL: the H100 SXM's tensor cores, more and faster memory
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # "NVIDIA H100 80GB HBM3": SXM
    ("A100", 312.0),
)
PROMPTS = ("a red fox in fresh snow at dawn, telephoto, shallow depth of field",
           "an astronaut riding a horse on the moon, oil painting in the style of Turner",
           "a bowl of ramen on a wooden table, studio lighting, 4k, highly detailed",
           "two children flying a kite on a windy beach, film photograph",
           "a futuristic city skyline at night with neon signs and flying cars")
MAX_PIXELS = 40_000_000  # data.max_pixels' default


@dataclass
class Workload:
    name: str  # the row's label
    scorer: str  # model.name
    size: int  # data.image_size
    batch: int  # pairs per step to try first
    frames: int = 0  # data.video.frames; 0: images
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def decode_key(self) -> str:
        return f"{self.frames}x{self.size}" if self.frames else str(self.size)

    @property
    def spec(self) -> MediaSpec:
        """The decode actors' settings for this scorer (its tokenizer, once ``options`` are
        set)."""
        text = (text_contract(self.scorer, self.options) or {}) if self.options else {}
        if self.frames:
            return MediaSpec("video", self.size, MAX_PIXELS, frames=self.frames, **text)
        return MediaSpec("image", self.size, MAX_PIXELS, **text)


# --- model directories (config + tokenizer + processor; nothing downloads) -----------------

def clip_vit_l14_dir(directory: Path, smoke: bool) -> Path:
    """A CLIP directory in PickScore's layout; unless ``smoke``, its config has OpenAI CLIP
    ViT-L/14's sizes (openai/clip-vit-large-patch14's config.json)."""
    from transformers import CLIPConfig

    from tests.tiny_checkpoints import write_pickscore_layout

    write_pickscore_layout(directory)
    if smoke:
        return directory
    tiny = CLIPConfig.from_pretrained(directory, local_files_only=True).text_config
    ids = {k: getattr(tiny, k) for k in ("vocab_size", "bos_token_id", "eos_token_id",
                                         "pad_token_id")}
    ids["vocab_size"] = 49408  # OpenAI CLIP's; the small tokenizer's ids are all below it
    text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, projection_dim=768, **ids)
    vision = dict(image_size=224, patch_size=14, hidden_size=1024, intermediate_size=4096,
                  num_hidden_layers=24, num_attention_heads=16, projection_dim=768)
    CLIPConfig(text_config=text, vision_config=vision, projection_dim=768).save_pretrained(directory)
    return directory


def qwen2_vl_2b_dir(directory: Path, smoke: bool) -> Path:
    """A Qwen2-VL-*-Instruct directory without weights: ``config.json`` with
    Qwen2-VL-2B-Instruct's sizes (its config.json; ~2.2B parameters, a 675M vision tower and a
    1.5B language model; ``smoke``: tiny widths), the small trained tokenizer of
    tests/tiny_checkpoints.py with Qwen2-VL's special tokens and chat template, and the image
    processor at a 448 x 448 pixel budget (56 x 56 for ``smoke``). No video processor:
    transformers 5 builds Qwen2-VL's with torchvision, which the lent machine may lack."""
    from transformers import Qwen2VLConfig, Qwen2VLImageProcessor

    from tests.tiny_checkpoints import (
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
        QWEN2_VL_CHAT_TEMPLATE,
        _qwen2_tokenizer,
    )

    tokenizer = _qwen2_tokenizer()
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    side = 56 if smoke else 448
    Qwen2VLImageProcessor(min_pixels=side * side, max_pixels=side * side, patch_size=14,
                          merge_size=2, temporal_patch_size=2, image_mean=OPENAI_CLIP_MEAN,
                          image_std=OPENAI_CLIP_STD).save_pretrained(directory)
    ids = tokenizer.convert_tokens_to_ids
    if smoke:
        text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                    num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                    rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
        vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2)
    else:
        text = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                    num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                    max_position_embeddings=32768,
                    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
        vision = dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4)
    special = dict(bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"))
    Qwen2VLConfig(
        text_config={**text, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, **special},
        vision_config={**vision, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "in_channels": 3},
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        pad_token_id=ids("<|endoftext|>"), tie_word_embeddings=True, **special,
    ).save_pretrained(directory)
    return directory


def workloads(smoke: bool) -> list[Workload]:
    """The four rows at their real sizes (``smoke``: tiny configs, tiny inputs); the options
    of ``hf-clip`` and ``vlm`` come from ``resolve_options``."""
    if smoke:
        return [Workload("bn-cnn", "bn-cnn", 32, 4), Workload("bn-c3d", "bn-c3d", 32, 2, 4),
                Workload("hf-clip (tiny)", "hf-clip", 224, 2),
                Workload("vlm (tiny Qwen2-VL)", "vlm", 56, 2)]
    return [Workload("bn-cnn", "bn-cnn", 224, 256), Workload("bn-c3d", "bn-c3d", 112, 32, 16),
            Workload("hf-clip ViT-L/14", "hf-clip", 224, 128),
            Workload("vlm Qwen2-VL-2B", "vlm", 448, 8)]


def resolve_options(w: Workload, smoke: bool, tmp: Path) -> None:
    """``model_options`` of the scorer, as a run resolves them from ``model.pretrained``."""
    writers = {"hf-clip": clip_vit_l14_dir, "vlm": qwen2_vl_2b_dir}
    if w.scorer not in writers:
        return
    directory = writers[w.scorer](tmp / w.scorer, smoke)
    w.options = model_options(w.scorer, "", pretrained=str(directory))


# --- training step ---------------------------------------------------------------------------

def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a card named as ``torch.cuda.get_device_name`` names it; None
    for a card not in ``PEAK_BF16_TFLOPS`` (pass ``--peak-tflops``) and for the CPU."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(w: Workload, batch: int, device: torch.device):
    """uint8 chosen/rejected ``(B, 3, S, S)`` or ``(B, 3, T, S, S)`` (pinned on CUDA: the
    host-to-device copy is part of the step, as in training) and the prompts' ids ``(B, L)``."""
    shape = (batch, *w.spec.shape)
    g = torch.Generator().manual_seed(0)
    c = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    r = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    if device.type == "cuda":
        c, r = c.pin_memory(), r.pin_memory()
    tokens = None
    if w.spec.takes_prompt:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        tokens = torch.from_numpy(w.spec.tokenize(prompts).astype(np.int64))
    return c, r, tokens


def _timed(model, opt, w: Workload, batch: int, device: torch.device, warmup: int,
           steps: int) -> dict[str, Any]:
    c, r, tokens = _inputs(w, batch, device)
    loss = LossConfig()
    amp = device.type == "cuda"
    kw = {"amp": amp, "channels_last": amp, "tokens": tokens}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with FlopCounterMode(display=False) as counter:  # also the first warm-up step
        train_step(model, opt, c, r, loss, device, **kw)
    flops = counter.get_total_flops()
    for _ in range(warmup):
        train_step(model, opt, c, r, loss, device, **kw)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        m = train_step(model, opt, c, r, loss, device, **kw)
    m["loss"].item()  # waits for the device
    _sync(device)
    dt = (time.perf_counter() - t0) / steps
    out = {"batch_pairs": batch, "step_s": dt, "pairs_per_s": batch / dt,
           "tflop_per_step": flops / 1e12, "tflops": flops / dt / 1e12,
           "loss_finite": bool(math.isfinite(float(m["loss"])))}
    if tokens is not None:
        out["prompt_ids_per_item"] = int((tokens != w.spec.pad_id).sum(1).max()) \
            if w.spec.text == "chat" else int(tokens.shape[1])
    return out


def measure(w: Workload, device: torch.device, a: argparse.Namespace) -> dict[str, Any]:
    """One workload: build, adapt (LoRA, activation checkpointing), then ``_timed``, halving
    the batch on out-of-memory."""
    notes = list(w.notes)
    gc.collect()  # what a failed workload left behind
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with device:  # random init on the device: seconds, not minutes, for 2B parameters
        model = build_scorer(w.scorer, w.options)
    built_s = time.perf_counter() - t0
    big = w.scorer in ("hf-clip", "vlm")
    if big and a.lora > 0:
        from components.training.lora import apply_lora

        model = apply_lora(model, LoraConfig(r=a.lora))
        notes.append(f"LoRA r={a.lora} on every Linear, head trained in full")
    if big and a.checkpointing:
        from components.training.sharding import checkpoint_activations, shard_units

        checkpoint_activations(shard_units(model))
        notes.append("activation checkpointing (train.activation_checkpointing)")
    model = model.to(device)
    if device.type == "cuda":  # as components/training/worker.py does on CUDA
        model = to_memory_format(model, video=bool(w.frames))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    row: dict[str, Any] = {
        "model": w.name, "scorer": w.scorer,
        "input": f"{w.frames} x {w.size} x {w.size} clip" if w.frames
        else f"{w.size} x {w.size} image",
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "trainable_params_m": sum(p.numel() for p in trainable) / 1e6,
        "build_s": built_s, "notes": notes}
    batch = a.batch.get(w.scorer, w.batch)
    while True:
        oom = False
        try:
            row.update(_timed(model, opt, w, batch, device, a.warmup, a.steps))
        except torch.OutOfMemoryError:
            oom = True
        except RuntimeError as e:  # cuBLAS / cuDNN workspaces report it in their own words
            if "out of memory" not in str(e).lower() and "ALLOC_FAILED" not in str(e):
                raise
            oom = True
        if not oom:
            break
        # Outside the except block: the traceback's frames (and their activations) are gone.
        opt.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
        if batch == 1:
            notes.append("out of memory at batch 1: try --checkpointing or --lora 64")
            row.update({"batch_pairs": 1, "pairs_per_s": None, "tflops": None})
            break
        notes.append(f"out of memory at batch {batch}; retried at {batch // 2}")
        batch //= 2
    row["peak_mem_gib"] = (torch.cuda.max_memory_allocated(device) / 2**30
                           if device.type == "cuda" else None)
    del model, opt
    gc.collect()
    return row


def run_workload(w: Workload, device: torch.device, a: argparse.Namespace,
                 tmp: Path) -> dict[str, Any]:
    """``measure`` of one workload; an error is recorded in its row (``error``), so one
    workload that fails does not cost the others their figures on a one-shot GPU run."""
    try:
        resolve_options(w, a.smoke, tmp)
        return measure(w, device, a)
    except Exception as e:
        traceback.print_exc()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"model": w.name, "scorer": w.scorer, "batch_pairs": None, "pairs_per_s": None,
                "error": f"{type(e).__name__}: {e}",
                "notes": [*w.notes, f"failed: {type(e).__name__}: {str(e)[:300]}"]}


# --- decode ---------------------------------------------------------------------------------

def _photo_like(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """uint8 ``(h, w, 3)``: smooth random shapes (a 1/64-size random field, upsampled
    bicubically) plus sensor-like noise, so JPEG and PNG sizes are photo-like, not those of
    flat colour (tiny) or white noise (incompressible)."""
    low = rng.integers(0, 256, (h // 64 + 2, w // 64 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.float32)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def encoded_media(side: int, count: int, clip: tuple[int, int, int] | None) -> dict[str, list]:
    """``{"jpeg": [...], "png": [...], "mp4": [...]}``: ``count`` encoded items each (JPEG at
    quality 90, PNG at Pillow's default level); ``clip`` (W, H, frames): MP4 clips of a
    drifting scene, only when PyAV imports (the project's ``encode_video``)."""
    rng = np.random.default_rng(0)
    out: dict[str, list] = {"jpeg": [], "png": []}
    for _ in range(count):
        img = Image.fromarray(_photo_like(rng, side, side))
        for fmt, kw in (("jpeg", {"quality": 90}), ("png", {})):
            buf = io.BytesIO()
            img.save(buf, format=fmt.upper(), **kw)
            out[fmt].append(buf.getvalue())
    if clip is not None:
        from components.media.video import encode_video

        w, h, t = clip
        scene = _photo_like(rng, w + 2 * t, h)
        frames = np.stack([scene[:, 2 * i: 2 * i + w] for i in range(t)])  # a slow pan
        out["mp4"] = [encode_video(frames, "mp4", fps=24)] * max(1, count // 2)
    return out


def _decode_loop(args: tuple[dict, list, float]) -> float:
    """In a decode process: items/s of ``MediaSpec.decode`` over ``items`` for ``seconds``."""
    spec_fields, items, seconds = args
    spec = MediaSpec(**spec_fields)
    n, t0 = 0, time.perf_counter()
    while True:
        for data in items:
            spec.decode(data)
            n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt


def decode_rates(specs: dict[str, MediaSpec], media: dict[str, list], procs: int,
                 seconds: float) -> dict[str, float]:
    """``{"jpeg@224": items/s per core, ...}``: ``procs`` processes decoding at once (the
    memory bandwidth and clocks they share are part of the figure). Fork, before any CUDA
    work: the children need the project's decode, not a fresh interpreter."""
    ctx = multiprocessing.get_context("fork")
    rates = {}
    with ctx.Pool(procs) as pool:
        for size_key, spec in specs.items():
            for fmt in (("mp4",) if spec.video else ("jpeg", "png")):
                if fmt not in media:
                    continue
                per_proc = pool.map(_decode_loop, [(spec.to_dict(), media[fmt], seconds)] * procs,
                                    chunksize=1)
                rates[f"{fmt}@{size_key}"] = sum(per_proc) / procs
    return rates


def _pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def input_bound(row: dict[str, Any], w: Workload, rates: dict[str, float], cores: int) -> None:
    """Per format: decode cores one GPU needs (2 items per pair) and the share of each step
    the GPU waits when ``cores`` cores decode (0 when they keep up)."""
    need, wait = {}, {}
    for fmt in (("mp4",) if w.frames else ("jpeg", "png")):
        rate = rates.get(f"{fmt}@{w.decode_key}")
        if rate is None or not row.get("pairs_per_s"):
            need[fmt] = wait[fmt] = None
            continue
        items = 2 * row["pairs_per_s"]
        need[fmt] = items / rate
        wait[fmt] = max(0.0, 1.0 - cores * rate / items)
    row["decode_cores_per_gpu"], row["gpu_wait_fraction"] = need, wait
    if w.frames and "mp4" not in {k.split("@")[0] for k in rates}:
        row["notes"].append("video decode not measured: PyAV does not import here")


# --- report ---------------------------------------------------------------------------------

def _fmt(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def _per_format(d: dict[str, float | None], spec: str) -> str:
    return " / ".join(f"{_fmt(v, spec)} {k.upper()}" for k, v in d.items()) or "-"


def markdown(report: dict[str, Any]) -> str:
    cores = report["decode"]["cores"]
    lines = [f"{report['device']}, torch {report['torch']}, transformers "
             f"{report['transformers']}, bf16 peak {_fmt(report['peak_bf16_tflops'], '.0f')} "
             f"TFLOP/s" + ("  (SMOKE TEST: tiny models, not performance)" if report["smoke"]
                           else ""), "",
             f"| model | input | batch (pairs) | pairs/s | TFLOP/s | MFU | peak mem GiB | "
             f"decode cores per GPU | GPU wait at {cores} cores |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["models"]:
        mfu = None if r.get("mfu") is None else 100 * r["mfu"]
        lines.append(
            f"| {r['model']} | {r['input']} | {_fmt(r['batch_pairs'], 'd')} "
            f"| {_fmt(r.get('pairs_per_s'))} "
            f"| {_fmt(r.get('tflops'), '.2f')} | {_fmt(mfu)}{'%' if mfu is not None else ''} "
            f"| {_fmt(r['peak_mem_gib'], '.2f')} "
            f"| {_per_format(r['decode_cores_per_gpu'], '.1f')} "
            f"| {_per_format(r['gpu_wait_fraction'], '.2f')} |")
    rates = ", ".join(f"{k} {v:.1f}" for k, v in report["decode"]["items_per_s_per_core"].items())
    lines += ["", f"Decode, items/s per core with {report['decode']['processes']} processes: "
              f"{rates}."]
    lines += [f"- {r['model']}: {n}" for r in report["models"] for n in r["notes"]]
    return "\n".join(lines)


def _batches(text: str) -> dict[str, int]:
    out = {}
    for item in filter(None, text.split(",")):
        name, _, n = item.partition("=")
        out[name.strip()] = int(n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny models and inputs, 2 timed steps: checks the script, not speed")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out", "gpu_suite.json"))
    ap.add_argument("--models", default="", help="comma-separated scorers (bn-cnn,bn-c3d,"
                    "hf-clip,vlm); default all")
    ap.add_argument("--batch", type=_batches, default={},
                    help="first batch (pairs) per scorer, e.g. vlm=8,hf-clip=64")
    ap.add_argument("--warmup", type=int, default=None, help="default 3 (smoke 0; the counted step warms up too)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps; default 10 (smoke 2)")
    ap.add_argument("--lora", type=int, default=0,
                    help="hf-clip and vlm: LoRA rank (model.lora.r); 0 = full fine-tuning")
    ap.add_argument("--checkpointing", action="store_true",
                    help="hf-clip and vlm: activation checkpointing")
    ap.add_argument("--peak-tflops", type=float, default=0.0,
                    help="bf16 dense peak for MFU when the card is not in the table")
    ap.add_argument("--decode-procs", type=int, default=0, help="default: every core")
    ap.add_argument("--decode-seconds", type=float, default=None, help="default 3 (smoke 0.3)")
    ap.add_argument("--cores", type=int, default=16,
                    help="decode cores per GPU for the GPU-wait column")
    ap.add_argument("--budget-s", type=float, default=450.0,
                    help="skip the remaining workloads once this much wall time has passed")
    a = ap.parse_args()
    a.warmup = (0 if a.smoke else 3) if a.warmup is None else a.warmup
    a.steps = (2 if a.smoke else 10) if a.steps is None else a.steps
    seconds = (0.3 if a.smoke else 3.0) if a.decode_seconds is None else a.decode_seconds
    procs = a.decode_procs or (min(2, os.cpu_count() or 1) if a.smoke else os.cpu_count() or 1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a script, not a library: nothing downloads
    import transformers

    transformers.utils.logging.disable_progress_bar()
    start = time.perf_counter()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if a.smoke:
        torch.set_num_threads(1)  # tiny ops: more threads only contend with the decode and CI

    work = workloads(a.smoke)
    if a.models:
        work = [w for w in work if w.scorer in a.models.split(",")]
    # Decode first: its processes fork, before CUDA (or a tokenizer's threads) starts.
    pyav = _pyav()
    side, count = (128, 2) if a.smoke else (1024, 4)
    clip = ((64, 48, 8) if a.smoke else (854, 480, 48)) if pyav else None
    media = encoded_media(side, count, clip)
    print(f"[gpu_suite {time.perf_counter() - start:5.0f} s] decode, {procs} processes",
          file=sys.stderr, flush=True)
    rates = decode_rates({w.decode_key: w.spec for w in work}, media, procs, seconds)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in work:
            if time.perf_counter() - start > a.budget_s:
                rows.append({"model": w.name, "scorer": w.scorer, "batch_pairs": None,
                             "pairs_per_s": None, "notes": [f"skipped: --budget-s {a.budget_s:g} "
                                                            "reached"]})
                continue
            print(f"[gpu_suite {time.perf_counter() - start:5.0f} s] {w.name}", file=sys.stderr,
                  flush=True)
            rows.append(run_workload(w, device, a, Path(tmp)))
            input_bound(rows[-1], w, rates, a.cores)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = a.peak_tflops or peak_tflops(name)
    for r in rows:
        r.setdefault("input", "-")
        r.setdefault("tflops", None)
        r.setdefault("peak_mem_gib", None)
        r.setdefault("decode_cores_per_gpu", {})
        r.setdefault("gpu_wait_fraction", {})
        r["mfu"] = r["tflops"] / peak if peak and r["tflops"] else None
    report = {
        "smoke": a.smoke, "device": name, "torch": torch.__version__,
        "transformers": transformers.__version__, "peak_bf16_tflops": peak,
        "cpu_count": os.cpu_count(), "amp_bf16": device.type == "cuda",
        "warmup_steps": a.warmup, "timed_steps": a.steps,
        "decode": {"processes": procs, "seconds": seconds, "cores": a.cores,
                   "source_side_px": side, "pyav": pyav, "pillow": PIL.__version__,
                   # components/media/image.py decodes JPEG pixels with it when it imports
                   "simplejpeg": importlib.util.find_spec("simplejpeg") is not None,
                   "encoded_kib": {k: sum(map(len, v)) / len(v) / 1024 for k, v in media.items()},
                   "items_per_s_per_core": rates},
        "models": rows, "wall_s": time.perf_counter() - start}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(markdown(report))
    print(f"\nwrote {a.out} ({report['wall_s']:.0f} s)")
    failed = [r["model"] for r in rows if "error" in r]
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (see the traceback above and 'error' in {a.out})")


if __name__ == "__main__":
    main()
