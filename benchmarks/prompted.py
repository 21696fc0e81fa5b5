"""Image-only vs prompt-conditioned scorers, and which fine-tuning controls matter, through the
real workflow (``python -m pipelines run image``) on two sample sets:

- the prompt-dependent set (``sample-data --prompted``: the caption names the preferred photo,
  every photo chosen as often as rejected, both sides equally degraded);
- the standard set (``sample-data``: the preference is about degradation, unseen photos in eval).

Writes ``benchmarks/out/prompted.json``; one line per run: eval accuracy, train pairs/s, wall.

    python benchmarks/prompted.py [--epochs 4] [--pairs 600]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from components.sample.images import write_image_pairs, write_prompted_image_pairs  # noqa: E402
from pipelines.__main__ import main  # noqa: E402

RUNS = [  # (data set, label, overrides)
    ("prompted", "bn-cnn (image-only)", ["model.name=bn-cnn"]),
    ("prompted", "prompt-bn-cnn, constant lr", ["model.name=prompt-bn-cnn"]),
    ("prompted", "prompt-bn-cnn, warmup+cosine", ["model.name=prompt-bn-cnn",
                                                  "train.lr_schedule=cosine",
                                                  "train.warmup_steps=10"]),
    ("prompted", "prompt-bn-cnn, warmup+cosine+EMA", ["model.name=prompt-bn-cnn",
                                                      "train.lr_schedule=cosine",
                                                      "train.warmup_steps=10",
                                                      "train.ema_decay=0.9"]),
    ("prompted", "prompt-bn-cnn, val split + best epoch", ["model.name=prompt-bn-cnn",
                                                           "data.val_fraction=0.1"]),
    ("standard", "bn-cnn (image-only)", ["model.name=bn-cnn"]),
    ("standard", "prompt-bn-cnn", ["model.name=prompt-bn-cnn"]),
]


def run_one(data: str, overrides: list[str], epochs: int, work: str, name: str) -> dict:
    summary = os.path.join(work, f"{name}.json")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(["run", "image", "--train", f"{data}/train", "--eval", f"{data}/eval",
                   "--epochs", str(epochs), "--tracking-uri", f"sqlite:///{work}/mlflow.db",
                   "--output-dir", f"{work}/out", "--run-name", name, "--model-name", name,
                   "gate.min_accuracy=0", *overrides, "--summary", summary])
    s = json.load(open(summary))
    if rc != 0:
        raise RuntimeError(f"{name}: {s}")
    return {"eval_accuracy": round(s["metrics"]["eval/accuracy"], 3),
            "train_pairs_per_s": s["train_pairs_per_s"], "epochs_registered": s["epochs"],
            "wall_s": round(time.perf_counter() - t0, 1)}


def cli() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=600)
    ap.add_argument("--out", default="benchmarks/out/prompted.json")
    a = ap.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as work:
        sets = {"prompted": f"{work}/prompted", "standard": f"{work}/standard"}
        write_prompted_image_pairs(sets["prompted"], pairs=a.pairs, size=64, seed=0)
        write_image_pairs(sets["standard"], pairs=a.pairs, size=64, seed=0)
        results = []
        for i, (which, label, over) in enumerate(RUNS):
            r = run_one(sets[which], over, a.epochs, work, f"run{i}")
            results.append({"data": which, "model": label, "overrides": over, **r})
            print(json.dumps(results[-1]), flush=True)
    out = {"epochs": a.epochs, "pairs": a.pairs, "image_size": 64, "results": results}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out))


if __name__ == "__main__":
    cli()
