"""``model.name=hf-clip`` through the workflow: a tiny random CLIP in PickScore's directory
layout (tests/tiny_checkpoints.py) fine-tuned by ``run image`` on the prompt-dependent sample
set, registered, and loaded back by a consumer with ``mlflow.pyfunc.load_model``, which scores
raw image bytes + prompts with the tokenizer and normalisation that travelled with the weights,
with the model directory gone."""

from __future__ import annotations

import json
import shutil

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.__main__ import main

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")


def test_hf_clip_fine_tunes_registers_and_serves(ray_cluster, tmp_path, capsys, tracking_uri):
    from components.sample.images import write_prompted_image_pairs
    from components.tracking.models import load_scorer
    from components.training.models import build_scorer, to_model_input
    from tests.tiny_checkpoints import write_pickscore_layout

    data = tmp_path / "data"
    write_prompted_image_pairs(str(data), pairs=48, size=224, shards=1, seed=1)
    directory = write_pickscore_layout(tmp_path / "pickscore", seed=3)
    summary = tmp_path / "summary.json"
    rc = main(["run", "image", "--train", str(data / "train"), "--eval", str(data / "eval"),
               "--epochs", "1", "--tracking-uri", tracking_uri,
               "--output-dir", str(tmp_path / "out"), "--run-name", "hf-clip",
               "model.name=hf-clip", f"model.pretrained={directory}", "data.image_size=224",
               "train.batch_size=8", "gate.min_accuracy=0", "tracking.model_name=hf-clip",
               "--summary", str(summary)])
    capsys.readouterr()
    s = json.loads(summary.read_text())
    assert rc == 0, s
    uri = f"models:/hf-clip/{s['model_version']}"

    scorer = load_scorer(uri)
    assert scorer.model_name == "hf-clip" and scorer.spec.text == "hf"
    assert scorer.spec.context_length == 77 and scorer.spec.tokenizer
    # Fine-tuned: the registered weights moved away from the directory's.
    from safetensors.torch import load_file

    start = load_file(str(directory / "model.safetensors"))
    assert not torch.equal(scorer.state_dict["net.logit_scale"], start["logit_scale"])
    requirements = open(mlflow.pyfunc.get_model_dependencies(uri)).read()
    assert "transformers" in requirements and "tokenizers" in requirements

    shutil.rmtree(directory)  # a consumer has only the registered model
    model = mlflow.pyfunc.load_model(uri)
    rows = pq.read_table(data / "eval").to_pylist()[:4]
    images, prompts = [r["chosen"] for r in rows], [r["prompt"] for r in rows]
    out = model.predict(pd.DataFrame({"image": images, "prompt": prompts}))
    assert out.shape == (4,) and np.isfinite(out).all()

    # The pyfunc's scores are the registered scorer's on the same decode and tokens.
    net = build_scorer(scorer.model_name, scorer.options)
    net.load_state_dict(scorer.state_dict)
    pixels = torch.from_numpy(np.stack([scorer.spec.decode(b)[0] for b in images]))
    with torch.no_grad():
        direct = net.eval()(to_model_input(pixels, torch.device("cpu"), False),
                            torch.from_numpy(scorer.spec.tokenize(prompts)))
    np.testing.assert_allclose(out, direct.numpy(), atol=1e-4)
    with pytest.raises(Exception, match="prompt"):
        model.predict(pd.DataFrame({"image": images}))
