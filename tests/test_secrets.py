"""Credentials are never recorded: URIs with passwords, tokens and secret environment values
are masked in params, tags, artifacts, dataset sources, the summary and log lines; a
basic-auth tracking URI still works."""

from __future__ import annotations

import base64
import http.server
import json
import logging
import threading

import mlflow
import pytest
from mlflow import MlflowClient

from components.config import load_config
from components.datasets.contract import Shard
from components.runtime.pinning import plan_for_run
from components.tracking.lineage import record_run
from components.tracking.redaction import RedactingFilter, redact
from components.tracking.runs import TrackingError, check_reachable, setup

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYzEXAMPLEKEY"


@pytest.mark.parametrize("raw,expected", [
    (f"s3://AKIAEXAMPLE:{SECRET}@bucket/pairs/train/", "s3://AKIAEXAMPLE:***@bucket/pairs/train/"),
    (f"https://alice:{SECRET}@mlflow.example.com:5000", "https://alice:***@mlflow.example.com:5000"),
    (f"https://host/p?X-Amz-Signature={SECRET}&part=1", "https://host/p?X-Amz-Signature=***&part=1"),
    (f"Authorization: Bearer {SECRET}", "Authorization: Bearer ***"),
    ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),
])
def test_redact_masks_credentials_and_keeps_the_rest(raw, expected):
    assert redact(raw) == expected


def test_secret_environment_values_are_masked(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    assert redact(f"signed with {SECRET}.") == "signed with ***."


def test_a_run_records_no_credential(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-in-the-uri-" + SECRET[:8])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train = f"s3://AKIAEXAMPLE:{SECRET}@bucket/pairs/train/"
    cfg = load_config(None, [f"data.train={train}",
                             f"tracking.tracking_uri=https://alice:{SECRET}@mlflow:5000"])
    shard = Shard(uri=train + "part-0.parquet", path="bucket/pairs/train/part-0.parquet",
                  filesystem=None, size=10, mtime_ns=1)
    setup(uri, "secrets")
    with mlflow.start_run() as run:
        record_run(cfg, [shard], [], plan_for_run(cfg.preprocess, cfg.train), {"CPU": 2.0})
    client = MlflowClient(uri)
    data = client.get_run(run.info.run_id)
    recorded = [json.dumps(data.data.params), json.dumps(data.data.tags),
                json.dumps([d.dataset.source for d in data.inputs.dataset_inputs])]
    for path in ("config.yaml", "data/shards.json"):
        with open(client.download_artifacts(run.info.run_id, path, str(tmp_path))) as f:
            recorded.append(f.read())
    assert all(SECRET not in text for text in recorded), recorded
    assert "s3://AKIAEXAMPLE:***@bucket/pairs/train/" in data.data.params["data.train"]


def test_log_lines_are_redacted(caplog):
    logger = logging.getLogger("visual-dpo-test")
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    caplog.handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    with caplog.at_level(logging.INFO):
        logger.info("reading %s", f"s3://KEY:{SECRET}@bucket/x")
    logger.removeHandler(handler)
    assert SECRET not in caplog.text and "s3://KEY:***@bucket/x" in caplog.text


@pytest.fixture
def basic_auth_server():
    """A real HTTP server whose /health needs basic auth alice:<SECRET>."""
    expected = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            ok = self.path == "/health" and self.headers.get("Authorization") == expected
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(b"OK" if ok else b"no")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_basic_auth_tracking_uri_is_checked_with_its_credentials(basic_auth_server):
    port = basic_auth_server
    check_reachable(f"http://alice:{SECRET}@127.0.0.1:{port}")  # no exception: 200
    with pytest.raises(TrackingError) as e:
        check_reachable(f"http://alice:wrong-{SECRET[:4]}@127.0.0.1:{port}")
    assert "401" in str(e.value) and "user and password" in str(e.value)
    assert SECRET[:4] not in str(e.value).replace("127.0.0.1", "")
