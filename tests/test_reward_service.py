"""The reward service (``visual-dpo serve``) on the session's real 2-CPU Ray cluster: a
registered tiny scorer served by Ray Serve, scored over HTTP (MLflow's JSON and the binary
form) and through a handle, a bad item failing alone, requests batched together, and the
champion alias moved under load: a tampered version refused, a good one swapped in, no request
failing. The settings and wire formats are checked without Ray first."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import psutil
import pytest
import torch

from components.media.spec import MediaSpec
from components.registry.scorer_files import TrainedScorer
from components.serving.payload import (
    BINARY_CONTENT_TYPE,
    PayloadError,
    encode_binary,
    parse_binary,
    parse_json,
)
from components.serving.settings import ServeSettings, SettingsError, settings_from_overrides
from components.tracking import models, runs
from components.training.models import build_scorer
from tests.media_bytes import photo_bytes

NAME = "served-reward"
_MODEL_IDS: dict[str, str] = {}  # registered version -> logged model id


# -- without Ray ----------------------------------------------------------------------------

def test_settings_are_typed_and_every_problem_is_reported_at_once():
    s = settings_from_overrides(["batch.max_size=32", "batch.wait_timeout_s=0.005",
                                 "scaling.max_replicas=4", "limits.deadline_s=2"])
    assert (s.batch.max_size, s.batch.wait_timeout_s, s.scaling.max_replicas,
            s.limits.deadline_s) == (32, 0.005, 4, 2.0)
    assert ServeSettings.from_dict(s.as_dict()) == s
    with pytest.raises(SettingsError) as e:
        settings_from_overrides(["batch.max_size=0", "batch.wait=1", "limits.max_items=x",
                                 "scaling.min_replicas=3"])
    text = str(e.value)
    assert "batch.wait: not a serve setting" in text and "limits.max_items: expected a int" in text
    with pytest.raises(SettingsError) as e:
        settings_from_overrides(["batch.max_size=0", "scaling.min_replicas=3"])
    assert "batch.max_size: must be >= 1, got 0" in str(e.value)
    assert "scaling.max_replicas: must be >= max(1, scaling.min_replicas=3), got 1" in str(e.value)


def test_the_ingress_setting_is_checked_and_sets_the_clusters_environment(monkeypatch, tmp_path):
    from components.serving.service import (
        DRAIN_ENV,
        HAPROXY_ENV,
        LOCAL_DRAIN_S,
        haproxy_available,
        ingress_env,
    )

    with pytest.raises(SettingsError, match="ingress: must be one of auto, haproxy, proxy"):
        settings_from_overrides(["ingress=nginx"])
    assert ingress_env("proxy") == {HAPROXY_ENV: "0"}
    assert ingress_env("auto") == ({HAPROXY_ENV: "1", DRAIN_ENV: LOCAL_DRAIN_S}
                                   if haproxy_available() else {HAPROXY_ENV: "0"})
    # HAProxy asked for where its binary cannot run: refused with what to do.
    not_executable = tmp_path / "haproxy"
    not_executable.write_text("")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(not_executable))
    assert not haproxy_available() and ingress_env("auto") == {HAPROXY_ENV: "0"}
    with pytest.raises(SettingsError, match="use ingress=proxy"):
        ingress_env("haproxy")


def test_the_serve_command_refuses_bad_settings_before_deploying(capsys):
    from pipelines.__main__ import main

    assert main(["serve", "image-scorer@champion", "batch.max_size=0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "batch.max_size: must be >= 1, got 0" in err and "port: must be a TCP port" in err


def test_the_binary_and_json_forms_carry_the_same_items():
    items = [b"\x89PNG...", b"", b"\xff\xd8jpeg"]
    assert parse_binary(encode_binary(items)).items == items
    assert parse_binary(encode_binary(items, ["a", "b", "c"])).prompts == ["a", "b", "c"]
    with pytest.raises(PayloadError, match="runs past the body"):
        parse_binary(encode_binary(items)[:-1])
    b64 = [base64.b64encode(i).decode() for i in items]
    split = {"dataframe_split": {"columns": ["image"], "data": [[x] for x in b64]}}
    records = {"dataframe_records": [{"image": x} for x in b64], "params": {"normalize": True}}
    assert parse_json(json.dumps(split).encode(), "image").items == items
    assert parse_json(json.dumps(records).encode(), "image").normalize
    with pytest.raises(PayloadError, match="no 'video' column"):
        parse_json(json.dumps(split).encode(), "video")


def test_the_follower_swaps_to_a_verified_version_and_keeps_serving_past_a_refused_one(
        monkeypatch):
    """The alias-following logic without Ray or a registry: the alias and the loader are
    stand-ins; the loader refuses version 2 as ``load_verified`` refuses a tampered one."""
    from types import SimpleNamespace

    from components.serving import follower
    from components.serving.settings import RequestLimits

    alias = {"v": "1"}
    monkeypatch.setattr(follower, "pin", lambda uri: (f"models:/m/{alias['v']}", "m", alias["v"]))
    loads = []

    def load(uri: str):
        loads.append(uri)
        if uri.endswith("/2"):
            raise ValueError("files do not match the manifest")
        return SimpleNamespace(spec=MediaSpec("image", 32, 4_000_000))

    f = follower.ModelFollower("models:/m@champion", RequestLimits(max_pixels=1000), load)
    first = f.current
    assert (first.version, first.spec.max_pixels) == ("1", 1000)  # the tighter limit
    assert f.poll() is None and loads == ["models:/m/1"]  # unchanged: nothing loaded
    alias["v"] = "2"
    assert f.poll() == "refused" and f.current is first
    assert "files do not match" in f.refused["2"]
    assert f.poll() is None and len(loads) == 2  # a refused version is not retried
    alias["v"] = "3"
    assert f.poll() == "swapped" and f.current.version == "3"
    assert follower.model_uri("image-scorer") == "models:/image-scorer@champion"
    assert not follower.follows_alias(follower.model_uri("models:/image-scorer/4"))


# -- on Ray Serve ---------------------------------------------------------------------------

def _register(seed: int) -> str:
    torch.manual_seed(seed)
    scorer = TrainedScorer("bn-cnn", build_scorer("bn-cnn").state_dict(),
                           MediaSpec("image", 32, 4_000_000))
    with mlflow.start_run():
        info = models.log_scorer(scorer, photo_bytes(32), NAME)
    _MODEL_IDS[str(info.registered_model_version)] = info.model_id
    return str(info.registered_model_version)


def _replace_weights(version: str) -> None:
    """Other weights in the artifact store, and scorer.json's own record of them updated to
    match: only the manifest the registry recorded can tell."""
    client = mlflow.MlflowClient()
    store = Path(client.get_logged_model(_MODEL_IDS[version]).artifact_location.removeprefix("file://"))
    files = store / "artifacts" / "scorer"
    torch.save({k: v + 1 for k, v in build_scorer("bn-cnn").state_dict().items()},
               files / "weights.pt")
    meta = json.loads((files / "scorer.json").read_text())
    meta["weights_sha256"] = hashlib.sha256((files / "weights.pt").read_bytes()).hexdigest()
    (files / "scorer.json").write_text(json.dumps(meta))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes, content_type: str = "application/json") -> dict:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _json_body(items: list[bytes]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [
        [base64.b64encode(b).decode()] for b in items]}}).encode()


@pytest.fixture(scope="module")
def service(ray_cluster, tmp_path_factory):
    from ray import serve

    from components.serving.service import serve_model

    d = tmp_path_factory.mktemp("reward")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("reward-service", artifact_location=str(d / "artifacts"))
    runs.setup(uri, "reward-service")
    v1 = _register(0)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", v1)
    # Replicas take no CPU slot (the session's cluster has 2, for other tests' work too).
    settings = settings_from_overrides([
        "scaling.num_cpus=0", "batch.max_size=16", "batch.wait_timeout_s=0.05", "poll_s=0.5",
        f"port={_free_port()}", "app_name=reward-test"])
    try:
        info = serve_model(f"{NAME}@champion", settings, tracking_uri=uri)
        yield {"url": info["url"], "base": info["url"].rsplit("/", 1)[0], "v1": v1,
               "app": settings.app_name, "info": info}
    finally:
        serve.shutdown()


@pytest.mark.slow
def test_http_json_binary_and_handle_answer_like_pyfunc_and_a_bad_item_fails_alone(service):
    from ray import serve

    assert service["info"]["model_version"] == service["v1"]
    # The ingress a local `visual-dpo serve` gets: HAProxy itself listens on the port.
    assert service["info"]["ingress"] == "haproxy"
    port = int(service["url"].split(":")[2].split("/")[0])
    listeners = {psutil.Process(c.pid).name() for c in psutil.net_connections("tcp")
                 if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN}
    assert listeners == {"haproxy"}, listeners
    images = [photo_bytes(48, fmt, seed=i) for i, fmt in enumerate(["PNG", "JPEG", "WEBP"])]
    expected = mlflow.pyfunc.load_model(f"models:/{NAME}/{service['v1']}").predict(
        pd.DataFrame({"image": images}))

    split = _post(service["url"], _json_body(images))
    records = _post(service["url"], json.dumps({"dataframe_records": [
        {"image": base64.b64encode(b).decode()} for b in images]}).encode())
    binary = _post(service["url"], encode_binary(images), BINARY_CONTENT_TYPE)
    handle = serve.get_app_handle(service["app"]).score.remote(images).result()
    for answer in (split, records, binary, handle):
        np.testing.assert_allclose(answer["predictions"], expected, rtol=1e-5, atol=1e-6)
        assert answer["errors"] == [None] * 3 and answer["model_version"] == service["v1"]

    mixed = _post(service["url"], _json_body([images[0], b"not an image", images[2]]))
    assert mixed["errors"][0] is None and mixed["errors"][2] is None
    assert mixed["predictions"][1] is None and "cannot decode" in mixed["errors"][1]
    np.testing.assert_allclose([mixed["predictions"][0], mixed["predictions"][2]],
                               expected[[0, 2]], rtol=1e-5, atol=1e-6)

    with urllib.request.urlopen(service["base"] + "/ready", timeout=10) as r:
        assert r.status == 200 and json.loads(r.read())["model_version"] == service["v1"]
    with pytest.raises(urllib.error.HTTPError) as e:
        _post(service["url"], b'{"inputs": []}')
    assert e.value.code == 400 and "dataframe_split" in json.loads(e.value.read())["error"]


@pytest.mark.slow
def test_concurrent_requests_are_scored_in_one_batch(service):
    image = photo_bytes(48, "PNG", seed=7)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: _post(service["url"], _json_body([image])), range(32)))
    sizes = [a["batch_sizes"][0] for a in answers]
    assert all(a["errors"] == [None] for a in answers)
    assert max(sizes) > 1, sizes  # one model call scored several requests' items


@pytest.mark.slow
def test_the_champion_moves_under_load_without_a_failed_request(service):
    """A tampered version is refused (the old one keeps serving), then a good one is swapped
    in; the load never sees an error and the versions change once, cleanly."""
    client = mlflow.MlflowClient()
    image = photo_bytes(48, "JPEG", seed=3)
    tampered, good = _register(1), _register(2)
    _replace_weights(tampered)  # its files no longer match its manifest: refused

    log: list[tuple[float, str | None, str]] = []  # (time, version, error)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set() and len(log) < 2000:
            try:
                a = _post(service["url"], _json_body([image]))
                log.append((time.monotonic(), a["model_version"], a["errors"][0]))
            except Exception as e:  # counted as a failed request
                log.append((time.monotonic(), None, f"{type(e).__name__}: {e}"))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        client.set_registered_model_alias(NAME, "champion", tampered)
        deadline = time.monotonic() + 30
        while tampered not in _version(service)["refused"] and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # still serving v1 after the refusal
        moved = time.monotonic()
        client.set_registered_model_alias(NAME, "champion", good)
        while _version(service)["model_version"] != good and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    failed = [e for _, v, e in log if e is not None]
    order = sorted(log)
    versions = [v for _, v, _ in order]
    changes = [(a, b) for a, b in zip(versions, versions[1:], strict=False) if a != b]
    print(f"\nswap under load: {len(log)} requests, {len(failed)} failed; refused "
          f"{_version(service)['refused']}; versions in completion order changed {changes}; "
          f"{sum(v == service['v1'] for v in versions)} by v{service['v1']}, "
          f"{sum(v == good for v in versions)} by v{good}, {sum(v == tampered for v in versions)} "
          f"by v{tampered} (tampered)")
    assert failed == []
    assert tampered not in versions
    assert versions[0] == service["v1"] and versions[-1] == good
    # Requests that started after the swap finished never see the old version again.
    swapped_at = min(t for t, v, _ in order if v == good)
    assert all(v == good for t, v, _ in order if t > swapped_at + 1.0)
    assert any(t < moved and v == service["v1"] for t, v, _ in order)


def _version(service) -> dict:
    with urllib.request.urlopen(service["base"] + "/version", timeout=10) as r:
        return json.loads(r.read())
