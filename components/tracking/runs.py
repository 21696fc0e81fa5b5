"""MLflow tracking: where runs go, what every run records."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import mlflow

from .redaction import redact, redact_tree

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
log = logging.getLogger(__name__)


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
    """Metrics of one run from a process other than the driver (rank 0 of Ray Train).

    ``log`` never blocks on the tracking server and never raises: a background thread sends
    the metrics in batches and, while the server is unreachable, keeps them (up to
    ``max_pending``, oldest dropped first, counted) and retries with backoff. A tracking outage
    delays the curves; it does not stop training. ``close`` waits a bounded time for the rest.
    """

    BATCH = 1000  # MLflow's log_batch limit on metrics per call

    def __init__(self, tracking_uri: str | None, run_id: str, max_pending: int = 200_000):
        import collections
        import threading

        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id
        self.max_pending = max_pending
        self.pending: collections.deque = collections.deque()
        self.dropped = self.sent_late = 0
        self.failures = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._send_forever, name="mlflow-metrics",
                                        daemon=True)
        self._thread.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._lock:
            self.pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
            while len(self.pending) > self.max_pending:
                self.pending.popleft()
                self.dropped += 1
        self._wake.set()

    def _send_forever(self) -> None:
        backoff = 1.0
        while True:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            while True:
                with self._lock:
                    batch = [self.pending[i] for i in range(min(self.BATCH, len(self.pending)))]
                if not batch:
                    break
                try:
                    self.client.log_batch(self.run_id, metrics=batch)
                except Exception as e:  # noqa: BLE001 - any failure: keep them, retry later
                    self.failures += 1
                    if self.failures == 1 or self.failures % 10 == 0:
                        log.warning("mlflow metrics: tracking server unavailable (%s); %d "
                                    "metrics kept for later", type(e).__name__, len(self.pending))
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    if self._closing:
                        return
                    continue
                with self._lock:
                    for _ in batch:
                        self.pending.popleft()
                    if self.failures:
                        self.sent_late += len(batch)
                backoff = 1.0
            if self._closing:
                return

    def close(self, timeout_s: float = 120.0) -> dict[str, int]:
        """Send what is left (waiting at most ``timeout_s``); returns the counts."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline and self._thread.is_alive():
            self._wake.set()
            time.sleep(0.2)
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
        with self._lock:
            self.dropped += len(self.pending)
            self.pending.clear()
        return {"sent_late": self.sent_late, "dropped": self.dropped}


@contextlib.contextmanager
def parent_run(**start_run_kwargs):
    """``mlflow.start_run`` for a workflow's parent run, ended FAILED or FINISHED without ever
    replacing the run's own error: when the tracking server is what failed, the run stays
    RUNNING in MLflow (resume it with ``--resume RUN_ID``) and the real cause is what the
    caller sees."""
    run = mlflow.start_run(log_system_metrics=True, **start_run_kwargs)
    try:
        yield run
    except BaseException:
        _end_run_quietly(run.info.run_id, "FAILED")
        raise
    _end_run_quietly(run.info.run_id, "FINISHED")


def _end_run_quietly(run_id: str, status: str) -> None:
    try:
        mlflow.end_run(status)
    except Exception as e:  # noqa: BLE001 - never hide the run's own outcome
        log.warning("could not mark run %s %s in MLflow (%s: %s); it stays RUNNING there: "
                    "resume it with --resume %s", run_id, status, type(e).__name__,
                    redact(str(e)), run_id)


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


def run_dir_of(run, root: str, run_name: str) -> str:
    """Where a run's files live (a local path or a storage URI under ``root``); fixed at its
    first start (a tag), so a resumed run finds its prepared data and checkpoints again."""
    from ..runtime import storage

    key = "visual_dpo.run_dir"
    if key in run.data.tags:
        return run.data.tags[key]
    path = storage.join(root, run_name or run.info.run_id)
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




def log_stored_artifacts(location: str, artifact_path: str) -> None:
    """Log a file or directory from run storage (local or object storage) as MLflow
    artifacts of the active run; nothing when it does not exist."""
    import tempfile

    from ..runtime import storage

    if not storage.exists(location):
        return
    with tempfile.TemporaryDirectory() as d:
        local = storage.download(location, d)
        if os.path.isdir(local):
            mlflow.log_artifacts(local, artifact_path)
        else:
            mlflow.log_artifact(local, artifact_path)
