"""The real train step on one device, plain PyTorch (no Ray, no MLflow): runs where only torch
is installed. Synthetic uint8 batches at realistic sizes go through ``train_step`` of each
image scorer, for fp32 vs bf16 autocast and channels_last on/off. Prints one JSON line:
pairs/s, achieved TFLOP/s (FLOPs counted by torch's FlopCounterMode for one step, divided by
the measured step time) and peak device memory.

    python benchmarks/gpu_step.py                       # CUDA, 224x224, all scorers
    python benchmarks/gpu_step.py --device cpu --size 64 --steps 3 --batch 8   # a smoke run
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

from components.models import build_scorer  # noqa: E402
from components.train_step import StepSettings, train_step  # noqa: E402


def measure(name: str, device: torch.device, size: int, batch: int, steps: int,
            amp: bool, channels_last: bool) -> dict:
    torch.manual_seed(0)
    model = build_scorer(name).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    settings = StepSettings(amp=amp, channels_last=channels_last)
    c = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    r = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    if device.type == "cuda":
        c, r = c.pin_memory(), r.pin_memory()
        torch.cuda.reset_peak_memory_stats(device)
    with FlopCounterMode(display=False) as counter:
        train_step(model, opt, c, r, settings, device)
    flops = counter.get_total_flops()
    for _ in range(2):  # warm-up (cudnn autotune, allocator)
        train_step(model, opt, c, r, settings, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        m = train_step(model, opt, c, r, settings, device)
    m["loss"].item()  # wait for the device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = (time.perf_counter() - t0) / steps
    return {
        "model": name, "amp_bf16": amp, "channels_last": channels_last, "image_size": size,
        "batch_pairs": batch, "pairs_per_s": round(batch / dt, 1),
        "tflops": round(flops / dt / 1e12, 3), "gflop_per_step": round(flops / 1e9, 2),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        if device.type == "cuda" else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--models", default="bn-cnn,resnet18,seed-cnn")
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
                results.append(measure(name, device, a.size, a.batch, a.steps, amp, cl))
    print(json.dumps({"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                      else "cpu", "torch": torch.__version__, "results": results}))


if __name__ == "__main__":
    main()
