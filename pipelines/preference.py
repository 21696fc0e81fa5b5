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
from typing import Any

import mlflow

from components.config import RunConfig, run_root
from components.datasets.contract import ReadPlan, Shard, resolve_shards
from components.datasets.decode_graph import DecodeOptions
from components.datasets.policy import resolve_cache
from components.datasets.prepare import PreparedSplits
from components.evaluation.metrics import EvalReport
from components.media.spec import MediaSpec
from components.registry.gate import CHAMPION
from components.registry.scorer_files import TrainedScorer
from components.runtime import locks, resources, storage
from components.runtime.cluster import check_storage, cluster_resources, ensure_ray
from components.runtime.pinning import plan_for_run
from components.tracking import lineage, models, runs
from components.tracking.steps import Workflow
from components.training.models import RewardHead, clip_grid, model_options, text_contract
from components.training.trainer import TrainOutcome, resolve_use_gpu
from pipelines import stages
from pipelines.stages import RunInputs

log = logging.getLogger(__name__)


def resolve_inputs(cfg: RunConfig, train: list[Shard], evals: list[Shard]) -> RunInputs:
    """Everything a run works on, computed once on the driver before Ray starts: each
    dataset's footers are read here and nowhere else (a bad layout, a wrongly typed column or
    empty data fails here), the run storage is checked, the media contract and the CPU plan
    are fixed."""
    train_plan = ReadPlan.of(train, cfg.data.layout, cfg.modality)
    storage.check_writable(run_root(cfg))  # a wrong bucket or endpoint fails here, before Ray
    eval_plan = ReadPlan.of(evals, cfg.data.layout, cfg.modality) if evals else None
    options = model_options(cfg.model.name, cfg.model.arch, RewardHead.from_config(cfg.model),
                            pretrained=cfg.model.pretrained, score_scale=cfg.model.score_scale,
                            clip=clip_grid(cfg))
    spec = MediaSpec.from_config(cfg.modality, cfg.data, text_contract(cfg.model.name, options))
    plan = plan_for_run(cfg.preprocess, cfg.train)
    decode = DecodeOptions.from_config(cfg.data, cfg.preprocess, cfg.ties, spec, plan.to_dict())
    return RunInputs(train_plan, eval_plan, spec, plan, decode, options,
                     resolve_cache(cfg.data, spec, train_plan.rows))


def run_preference(cfg: RunConfig, check_only: bool = False) -> dict[str, Any]:
    """Run the workflow; with ``check_only`` (``--incremental --check``) only say whether
    there are new shards: no lease, no Ray, no run, no footer read (what a scheduler asks
    before it starts a cluster)."""
    t0 = time.perf_counter()
    uri = runs.resolve_tracking_uri(cfg.tracking.tracking_uri)
    runs.check_reachable(uri)
    train = resolve_shards(cfg.data.train)
    evals = resolve_shards(cfg.data.eval) if cfg.data.eval else []
    if not cfg.incremental:
        inputs = resolve_inputs(cfg, train, evals)
        experiment_id = runs.setup(uri, cfg.tracking.experiment)
        return _run(cfg, uri, experiment_id, inputs, None, t0)

    locks.check_supported(run_root(cfg))  # the lease lives in the run storage
    experiment_id = runs.setup(uri, cfg.tracking.experiment)
    name = cfg.tracking.model_name
    client = mlflow.MlflowClient()

    def new_shards() -> list[Shard]:
        consumed = lineage.consumed_shards(client, experiment_id, cfg.modality, name)
        return lineage.new_shards(train, consumed)

    def nothing_new() -> dict[str, Any]:
        return {"status": "nothing-new", "experiment": cfg.tracking.experiment,
                "model_name": name, "shards_seen": len(train),
                "wall_s": round(time.perf_counter() - t0, 1)}

    new = new_shards()
    if check_only:
        return {**nothing_new(), "status": "new-data" if new else "nothing-new",
                "new_shards": [s.uri for s in new]}
    if not new:
        return nothing_new()
    # The new shards' footers and the storage are checked first; a run that finds the lease
    # held (in the run storage: it excludes runs on other Ray clusters too) starts no Ray.
    inputs = resolve_inputs(cfg, new, evals)
    lease = locks.try_acquire(run_root(cfg), locks.schedule_lease_name(cfg.modality, name))
    try:
        again = new_shards()  # under the lease: a run may have finished meanwhile
        if not again:
            return nothing_new()
        if [s.uri for s in again] != [s.uri for s in new]:
            inputs = resolve_inputs(cfg, again, evals)
        warm = f"models:/{name}@{CHAMPION}" if models.current_champion(name) else None
        return _run(stages.for_incremental(cfg, warm), uri, experiment_id, inputs, warm, t0,
                    lease)
    finally:
        try:
            lease.release()
        except Exception as e:  # noqa: BLE001 - never hide the run's own error; it ends with us
            log.warning("could not release %s: %s", lease.name, e)


def _run(cfg: RunConfig, uri: str, experiment_id: str, inputs: RunInputs,
         warm_start: str | None, t0: float, lease: locks.Lease | None = None) -> dict[str, Any]:
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
        assert inputs.train is not None, "a training run has training data"
        lineage.record_run(cfg, list(inputs.train.shards),
                           list(inputs.eval.shards) if inputs.eval else [], inputs.plan, cluster)
        wf = Workflow(mlflow.MlflowClient(), run_id)
        prepare_in = stages.prepare_key(cfg, inputs)
        data = wf.step("prepare", prepare_in, lambda: stages.prepare(cfg, inputs, run_dir),
                       PreparedSplits.to_record, PreparedSplits.from_record)
        ref_in = stages.reference_key(cfg, prepare_in)
        ref = wf.step("reference", ref_in, lambda: stages.reference(cfg, inputs),
                      stages.reference_record,
                      lambda r: stages.reference_from_record(r, cfg, inputs))
        train_in = stages.train_key(cfg, ref_in, warm_start)
        outcome = wf.step("train", train_in,
                          lambda: stages.train(cfg, inputs, stages.training_inputs(
                              cfg, inputs, data, ref, warm_start), ref, data, run_dir, run_id,
                              uri),
                          TrainOutcome.to_record, TrainOutcome.from_record)
        scorer = TrainedScorer(cfg.model.name, outcome.state_dict, inputs.spec,
                               cfg.loss.temporal_weight, outcome.checkpoint_path, inputs.options)
        eval_in = stages.evaluate_key(cfg, train_in, outcome.checkpoint_path)
        report = wf.step("evaluate", eval_in,
                         lambda: stages.evaluate(cfg.loss, cfg.eval, scorer, data.eval_path, ref),
                         lambda r: r.to_record(storage.join(run_dir, "eval_scores.parquet")),
                         EvalReport.from_record)
        registered = wf.step("register", stages.register_key(cfg, eval_in),
                             lambda: stages.register(cfg.tracking.model_name, cfg.gate, scorer,
                                                     report, data.eval_path, run_id,
                                                     run_root(cfg), lease),
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
            "train_loss_by_epoch": [round(v, 6) for v in outcome.loss_history],
            "train_pairs_per_s": round(outcome.metrics["train/pairs_per_s"], 2),
            "steps": {"executed": wf.executed, "skipped": wf.skipped},
            "output_dir": run_dir,
            "wall_s": round(time.perf_counter() - t0, 1),
        }
