"""Command line: ``visual-dpo run image|video ...``, ``evaluate``, ``score``, ``serve``, ``sample-data``,
``register-published`` and ``verify`` (``visual-dpo`` is the installed console script; ``python -m pipelines`` is the same).

The same command is the entry point of a Ray job:
``ray job submit --working-dir . -- python -m pipelines run image --train ...``.
The last line of stdout is the run summary as JSON; the exit code is non-zero on failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from typing import Any

from components import scorer_catalog
from components.config import LAYOUTS, LOSS_TYPES, MODALITIES, ConfigError, RunConfig, load_config
from components.registry.manifest import ModelVerificationError
from components.runtime.locks import LeaseHeld
from components.runtime.resources import ResourcePlanError
from components.tracking.redaction import RedactingFilter, redact, redact_tree
from components.tracking.steps import StepFailed

# Exit codes for schedulers: 0 ok, nothing new, or skipped because another run of the same
# workflow and model holds the lease (the summary's "status" tells which; a scheduled tick
# that had nothing to do is not a failure for Ray Jobs or KubeRay); 1 failed; 2 invalid
# command line, config, input data or output location (docs/cli.md has the table).
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_NOTHING_NEW = 4  # only with --check: exit 0 means there is new data (like grep)
EXIT_UNVERIFIED = 3  # a model's files do not match the manifest the tracking store recorded
# Errors the user fixes by changing the input data or an output location (a bad or missing
# shard, an output that exists, storage that cannot be written) exit 2 with one line, as a
# bad config does; a traceback is printed only for the unexpected, or with this set to 1.
DEBUG_ENV = "VISUAL_DPO_DEBUG"


def _run_epilog() -> str:
    """The main config keys, with the scorers listed from the catalogue (never by hand)."""
    return f"""main config keys (key=value anywhere on the line, or a YAML file with --config):
  data.image_size=64            decoded size S (images S x S, clip frames too)
  data.video.frames=16          frames per clip (video)
  preprocess.actors=1           CPU decode actors (preprocess.cpus_per_actor cores each)
  model.name=bn-cnn             the scorer (below)
  loss.type=bt                  {", ".join(LOSS_TYPES)} (loss.beta, loss.reference)
  train.epochs=3 train.batch_size=32 train.lr=1e-3 train.workers=1 train.use_gpu=auto
  ties=drop                     Pick-a-Pic ties: drop (counted) or soft (target 0.5)
  gate.min_delta=0.02           promotion gate against the champion
  (every key with its default: docs/reference/configuration.md)

image scorers (model.name):
{scorer_catalog.describe("image")}
video scorers (model.name; run video):
{scorer_catalog.describe("video")}

example:
  visual-dpo run image --train data/sample/train --eval data/sample/eval --epochs 4 \\
      train.lr=3e-4 model.name=seed-cnn
