"""The evaluate workflow: any registered scorer on any preference data -> the eval report.

prepare (Ray Data, decoded as the model was trained: its own MediaSpec) -> score (Ray Data
batch inference) -> report (metrics, per-pair scores and pictures, logged to MLflow).
"""

from __future__ import annotations

import time
from typing import Any

import mlflow

from components.config import RunConfig, run_root
from components.datasets.contract import ReadPlan, resolve_shards
from components.datasets.decode_graph import DecodeOptions
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
    shards = resolve_shards(cfg.data.eval)
    runs.setup(uri, cfg.tracking.experiment)
    scorer = models.load_scorer(models.pin_model_uri(model_uri))
    # Decode as the model was trained (its own spec: size, frames, limits). Footers are
    # read here, once: a bad shard fails before Ray starts.
    read = ReadPlan.of(shards, cfg.data.layout, scorer.spec.modality)
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
        data = stages.prepare(cfg, inputs, run_dir)
        report = stages.evaluate(cfg.loss, cfg.eval, scorer, data.eval_path)
        return {
            "status": "ok",
            "run_id": run.info.run_id,
            "experiment": cfg.tracking.experiment,
            "tracking_uri": uri,
            "model_uri": model_uri,
            "rows": data.rows_summary(),
            "metrics": report.metrics,
            "wall_s": round(time.perf_counter() - t0, 1),
        }
