"""The stages of the workflows: each calls the components that compute it and logs what they
return to MLflow. ``preference.py`` and ``evaluate.py`` put them in order."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from typing import Any

import mlflow

from components.config import ConfigError, EvalConfig, GateConfig, LossConfig, RunConfig
from components.datasets.contract import Shard
from components.datasets.ingest import (
    PreparedSplits,
    example_item,
    example_prompt,
    prepare_splits,
    streaming_pairs,
    usable_pairs,
)
from components.evaluation.figures import report_figures
from components.evaluation.metrics import EvalReport, evaluation_report, score_stats
from components.evaluation.pair_scoring import score_dataset
from components.media.spec import MediaSpec
from components.registry.gate import correct_vector, decide
from components.registry.scorer_files import TrainedScorer
from components.runtime import locks, storage
from components.runtime.pinning import CpuPlan
from components.tracking import models, runs
from components.training.optim import problems as schedule_problems
from components.training.reference import initial_scorer
from components.training.trainer import TrainOutcome, fit
from components.training.worker import WorkerSpec

log = logging.getLogger(__name__)


def prepare(cfg: RunConfig, spec: MediaSpec, plan: CpuPlan, train_shards: list[Shard],
            eval_shards: list[Shard], run_dir: str, cache: str = "decoded") -> PreparedSplits:
    data = prepare_splits(train_shards, eval_shards, run_dir, data=cfg.data,
                          preprocess=cfg.preprocess, ties=cfg.ties, spec=spec,
                          pinning=plan.to_dict(), cache=cache)
    mlflow.set_tag("data.cache_resolved", cache)
    mlflow.log_metrics(data.metrics)
    runs.log_stored_artifacts(data.quarantine_path, "data")
    mlflow.log_dict(data.report, "data/report.json")
    data.check(cfg.data.max_quarantine_fraction)
    return data


def resolve_reference(source: str, cfg: RunConfig, options: dict, spec: MediaSpec) -> TrainedScorer:
    """``init`` (the initial weights, pretrained ones included) or a model URI, pinned to its
    version."""
    if source == "init":
        m = cfg.model
        return initial_scorer(m.name, options, cfg.train.seed, spec, m.pretrained, m.weights)
    return models.load_scorer(models.pin_model_uri(source))


def reference(cfg: RunConfig, loss: LossConfig, spec: MediaSpec, options: dict) -> dict[str, Any]:
    """For ``loss.type=dpo``: resolve and pin the frozen reference (``{"source"}``; None for
    objectives without one). The training workers score each batch with it on the fly: the
    same pixels the policy sees (augmented views included), no pass over the data and no
    stored copy; it costs one no-grad forward per step."""
    if loss.type != "dpo":
        return {"source": None}
    ref = resolve_reference(loss.reference, cfg, options, spec)
    if ref.spec.size != spec.size or ref.spec.shape != spec.shape:
        raise ConfigError([f"loss.reference: {loss.reference} takes inputs of shape "
                           f"{ref.spec.shape}, this run decodes {spec.shape}; set "
                           "data.image_size (and data.video.frames) to match"])
    mlflow.set_tags({"loss.reference": ref.source, "loss.reference_model": ref.model_name})
    return {"source": ref.source}


@dataclass
class TrainingInputs:
    train_ds: Any
    val_ds: Any
    reference: TrainedScorer | None
    init_state: dict | None


def training_inputs(cfg: RunConfig, spec: MediaSpec, options: dict, data: PreparedSplits,
                    record: dict, plan: CpuPlan, train_shards: list[Shard],
                    has_eval_shards: bool, warm_start: str | None = None) -> TrainingInputs:
    """The datasets, the reference and the starting weights of the train stage.

    Decoded cache: the prepared pairs. Streaming (``data.cache=none``): read -> decode in the
    pinned actor pool -> straight into the trainers, every epoch (with augmentation when
    on). The policy starts from the reference's weights when the architectures match (so
    DPO starts at log 2), else from ``warm_start`` (a model URI, e.g. the champion of an
    incremental run) when it matches, else from the seeded random init.
    """
    ref = (resolve_reference(record["source"], cfg, options, spec)
           if record.get("source") else None)
    if data.cache == "none":
        train_ds = streaming_pairs(
            train_shards, "train", layout=cfg.data.layout, spec=spec,
            decode_actors=cfg.preprocess.actors, cpus_per_actor=cfg.preprocess.cpus_per_actor,
            batch_size=cfg.preprocess.batch_size,
            eval_fraction=None if has_eval_shards else cfg.data.eval_fraction,
            split_as="train" if has_eval_shards else None, val_fraction=cfg.data.val_fraction,
            ties=cfg.ties, pinning=plan.to_dict(), augment=augment_settings(cfg, spec),
            node_resource=cfg.preprocess.node_resource)
    else:
        train_ds = usable_pairs(data.train_path, "train")
    val_ds = usable_pairs(data.val_path, "val") if data.val_path else None
    init = None
    if ref is not None and _same_architecture(ref, cfg.model.name, options):
        init = ref.state_dict
    elif warm_start:  # loaded only when the reference cannot serve as the start point
        warm = models.load_scorer(models.pin_model_uri(warm_start))
        if _same_architecture(warm, cfg.model.name, options):
            init = warm.state_dict
    return TrainingInputs(train_ds, val_ds, ref, init)


def augment_settings(cfg: RunConfig, spec: MediaSpec) -> dict | None:
    if not cfg.data.augment:
        return None
    return {"seed": cfg.train.seed, "min_scale": cfg.data.augment_min_scale, "flip": True,
            "frames": spec.frames if spec.video else 0}


def _same_architecture(scorer: TrainedScorer, name: str, options: dict) -> bool:
    return scorer.model_name == name and scorer.options == options


def train(cfg: RunConfig, loss: LossConfig, inputs: TrainingInputs, options: dict,
          data: PreparedSplits, plan: CpuPlan, run_dir: str, run_id: str,
          tracking_uri: str) -> TrainOutcome:
    validate = inputs.val_ds is not None
    spec = WorkerSpec(train=cfg.train, loss=loss, model_name=cfg.model.name,
                      modality=cfg.modality, init_state=inputs.init_state, model_options=options,
                      reference=inputs.reference,
                      pretrained=cfg.model.pretrained, weights=cfg.model.weights,
                      train_pairs=data.counts["train"].used,
                      select_by=cfg.train.selection(cfg.data.val_fraction), validate=validate,
                      pinning=plan.to_dict(), pinning_report_dir=storage.join(run_dir, "pinning"),
                      mlflow_run_id=run_id, tracking_uri=tracking_uri)
    problems = schedule_problems(spec.schedule(cfg.train.workers))  # needs the pair count
    if problems:
        raise ConfigError(problems)
    outcome = fit(spec, inputs.train_ds, storage_path=storage.join(run_dir, "ray_results"),
                  run_name=cfg.tracking.run_name or f"train-{run_id}", val_ds=inputs.val_ds)
    mlflow.log_metrics({k: outcome.metrics[k] for k in ("train/selected_epoch", "train/epochs_run")})
    mlflow.set_tag("train.device", "cuda" if outcome.metrics.get("train/on_gpu") else "cpu")
    runs.log_stored_artifacts(storage.join(run_dir, "pinning"), "pinning")  # what each got
    return outcome


def evaluate(loss: LossConfig, eval_cfg: EvalConfig, scorer: TrainedScorer, eval_path: str,
             ref: TrainedScorer | None = None) -> EvalReport:
    """Score the held-out pairs; log ``eval/*`` metrics, the per-pair scores and the figures."""
    df = score_dataset(usable_pairs(eval_path, "eval", with_ids=True), scorer)
    ref_df = None
    if ref is not None:  # the reference's raw scores: the prior cancels in h
        ref_df = score_dataset(usable_pairs(eval_path, "eval", with_ids=True), ref,
                               with_prior=False)
    report = evaluation_report(df, loss, eval_cfg.slices, ref_df)
    log_report(report, eval_path, eval_cfg.worst_pairs)
    return report


def log_report(report: EvalReport, eval_path: str, worst_pairs: int) -> None:
    mlflow.log_metrics(report.metrics)
    for name, fig in report_figures(report, eval_path, worst_pairs).items():
        mlflow.log_figure(fig, f"eval/{name}")
    table = report.scores.drop(columns=["meta"], errors="ignore")
    mlflow.log_table(table, "eval/scores.json")


def register(name: str, gate: GateConfig, scorer: TrainedScorer, report: EvalReport,
             eval_path: str, run_id: str) -> dict[str, Any]:
    """Log and register the trained scorer (once per parent run: a resumed step reuses its
    version); gate it against the champion on the same eval data. One register step at a time
    per model name (a Ray named-actor lock), and the champion is re-read before the aliases
    move, so the comparison is with the version it replaces. A failure before the aliases move
    moves none."""
    lock = locks.acquire(locks.promotion_lock_name(name), wait_s=gate.wait_s)
    try:
        version = models.version_of_run(name, run_id)
        for _ in range(3):
            champion = models.current_champion(name)
            compared_with = None if champion == version else champion
            champion_correct = None
            if compared_with is not None:
                champ = models.load_scorer(f"models:/{name}/{compared_with}")
                scores = score_dataset(usable_pairs(eval_path, "eval", with_ids=True), champ)
                if list(scores["pair_id"]) != list(report.scores["pair_id"]):
                    raise RuntimeError("champion and challenger were scored on different eval pairs")
                champion_correct = correct_vector(scores)
                mlflow.log_metric("eval/champion_accuracy", float(champion_correct.mean()))
            if version is None:
                scorer = replace(scorer, score_stats=score_stats(report.scores))
                info = models.log_scorer(scorer, example_item(eval_path, scorer.spec.video), name,
                                         example_prompt(eval_path))
                version = str(info.registered_model_version)
                mlflow.log_metrics(report.metrics, model_id=info.model_id)  # the model's own
            decision = decide(version, correct_vector(report.scores), compared_with,
                              champion_correct, gate)
            if models.current_champion(name) == champion:  # unchanged since compared
                break
            log.warning("the champion of %s moved during the comparison; comparing again", name)
        else:
            raise RuntimeError(f"the champion of {name} kept moving; not promoting")
        aliases = models.apply_decision(name, decision)
    finally:
        try:
            lock.release()
        except Exception as e:  # noqa: BLE001 - the lock ends with this driver anyway
            log.warning("could not release %s: %s", lock.name, e)
    mlflow.set_tags({"promotion.promoted": str(decision.promote).lower(),
                     "promotion.decision": json.dumps(decision.as_dict())})
    mlflow.log_dict(decision.as_dict(), "promotion.json")
    return {
        "model_name": name,
        "model_version": version,
        "model_uri": f"models:/{name}/{version}",
        "aliases": aliases,
        "promoted": decision.promote,
        "promotion": decision.as_dict(),
        "champion_version_before": champion,
    }


def with_reference(loss: LossConfig, warm_start: str | None) -> LossConfig:
    """Incremental DPO from the champion: continue from production, anchored to it."""
    if warm_start and loss.type == "dpo" and loss.reference == "init":
        return replace(loss, reference=warm_start)
    return loss
