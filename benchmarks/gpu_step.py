"""The real train step on one device, plain PyTorch (no Ray, no MLflow): runs where only torch
is installed. Synthetic uint8 batches at realistic sizes (224x224 images, 16 x 112 x 112 clips)
go through ``train_step`` of each default scorer, for fp32 vs bf16 autocast and channels_last
(channels_last_3d for clips) on/off. Prints one JSON line:
pairs/s, achieved TFLOP/s (FLOPs counted by torch's FlopCounterMode for one step, divided by
the measured step time) and peak device memory.

    python benchmarks/gpu_step.py                       # CUDA: bn-cnn, resnet18, bn-c3d, r3d_18
    python benchmarks/gpu_step.py --device cpu --size 64 --frames 8 --steps 2 --batch 4  # smoke
    python benchmarks/gpu_step.py --models prompt-bn-cnn,clip --clip-arch ViT-B-32  # + prompts

Prompt-conditioned scorers get synthetic prompts tokenised with their own tokenizer; ``clip``
runs at its architecture's image size (224 for ViT-B-32), random init (the speed of a
pretrained checkpoint is the same).

The prepared run for a lent GPU (the field-size scorers, MFU, peak memory and decode cores
per GPU, in one JSON) is ``benchmarks/gpu_suite.py``; see docs/gpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from components.config import LossConfig  # noqa: E402
from components.media.text import tokenize  # noqa: E402
from components.training.models import (  # noqa: E402
    VIDEO_SCORERS,
    build_scorer,
    model_options,
    takes_prompt,
    text_contract,
)
from components.training.step import train_step  # noqa: E402


def measure(name: str, device: torch.device, size: int, batch: int, steps: int,
            amp: bool, channels_last: bool, frames: int = 16, clip_arch: str = "ViT-B-32") -> dict:
    torch.manual_seed(0)
    video = name in VIDEO_SCORERS
    options = model_options(name, clip_arch)
    model = build_scorer(name, options).to(device)
    if name == "clip":
        size = model.image_size
    tokens = None
    if takes_prompt(model):
        text = text_contract(name, options)
        tokens = torch.from_numpy(tokenize(text["text"], [f"a photo of thing {i}" for i in range(batch)],
                                           text["context_length"], text["vocab_size"]))
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d if video else torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss = LossConfig()
    kw = {"amp": amp, "channels_last": channels_last, "tokens": tokens}
    shape = (batch, 3, frames, size, size) if video else (batch, 3, size, size)
    c = torch.randint(0, 256, shape, dtype=torch.uint8)
    r = torch.randint(0, 256, shape, dtype=torch.uint8)
    if device.type == "cuda":
        c, r = c.pin_memory(), r.pin_memory()
        torch.cuda.reset_peak_memory_stats(device)
    with FlopCounterMode(display=False) as counter:
        train_step(model, opt, c, r, loss, device, **kw)
    flops = counter.get_total_flops()
    for _ in range(2):  # warm-up (cudnn autotune, allocator)
        train_step(model, opt, c, r, loss, device, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        m = train_step(model, opt, c, r, loss, device, **kw)
    m["loss"].item()  # wait for the device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = (time.perf_counter() - t0) / steps
    return {
        "model": name + (f" ({clip_arch})" if name == "clip" else ""), "amp_bf16": amp, "channels_last": channels_last, "image_size": size,
        "frames": frames if video else None,
        "batch_pairs": batch, "pairs_per_s": round(batch / dt, 1),
        "tflops": round(flops / dt / 1e12, 3), "gflop_per_step": round(flops / 1e9, 2),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        if device.type == "cuda" else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=224, help="image size")
    ap.add_argument("--video-size", type=int, default=112)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64, help="image pairs per step")
    ap.add_argument("--video-batch", type=int, default=16, help="clip pairs per step")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--models", default="bn-cnn,resnet18,bn-c3d,r3d_18")
    ap.add_argument("--clip-arch", default="ViT-B-32", help="open_clip architecture of clip")
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    results = []
    for name in a.models.split(","):
        for amp in (False, True):
            for cl in (False, True):
                if device.type != "cuda" and (amp or cl):
                    continue  # the CPU path is fp32, contiguous
                video = name in VIDEO_SCORERS
                results.append(measure(name, device, a.video_size if video else a.size,
                                       a.video_batch if video else a.batch, a.steps, amp, cl,
                                       a.frames, a.clip_arch))
    print(json.dumps({"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                      else "cpu", "torch": torch.__version__, "results": results}))


if __name__ == "__main__":
    main()
