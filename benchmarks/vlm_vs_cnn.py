"""A tiny vision-language scorer (``model.name=vlm``: a random Qwen2-VL with 2 language and 2
vision layers of width 32, tests/tiny_checkpoints.py) next to ``prompt-bn-cnn`` on the
prompt-dependent sample set (``sample-data --prompted``: the caption names the preferred
photo), both trained from random weights through the real workflow
(``python -m pipelines run image``) at the same image size, epochs and batch size.

Writes ``benchmarks/vlm_vs_cnn.json``: per scorer, eval accuracy, train pairs/s, parameters,
wall time, and the machine.

    python benchmarks/vlm_vs_cnn.py [--pairs 160] [--epochs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from components.sample.images import write_prompted_image_pairs  # noqa: E402
from pipelines.__main__ import main  # noqa: E402


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
            "train_pairs_per_s": s["train_pairs_per_s"], "wall_s": round(time.perf_counter() - t0, 1)}


def parameters(name: str, pretrained: str = "") -> int:
    from components.training.models import build_scorer, model_options

    model = build_scorer(name, model_options(name, "", pretrained=pretrained))
    return sum(p.numel() for p in model.parameters())


def main_(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=56, help="image side (a multiple of 28)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "vlm_vs_cnn.json"))
    args = ap.parse_args(argv)
    from tests.tiny_checkpoints import write_qwen2_vl_base

    with tempfile.TemporaryDirectory() as work:
        data = os.path.join(work, "prompted")
        write_prompted_image_pairs(data, pairs=args.pairs, size=args.size, shards=2, seed=0)
        vlm = str(write_qwen2_vl_base(Path(work) / "qwen2-vl", seed=0,
                                      min_pixels=args.size ** 2, max_pixels=args.size ** 2))
        common = [f"data.image_size={args.size}", "train.batch_size=8"]
        runs = {"prompt-bn-cnn": (["model.name=prompt-bn-cnn", *common], ""),
                "vlm (tiny Qwen2-VL, random init)": (["model.name=vlm",
                                                      f"model.pretrained={vlm}", *common], vlm)}
        rows = {}
        for label, (overrides, pretrained) in runs.items():
            name = "vlm" if pretrained else "cnn"
            rows[label] = {**run_one(data, overrides, args.epochs, work, name),
                           "parameters": parameters(overrides[0].split("=", 1)[1], pretrained)}
            print(label, rows[label], flush=True)
    out = {"command": "python benchmarks/vlm_vs_cnn.py " + " ".join(argv or sys.argv[1:]),
           "pairs": args.pairs, "epochs": args.epochs, "image_size": args.size,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU; load: "
                      f"{os.getloadavg()[0]:.1f}", "runs": rows}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main_())
