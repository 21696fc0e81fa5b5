"""Scheduled incremental runs: which shards are new, and a lease against overlapping runs.

Lineage lives in MLflow: every run logs the train shards it consumed (URI + size + mtime) as
``data/shards.json``; a shard is new when no FINISHED run of the same workflow and model name
consumed it with the same size and mtime. The lease is an experiment tag with an expiry, so a
crashed run blocks the schedule for at most ``lease_ttl_s``.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import uuid

from mlflow import MlflowClient

from ..datasets.contract import Shard
from .redaction import redact


class LeaseHeld(RuntimeError):
    """Another run of the same workflow holds the lease (exit code 3)."""


def lease_key(workflow: str, model_name: str) -> str:
    return f"visual_dpo.lease.{workflow}.{model_name}"


def acquire_lease(client: MlflowClient, experiment_id: str, key: str, ttl_s: float) -> str:
    now = time.time()
    raw = client.get_experiment(experiment_id).tags.get(key)
    if raw:
        lease = json.loads(raw)
        if lease["expires"] > now:
            raise LeaseHeld(
                f"another run holds the lease {key} ({lease['holder']}, until "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(lease['expires']))}); "
                "not starting a second one. A crashed run's lease expires by itself."
            )
    token = uuid.uuid4().hex
    holder = f"{socket.gethostname()}:{os.getpid()}"
    client.set_experiment_tag(experiment_id, key,
                              json.dumps({"holder": holder, "token": token, "expires": now + ttl_s}))
    # No compare-and-set in MLflow: read back, so of two racing writers only one goes on.
    if json.loads(client.get_experiment(experiment_id).tags[key])["token"] != token:
        raise LeaseHeld(f"another run took the lease {key} at the same moment")
    return token


def release_lease(client: MlflowClient, experiment_id: str, key: str, token: str) -> None:
    raw = client.get_experiment(experiment_id).tags.get(key)
    if raw and json.loads(raw).get("token") == token:
        client.delete_experiment_tag(experiment_id, key)


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
                path = client.download_artifacts(r.info.run_id, "data/shards.json", d)
            except Exception:  # noqa: BLE001 - a run without lineage consumed nothing we know of
                continue
            with open(path) as f:
                for s in json.load(f)["train"]:
                    seen.add((s["uri"], int(s["size"]), int(s["mtime_ns"])))
    return seen


def new_shards(shards: list[Shard], consumed: set[tuple[str, int, int]]) -> list[Shard]:
    # Recorded URIs are redacted (data/shards.json): compare like with like.
    return [s for s in shards if (redact(s.uri), s.size, s.mtime_ns) not in consumed]
