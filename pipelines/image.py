"""The image workflow: prepare -> train -> evaluate -> register. This file only wires steps."""

from __future__ import annotations

import os
import time
from typing import Any

import mlflow

from components import ingest, registry, tracking, trainer
from components.config import RunConfig
from components.contract import resolve_shards
from components.evaluate import evaluate_step
from components.lineage import record_run
from components.reference import reference_step
from components.runtime import ensure_ray


def run_image(cfg: RunConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    uri = tracking.resolve_tracking_uri(cfg.tracking.tracking_uri)
    tracking.check_reachable(uri)
    train_shards = resolve_shards(cfg.data.train)
    eval_shards = resolve_shards(cfg.data.eval) if cfg.data.eval else []
    ensure_ray()
    tracking.setup(uri, cfg.tracking.experiment)
    with mlflow.start_run(run_name=cfg.tracking.run_name or None) as run:
        run_id = run.info.run_id
        run_dir = os.path.abspath(os.path.join(cfg.output_dir, cfg.tracking.run_name or run_id))
        record_run(cfg, train_shards, eval_shards)
        data = ingest.prepare_step(cfg, train_shards, eval_shards, run_dir)
        train_ds, ref, init_state = reference_step(cfg, data.train_path, run_dir)
        outcome = trainer.fit(
            cfg,
            train_ds,
            storage_path=os.path.join(run_dir, "ray_results"),
            run_name=cfg.tracking.run_name or f"train-{run_id}",
            mlflow_run_id=run_id,
            tracking_uri=uri,
            init_state=init_state,
        )
        report = evaluate_step(cfg, outcome, data, ref)
        registered = registry.register_step(cfg, outcome, report, data)
        return {
            "status": "ok",
            "run_id": run_id,
            "experiment": cfg.tracking.experiment,
            "tracking_uri": uri,
            **registered,
            "rows": data.rows_summary(),
            "metrics": {**report.metrics, "train/loss": outcome.metrics["train/loss"]},
            "epochs": outcome.epochs,
            "train_pairs_per_s": round(outcome.metrics["train/pairs_per_s"], 2),
            "output_dir": run_dir,
            "wall_s": round(time.perf_counter() - t0, 1),
        }
