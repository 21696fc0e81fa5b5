"""The scoring workflow: a registered scorer over candidate images/clips -> scores and ranks.

read + decode (CPU pool) -> score (model actors) -> rank per group -> write.
"""

from __future__ import annotations

import os
import time
from typing import Any

from components.config import RunConfig
from components.datasets.contract import resolve_shards
from components.evaluation.batch_scoring import (
    ScoringOptions,
    check_candidates,
    check_output,
    check_quarantine,
    score_candidates,
)
from components.runtime import resources
from components.runtime.cluster import cluster_resources, ensure_ray
from components.tracking import models, runs


def run_score(cfg: RunConfig, model_uri: str, input_path: str, output: str,
              group_by: str | None, top_k: int | None, overwrite: bool = False,
              prompt_column: str | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    output = os.path.abspath(output)
    quarantine = output.rstrip("/") + ".quarantine.parquet"
    check_output(output, overwrite)
    check_quarantine(quarantine, overwrite)
    uri = runs.resolve_tracking_uri(cfg.tracking.tracking_uri)
    runs.check_reachable(uri)
    shards = resolve_shards([input_path])
    runs.setup(uri, cfg.tracking.experiment)
    scorer = models.load_scorer(models.pin_model_uri(model_uri))  # decode as it was trained
    # Footers only, before Ray starts: media, group and prompt columns exist.
    total_rows = check_candidates(shards, scorer.spec, group_by, prompt_column)
    ensure_ray()
    cluster = cluster_resources()
    use_gpu = cluster.get("GPU", 0) >= 1
    resources.check(resources.score_phases(cfg.preprocess, use_gpu), cluster)
    opts = ScoringOptions(cfg.preprocess.actors, cfg.preprocess.cpus_per_actor, use_gpu,
                          group_by, top_k, prompt_column)
    counts = score_candidates(shards, output, quarantine, scorer, total_rows, opts)
    return {"status": "ok", "model_uri": model_uri, "output": output,
            "quarantine": quarantine, "rows": counts,
            "wall_s": round(time.perf_counter() - t0, 1)}