"""


class _Parser(argparse.ArgumentParser):
    """argparse, whose errors (they quote the command line) are redacted; subcommands'
    parsers are of the same class."""

    def error(self, message: str):
        super().error(redact(message))


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="visual-dpo", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    tracking, common, shards = _shared_options()
    commands = (_add_run(sub, shards, common), _add_evaluate(sub, shards, common),
                _add_score(sub, common), _add_register_published(sub, common))
    _add_model_commands(sub, tracking)
    for command in commands:  # after each command's own positionals (run's modality)
        command.add_argument("overrides", nargs="*", metavar="key=value",
                             help="config overrides anywhere on the line, e.g. train.lr=3e-4")
    return p


def _shared_options() -> tuple[argparse.ArgumentParser, ...]:
    """Parent parsers: the options of every command that reads MLflow (``tracking``), of
    every command that reads a config (``common``) and of those that read preference shards."""
    tracking = argparse.ArgumentParser(add_help=False)  # every command that reads MLflow
    tracking.add_argument("--tracking-uri", help="MLflow tracking URI (default: "
                          "MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    common = argparse.ArgumentParser(add_help=False, parents=[tracking])
    common.add_argument("--config", help="YAML config file (keys: docs/reference/configuration.md)")
    common.add_argument("--summary", help="also write the JSON summary to this file")
    # ... and the ones of the commands that read preference shards.
    shards = argparse.ArgumentParser(add_help=False)
    shards.add_argument("--layout", choices=LAYOUTS, help="shard layout: canonical "
                        "(pair_id/chosen/rejected), pickapic, or auto-detect; evaluate also "
                        "reads the benchmark files hpdv2 (test.json) and videogen-rewardbench "
                        "(its CSV)")
    shards.add_argument("--experiment", help="MLflow experiment (default image-dpo / video-dpo)")
    shards.add_argument("--run-name", help="MLflow run name; in `run`, the same name again "
                        "resumes that run")
    shards.add_argument("--output-dir", help="local directory for prepared data, quarantine "
                        "and checkpoints (default outputs/); see --storage")

    return tracking, common, shards


def _add_run(sub: Any, shards: argparse.ArgumentParser,
             common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    run = sub.add_parser("run", help="run a training workflow", epilog=_run_epilog(),
                         parents=[shards, common],
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("modality", choices=MODALITIES, help="what the scorer scores")
    run.add_argument("--train", action="append", default=[], metavar="PATH",
                     help="training shards: file, directory or glob (local or s3://, gs://); repeatable")
    run.add_argument("--eval", action="append", default=[], metavar="PATH",
                     help="eval shards; default: a hash split of the training pairs")
    run.add_argument("--epochs", type=int, help="passes over the training pairs (train.epochs)")
    run.add_argument("--workers", type=int, help="Ray Train workers (data-parallel)")
    run.add_argument("--model-name", help="registered model name (default image-scorer / video-scorer)")
    run.add_argument("--resume", metavar="RUN_ID", help="resume this parent run: skip finished steps")
    run.add_argument("--incremental", action="store_true", default=None,
                     help="train on new shards only, warm-started from the champion")
    run.add_argument("--check", action="store_true",
                     help="with --incremental: only tell whether there are new shards (no Ray, "
                     "no training); exit 0 if there are, 4 if not, e.g. "
                     "'visual-dpo run ... --incremental --check && ray job submit ...'")
    run.add_argument("--storage", help="where all run state goes instead: s3://bucket/prefix, "
                     "gs://..., or a path every node mounts (with storage.shared=true); "
                     "required on a cluster of more than one node")

    return run


def _add_evaluate(sub: Any, shards: argparse.ArgumentParser,
                  common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    ev = sub.add_parser("evaluate", help="evaluate a registered scorer on preference data",
                        parents=[shards, common])
    ev.add_argument("--model", required=True, help="model URI, e.g. models:/image-scorer@champion")
    ev.add_argument("--data", action="append", required=True, metavar="PATH",
                    help="preference shards to evaluate on (file, directory or glob), or a "
                    "benchmark's annotation file (HPDv2 test.json, VideoGen-RewardBench CSV); "
                    "repeatable")
    ev.add_argument("--media-root", help="benchmark annotation files: the folder their image "
                    "or video paths are relative to (eval.media_root)")
    ev.add_argument("--tie-validation", action="append", metavar="PATH",
                    help="Pick-a-Pic validation shards to tune the tie threshold on, applied to "
                    "--data (PickScore's protocol; eval.tie_validation, with ties=soft)")

    return ev


def _add_score(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sc = sub.add_parser("score", help="score candidate images or clips with a registered scorer",
                        parents=[common])
    sc.add_argument("--model", required=True, help="model URI, e.g. models:/image-scorer@champion")
    sc.add_argument("--input", required=True,
                    help="candidate Parquet: binary 'image' (or 'video') column + ids")
    sc.add_argument("--output", required=True,
                    help="output directory of Parquet files (refused if it holds other data)")
    sc.add_argument("--overwrite", action="store_true",
                    help="replace --output even if something else wrote it")
    sc.add_argument("--group-by", help="rank within groups of this column (1 = best)")
    sc.add_argument("--top-k", type=int, help="with --group-by: keep the best K per group")
    sc.add_argument("--prompt-column",
                    help="column with each candidate's prompt (required by a prompt-conditioned "
                         "scorer, e.g. prompt or caption)")

    return sc


def _add_register_published(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    rp = sub.add_parser("register-published", parents=[common],
                        help="register a published scorer checkpoint (PickScore, HPSv2, ...) as "
                        "a model version, without training",
                        epilog="example (PickScore's directory):\n  visual-dpo register-published "
                        "--model-name pickscore --alias champion model.name=hf-clip \\\n"
                        "      model.pretrained=/models/PickScore_v1 data.image_size=224\n"
                        "(every scorer and checkpoint: docs/evaluation.md)",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("--model-name", help="registered model name (default image-scorer / "
                    "video-scorer)")
    rp.add_argument("--alias", help="also point this alias at the new version, e.g. champion")
    rp.add_argument("--modality", choices=MODALITIES, default="image",
                    help="what the scorer scores (default image)")
    rp.add_argument("--experiment", help="MLflow experiment (default image-dpo / video-dpo)")
    rp.add_argument("--run-name", help="MLflow run name")
    return rp


def _add_model_commands(sub: Any, tracking: argparse.ArgumentParser) -> None:
    """``verify``, ``serve`` and ``sample-data``: the commands that read no run config."""
    vf = sub.add_parser("verify", parents=[tracking], help="check every file of a model against the manifest "
                        "recorded in the tracking store, before loading it",
                        epilog="exit codes: 0 verified (prints the version and the manifest's "
                        "SHA-256), 3 verification failed (names the file), 1 the registry could "
                        "not answer (no such model or version, store unreachable)")
    vf.add_argument("model_uri", metavar="MODEL_URI", help="models:/NAME@ALIAS, "
                    "models:/NAME/VERSION, models:/MODEL_ID or runs:/RUN_ID/model")
    vf.add_argument("--download", metavar="DIR", help="keep the verified copy in DIR (a new "
                    "or empty directory) and load that one, e.g. mlflow models serve -m DIR")
    sv = sub.add_parser(
        "serve", parents=[tracking], help="serve a registered scorer over HTTP with Ray Serve (batching, autoscaling, "
        "follows the alias)", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (key=value; every key: docs/serving.md):\n"
        "  batch.max_size=16 batch.wait_timeout_s=0.01 batch.decode_threads=2\n"
        "  scaling.min_replicas=1 scaling.max_replicas=1 scaling.target_ongoing_requests=8\n"
        "  scaling.num_cpus=1 scaling.num_gpus=0 poll_s=10\n"
        "  limits.max_request_bytes=67108864 limits.max_items=256 limits.deadline_s=30\n"
        "example:\n  visual-dpo serve image-scorer@champion --port 8000 batch.max_size=32")
    sv.add_argument("model", metavar="MODEL",
                    help="NAME@ALIAS (followed: a moved alias is loaded, verified and swapped "
                    "in), NAME (= NAME@champion) or a model URI (models:/NAME/VERSION: fixed)")
    sv.add_argument("--address", help="Ray cluster to deploy on (default: RAY_ADDRESS, else a "
                    "new local cluster)")
    sv.add_argument("--host", help="HTTP host (default 127.0.0.1; 0.0.0.0 to listen on all)")
    sv.add_argument("--port", type=int, help="HTTP port (default 8000)")
    sv.add_argument("--name", help="Serve application name (default reward-scorer)")
    sv.add_argument("--detach", action="store_true", help="deploy and exit, leaving the "
                    "application running on the cluster (stop: serve shutdown)")
    sv.add_argument("settings", nargs="*", metavar="key=value", help="serve settings")
    sd = sub.add_parser("sample-data", help="write sample preference pairs from scikit-image photos")
    sd.add_argument("--modality", choices=MODALITIES, default="image",
                    help="image pairs or clip pairs (default image)")
    sd.add_argument("--out", required=True, help="directory; gets train/ and eval/ subfolders")
    sd.add_argument("--pairs", type=int, default=600, help="pairs in all (a quarter go to eval/)")
    sd.add_argument("--size", type=_sample_size, default=64,
                    help="side of the square images/frames, or WIDTHxHEIGHT of the frames "
                         "(video), e.g. 1280x720 (default 64)")
    sd.add_argument("--frames", type=int, default=16, help="frames per clip (video)")
    sd.add_argument("--image-format", choices=["mixed", "jpeg", "png", "webp"], default="mixed",
                    help="encoding of every image (image; default mixed: one drawn per pair)")
    sd.add_argument("--codec", choices=["h264", "vp9"], default="h264",
                    help="clip codec: h264 in MP4 or vp9 in WebM (video; default h264)")
    sd.add_argument("--fps", type=_positive, default=8, help="frames per second (video; default 8)")
    sd.add_argument("--gop", type=_positive, help="a keyframe every GOP frames exactly (video; "
                    "default: the encoder's choice). Realistic clips: --size 1280x720 "
                    "--frames 72 --fps 24 --gop 48")
    sd.add_argument("--layout", choices=["canonical", "pickapic"], default="canonical",
                    help="column layout of the shards (image)")
    sd.add_argument("--shards", type=int, default=2, help="Parquet files per split")
    sd.add_argument("--prompted", action="store_true",
                    help="the prompt-dependent set: the caption names one photo; the chosen side "
                         "shows it, the rejected side another photo, equally degraded")
    sd.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _sample_size(text: str) -> int | tuple[int, int]:
    """``sample-data --size``: ``"1024"`` -> 1024, ``"1280x720"`` -> (1280, 720)."""
    parts = text.lower().split("x")
    if len(parts) > 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected a side (1024) or WIDTHxHEIGHT (1280x720), "
                                         f"got {text!r}")
    return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))


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
        put("eval.media_root", a.media_root)
        put("eval.tie_validation", a.tie_validation)
    elif a.command == "register-published":
        put("tracking.model_name", a.model_name)
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
    put("storage.uri", getattr(a, "storage", None))
    return tree


def _credential_check(a: argparse.Namespace):
    """A ``load_config`` check: credentials written into an object-store URI, in a config key
    or in an option that is none (``--model``, ``--input``), refused with the other problems."""
    from components.runtime import storage

    def check(cfg: Any) -> list[str]:
        problems = storage.credential_problems(cfg)
        said = {p.split(": ", 1)[1] for p in problems}  # --train is data.train: name it once
        for name, value in sorted(vars(a).items()):
            for v in value if isinstance(value, list) else [value]:
                p = isinstance(v, str) and storage.credential_problem(
                    "--" + name.replace("_", "-"), v)
                if p and p.split(": ", 1)[1] not in said:
                    problems.append(p)
                    said.add(p.split(": ", 1)[1])
        return problems

    return check


def _user_error(e: BaseException) -> BaseException | None:
    """The error (``e``, or a failed step's cause) that the user fixes by changing the input
    data or an output location: exit 2, as a bad config. None: the run failed."""
    from components.datasets.contract import DataError
    from components.evaluation.batch_scoring import OutputExists
    from components.runtime.storage import StorageError

    cause = e.__cause__ if isinstance(e, StepFailed) else e
    return cause if isinstance(cause, (DataError, OutputExists, StorageError)) else None


def _expected_failure(e: BaseException) -> bool:
    """A failure whose message says it all (an unreachable tracking server, a run that lost
    its lease before registering): no traceback."""
    from components.runtime.locks import LeaseLost
    from components.tracking.runs import TrackingError

    return isinstance(e.__cause__ if isinstance(e, StepFailed) else e, (TrackingError, LeaseLost))


def _emit(summary: dict[str, Any], path: str | None) -> None:
    # Each string redacted before it is quoted: a mask never eats an escape of the JSON.
    line = json.dumps(redact_tree(json.loads(json.dumps(summary, default=str))), sort_keys=True)
    if path:
        with open(path, "w") as f:
            f.write(line + "\n")
    sys.stdout.flush()
    print(line, flush=True)


def _verify(model_uri: str, tracking_uri: str | None, download: str | None) -> int:
    """``visual-dpo verify``: one JSON line; exit 0 verified, 3 not, 1 no answer."""
    import mlflow

    from components.tracking import models, runs

    try:
        uri = runs.resolve_tracking_uri(tracking_uri or "")
        runs.check_reachable(uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        if download:
            os.makedirs(download, exist_ok=True)
        verified = models.verify_model(model_uri, dst_path=download)
    except ModelVerificationError as e:
        print(redact(str(e)), file=sys.stderr)
        _emit({"status": "unverified", "model_uri": model_uri, "file": e.path,
               "reason": str(e)}, None)
        return EXIT_UNVERIFIED
    except Exception as e:  # noqa: BLE001 - the registry could not answer: not a verdict
        _emit({"status": "failed", "model_uri": model_uri,
               "reason": f"{type(e).__name__}: {e}".replace("\n", " ")}, None)
        return EXIT_FAILED
    _emit({"status": "verified", "model_uri": model_uri, "pinned_uri": verified.pinned_uri,
           "version": verified.version, "manifest_sha256": verified.digest,
           "local_path": verified.local_path}, None)
    return EXIT_OK


def _serve(a: argparse.Namespace, extra: list[str]) -> int:
    """``visual-dpo serve``: deploy, print one JSON line, serve until SIGINT/SIGTERM (or exit
    at once with --detach). Exit 2 on invalid settings, 1 when the deployment fails."""
    from components.serving.settings import SettingsError, settings_from_overrides
    from components.tracking import runs

    flags = [f"{k}={v}" for k, v in (("host", a.host), ("port", a.port), ("app_name", a.name))
             if v is not None]
    try:
        settings = settings_from_overrides([*flags, *a.settings, *extra])
        if not a.address:  # the cluster started here: an ingress it cannot run, refused now
            from components.serving.service import ingress_env

            ingress_env(settings.ingress)
    except SettingsError as e:
        print(str(e), file=sys.stderr)
        _emit({"status": "failed", "reason": str(e).replace("\n", " ")}, None)
        return EXIT_USAGE
    try:
        from components.serving.service import serve_model, serve_until_stopped

        uri = runs.resolve_tracking_uri(a.tracking_uri or "")
        runs.check_reachable(uri)
        _emit(serve_model(a.model, settings, uri, a.address), None)
    except Exception as e:  # the model did not load or verify, Ray refused, ...
        print(redact(traceback.format_exc()), file=sys.stderr)
        _emit({"status": "failed", "reason": f"{type(e).__name__}: {e}".replace("\n", " ")}, None)
        return EXIT_FAILED
    if not a.detach:
        serve_until_stopped(settings)
    return EXIT_OK


def _sample_data(a: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``visual-dpo sample-data``: write the sample pairs the options ask for."""
    from components.sample.videos import ClipEncoding

    image_format = None if a.image_format == "mixed" else a.image_format
    encoding = ClipEncoding(a.codec, a.fps, a.gop)
    if a.modality == "image" and not isinstance(a.size, int):
        parser.error("--size WIDTHxHEIGHT is for clips (--modality video); images are "
                     "square: --size 1024")
    if a.prompted:
        from components.sample.images import write_prompted_image_pairs
        from components.sample.videos import write_prompted_video_pairs

        paths = (write_prompted_video_pairs(a.out, pairs=a.pairs, size=a.size,
                                            frames=a.frames, shards=a.shards, seed=a.seed,
                                            encoding=encoding)
                 if a.modality == "video" else
                 write_prompted_image_pairs(a.out, pairs=a.pairs, size=a.size,
                                            shards=a.shards, seed=a.seed,
                                            image_format=image_format))
    elif a.modality == "video":
        from components.sample.videos import write_video_pairs

        paths = write_video_pairs(a.out, pairs=a.pairs, size=a.size, frames=a.frames,
                                  shards=a.shards, seed=a.seed, encoding=encoding)
    else:
        from components.sample.images import write_image_pairs

        paths = write_image_pairs(a.out, pairs=a.pairs, size=a.size, layout=a.layout,
                                  shards=a.shards, seed=a.seed, image_format=image_format)
    print(json.dumps({"status": "ok", "paths": paths}))
    return EXIT_OK


def _redacted_logging() -> None:
    """INFO logging for this process, every handler redacting secrets from its lines."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # this process is ours: no secret in a log line
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def _workflow(a: argparse.Namespace, cfg: RunConfig) -> dict[str, Any]:
    """Run the workflow the command names on the validated ``cfg``: its summary."""
    if a.command == "register-published":
        from pipelines.register_published import run_register_published

        return run_register_published(cfg, a.alias)
    if a.command == "evaluate":
        from pipelines.evaluate import run_evaluate

        return run_evaluate(cfg, a.model)
    if a.command == "score":
        from pipelines.score import run_score

        return run_score(cfg, a.model, a.input, a.output, a.group_by, a.top_k, a.overwrite,
                         prompt_column=a.prompt_column)
    from pipelines.preference import run_preference

    return run_preference(cfg, check_only=a.check)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # key=value overrides may sit between options: collect them wherever they are.
    a, unknown = parser.parse_known_args(argv)
    stray = [u for u in unknown if u.startswith("-") or "=" not in u]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if a.command in ("run", "evaluate", "score", "register-published"):
        a.overrides = [*a.overrides, *unknown]
    if a.command == "score" and a.top_k is not None and not a.group_by:
        parser.error("--top-k needs --group-by (best K per group)")
    if a.command == "run" and a.check and not a.incremental:
        parser.error("--check needs --incremental (it asks whether there are new shards)")
    # MLflow prints "View run ... at: <tracking URI>" for every run it ends, credentials
    # included; this CLI prints the run's address once, redacted (runs.announce).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    _redacted_logging()
    if a.command == "verify":
        return _verify(a.model_uri, a.tracking_uri, a.download)
    if a.command == "serve":
        return _serve(a, unknown)
    if a.command == "sample-data":
        return _sample_data(a, parser)

    try:
        from components.training.models import config_problems  # checks that need the models

        cfg = load_config(a.config, a.overrides, _cli_overrides(a),
                          require_train=a.command == "run",
                          modality=a.modality if a.command in ("run", "register-published")
                          else "image",
                          checks=[config_problems, _credential_check(a)])
        if a.command == "run" and cfg.modality != a.modality:
            raise ConfigError([f"modality: the config says {cfg.modality!r} but the command is "
                               f"'run {a.modality}'; drop the key or run {cfg.modality}"])
    except ConfigError as e:
        print(redact(str(e)), file=sys.stderr)
        _emit({"status": "failed", "reason": str(e).replace("\n", " ")}, a.summary)
        return EXIT_USAGE

    try:
        summary = _workflow(a, cfg)
    except ResourcePlanError as e:  # the user must change a setting (or the cluster)
        print(redact(str(e)), file=sys.stderr)
        _emit({"status": "failed", "reason": str(e).replace("\n", " ")}, a.summary)
        return EXIT_USAGE
    except ModelVerificationError as e:  # a model to load was tampered with or unverifiable
        print(redact(str(e)), file=sys.stderr)
        _emit({"status": "unverified", "file": e.path,
               "reason": str(e).replace("\n", " ")}, a.summary)
        return EXIT_UNVERIFIED
    except LeaseHeld as e:
        _emit({"status": "skipped", "reason": str(e)}, a.summary)
        return EXIT_OK
    except Exception as e:  # every failure ends as one line of JSON and a non-zero exit
        user_error = _user_error(e)
        if (user_error or _expected_failure(e)) and os.environ.get(DEBUG_ENV) != "1":
            print(redact(f"{type(e).__name__}: {e}"), file=sys.stderr)
        else:
            print(redact(traceback.format_exc()), file=sys.stderr)
        failed = {"status": "failed", "reason": f"{type(e).__name__}: {e}".replace("\n", " ")}
        if isinstance(e, StepFailed):
            failed.update(failed_step=e.step, run_id=e.run_id)
        _emit(failed, a.summary)
        return EXIT_USAGE if user_error else EXIT_FAILED
    _emit(summary, a.summary)
    if a.command == "run" and a.check and summary["status"] == "nothing-new":
        return EXIT_NOTHING_NEW
    return EXIT_OK


def cli() -> None:
    """The ``visual-dpo`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
