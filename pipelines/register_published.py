"""The register-published workflow: a published scorer checkpoint -> a registered model version,
without training (``visual-dpo register-published``).

build (the scorer from ``model.pretrained``, as a run's initial weights) -> log (an MLflow run
with the checkpoint's location and SHA-256) -> register (the same pyfunc on raw bytes + prompt
as a trained version, ``log_scorer``) -> alias (optional, e.g. ``champion``). The version is
then what the gate compares a challenger with, a DPO reference (``loss.reference=models:/...``),
the ``--incremental`` starting point, or simply served.
"""

from __future__ import annotations

import time
from typing import Any

import mlflow

from components.config import RunConfig, flatten, to_dict
from components.registry.published import EXAMPLE_PROMPT, example_input, published_scorer
from components.tracking import models, runs


def run_register_published(cfg: RunConfig, alias: str | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    uri = runs.resolve_tracking_uri(cfg.tracking.tracking_uri)
    runs.check_reachable(uri)
    published = published_scorer(cfg)  # loads and hashes the checkpoint before any run starts
    scorer, name = published.scorer, cfg.tracking.model_name
    runs.setup(uri, cfg.tracking.experiment)
    with runs.parent_run(run_name=cfg.tracking.run_name or None) as run:
        runs.announce(run, uri)
        tags = {"workflow": "register-published", "published.checkpoint": published.checkpoint,
                "published.sha256": published.sha256, "published.model": scorer.model_name}
        mlflow.set_tags(tags)
        runs.log_params_flat({k: v for k, v in flatten(to_dict(cfg)).items()
                              if k.startswith(("model.", "data.image_size", "data.video."))
                              or k == "modality"})
        runs.log_json_artifact({"checkpoint": published.checkpoint, "sha256": published.sha256,
                                "files": published.files}, "published/checkpoint.json")
        info = models.log_scorer(scorer, example_input(scorer.spec), name,
                                 EXAMPLE_PROMPT if scorer.spec.takes_prompt else "")
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        if alias:
            client.set_registered_model_alias(name, alias, version)
        aliases = sorted(client.get_model_version(name, version).aliases)
        return {
            "status": "ok",
            "run_id": run.info.run_id,
            "experiment": cfg.tracking.experiment,
            "tracking_uri": uri,
            "model_name": name,
            "model_version": version,
            "model_uri": f"models:/{name}/{version}",
            "aliases": aliases,
            "checkpoint": published.checkpoint,
            "checkpoint_sha256": published.sha256,
            "wall_s": round(time.perf_counter() - t0, 1),
        }
