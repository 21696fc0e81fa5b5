"""The register step: idempotent per parent run, and a registry error is never read as "no
champion". (The lease and the promotion lock themselves, held in the run storage, are tested
in tests/test_storage_lease.py.)"""

from __future__ import annotations

import http.server
import threading

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from components.config import GateConfig
from components.evaluation.metrics import EvalReport
from components.media.spec import MediaSpec
from components.registry.scorer_files import TrainedScorer
from components.runtime import locks
from components.tracking import models, runs
from components.training.models import build_scorer
from tests.media_bytes import photo_bytes


def _report(n: int = 20) -> EvalReport:
    rng = np.random.default_rng(0)
    s_c = rng.normal(1.0, 1.0, n)
    return EvalReport({"eval/accuracy": 0.8}, pd.DataFrame({
        "pair_id": [f"p{i:03d}" for i in range(n)], "s_chosen": s_c,
        "s_rejected": s_c - np.where(np.arange(n) < 16, 1.0, -1.0), "target": np.ones(n)}))


@pytest.mark.slow
def test_register_is_idempotent_per_parent_run(ray_cluster, tmp_path):
    """A register step that failed after logging the model registers no second version when
    the run resumes."""
    from pipelines import stages

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs.setup(uri, "idempotent")
    torch.manual_seed(0)
    scorer = TrainedScorer("seed-cnn", build_scorer("seed-cnn").state_dict(),
                           MediaSpec("image", 32, 10**6))
    with mlflow.start_run() as run:
        models.log_scorer(scorer, photo_bytes(32), "once-scorer")  # then the step crashed
        out = stages.register("once-scorer", GateConfig(), scorer, _report(), "unused",
                              run.info.run_id, str(tmp_path / "state"))
    assert out["model_version"] == "1" and out["promoted"]
    assert locks.holder_of(str(tmp_path / "state"), locks.promotion_lock_name("once-scorer")) is None
    assert len(mlflow.MlflowClient().search_model_versions("name = 'once-scorer'")) == 1


def test_a_registry_error_is_an_error_not_no_champion(monkeypatch):
    """A tracking server answering 500 must not read as "no champion yet" (which would
    promote without a gate)."""

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error_code": "INTERNAL_ERROR", "message": "database is down"}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        mlflow.set_tracking_uri(f"http://127.0.0.1:{server.server_address[1]}")
        mlflow.set_registry_uri(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(models.RegistryError, match="cannot read the champion"):
            models.current_champion("image-scorer")
    finally:
        server.shutdown()
