"""The stages of the workflows: each calls the components that compute it and logs what they
return to MLflow. ``preference.py`` and ``evaluate.py`` put them in order."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import mlflow

from components.config import ConfigError, EvalConfig, GateConfig, LossConfig, RunConfig, to_dict
from components.datasets.contract import ReadPlan, fingerprint
from components.datasets.decode_graph import DecodeOptions, streaming_pairs, usable_pairs
from components.datasets.policy import training_rule
from components.datasets.prepare import PreparedSplits, prepare_splits
from components.evaluation.figures import report_figures
from components.evaluation.metrics import EvalReport, evaluation_report, score_stats
from components.evaluation.pair_scoring import score_dataset
from components.media.spec import MediaSpec
from components.registry.gate import correct_vector, decide
from components.registry.input_example import example_item, example_prompt
from components.registry.scorer_files import TrainedScorer
from components.runtime import locks, storage
from components.runtime.pinning import CpuPlan
from components.tracking import models, runs
from components.tracking.steps import digest
from components.training.optim import problems as schedule_problems
from components.training.reference import initial_scorer
from components.training.trainer import TrainOutcome, fit
from components.training.worker import WorkerSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunInputs:
    """What a run works on, resolved and checked once by the driver before Ray or MLflow
    start, then handed to every stage: the read plans (footers read once), the decode
    options, the media contract, the CPU plan and the scorer's construction options."""

    train: ReadPlan | None
    eval: ReadPlan | None
    spec: MediaSpec
    plan: CpuPlan
    decode: DecodeOptions
    options: dict = field(default_factory=dict)  # the scorer's construction options
    cache: str = "decoded"  # data.cache resolved: "decoded" or "none" (streaming)


# --- prepare ----------------------------------------------------------------------------


def prepare_key(cfg: RunConfig, inputs: RunInputs) -> dict[str, Any]:
    """What the prepare step's output depends on (its cache key)."""
    data = {k: v for k, v in to_dict(cfg.data).items() if k not in ("train", "eval")}
    return {"data": data, "ties": cfg.ties,
            "train": fingerprint(list(inputs.train.shards)) if inputs.train else "",
            "eval": fingerprint(list(inputs.eval.shards)) if inputs.eval else "",
            "tokenizer": [inputs.spec.text, inputs.spec.context_length, inputs.spec.vocab_size]
            # an hf-clip checkpoint's own tokenizer: by its content (unchanged keys otherwise)
            + ([digest({"tokenizer": inputs.spec.tokenizer})] if inputs.spec.tokenizer else []),
            "cache": inputs.cache}


def prepare(cfg: RunConfig, inputs: RunInputs, run_dir: str) -> PreparedSplits:
    data = prepare_splits(inputs.train, inputs.eval, run_dir, inputs.decode, cfg.data,
                          inputs.cache)
    mlflow.set_tag("data.cache_resolved", inputs.cache)
    mlflow.log_metrics(data.metrics)
    runs.log_stored_artifacts(data.quarantine_path, "data")
    mlflow.log_dict(data.report, "data/report.json")
    data.check(cfg.data.max_quarantine_fraction)
    return data


# --- reference --------------------------------------------------------------------------


def reference_key(cfg: RunConfig, upstream: dict[str, Any]) -> dict[str, Any]:
    return {"upstream": digest(upstream), "loss": to_dict(cfg.loss),
            "model": to_dict(cfg.model), "seed": cfg.train.seed}


def resolve_reference(source: str, cfg: RunConfig, options: dict, spec: MediaSpec) -> TrainedScorer:
    """``init`` (the initial weights, pretrained ones included) or a model URI, pinned to its
    version."""
    if source == "init":
        m = cfg.model
        return initial_scorer(m.name, options, cfg.train.seed, spec, m.pretrained, m.weights)
    return models.load_scorer(models.pin_model_uri(source))


