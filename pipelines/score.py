"""The scoring workflow: a registered scorer over candidate images/clips -> scores and ranks.

read + decode (CPU pool) -> score (model actors) -> rank per group -> write. Wiring only.
"""

from __future__ import annotations

import os
import time
from typing import Any

from components import tracking
from components.config import RunConfig
from components.contract import resolve_shards
from components.media import MediaSpec
from components.reference import load_scorer_uri
from components.runtime import ensure_ray
from components.scoring import score_candidates


def run_score(cfg: RunConfig, model_uri: str, input_path: str, output: str,
              group_by: str | None, top_k: int | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    uri = tracking.resolve_tracking_uri(cfg.tracking.tracking_uri)
    tracking.check_reachable(uri)
    shards = resolve_shards([input_path])
    ensure_ray()
    tracking.setup(uri, cfg.tracking.experiment)
    spec = MediaSpec.from_dict(load_scorer_uri(model_uri).media)  # decode as the model was trained
    output = os.path.abspath(output)
    quarantine = output.rstrip("/") + ".quarantine.parquet"
    counts = score_candidates(
        shards, output, quarantine, model_uri=model_uri, tracking_uri=uri,
        spec=spec,
        decode_actors=cfg.preprocess.actors, cpus_per_actor=cfg.preprocess.cpus_per_actor,
        group_by=group_by, top_k=top_k,
    )
    return {"status": "ok", "model_uri": model_uri, "output": output,
            "quarantine": quarantine, "rows": counts,
            "wall_s": round(time.perf_counter() - t0, 1)}
