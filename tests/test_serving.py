"""`mlflow models serve` on registered scorers, as a registry consumer runs it: a real server
process (local env manager), base64 media in a ``dataframe_split`` payload over HTTP, and the
scores equal to ``pyfunc.predict`` on the same bytes."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from components.config import GateConfig
from components.media.spec import MediaSpec
from components.media.video import encode_video
from components.registry.gate import decide
from components.registry.scorer_files import TrainedScorer
from components.tracking import models, runs
from components.training.models import build_scorer
from tests.media_bytes import photo_bytes

pytestmark = pytest.mark.slow


def _register(name: str, model_name: str, spec: MediaSpec, example: bytes) -> None:
    torch.manual_seed(0)
    scorer = TrainedScorer(model_name, build_scorer(model_name).state_dict(), spec)
    with mlflow.start_run():
        info = models.log_scorer(scorer, example, name)
    # No champion yet: the gate promotes the first version.
    decision = decide(str(info.registered_model_version), np.ones(2), None, None, GateConfig())
    assert models.apply_decision(name, decision) == ["challenger", "champion"]


def _serve(model_uri: str, tracking_uri: str, log: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,  # uvicorn: from this venv
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri,
         "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-4000:])
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("mlflow models serve did not come up:\n" + log.read_text()[-4000:])


def _post(url: str, column: str, items: list[bytes]) -> dict:
    payload = {"dataframe_split": {"columns": [column],
                                   "data": [[base64.b64encode(b).decode()] for b in items]}}
    req = urllib.request.Request(url + "/invocations", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def test_served_scorers_answer_like_pyfunc_predict(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs.setup(uri, "serving")
    images = [photo_bytes(48, fmt, seed=i) for i, fmt in enumerate(["PNG", "JPEG", "WEBP"])]
    rng = np.random.default_rng(0)
    clips = [encode_video(rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), "mp4")
             for _ in range(2)]
    _register("served-image", "bn-cnn", MediaSpec("image", 32, 40_000_000), images[0])
    _register("served-video", "bn-c3d", MediaSpec("video", 32, 40_000_000, frames=4), clips[0])

    for name, column, items in [("served-image", "image", images),
                                ("served-video", "video", clips)]:
        model_uri = f"models:/{name}@champion"
        expected = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({column: items}))
        proc, url = _serve(model_uri, uri, tmp_path / f"{name}.log")
        try:
            answer = _post(url, column, items)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
        assert set(answer) == {"predictions"}, answer
        np.testing.assert_allclose(answer["predictions"], expected, rtol=1e-5, atol=1e-6)
        assert len(set(np.round(expected, 6))) == len(items)  # real, distinct scores


def test_a_served_vision_language_scorer_answers_image_and_prompt(tmp_path, capsys):
    """A vision-language scorer (a tiny HPSv3 layout, registered with ``register-published``)
    served by ``mlflow models serve`` from the registry alone (the checkpoint directory
    deleted): base64 PNG bytes + prompts over HTTP answer as ``pyfunc.predict``, and the
    prompt changes the score."""
    import shutil

    pytest.importorskip("transformers")
    from pipelines.__main__ import main
    from tests.tiny_checkpoints import write_hpsv3_layout

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    directory = write_hpsv3_layout(tmp_path / "hpsv3", seed=5)
    rc = main(["register-published", "--model-name", "served-vlm", "--alias", "champion",
               "--tracking-uri", uri, "model.name=vlm", f"model.pretrained={directory}",
               "model.head=mu_sigma", "loss.type=uncertainty", "data.image_size=448"])
    capsys.readouterr()
    assert rc == 0
    shutil.rmtree(directory)
    images = [photo_bytes(448, fmt, seed=i) for i, fmt in enumerate(["PNG", "JPEG"])]
    prompts = ["a photo of a cat", "two dogs playing in the snow"]
    frame = pd.DataFrame({"image": images * 2, "prompt": [prompts[0]] * 2 + [prompts[1]] * 2})
    model_uri = "models:/served-vlm@champion"
    mlflow.set_tracking_uri(uri)
    expected = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(frame), dtype=np.float64)
    proc, url = _serve(model_uri, uri, tmp_path / "served-vlm.log")
    try:
        payload = {"dataframe_split": {
            "columns": ["image", "prompt"],
            "data": [[base64.b64encode(b).decode(), p] for b, p in zip(frame["image"],
                                                                      frame["prompt"],
                                                                      strict=True)]}}
        req = urllib.request.Request(url + "/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            answer = json.loads(r.read())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    assert set(answer) == {"predictions"}, answer
    np.testing.assert_allclose(answer["predictions"], expected, rtol=1e-5, atol=1e-6)
    assert abs(expected[0] - expected[2]) > 1e-4  # the same image, another prompt
