"""The evaluate workflow: any registered scorer on any preference data -> the eval report.

prepare (Ray Data, decoded as the model was trained: size, frames) -> score (Ray Data batch inference) ->
report (metrics and pictures, logged to MLflow). This file only wires steps.
"""

from __future__ import annotations

import os
import time
from typing import Any

import mlflow

from components import ingest, tracking
from components.config import RunConfig
from components.contract import resolve_shards
from components.evaluate import evaluation_report, score_dataset, settings_of
from components.media import MediaSpec
from components.plots import log_report_figures
from components.reference import load_scorer_uri
from components.runtime import ensure_ray


def run_evaluate(cfg: RunConfig, model_uri: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    uri = tracking.resolve_tracking_uri(cfg.tracking.tracking_uri)
    tracking.check_reachable(uri)
    shards = resolve_shards(cfg.data.eval)
    ensure_ray()
    tracking.setup(uri, cfg.tracking.experiment)
    with mlflow.start_run(run_name=cfg.tracking.run_name or None) as run:
        mlflow.set_tags({"workflow": "evaluate", "model_uri": model_uri})
        model = load_scorer_uri(model_uri)
        MediaSpec.from_dict(model.media).apply_to(cfg)  # decode as the model was trained
        run_dir = os.path.abspath(os.path.join(cfg.output_dir, run.info.run_id))
        data = ingest.prepare_step(cfg, [], shards, run_dir)
        scores = score_dataset(ingest.usable_pairs(data.eval_path, "eval", with_ids=True),
                               model.model_name, model.state_dict, model.image_size,
                               temporal_weight=model.temporal_weight)
        report = evaluation_report(scores, settings_of(cfg), cfg.eval.slices)
        mlflow.log_metrics(report.metrics)
        log_report_figures(report, data.eval_path, cfg.loss.beta, cfg.eval.worst_pairs)
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
