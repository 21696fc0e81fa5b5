"""Eval accuracy of the objectives on the sample data, and the effect of soft ties.

Through the real workflow (local Ray, sqlite MLflow in a temp dir):
  1. bt on canonical sample data -> registered champion
  2. dpo with that champion as frozen reference and start point (loss.reference=models:/...@champion)
  3. ipo from scratch
  4. Pick-a-Pic-layout data with 15% ties: ties=drop vs ties=soft, both then evaluated with
     `python -m pipelines evaluate ... ties=soft` on the same held-out pairs (ties included).
Writes benchmarks/objectives.json.

    .venv/bin/python benchmarks/objectives.py [--pairs 600] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from components.sample.images import write_image_pairs  # noqa: E402


def cli(work: str, *args: str) -> dict:
    summary = os.path.join(work, "summary.json")
    proc = subprocess.run([sys.executable, "-m", "pipelines", *args,
                           "--tracking-uri", f"sqlite:///{work}/mlflow.db",
                           "--output-dir", f"{work}/out", "--summary", summary],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"failed: {args}")
    return json.load(open(summary))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/objectives.json")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="vdpo-obj-")
    canon, pap = os.path.join(work, "canon"), os.path.join(work, "pap")
    write_image_pairs(canon, pairs=a.pairs, size=64)
    write_image_pairs(pap, pairs=a.pairs, size=64, layout="pickapic", tie_fraction=0.15)
    ep = ["--epochs", str(a.epochs)]
    data = ["--train", f"{canon}/train", "--eval", f"{canon}/eval"]
    out: dict = {"pairs": a.pairs, "epochs": a.epochs, "objectives": {}, "ties": {}}
    keys = ("eval/accuracy", "eval/loss", "eval/ece")

    def keep(s: dict) -> dict:
        return {k: s["metrics"].get(k) for k in (*keys, "eval/tie_accuracy", "eval/ties")
                if k in s["metrics"]}

    s = cli(work, "run", "image", *data, *ep, "--model-name", "obj-bt")
    out["objectives"]["bt"] = keep(s)
    s = cli(work, "run", "image", *data, *ep, "--model-name", "obj-bt", "loss.type=dpo",
            "loss.beta=0.5", "loss.reference=models:/obj-bt@champion")
    out["objectives"]["dpo (reference = bt champion)"] = {**keep(s), "promoted": s["promoted"],
                                                          "gate": s["promotion"]}
    s = cli(work, "run", "image", *data, *ep, "--model-name", "obj-ipo", "loss.type=ipo")
    out["objectives"]["ipo"] = keep(s)
    for policy in ("drop", "soft"):
        s = cli(work, "run", "image", "--train", f"{pap}/train", *ep,
                "--model-name", f"ties-{policy}", f"ties={policy}")
        e = cli(work, "evaluate", "--model", f"models:/ties-{policy}@champion",
                "--data", f"{pap}/eval", "ties=soft")
        out["ties"][policy] = {"train_rows": s["rows"]["train"], "eval_on_data_with_ties": keep(e)}
        print(policy, json.dumps(out["ties"][policy]), flush=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
