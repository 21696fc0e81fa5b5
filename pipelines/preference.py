"""The preference workflow, for images and videos: prepare -> reference -> train -> evaluate ->
register (``visual-dpo run image|video``).

Each stage is a resumable step, a nested MLflow run of the parent (components/tracking/steps.py);
a resumed parent skips the steps that finished with the same inputs. The stages themselves
(what they compute and log) are in ``stages.py``; this file puts them in order, and holds the
scheduling around a run: the lease and which shards are new.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import mlflow

from components.config import LossConfig, RunConfig, flatten, run_root, to_dict
from components.datasets.contract import Shard, fingerprint, plan_reads, resolve_shards
from components.datasets.ingest import PreparedSplits, resolve_cache
from components.evaluation.metrics import EvalReport
from components.media.spec import MediaSpec
from components.registry.gate import CHAMPION
from components.registry.scorer_files import TrainedScorer
from components.runtime import locks, resources, storage
from components.runtime.cluster import check_storage, cluster_resources, ensure_ray
from components.runtime.pinning import CpuPlan, plan_for_run
from components.tracking import lineage, models, runs
from components.tracking.steps import Workflow, digest
from components.training.models import model_options, text_contract
from components.training.trainer import TrainOutcome, resolve_use_gpu
from pipelines import stages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunInputs:
    """What a run works on, resolved and checked before Ray or MLflow start."""

    train: list[Shard]
    eval: list[Shard]
    spec: MediaSpec
    plan: CpuPlan
    options: dict = field(default_factory=dict)  # the scorer's construction options
    cache: str = "decoded"  # data.cache resolved: "decoded" or "none" (streaming)


def resolve_inputs(cfg: RunConfig) -> RunInputs:
    train = resolve_shards(cfg.data.train)
    evals = resolve_shards(cfg.data.eval) if cfg.data.eval else []
    # Footers only: a bad layout, a wrongly typed column or empty data fails here, before Ray.
    _, train_rows = plan_reads(train, cfg.data.layout, cfg.modality)
    storage.check_writable(run_root(cfg))  # a wrong bucket or endpoint fails here, before Ray
    if evals:
        plan_reads(evals, cfg.data.layout, cfg.modality)
    options = model_options(cfg.model.name, cfg.model.arch)
    spec = MediaSpec.from_config(cfg.modality, cfg.data, text_contract(cfg.model.name, options))
    return RunInputs(train, evals, spec, plan_for_run(cfg.preprocess, cfg.train), options,
                     resolve_cache(cfg.data, spec, train_rows))


def run_preference(cfg: RunConfig, check_only: bool = False) -> dict[str, Any]:
    """Run the workflow; with ``check_only`` (``--incremental --check``) only say whether
    there are new shards: no lease, no Ray, no run (what a scheduler asks before it starts a
    cluster)."""
    t0 = time.perf_counter()
    uri = runs.resolve_tracking_uri(cfg.tracking.tracking_uri)
    runs.check_reachable(uri)
    inputs = resolve_inputs(cfg)
    experiment_id = runs.setup(uri, cfg.tracking.experiment)
    if not cfg.incremental:
        return _run(cfg, cfg.loss, uri, experiment_id, inputs, None, t0)

    name = cfg.tracking.model_name
    client = mlflow.MlflowClient()
    def new_shards() -> list[Shard]:
        consumed = lineage.consumed_shards(client, experiment_id, cfg.modality, name)
        return lineage.new_shards(inputs.train, consumed)

    if check_only:
        new = new_shards()
        return {"status": "new-data" if new else "nothing-new", "model_name": name,
                "experiment": cfg.tracking.experiment, "shards_seen": len(inputs.train),
                "new_shards": [s.uri for s in new], "wall_s": round(time.perf_counter() - t0, 1)}
    ensure_ray()  # the lease is a Ray named actor owned by this driver
    lease = locks.try_acquire(locks.schedule_lease_name(cfg.modality, name))
    try:
        new = new_shards()  # again, under the lease: a run may have finished meanwhile
        if not new:
            return {"status": "nothing-new", "experiment": cfg.tracking.experiment,
                    "model_name": name, "shards_seen": len(inputs.train),
                    "wall_s": round(time.perf_counter() - t0, 1)}
        warm = f"models:/{name}@{CHAMPION}" if models.current_champion(name) else None
        inputs = replace(inputs, train=new)
        return _run(cfg, stages.with_reference(cfg.loss, warm), uri, experiment_id, inputs,
                    warm, t0)
    finally:
        try:
            lease.release()
        except Exception as e:  # noqa: BLE001 - never hide the run's own error; it ends with us
            log.warning("could not release %s: %s", lease.name, e)


def _run(cfg: RunConfig, loss: LossConfig, uri: str, experiment_id: str, inputs: RunInputs,
         warm_start: str | None, t0: float) -> dict[str, Any]:
    parent = runs.find_parent_run(experiment_id, cfg.tracking.resume, cfg.tracking.run_name,
                                  cfg.modality)
    ensure_ray(cfg.train.deterministic)
    check_storage(run_root(cfg), cfg.storage.shared)  # multi-node needs shared run state
    cluster = cluster_resources()
    resources.check(resources.run_phases(cfg.preprocess, cfg.train, resolve_use_gpu(cfg.train),
                                         streaming=inputs.cache == "none"), cluster)
    log.info("%s", inputs.plan.describe())
    for w in inputs.plan.warnings:
        log.warning("cpu pinning: %s", w)
    with runs.parent_run(run_id=parent,
                         run_name=None if parent else (cfg.tracking.run_name or None)) as run:
        run_id = run.info.run_id
        runs.announce(run, uri)
        run_dir = runs.run_dir_of(run, run_root(cfg), cfg.tracking.run_name)
        lineage.record_run(cfg, inputs.train, inputs.eval, inputs.plan, cluster)
        wf = Workflow(mlflow.MlflowClient(), run_id)
        flat = flatten(to_dict(cfg))
        prepare_in = {"data": {k: v for k, v in flat.items()
                               if k.startswith("data.") and k not in ("data.train", "data.eval")},
                      "ties": cfg.ties, "train": fingerprint(inputs.train),
                      "eval": fingerprint(inputs.eval),
                      "tokenizer": [inputs.spec.text, inputs.spec.context_length,
                                    inputs.spec.vocab_size], "cache": inputs.cache}
        data = wf.step("prepare", prepare_in,
                       lambda: stages.prepare(cfg, inputs.spec, inputs.plan, inputs.train,
                                              inputs.eval, run_dir, inputs.cache),
                       PreparedSplits.to_record, PreparedSplits.from_record)
        ref_in = {"upstream": digest(prepare_in), "loss": to_dict(loss),
                  "model": to_dict(cfg.model), "seed": cfg.train.seed}
        ref_record = wf.step("reference", ref_in,
                             lambda: stages.reference(cfg, loss, inputs.spec, inputs.options),
                             dict, dict)
        train_inputs = stages.training_inputs(cfg, inputs.spec, inputs.options, data,
                                              ref_record, inputs.plan, inputs.train,
                                              bool(inputs.eval), warm_start)
        ref = train_inputs.reference
        train_in = {"upstream": digest(ref_in), "train": to_dict(cfg.train),
                    "warm_start": warm_start}
        outcome = wf.step("train", train_in,
                          lambda: stages.train(cfg, loss, train_inputs, inputs.options,
                                               data, inputs.plan, run_dir, run_id, uri),
                          TrainOutcome.to_record, TrainOutcome.from_record)
        scorer = TrainedScorer(cfg.model.name, outcome.state_dict, inputs.spec,
                               loss.temporal_weight, outcome.checkpoint_path, inputs.options)
        eval_in = {"upstream": digest(train_in), "eval": to_dict(cfg.eval),
                   "ckpt": outcome.checkpoint_path}
        report = wf.step("evaluate", eval_in,
                         lambda: stages.evaluate(loss, cfg.eval, scorer, data.eval_path, ref),
                         lambda r: r.to_record(storage.join(run_dir, "eval_scores.parquet")),
                         EvalReport.from_record)
        registered = wf.step("register", {"upstream": digest(eval_in), "gate": to_dict(cfg.gate)},
                             lambda: stages.register(cfg.tracking.model_name, cfg.gate, scorer,
                                                     report, data.eval_path, run_id),
                             dict, dict, once=True)  # never registers twice for one parent run
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
