"""MLflow tracking: where runs go, what every run records."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import mlflow

from .redaction import redact, redact_tree

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class TrackingError(RuntimeError):
    pass


def resolve_tracking_uri(flag: str) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's default sqlite store.

    A relative sqlite path is made absolute, so Ray workers (other working directories) write
    to the same database as the driver.
    """
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI", "") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + os.path.abspath(uri[len(prefix):])
    return uri


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, before Ray or training starts, when a tracking server is unreachable."""
    if not uri.startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri)
    headers = {}
    if parts.username is not None:  # basic auth in the URI: a header, not part of the URL
        raw = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(raw.encode()).decode()
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
    url = urllib.parse.urlunsplit(parts).rstrip("/") + "/health"
    shown = redact(uri)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=timeout_s) as r:
            if r.status != 200:
                raise TrackingError(f"MLflow tracking server {shown} answered {r.status} on /health")
    except urllib.error.HTTPError as e:
        raise TrackingError(
            f"MLflow tracking server {shown} answered {e.code} on /health"
            + (": check the user and password" if e.code in (401, 403) else "")
        ) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        raise TrackingError(
            f"MLflow tracking server {shown} is unreachable ({redact(str(e))}); start it, or "
            "pass another --tracking-uri / MLFLOW_TRACKING_URI"
        ) from None


def setup(uri: str, experiment: str) -> str:
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.set_experiment(experiment)
    return exp.experiment_id


class MetricsLogger:
    """Metrics of one run from a process other than the driver (rank 0 of Ray Train)."""

    def __init__(self, tracking_uri: str | None, run_id: str):
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id,
                              metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def log_params_flat(flat: dict[str, Any]) -> None:
    # MLflow caps a param value at 6000 characters; shard lists can be long.
    mlflow.log_params({k: redact(str(v))[:6000] for k, v in flat.items()})


def log_json_artifact(obj: Any, name: str) -> None:
    mlflow.log_text(json.dumps(redact_tree(obj), indent=2, sort_keys=True, default=str), name)


def find_parent_run(experiment_id: str, resume: str, run_name: str, workflow: str) -> str | None:
    """The parent run to resume: ``--resume RUN_ID``, else the latest top-level run of this
    workflow with the same ``--run-name``; None starts a new run."""
    client = mlflow.MlflowClient()
    if resume:
        try:
            run = client.get_run(resume)
        except mlflow.exceptions.MlflowException:
            raise TrackingError(f"--resume {resume}: no such MLflow run at {mlflow.get_tracking_uri()}") from None
        if run.info.experiment_id != experiment_id or "mlflow.parentRunId" in run.data.tags:
            raise TrackingError(f"--resume {resume}: not a {workflow} workflow run of this experiment")
        return resume
    if not run_name:
        return None
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.runName = '{run_name}' and tags.workflow = '{workflow}'",
        order_by=["attributes.start_time DESC"],
    )
    runs = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return runs[0].info.run_id if runs else None


def run_dir_of(run, output_dir: str, run_name: str) -> str:
    """Where a run's files live; fixed at its first start (a tag), so a resumed run finds its
    prepared data and Ray Train checkpoints again."""
    key = "visual_dpo.run_dir"
    if key in run.data.tags:
        return run.data.tags[key]
    path = os.path.abspath(os.path.join(output_dir, run_name or run.info.run_id))
    mlflow.set_tag(key, path)
    return path


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """Where a person looks at the run: the tracking server's page, or the command that
    serves a local store."""
    if uri.startswith(("http://", "https://")):
        return f"{redact(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"mlflow ui --backend-store-uri {uri}  (then experiment {experiment_id}, run {run_id})"


def announce(run, uri: str) -> None:
    """Print where the run can be watched, as soon as it exists."""
    print(f"MLflow run {run.info.run_id}: {run_url(uri, run.info.experiment_id, run.info.run_id)}",
          flush=True)


