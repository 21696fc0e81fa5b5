"""What every run records before it computes (config, data identity, code, cluster), and
which shards finished runs consumed, so a scheduled ``--incremental`` run trains on new ones.

Lineage lives in MLflow: every run logs the train shards it consumed (URI + size + mtime) as
``data/shards.json``; a shard is new when no FINISHED run of the same workflow and model name
consumed it with the same size and mtime."""

from __future__ import annotations

import json
import logging
import os
import tempfile

import mlflow
from mlflow import MlflowClient

from ..config import RunConfig, dump_yaml, flatten, to_dict
from ..datasets.contract import Shard, fingerprint
from ..runtime.pinning import CpuPlan
from .redaction import redact
from .runs import log_params_flat

GIT_COMMIT_ENV = "VISUAL_DPO_GIT_COMMIT"
"""Set by ``make submit`` to the commit of the submitted working dir (it ships without .git)."""

log = logging.getLogger(__name__)


def _dataset_input(specs: list[str], shards: list[Shard], name: str, context: str) -> None:
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    # A MetaDataset records identity without loading data: source = what the user passed,
    # digest = the shard fingerprint (URIs + sizes + mtimes).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(redact(specs[0]))
    ds = MetaDataset(source=source, name=name, digest=fingerprint(shards))
    mlflow.log_input(ds, context=context)


SHARDS_ARTIFACT = "data/shards.json"


def shards_json(train: list[Shard], evals: list[Shard]) -> str:
    """``data/shards.json``: ``{"train": [{"uri", "size", "mtime_ns"}, ...], "eval": [...]}``
    (URIs redacted), one shard a line."""
    def lines(shards: list[Shard]) -> str:
        return ",\n".join(json.dumps({"mtime_ns": s.mtime_ns, "size": s.size, "uri": redact(s.uri)},
                                     separators=(",", ":")) for s in shards)

    return f'{{"eval":[\n{lines(evals)}],\n"train":[\n{lines(train)}]}}\n'


def record_run(cfg: RunConfig, train_shards: list[Shard], eval_shards: list[Shard],
               plan: CpuPlan, cluster_resources: dict[str, float]) -> None:
    """Params, tags and lineage of the active run. On a resumed run, params that already
    exist keep their first value (MLflow params are immutable); changed keys are listed in
    the tag ``visual_dpo.config_changes`` and the new resolved config replaces config.yaml."""
    flat = {k: redact(str(v))[:6000] for k, v in flatten(to_dict(cfg)).items()}
    flat.update(plan.to_params())
    run = mlflow.active_run()
    recorded = mlflow.MlflowClient().get_run(run.info.run_id).data
    existing, run_tags = recorded.params, recorded.tags
    changed = sorted(k for k, v in flat.items() if k in existing and existing[k] != v)
    log_params_flat({k: v for k, v in flat.items() if k not in existing})
    if changed:
        mlflow.set_tag("visual_dpo.config_changes", ",".join(changed))
    tags = {
        "model_name": cfg.tracking.model_name,
        "data.train.fingerprint": fingerprint(train_shards),
        "data.train.shards": str(len(train_shards)),
        "ray.cluster_resources": json.dumps(cluster_resources, sort_keys=True),
        "workflow": cfg.modality,
    }
    if eval_shards:
        tags["data.eval.fingerprint"] = fingerprint(eval_shards)
    # MLflow records mlflow.source.git.commit itself when the entry point is in a git
    # checkout; a Ray job's working dir has no .git, so `make submit` passes the commit in.
    commit = os.environ.get(GIT_COMMIT_ENV)
    if commit and "mlflow.source.git.commit" not in run_tags:
        tags["mlflow.source.git.commit"] = commit
    mlflow.set_tags(tags)
    mlflow.log_text(redact(dump_yaml(cfg)), "config.yaml")
    # The one record that lists every shard (what --incremental compares against): one line
    # per shard, no indentation, ~100 bytes a shard. Params, tags and dataset inputs carry
    # only the count and the fingerprint, whatever the number of shards.
    mlflow.log_text(shards_json(train_shards, eval_shards), SHARDS_ARTIFACT)
    _dataset_input(cfg.data.train, train_shards, "train", "training")
    if eval_shards:
        _dataset_input(cfg.data.eval, eval_shards, "eval", "evaluation")


def consumed_shards(client: MlflowClient, experiment_id: str, workflow: str,
                    model_name: str) -> set[tuple[str, int, int]]:
    runs = client.search_runs(
        [experiment_id],
        filter_string=(f"tags.workflow = '{workflow}' and tags.model_name = '{model_name}' "
                       "and attributes.status = 'FINISHED'"),
    )
    seen: set[tuple[str, int, int]] = set()
    for r in runs:
        if "mlflow.parentRunId" in r.data.tags:
            continue
        with tempfile.TemporaryDirectory() as d:
            try:
                path = client.download_artifacts(r.info.run_id, SHARDS_ARTIFACT, d)
            except Exception:  # noqa: BLE001 - a run without lineage consumed nothing we know of
                continue
            with open(path) as f:
                for s in json.load(f)["train"]:
                    seen.add((s["uri"], int(s["size"]), int(s["mtime_ns"])))
    return seen


def new_shards(shards: list[Shard], consumed: set[tuple[str, int, int]]) -> list[Shard]:
    # Recorded URIs are redacted (data/shards.json): compare like with like.
    return [s for s in shards if (redact(s.uri), s.size, s.mtime_ns) not in consumed]
