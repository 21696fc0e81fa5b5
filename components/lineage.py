"""What every run records before it computes: config, data identity, code and cluster."""

from __future__ import annotations

import json

import mlflow

from components import tracking
from components.config import RunConfig, dump_yaml, flatten, to_dict
from components.contract import Shard, fingerprint


def _dataset_input(specs: list[str], shards: list[Shard], name: str, context: str) -> None:
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    # A MetaDataset records identity without loading data: source = what the user passed,
    # digest = the shard fingerprint (URIs + sizes + mtimes).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(specs[0])
    ds = MetaDataset(source=source, name=name, digest=fingerprint(shards))
    mlflow.log_input(ds, context=context)


def record_run(cfg: RunConfig, train_shards: list[Shard], eval_shards: list[Shard]) -> None:
    import ray

    tracking.log_params_flat(flatten(to_dict(cfg)))
    tags = {
        "data.train.fingerprint": fingerprint(train_shards),
        "data.train.shards": str(len(train_shards)),
        "ray.cluster_resources": json.dumps(ray.cluster_resources(), sort_keys=True),
        "workflow": "image",
    }
    if eval_shards:
        tags["data.eval.fingerprint"] = fingerprint(eval_shards)
    commit = tracking.git_commit()
    if commit:
        tags["git.commit"] = commit
    mlflow.set_tags(tags)
    mlflow.log_text(dump_yaml(cfg), "config.yaml")
    tracking.log_json_artifact(
        {
            "train": [{"uri": s.uri, "size": s.size, "mtime_ns": s.mtime_ns} for s in train_shards],
            "eval": [{"uri": s.uri, "size": s.size, "mtime_ns": s.mtime_ns} for s in eval_shards],
        },
        "data/shards.json",
    )
    _dataset_input(cfg.data.train, train_shards, "train", "training")
    if eval_shards:
        _dataset_input(cfg.data.eval, eval_shards, "eval", "evaluation")
