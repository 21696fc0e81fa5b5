"""Resumable workflow steps, with MLflow as the durable state (no workflow engine).

Each step runs as a nested MLflow run under the workflow's parent run and records its inputs
(paths, fingerprints, the config it depends on), a digest of them, its outputs and its status.
A resumed parent run skips a step that FINISHED with the same input digest and reloads its
outputs; a step marked ``once`` (register, promote) never runs twice for one parent run.
Metrics and artifacts still go to the parent run, so it reads as one run in the UI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

from mlflow import MlflowClient

log = logging.getLogger(__name__)
T = TypeVar("T")

STEP = "visual_dpo.step"
DIGEST = "visual_dpo.inputs_digest"
FAILED_STEP = "visual_dpo.failed_step"
OUTPUTS = "step/outputs.json"


class StepFailed(RuntimeError):
    def __init__(self, step: str, run_id: str, cause: BaseException):
        self.step, self.run_id = step, run_id
        super().__init__(f"step '{step}' failed: {type(cause).__name__}: {cause}")


def digest(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Workflow:
    """The steps of one parent run."""

    def __init__(self, client: MlflowClient, parent_run_id: str):
        self.client = client
        self.parent = parent_run_id
        parent = client.get_run(parent_run_id)
        self.experiment_id = parent.info.experiment_id
        runs = client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
            order_by=["attributes.start_time ASC"],
        )
        self.finished = {r.data.tags[STEP]: r for r in runs
                         if STEP in r.data.tags and r.info.status == "FINISHED"}
        self.executed: list[str] = []
        self.skipped: list[str] = []
        if FAILED_STEP in parent.data.tags:  # a resumed run starts clean
            client.delete_tag(parent_run_id, FAILED_STEP)

    def step(self, name: str, inputs: dict[str, Any], compute: Callable[[], T],
             save: Callable[[T], dict[str, Any]], load: Callable[[dict[str, Any]], T],
             once: bool = False) -> T:
        d = digest(inputs)
        prev = self.finished.get(name)
        if prev is not None and (once or prev.data.tags.get(DIGEST) == d):
            log.info("step %s: finished in run %s with the same inputs; skipping", name, prev.info.run_id)
            with tempfile.TemporaryDirectory() as tmp:
                path = self.client.download_artifacts(prev.info.run_id, OUTPUTS, tmp)
                with open(path) as f:
                    outputs = json.load(f)
            outputs.pop("fingerprints", None)
            self.skipped.append(name)
            return load(outputs)
        log.info("step %s: started", name)
        t0 = time.perf_counter()
        rid = None
        try:
            run = self.client.create_run(
                self.experiment_id, run_name=name,
                tags={"mlflow.parentRunId": self.parent, STEP: name, DIGEST: d},
            )
            rid = run.info.run_id
            self.client.log_text(rid, json.dumps(inputs, indent=2, sort_keys=True, default=str),
                                 "step/inputs.json")
            value = compute()
            outputs = save(value)
        except BaseException as e:
            log.error("step %s: failed after %.1f s: %s: %s", name, time.perf_counter() - t0,
                      type(e).__name__, e)
            # Recording the failure must not replace it (the tracking server may be the cause).
            _quietly(lambda: rid and self.client.set_terminated(rid, "FAILED"))
            _quietly(lambda: self.client.set_tag(self.parent, FAILED_STEP, name))
            raise StepFailed(name, self.parent, e) from e
        log.info("step %s: finished in %.1f s", name, time.perf_counter() - t0)
        # Fingerprint every local output path, so a reader can tell the files were not replaced.
        outputs = {**outputs, "fingerprints": {
            k: file_fingerprint(v) for k, v in outputs.items()
            if isinstance(v, str) and os.path.exists(v)}}
        self.client.log_text(rid, json.dumps(outputs, indent=2, sort_keys=True, default=str), OUTPUTS)
        self.client.set_terminated(rid, "FINISHED")
        self.executed.append(name)
        return value


def _quietly(record: Callable[[], Any]) -> None:
    try:
        record()
    except Exception as e:  # noqa: BLE001 - best effort while handling another error
        log.warning("could not record a step failure in MLflow: %s: %s", type(e).__name__, e)


def file_fingerprint(path: str) -> str:
    """Identity of a local output file or directory: relative names + sizes (no content read)."""
    if os.path.isfile(path):
        return hashlib.sha256(f"{os.path.basename(path)}\0{os.path.getsize(path)}".encode()).hexdigest()[:16]
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(f"{os.path.relpath(p, path)}\0{os.path.getsize(p)}\n".encode())
    return h.hexdigest()[:16]
