"""Command line: ``python -m pipelines run image|video ...``, ``evaluate``, ``score``, ``sample-data``.

The same command is the entry point of a Ray job:
``ray job submit --working-dir . -- python -m pipelines run image --train ...``.
The last line of stdout is the run summary as JSON; the exit code is non-zero on failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from typing import Any

from components.config import ConfigError, load_config
from components.schedule import LeaseHeld
from components.steps import StepFailed

# Exit codes for schedulers: 0 ok (or nothing new), 1 failed, 2 invalid config, 3 another
# run of the same workflow and model holds the lease.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LEASE_HELD = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a training workflow")
    run.add_argument("modality", choices=["image", "video"])
    run.add_argument("--train", action="append", default=[], metavar="PATH",
                     help="training shards: file, directory or glob (local or s3://, gs://); repeatable")
    run.add_argument("--eval", action="append", default=[], metavar="PATH",
                     help="eval shards; default: a hash split of the training pairs")
    run.add_argument("--layout", choices=["auto", "canonical", "pickapic"])
    run.add_argument("--epochs", type=int)
    run.add_argument("--workers", type=int, help="Ray Train workers (data-parallel)")
    run.add_argument("--model-name", help="registered model name (default image-scorer / video-scorer)")
    run.add_argument("--experiment", help="MLflow experiment (default image-dpo / video-dpo)")
    run.add_argument("--run-name", help="MLflow run name; the same name again resumes that run")
    run.add_argument("--resume", metavar="RUN_ID", help="resume this parent run: skip finished steps")
    run.add_argument("--incremental", action="store_true", default=None,
                     help="train on new shards only, warm-started from the champion")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                     "else sqlite:///mlflow.db)")
    run.add_argument("--output-dir", help="where prepared data, quarantine and checkpoints go")
    run.add_argument("--config", help="YAML config file")
    run.add_argument("--summary", help="also write the JSON summary to this file")
    run.add_argument("overrides", nargs="*", metavar="key=value",
                     help="config overrides anywhere on the line, e.g. train.lr=3e-4 model.name=seed-cnn")

    ev = sub.add_parser("evaluate", help="evaluate a registered scorer on preference data")
    ev.add_argument("--model", required=True, help="model URI, e.g. models:/image-scorer@champion")
    ev.add_argument("--data", action="append", required=True, metavar="PATH")
    ev.add_argument("--layout", choices=["auto", "canonical", "pickapic"])
    ev.add_argument("--experiment", help="MLflow experiment (default image-dpo)")
    ev.add_argument("--run-name")
    ev.add_argument("--tracking-uri")
    ev.add_argument("--output-dir")
    ev.add_argument("--config")
    ev.add_argument("--summary")
    ev.add_argument("overrides", nargs="*", metavar="key=value")

    sc = sub.add_parser("score", help="score candidate images or clips with a registered scorer")
    sc.add_argument("--model", required=True, help="model URI, e.g. models:/image-scorer@champion")
    sc.add_argument("--input", required=True,
                    help="candidate Parquet: binary 'image' (or 'video') column + ids")
    sc.add_argument("--output", required=True, help="output directory of Parquet files")
    sc.add_argument("--group-by", help="rank within groups of this column (1 = best)")
    sc.add_argument("--top-k", type=int, help="with --group-by: keep the best K per group")
    sc.add_argument("--tracking-uri")
    sc.add_argument("--config")
    sc.add_argument("--summary")
    sc.add_argument("overrides", nargs="*", metavar="key=value")

    sd = sub.add_parser("sample-data", help="write sample preference pairs from scikit-image photos")
    sd.add_argument("--modality", choices=["image", "video"], default="image")
    sd.add_argument("--out", required=True)
    sd.add_argument("--pairs", type=int, default=600)
    sd.add_argument("--size", type=int, default=64)
    sd.add_argument("--frames", type=int, default=16, help="frames per clip (video)")
    sd.add_argument("--layout", choices=["canonical", "pickapic"], default="canonical")
    sd.add_argument("--shards", type=int, default=2)
    sd.add_argument("--seed", type=int, default=0)
    return p


def _cli_overrides(a: argparse.Namespace) -> dict[str, Any]:
    tree: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None or value == []:
            return
        node = tree
        *parents, leaf = path.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value

    if a.command == "evaluate":
        put("data.eval", a.data)
    elif a.command == "score":
        pass
    else:
        put("data.train", a.train)
        put("data.eval", a.eval)
        put("train.epochs", a.epochs)
        put("train.workers", a.workers)
        put("tracking.resume", a.resume)
        put("incremental", a.incremental)
        put("tracking.model_name", a.model_name)
    put("data.layout", getattr(a, "layout", None))
    put("tracking.experiment", getattr(a, "experiment", None))
    put("tracking.run_name", getattr(a, "run_name", None))
    put("tracking.tracking_uri", a.tracking_uri)
    put("output_dir", getattr(a, "output_dir", None))
    return tree


def _emit(summary: dict[str, Any], path: str | None) -> None:
    line = json.dumps(summary, sort_keys=True, default=str)
    if path:
        with open(path, "w") as f:
            f.write(line + "\n")
    sys.stdout.flush()
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # key=value overrides may sit between options: collect them wherever they are.
    a, unknown = parser.parse_known_args(argv)
    stray = [u for u in unknown if u.startswith("-") or "=" not in u]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if a.command in ("run", "evaluate", "score"):
        a.overrides = [*a.overrides, *unknown]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.command == "sample-data":
        if a.modality == "video":
            from components.sample_video import write_video_pairs

            paths = write_video_pairs(a.out, pairs=a.pairs, size=a.size, frames=a.frames,
                                      shards=a.shards, seed=a.seed)
        else:
            from components.sample_data import write_image_pairs

            paths = write_image_pairs(a.out, pairs=a.pairs, size=a.size, layout=a.layout,
                                      shards=a.shards, seed=a.seed)
        print(json.dumps({"status": "ok", "paths": paths}))
        return EXIT_OK

    try:
        cfg = load_config(a.config, a.overrides, _cli_overrides(a),
                          require_train=a.command == "run",
                          modality=a.modality if a.command == "run" else "image")
        if a.command == "run" and cfg.modality != a.modality:
            raise ConfigError([f"modality: the config says {cfg.modality!r} but the command is "
                               f"'run {a.modality}'; drop the key or run {cfg.modality}"])
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        _emit({"status": "failed", "reason": str(e).replace("\n", " ")}, a.summary)
        return EXIT_USAGE

    try:
        if a.command == "evaluate":
            from pipelines.evaluate import run_evaluate

            summary = run_evaluate(cfg, a.model)
        elif a.command == "score":
            from pipelines.score import run_score

            if a.top_k is not None and not a.group_by:
                raise ValueError("--top-k needs --group-by (best K per group)")
            summary = run_score(cfg, a.model, a.input, a.output, a.group_by, a.top_k)
        else:
            from pipelines.preference import run_preference

            summary = run_preference(cfg)
    except LeaseHeld as e:
        _emit({"status": "skipped", "reason": str(e)}, a.summary)
        return EXIT_LEASE_HELD
    except Exception as e:  # every failure ends as one line of JSON and a non-zero exit
        traceback.print_exc()
        failed = {"status": "failed", "reason": f"{type(e).__name__}: {e}".replace("\n", " ")}
        if isinstance(e, StepFailed):
            failed.update(failed_step=e.step, run_id=e.run_id)
        _emit(failed, a.summary)
        return EXIT_FAILED
    _emit(summary, a.summary)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
