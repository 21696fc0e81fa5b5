"""The preference workflow, for images and videos: prepare -> reference -> train -> evaluate ->
register (``python -m pipelines run image|video``).

Each step is a nested MLflow run of the parent (components/steps.py); a resumed parent skips
the steps that finished with the same inputs. This file only wires steps.
"""

from __future__ import annotations

import os
import time
from typing import Any

import mlflow

from components import ingest, registry, schedule, tracking, trainer
from components.config import RunConfig, flatten, to_dict
from components.contract import fingerprint, resolve_shards
from components.evaluate import EvalReport, evaluate_step
from components.lineage import record_run
from components.reference import reference_scores_step, training_inputs
from components.runtime import ensure_ray
from components.steps import Workflow, digest


def run_preference(cfg: RunConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    uri = tracking.resolve_tracking_uri(cfg.tracking.tracking_uri)
    tracking.check_reachable(uri)
    train_shards = resolve_shards(cfg.data.train)
    eval_shards = resolve_shards(cfg.data.eval) if cfg.data.eval else []
    experiment_id = tracking.setup(uri, cfg.tracking.experiment)
    if not cfg.incremental:
        return _run(cfg, uri, experiment_id, train_shards, eval_shards, None, t0)

    client, name = mlflow.MlflowClient(), cfg.tracking.model_name
    key = schedule.lease_key(cfg.modality, name)
    token = schedule.acquire_lease(client, experiment_id, key, cfg.lease_ttl_s)
    try:
        consumed = schedule.consumed_shards(client, experiment_id, cfg.modality, name)
        new = schedule.new_shards(train_shards, consumed)
        if not new:
            return {"status": "nothing-new", "experiment": cfg.tracking.experiment,
                    "model_name": name, "shards_seen": len(train_shards),
                    "wall_s": round(time.perf_counter() - t0, 1)}
        champion = registry.current_champion(client, name)
        warm = f"models:/{name}@{registry.CHAMPION}" if champion else None
        if warm and cfg.loss.type == "dpo" and cfg.loss.reference == "init":
            cfg.loss.reference = warm  # continue from production, anchored to it
        return _run(cfg, uri, experiment_id, new, eval_shards, warm, t0)
    finally:
        schedule.release_lease(client, experiment_id, key, token)


def _run(cfg: RunConfig, uri: str, experiment_id: str, train_shards, eval_shards,
         warm_start: str | None, t0: float) -> dict[str, Any]:
    parent = tracking.find_parent_run(experiment_id, cfg.tracking.resume, cfg.tracking.run_name, cfg.modality)
    ensure_ray()
    with mlflow.start_run(run_id=parent, run_name=None if parent else (cfg.tracking.run_name or None)) as run:
        run_id = run.info.run_id
        run_dir = tracking.run_dir_of(run, cfg.output_dir, cfg.tracking.run_name)
        record_run(cfg, train_shards, eval_shards, cfg.modality)
        wf = Workflow(mlflow.MlflowClient(), run_id)
        c = flatten(to_dict(cfg))
        prepare_in = {"data": {k: v for k, v in c.items() if k.startswith("data.") and k not in ("data.train", "data.eval")},
                      "ties": cfg.ties, "train": fingerprint(train_shards), "eval": fingerprint(eval_shards)}
        data = wf.step("prepare", prepare_in,
                       lambda: ingest.prepare_step(cfg, train_shards, eval_shards, run_dir),
                       ingest.PreparedSplits.to_record, ingest.PreparedSplits.from_record)
        ref_in = {"upstream": digest(prepare_in), "loss": to_dict(cfg.loss), "model": cfg.model.name,
                  "seed": cfg.train.seed}
        ref_record = wf.step("reference", ref_in,
                             lambda: reference_scores_step(cfg, data.train_path, run_dir), dict, dict)
        train_ds, ref, init_state = training_inputs(cfg, data.train_path, ref_record, warm_start)
        train_in = {"upstream": digest(ref_in), "train": to_dict(cfg.train), "warm_start": warm_start}
        outcome = wf.step("train", train_in, lambda: trainer.fit(
            cfg, train_ds, storage_path=os.path.join(run_dir, "ray_results"),
            run_name=cfg.tracking.run_name or f"train-{run_id}", mlflow_run_id=run_id,
            tracking_uri=uri, init_state=init_state, pinning_report_dir=os.path.join(run_dir, "pinning"),
        ), trainer.TrainOutcome.to_record, trainer.TrainOutcome.from_record)
        if os.path.isdir(os.path.join(run_dir, "pinning")):  # what each pinned process got
            mlflow.log_artifacts(os.path.join(run_dir, "pinning"), "pinning")
        eval_in = {"upstream": digest(train_in), "eval": to_dict(cfg.eval), "ckpt": outcome.checkpoint_path}
        report = wf.step("evaluate", eval_in, lambda: evaluate_step(cfg, outcome, data, ref),
                         lambda r: r.to_record(os.path.join(run_dir, "eval_scores.parquet")),
                         EvalReport.from_record)
        registered = wf.step("register", {"upstream": digest(eval_in), "gate": to_dict(cfg.gate)},
                             lambda: registry.register_step(cfg, outcome, report, data), dict, dict,
                             once=True)  # never registers or promotes twice for one parent run
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
            "steps": {"executed": wf.executed, "skipped": wf.skipped},
            "output_dir": run_dir,
            "wall_s": round(time.perf_counter() - t0, 1),
        }