def reference(cfg: RunConfig, inputs: RunInputs) -> TrainedScorer | None:
    """For ``loss.type=dpo``: the frozen reference, resolved once and pinned (None for
    objectives without one). The driver hands it to training and evaluation; the training
    workers score each batch with it on the fly: the same pixels the policy sees (augmented
    views included), no pass over the data and no stored copy; it costs one no-grad forward
    per step."""
    loss = cfg.loss
    if loss.type != "dpo":
        return None
    ref = resolve_reference(loss.reference, cfg, inputs.options, inputs.spec)
    spec = inputs.spec
    if ref.spec.size != spec.size or ref.spec.shape != spec.shape:
        raise ConfigError([f"loss.reference: {loss.reference} takes inputs of shape "
                           f"{ref.spec.shape}, this run decodes {spec.shape}; set "
                           "data.image_size (and data.video.frames) to match"])
    mlflow.set_tags({"loss.reference": ref.source, "loss.reference_model": ref.model_name})
    return ref


def reference_record(ref: TrainedScorer | None) -> dict[str, Any]:
    """The reference step's record: its pinned source (a resumed run reloads it from there)."""
    return {"source": ref.source if ref is not None else None}


def reference_from_record(record: dict[str, Any], cfg: RunConfig,
                          inputs: RunInputs) -> TrainedScorer | None:
    source = record.get("source")
    return resolve_reference(source, cfg, inputs.options, inputs.spec) if source else None


# --- train ------------------------------------------------------------------------------


@dataclass
class TrainingInputs:
    train_ds: Any
    val_ds: Any
    init_state: dict | None


def training_inputs(cfg: RunConfig, inputs: RunInputs, data: PreparedSplits,
                    ref: TrainedScorer | None, warm_start: str | None = None) -> TrainingInputs:
    """The datasets and the starting weights of the train stage.

    Decoded cache: the prepared pairs. Streaming (``data.cache=none``): read -> decode in the
    pinned actor pool -> straight into the trainers, every epoch (with augmentation when
    on). The policy starts from the reference's weights when the architectures match (so
    DPO starts at log 2), else from ``warm_start`` (a model URI, e.g. the champion of an
    incremental run) when it matches, else from the seeded random init.
    """
    if data.cache == "none":
        assert inputs.train is not None, "a training run has training data"
        opts = inputs.decode.with_augment(augment_settings(cfg, inputs.spec))
        train_ds = streaming_pairs(inputs.train, opts,
                                   training_rule(cfg.data, inputs.eval is not None, "train"))
    else:
        train_ds = usable_pairs(data.train_path, "train")
    val_ds = usable_pairs(data.val_path, "val") if data.val_path else None
    init = None
    if ref is not None and _same_architecture(ref, cfg.model.name, inputs.options):
        init = ref.state_dict
    elif warm_start:  # loaded only when the reference cannot serve as the start point
        warm = models.load_scorer(models.pin_model_uri(warm_start))
        if _same_architecture(warm, cfg.model.name, inputs.options):
            init = warm.state_dict
    return TrainingInputs(train_ds, val_ds, init)


def train_key(cfg: RunConfig, upstream: dict[str, Any], warm_start: str | None) -> dict[str, Any]:
    return {"upstream": digest(upstream), "train": to_dict(cfg.train), "warm_start": warm_start}


def augment_settings(cfg: RunConfig, spec: MediaSpec) -> dict | None:
    if not cfg.data.augment:
        return None
    return {"seed": cfg.train.seed, "min_scale": cfg.data.augment_min_scale, "flip": True,
            "frames": spec.frames if spec.video else 0}


def _same_architecture(scorer: TrainedScorer, name: str, options: dict) -> bool:
    return scorer.model_name == name and scorer.options == options


