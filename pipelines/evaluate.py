"""The evaluate workflow: any registered scorer on any preference data -> the eval report.

prepare (Ray Data, decoded as the model was trained: its own MediaSpec) -> score (Ray Data
batch inference) -> report (metrics, per-pair scores and pictures, logged to MLflow).

A public benchmark's annotation file (HPDv2's ``test.json``, VideoGen-RewardBench's CSV) is
first converted on the driver into canonical Parquet (datasets/benchmark_formats.py); its own
accuracies (with and without ties, per HPDv2 prompt, per VideoGen dimension) join the report
as ``eval/benchmark/<name>/*``, as does PickScore's tie protocol for Pick-a-Pic with
``eval.tie_validation`` (evaluation/benchmarks.py).
"""

from __future__ import annotations

import time
from typing import Any

import mlflow

from components.config import ConfigError, RunConfig, run_root
from components.datasets import benchmark_formats
from components.datasets.contract import ReadPlan, fingerprint, resolve_shards
from components.datasets.decode_graph import DecodeOptions, usable_pairs
from components.datasets.prepare import prepare_splits
from components.evaluation import benchmarks
from components.evaluation.metrics import EvalReport
from components.evaluation.pair_scoring import score_dataset
from components.registry.scorer_files import TrainedScorer
from components.runtime import resources, storage
from components.runtime.cluster import check_storage, cluster_resources, ensure_ray
from components.runtime.pinning import plan_for_run
from components.tracking import models, runs
from pipelines import stages
from pipelines.stages import RunInputs


def run_evaluate(cfg: RunConfig, model_uri: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    uri = runs.resolve_tracking_uri(cfg.tracking.tracking_uri)
    runs.check_reachable(uri)
    benchmark = benchmark_formats.benchmark_layout(cfg.data.eval, cfg.data.layout)
    if benchmark == benchmark_formats.VIDEOGEN and cfg.ties != "soft":
        raise ConfigError([f"{cfg.data.eval}: VideoGen-RewardBench keeps its 'same' labels as "
                           "ties, which ties=drop would exclude; add ties=soft"])
    conversions = convert_benchmark(cfg, benchmark) if benchmark else []
    shards = resolve_shards([c.path for c in conversions] or cfg.data.eval)
    runs.setup(uri, cfg.tracking.experiment)
    scorer = models.load_scorer(models.pin_model_uri(model_uri))
    # Decode as the model was trained (its own spec: size, frames, limits). Footers are
    # read here, once: a bad shard fails before Ray starts.
    read = ReadPlan.of(shards, "canonical" if benchmark else cfg.data.layout,
                       scorer.spec.modality)
    tie_val = (ReadPlan.of(resolve_shards(cfg.eval.tie_validation), cfg.data.layout,
                           scorer.spec.modality) if cfg.eval.tie_validation else None)
    plan = plan_for_run(cfg.preprocess, cfg.train)
    inputs = RunInputs(None, read, scorer.spec, plan, DecodeOptions.from_config(
        cfg.data, cfg.preprocess, cfg.ties, scorer.spec, plan.to_dict()))
    storage.check_writable(run_root(cfg))
    ensure_ray()
    check_storage(run_root(cfg), cfg.storage.shared)
    resources.check(resources.evaluate_phases(cfg.preprocess), cluster_resources())
    with runs.parent_run(run_name=cfg.tracking.run_name or None) as run:
        runs.announce(run, uri)
        mlflow.set_tags({"workflow": "evaluate", "model_uri": model_uri,
                         "model_uri.pinned": scorer.source})
        run_dir = storage.join(run_root(cfg), run.info.run_id)
        for c in conversions:  # every candidate pair: written or excluded, with the reason
            mlflow.set_tag("benchmark.layout", c.layout)
            mlflow.log_metrics(c.metrics())
            runs.log_json_artifact(c.as_dict(), f"benchmark/{c.path.rsplit('/', 1)[-1]}.json")
        data = stages.prepare(cfg, inputs, run_dir)
        report = stages.evaluate(cfg.loss, cfg.eval, scorer, data.eval_path)
        extra = benchmark_report(cfg, benchmark, report, scorer, tie_val, inputs, run_dir)
        mlflow.log_metrics(extra)
        report.metrics.update(extra)
        return {
            "status": "ok",
            "run_id": run.info.run_id,
            "experiment": cfg.tracking.experiment,
            "tracking_uri": uri,
            "model_uri": model_uri,
            "rows": data.rows_summary(),
            **({"benchmark": [c.as_dict() for c in conversions]} if conversions else {}),
            "metrics": report.metrics,
            "wall_s": round(time.perf_counter() - t0, 1),
        }


def convert_benchmark(cfg: RunConfig, layout: str) -> list[benchmark_formats.Conversion]:
    """The annotation files of ``--data`` as canonical Parquet under the run root, before any
    run starts (a malformed file fails here)."""
    files = fingerprint(resolve_shards(cfg.data.eval))  # by location, size and mtime
    out = storage.join(run_root(cfg), "benchmarks", f"{layout}-{files}")
    return benchmark_formats.convert_all(cfg.data.eval, layout, out, cfg.eval.media_root)


def benchmark_report(cfg: RunConfig, benchmark: str | None, report: EvalReport,
                     scorer: TrainedScorer, tie_val: ReadPlan | None, inputs: RunInputs,
                     run_dir: str) -> dict[str, float]:
    """``eval/benchmark/<name>/*``: the accuracies the benchmark's paper reports."""
    out: dict[str, float] = {}
    if benchmark == benchmark_formats.HPDV2:
        out.update({f"hpdv2/{k}": v
                    for k, v in benchmarks.hpdv2_ranking_accuracy(report.scores).items()})
    elif benchmark == benchmark_formats.VIDEOGEN:
        out.update({f"videogen/{k}": v for k, v in benchmarks.videogen_accuracies(
            report.scores, benchmark_formats.VIDEOGEN_DIMENSIONS).items()})
    if tie_val is not None:  # Pick-a-Pic: the tie threshold from the validation split
        val = prepare_splits(None, tie_val, storage.join(run_dir, "tie-validation"),
                             inputs.decode, cfg.data)
        mlflow.log_metrics({f"tie_validation/{k}": v for k, v in val.metrics.items()})
        val.check(cfg.data.max_quarantine_fraction)
        val_scores = score_dataset(usable_pairs(val.eval_path, "eval", with_ids=True), scorer)
        out.update({f"pickapic/{k}": v
                    for k, v in benchmarks.pickapic_metrics(val_scores, report.scores).items()})
    return {f"eval/benchmark/{k}": v for k, v in out.items()}
