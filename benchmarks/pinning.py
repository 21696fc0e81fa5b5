"""CPU contention between decode and train processes, with and without pinning (no Ray, no MLflow).

Each *pair* is one decode process (PIL: decode a 512x512 JPEG, resize to 224x224, to numpy;
images/s) and one train process (forward+backward+AdamW step of a small 4-conv CNN on a batch
of 16 x 3x112x112; steps/s) - a preprocessing actor next to a training worker. Conditions:

* default: no affinity, library thread pools at their defaults (torch and OpenMP use every
  core; ``OMP_NUM_THREADS`` & co. removed from the children's environment);
* pinned: ``components.pinning.plan_cpus("auto", train_workers=m, cpus_per_worker=k,
  actors=m, cpus_per_actor=k)`` with ``k = max(1, cores // (2m))``; train process ``i`` is pinned
  to ``plan.train_set(i)``, decode process ``i`` to ``plan.preprocess_set(i)``, each with its
  thread pools capped to its set's size (the thread variables set before torch is imported).
  With too few cores the plan's shared mode applies: on 2 cores with m=2 the training
  processes share core 0 and the decoders core 1, so training never competes with decoding.

For each condition all ``2m`` processes start once (spawned, so each imports torch after its
pinning); first pair 0 runs alone while the others wait idle on a barrier, then all ``m``
pairs run at once. Every process runs a short warm-up then ``seconds`` of measurement.
``loadavg`` in "machine" shows whether something else was using the cores meanwhile. The slowdown of a process
kind is (mean rate of that kind while ``m`` pairs run) / (its rate when its pair runs alone):
1.0 = no slowdown, smaller = worse; "combined" is the geometric mean over decode and train.
The "alone" reference of the pinned condition is pair 0 pinned to its planned sets.

    .venv/bin/python benchmarks/pinning.py [--processes 2] [--seconds 8] [--json OUT]

Or ``from benchmarks.pinning import run`` (repo root on ``sys.path``) -> the same dict.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Only the standard library at module level: spawned children import this module before
# running ``_worker``, and must be able to pin and set thread variables before torch loads.
from components.runtime.pinning import (  # noqa: E402
    THREAD_ENV_VARS,
    format_cpus,
    pin_current_process,
    plan_cpus,
    process_report,
)

DEFINITION = (
    "per_process_slowdown[kind] = mean rate of the processes of that kind while m pairs run "
    "concurrently / rate of that kind when one pair runs alone (same pinning condition); "
    "1.0 = no slowdown, smaller = worse. combined = geometric mean of decode and train. "
    "pinning_slowdown_default / _pinned = the combined slowdown of each condition. "
    "pinned_vs_default_concurrent_throughput[kind] = summed rate of the m concurrent pairs "
    "pinned / the same unpinned (> 1: pinning gives more total throughput)."
)


def _make_jpegs() -> list[bytes]:
    """A few 512x512 JPEGs from scikit-image's sample photos (synthetic if unavailable)."""
    import numpy as np
    from PIL import Image

    imgs = []
    try:
        from importlib import resources

        data = resources.files("skimage") / "data"
        for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"):
            f = data / name
            if f.is_file():
                with f.open("rb") as fh:
                    imgs.append(Image.open(fh).convert("RGB").resize((512, 512)))
    except ImportError:
        pass
    if not imgs:
        rng = np.random.default_rng(0)
        for _ in range(4):
            a = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
            imgs.append(Image.fromarray(a))
    out = []
    for im in imgs:
        b = io.BytesIO()
        im.save(b, format="JPEG", quality=90)
        out.append(b.getvalue())
    return out


def _decode_loop(images: list[bytes]):
    import numpy as np
    from PIL import Image

    i = 0

    def step() -> None:
        nonlocal i
        im = Image.open(io.BytesIO(images[i % len(images)])).convert("RGB")
        np.asarray(im.resize((224, 224), Image.BILINEAR))
        i += 1

    return step


def _train_loop():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(16, 3, 112, 112)
    y = torch.randn(16, 1)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()

    return step


def _timed(step, warmup_s: float, seconds: float) -> tuple[float, int]:
    t_end = time.perf_counter() + warmup_s
    while time.perf_counter() < t_end:
        step()
    n, t0 = 0, time.perf_counter()
    t_end = t0 + seconds
    while True:
        step()
        n += 1
        now = time.perf_counter()
        if now >= t_end:
            return n / (now - t0), n


def _worker(idx: int, kind: str, cpus: list[int] | None, images: list[bytes],
            warmup_s: float, seconds: float, barrier: Any, queue: Any) -> None:
    """Phase 1: only pair 0 runs (the others wait, idle, on the barrier); phase 2: all run."""
    try:
        if cpus is None:  # default: library defaults, whatever the parent had set
            for k in THREAD_ENV_VARS:
                os.environ.pop(k, None)
        else:  # affinity + thread variables (+ torch caps) before torch is imported
            pin_current_process(cpus, import_torch=kind == "train")
        step = _decode_loop(images) if kind == "decode" else _train_loop()
        step()
        barrier.wait(timeout=300)
        if idx < 2:
            rate, n = _timed(step, warmup_s, seconds)
            queue.put({"idx": idx, "kind": kind, "phase": "alone", "rate": rate,
                       "iterations": n, "report": process_report()})
        barrier.wait(timeout=300)
        rate, n = _timed(step, warmup_s, seconds)
        queue.put({"idx": idx, "kind": kind, "phase": "concurrent", "rate": rate,
                   "iterations": n, "report": process_report()})
    except BaseException as e:  # noqa: B036 - report, never hang the parent
        barrier.abort()
        queue.put({"idx": idx, "kind": kind, "error": repr(e)})


