"""Figures for the README: each scorer through the real workflow on the demo's sample data.

Runs ``python -m pipelines run image`` (local Ray cluster, sqlite MLflow in a temp dir) for
each model on the same data and epochs, and a plain PyTorch loop over the same decoded
tensors with the same model, batch size and thread count, so pipeline throughput can be read
as a ratio measured in one run. Writes ``benchmarks/results.json``.

    .venv/bin/python benchmarks/demo_figures.py [--pairs 600] [--epochs 4] [--models bn-cnn,seed-cnn]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from components.config import LossConfig  # noqa: E402
from components.media.image import decode_image  # noqa: E402
from components.sample.images import write_image_pairs  # noqa: E402
from components.training.models import build_scorer  # noqa: E402
from components.training.step import train_step  # noqa: E402


def plain_loop_pairs_per_s(train_dir: str, model: str, size: int, batch: int, threads: int) -> float:
    """Steady-state pairs/s of the train step over already-decoded tensors in memory."""
    t = pq.read_table(train_dir).to_pydict()
    c = torch.from_numpy(np.stack([decode_image(b, size, 10**8)[0] for b in t["chosen"]]))
    r = torch.from_numpy(np.stack([decode_image(b, size, 10**8)[0] for b in t["rejected"]]))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = build_scorer(model)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    dev = torch.device("cpu")
    for i in range(0, min(len(c), 2 * batch), batch):  # warm-up
        train_step(m, opt, c[i : i + batch], r[i : i + batch], LossConfig(), dev)
    t0 = time.perf_counter()
    for i in range(0, len(c), batch):
        train_step(m, opt, c[i : i + batch], r[i : i + batch], LossConfig(), dev)
    return len(c) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--models", default="bn-cnn,seed-cnn")
    ap.add_argument("--out", default="benchmarks/accuracy.json")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="vdpo-bench-")
    write_image_pairs(os.path.join(work, "data"), pairs=a.pairs, size=64)
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "gpu": torch.cuda.is_available(),
                    "platform": platform.platform(), "torch": torch.__version__},
        "data": {"pairs": a.pairs, "image_size": 64, "epochs": a.epochs},
        "models": {},
    }
    for model in a.models.split(","):
        summary = os.path.join(work, f"{model}.json")
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines", "run", "image",
             "--train", os.path.join(work, "data", "train"),
             "--eval", os.path.join(work, "data", "eval"),
             "--epochs", str(a.epochs), "--model-name", f"bench-{model}",
             "--tracking-uri", f"sqlite:///{work}/mlflow.db", "--output-dir", f"{work}/out",
             "--summary", summary, f"model.name={model}"],
            capture_output=True, text=True,
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"workflow failed for {model}")
        s = json.load(open(summary))
        plain = plain_loop_pairs_per_s(os.path.join(work, "data", "train"), model, 64, 32, 1)
        results["models"][model] = {
            "eval_accuracy": s["metrics"]["eval/accuracy"],
            "eval_pairs": s["metrics"]["eval/pairs"],
            "train_pairs_per_s_pipeline": s["train_pairs_per_s"],
            "train_pairs_per_s_plain_loop": round(plain, 2),
            "pipeline_vs_plain_ratio": round(s["train_pairs_per_s"] / plain, 3),
            "workflow_wall_s": round(wall, 1),
            "rows": s["rows"],
        }
        print(model, json.dumps(results["models"][model]), flush=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
