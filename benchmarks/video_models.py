"""Figures for the README's video section: each video scorer, and the temporal prior lambda,
through the real workflow (``python -m pipelines run video``) on the same sample clips.

Eval clips are camera moves over photos never seen in training. Reports eval accuracy, the
accuracy of temporal consistency alone and of the scorer alone, training pairs/s and decode
clips/s per preprocessing actor (``data/decode_s`` of the prepare step). Writes
``benchmarks/video_models.json``.

    .venv/bin/python benchmarks/video_models.py [--pairs 200] [--epochs 4]
        [--models bn-c3d,seed-c3d,r3d_18,mc3_18,r2plus1d_18] [--lambdas 0,100,1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from mlflow import MlflowClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from components.sample.videos import write_video_pairs  # noqa: E402


def run(work: str, name: str, epochs: int, overrides: list[str]) -> dict:
    summary = os.path.join(work, f"{name}.json")
    uri = f"sqlite:///{work}/mlflow.db"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "run", "video", "--train", f"{work}/data/train",
         "--eval", f"{work}/data/eval", "--epochs", str(epochs), "--model-name", f"bench-{name}",
         "--tracking-uri", uri, "--output-dir", f"{work}/out", "--summary", summary,
         "data.image_size=32", "data.video.frames=8", "train.batch_size=16", "train.lr=3e-3",
         *overrides],
        capture_output=True, text=True, cwd=ROOT,
    )
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"workflow failed for {name}")
    s = json.load(open(summary))
    m = MlflowClient(uri, uri).get_run(s["run_id"]).data.metrics
    used = s["rows"]["train"]["used"] + s["rows"]["eval"]["used"]
    return {
        "eval_accuracy": s["metrics"]["eval/accuracy"],
        "eval_scorer_accuracy": s["metrics"].get("eval/scorer_accuracy"),
        "eval_consistency_accuracy": s["metrics"].get("eval/consistency_accuracy"),
        "eval_pairs": s["metrics"]["eval/pairs"],
        "train_pairs_per_s": s["train_pairs_per_s"],
        "train_steady_pairs_per_s": round(m["train/steady_pairs_per_s"], 2),
        "decode_clips_per_s_per_actor": round(2 * used / m["data/decode_s"], 1),
        "workflow_wall_s": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--models", default="bn-c3d,seed-c3d,r3d_18,mc3_18,r2plus1d_18")
    ap.add_argument("--lambdas", default="0,100,1000")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "video_models.json"))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="vdpo-video-")
    data = write_video_pairs(os.path.join(work, "data"), pairs=a.pairs, size=32, frames=8)
    results: dict = {"machine": {"cores": os.cpu_count(), "gpu": torch.cuda.is_available()},
                     "data": {**data["pairs"], "clip": "8 x 32 x 32", "epochs": a.epochs},
                     "models": {}, "temporal_weight": {}}
    for model in a.models.split(","):
        results["models"][model] = run(work, model, a.epochs, [f"model.name={model}"])
        print(model, json.dumps(results["models"][model]), flush=True)
    for lam in filter(None, a.lambdas.split(",")):
        results["temporal_weight"][lam] = run(work, f"lambda-{lam}", a.epochs,
                                              [f"loss.temporal_weight={lam}"])
        print("lambda", lam, json.dumps(results["temporal_weight"][lam]), flush=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