def _measure(pairs: list[tuple[list[int] | None, list[int] | None]], images: list[bytes],
             warmup_s: float, seconds: float) -> list[dict]:
    """Start the pairs ``(train_cpus, decode_cpus)``: pair 0 alone, then all together.
    Returns one result per process and phase."""
    ctx = mp.get_context("spawn")
    jobs = []
    for p, (train_cpus, decode_cpus) in enumerate(pairs):
        jobs.append((2 * p, "decode", decode_cpus))
        jobs.append((2 * p + 1, "train", train_cpus))
    barrier, queue = ctx.Barrier(len(jobs)), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, k, c, images, warmup_s, seconds, barrier,
                                               queue), daemon=True) for i, k, c in jobs]
    for pr in procs:
        pr.start()
    results: list[dict] = []
    try:
        while len(results) < len(procs) + 2:
            r = queue.get(timeout=300 + 2 * (warmup_s + seconds))
            results.append(r)
            if "error" in r:
                raise RuntimeError(f"benchmark process failed: {r}")
    finally:
        for pr in procs:
            pr.join(timeout=30)
            if pr.is_alive():
                pr.kill()
    return sorted(results, key=lambda r: r["idx"])


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def _condition(pairs: list, images: list[bytes], warmup_s: float, seconds: float) -> dict:
    results = _measure(pairs, images, warmup_s, seconds)
    alone = [r for r in results if r["phase"] == "alone"]
    conc = [r for r in results if r["phase"] == "concurrent"]

    def rates(rs: list[dict], kind: str) -> list[float]:
        return [r["rate"] for r in rs if r["kind"] == kind]

    a = {"decode_img_per_s": rates(alone, "decode")[0], "train_steps_per_s": rates(alone, "train")[0]}
    c = {"decode_img_per_s": rates(conc, "decode"), "train_steps_per_s": rates(conc, "train")}
    slow = {
        "decode": (sum(c["decode_img_per_s"]) / len(c["decode_img_per_s"])) / a["decode_img_per_s"],
        "train": (sum(c["train_steps_per_s"]) / len(c["train_steps_per_s"])) / a["train_steps_per_s"],
    }
    slow["combined"] = _geomean([slow["decode"], slow["train"]])

    def proc(r: dict) -> dict:
        rep = r["report"]
        return {"kind": r["kind"], "pair": r["idx"] // 2, "rate": round(r["rate"], 3),
                "affinity": format_cpus(rep["affinity"]), "torch_threads": rep["torch_threads"],
                "omp_num_threads": rep["omp_num_threads"], "os_threads": rep["os_threads"]}

    return {
        "alone": {k: round(v, 3) for k, v in a.items()},
        "concurrent": {k: [round(x, 3) for x in v] for k, v in c.items()},
        "aggregate": {k: round(sum(v), 3) for k, v in c.items()},
        "per_process_slowdown": {k: round(v, 4) for k, v in slow.items()},
        "processes": {"alone": [proc(r) for r in alone], "concurrent": [proc(r) for r in conc]},
    }


def run(processes: int = 2, seconds: float = 8.0, warmup_s: float | None = None) -> dict:
    """Measure ``processes`` concurrent decode+train pairs, default vs pinned; see module doc."""
    if processes < 1 or seconds <= 0:
        raise ValueError("processes must be >= 1 and seconds > 0")
    if warmup_s is None:
        warmup_s = min(2.0, max(0.5, 0.2 * seconds))
    t_start = time.perf_counter()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    images = _make_jpegs()
    node = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(
        range(os.cpu_count() or 1))
    m = processes
    share = max(1, len(node) // (2 * m))
    plan = plan_cpus("auto", train_workers=m, cpus_per_worker=share, actors=m,
                     cpus_per_actor=share, node_cpus=node)

    default = _condition([(None, None)] * m, images, warmup_s, seconds)
    pinned_pairs = [(list(plan.train_set(i)), list(plan.preprocess_set(i))) for i in range(m)]
    pinned = _condition(pinned_pairs, images, warmup_s, seconds)
    pinned["plan"] = plan.to_dict()
    pinned["plan_description"] = plan.describe()
    pinned["pinning_applied"] = hasattr(os, "sched_setaffinity")

    thr = {
        "decode": pinned["aggregate"]["decode_img_per_s"] / default["aggregate"]["decode_img_per_s"],
        "train": pinned["aggregate"]["train_steps_per_s"] / default["aggregate"]["train_steps_per_s"],
    }
    thr["combined"] = _geomean([thr["decode"], thr["train"]])
    return {
        "benchmark": "pinning",
        "machine": {"cpus": os.cpu_count(), "affinity": len(node),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_1min_before": load_before,
                    "loadavg_1min_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "processes_pairs": m,
        "seconds": seconds,
        "warmup_s": warmup_s,
        "workloads": {"decode": "PIL decode 512x512 JPEG + resize 224 (img/s)",
                      "train": "4-conv CNN (16-32-64-64 ch) fwd+bwd+AdamW, batch 16 x 3x112x112 (steps/s)"},
        "definition": DEFINITION,
        "default": default,
        "pinned": pinned,
        "pinning_slowdown_default": default["per_process_slowdown"]["combined"],
        "pinning_slowdown_pinned": pinned["per_process_slowdown"]["combined"],
        "pinned_vs_default_concurrent_throughput": {k: round(v, 4) for k, v in thr.items()},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--processes", type=int, default=2, help="concurrent decode+train pairs")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per process")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds (default auto)")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args(argv)
    result = run(args.processes, args.seconds, args.warmup)
    line = json.dumps(result)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