def train(cfg: RunConfig, inputs: RunInputs, datasets: TrainingInputs, ref: TrainedScorer | None,
          data: PreparedSplits, run_dir: str, run_id: str, tracking_uri: str) -> TrainOutcome:
    validate = datasets.val_ds is not None
    spec = WorkerSpec(train=cfg.train, loss=cfg.loss, model_name=cfg.model.name,
                      modality=cfg.modality, init_state=datasets.init_state,
                      model_options=inputs.options, reference=ref, lora=cfg.model.lora,
                      pretrained=cfg.model.pretrained, weights=cfg.model.weights,
                      train_pairs=data.counts["train"].used,
                      select_by=cfg.train.selection(cfg.data.val_fraction), validate=validate,
                      pinning=inputs.plan.to_dict(),
                      pinning_report_dir=storage.join(run_dir, "pinning"),
                      mlflow_run_id=run_id, tracking_uri=tracking_uri)
    problems = schedule_problems(spec.schedule(cfg.train.workers))  # needs the pair count
    if problems:
        raise ConfigError(problems)
    outcome = fit(spec, datasets.train_ds, storage_path=storage.join(run_dir, "ray_results"),
                  run_name=cfg.tracking.run_name or f"train-{run_id}", val_ds=datasets.val_ds)
    mlflow.log_metrics({k: outcome.metrics[k] for k in ("train/selected_epoch", "train/epochs_run")})
    mlflow.set_tag("train.device", "cuda" if outcome.metrics.get("train/on_gpu") else "cpu")
    runs.log_stored_artifacts(storage.join(run_dir, "pinning"), "pinning")  # what each got
    return outcome


# --- evaluate and register ---------------------------------------------------------------


def evaluate_key(cfg: RunConfig, upstream: dict[str, Any], checkpoint: str) -> dict[str, Any]:
    return {"upstream": digest(upstream), "eval": to_dict(cfg.eval), "ckpt": checkpoint}


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


def register_key(cfg: RunConfig, upstream: dict[str, Any]) -> dict[str, Any]:
    return {"upstream": digest(upstream), "gate": to_dict(cfg.gate)}


def register(name: str, gate: GateConfig, scorer: TrainedScorer, report: EvalReport,
             eval_path: str, run_id: str, state_root: str,
             fence: locks.Lease | None = None) -> dict[str, Any]:
    """Log and register the trained scorer (once per parent run: a resumed step reuses its
    version); gate it against the champion on the same eval data. One register step at a time
    per model name (a lock in the run storage ``state_root``, so across Ray clusters too), and
    the champion is re-read before the aliases move, so the comparison is with the version it
    replaces. A failure before the aliases move moves none. ``fence``: the schedule lease of
    an incremental run, checked (``Lease.check``) before registering and before the aliases
    move: a run that lost it registers nothing and fails with ``LeaseLost``."""
    lock = None
    if locks.supported(state_root):
        lock = locks.acquire(state_root, locks.promotion_lock_name(name), wait_s=gate.wait_s)
    else:  # gs://, abfs://...: registering still works, as it did on one Ray cluster
        log.warning("no promotion lock for %s in %s (a lease there is not implemented): "
                    "concurrent register steps are kept apart only by re-reading the champion",
                    name, state_root)
    try:
        if fence is not None:
            fence.check()
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
                if fence is not None:
                    fence.check()  # nothing registered by a run that lost its lease
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
        if fence is not None:
            fence.check()
        aliases = models.apply_decision(name, decision)
    finally:
        try:
            if lock is not None:
                lock.release()
        except Exception as e:  # noqa: BLE001 - unreleased, it expires after its ttl
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


def for_incremental(cfg: RunConfig, warm_start: str | None) -> RunConfig:
    """The effective config of an incremental run warm-started from the champion: DPO
    continues from production, anchored to it (``loss.reference``), so ``cfg.loss`` is the
    loss the run really uses (and what lineage records)."""
    if warm_start and cfg.loss.type == "dpo" and cfg.loss.reference == "init":
        return replace(cfg, loss=replace(cfg.loss, reference=warm_start))
    return cfg
