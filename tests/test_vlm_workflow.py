"""``model.name=vlm`` through the workflow: a tiny random Qwen2-VL directory
(tests/tiny_checkpoints.py) fine-tuned by ``run image`` on the prompt-dependent sample set on
Ray Train, checkpointed, registered, and loaded back by a consumer with
``mlflow.pyfunc.load_model``, which scores raw image bytes + prompts with the tokenizer,
conversation and normalisation that travelled with the weights, the directory gone."""

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


def test_vlm_fine_tunes_registers_and_serves(ray_cluster, tmp_path, capsys, tracking_uri):
    from components.sample.images import write_prompted_image_pairs
    from components.tracking.models import load_scorer
    from components.training.models import build_scorer, to_model_input
    from tests.tiny_checkpoints import write_qwen2_vl_base

    data = tmp_path / "data"
    write_prompted_image_pairs(str(data), pairs=24, size=56, shards=1, seed=1)
    directory = write_qwen2_vl_base(tmp_path / "qwen2-vl", seed=3)
    summary = tmp_path / "summary.json"
    rc = main(["run", "image", "--train", str(data / "train"), "--eval", str(data / "eval"),
               "--epochs", "1", "--tracking-uri", tracking_uri,
               "--output-dir", str(tmp_path / "out"), "--run-name", "vlm",
               "model.name=vlm", f"model.pretrained={directory}", "data.image_size=56",
               "model.head=mu_sigma", "loss.type=uncertainty",
               "train.batch_size=4", "train.cpus_per_worker=1", "gate.min_accuracy=0",
               "tracking.model_name=vlm", "--summary", str(summary)])
    capsys.readouterr()
    s = json.loads(summary.read_text())
    assert rc == 0, s
    uri = f"models:/vlm/{s['model_version']}"

    scorer = load_scorer(uri)
    assert scorer.model_name == "vlm" and scorer.spec.text == "chat"
    assert "<|Reward|>" in scorer.spec.chat_template
    from safetensors.torch import load_file

    start = load_file(str(directory / "model.safetensors"))
    assert not torch.equal(scorer.state_dict["net.language_model.norm.weight"],
                           start["model.norm.weight"])  # fine-tuned, not the directory's
    requirements = open(mlflow.pyfunc.get_model_dependencies(uri)).read()
    assert "transformers" in requirements

    shutil.rmtree(directory)  # a consumer has only the registered model
    model = mlflow.pyfunc.load_model(uri)
    rows = pq.read_table(data / "eval").to_pylist()[:3]
    images, prompts = [r["chosen"] for r in rows], [r["prompt"] for r in rows]
    out = model.predict(pd.DataFrame({"image": images, "prompt": prompts}))
    out = np.asarray(out["score"] if isinstance(out, pd.DataFrame) else out, dtype=np.float64)
    assert out.shape == (3,) and np.isfinite(out).all()

    net = build_scorer(scorer.model_name, scorer.options)
    net.load_state_dict(scorer.state_dict)
    pixels = torch.from_numpy(np.stack([scorer.spec.decode(b)[0] for b in images]))
    with torch.no_grad():
        direct = net.eval()(to_model_input(pixels, torch.device("cpu"), False),
                            torch.from_numpy(scorer.spec.tokenize(prompts)))
    np.testing.assert_allclose(out, direct.numpy(), atol=1e-4)

    # Batch scoring on the cluster (``visual-dpo score``) with the candidates' prompts.
    import pyarrow as pa

    cand = tmp_path / "cand.parquet"
    pq.write_table(pa.table({"image": images, "caption": prompts, "id": [0, 1, 2]}), cand)
    assert main(["score", "--model", uri, "--input", str(cand), "--output",
                 str(tmp_path / "scored"), "--prompt-column", "caption",
                 "--tracking-uri", tracking_uri]) == 0
    capsys.readouterr()
    scored = pq.read_table(tmp_path / "scored").to_pandas().sort_values("id")
    np.testing.assert_allclose(scored["score"].to_numpy(), out, atol=1e-4)


def test_vlm_video_trains_with_named_heads_and_registers(ray_cluster, tmp_path, capsys,
                                                         tracking_uri, fail_training_once):
    """``run video`` with ``model.name=vlm-video``: frames sampled in the decode actors at
    ``data.video.fps`` / ``data.video.frames``, three named heads at VideoAlign's layout
    (here fresh, on a plain Qwen2-VL directory), Bradley-Terry with ties, LoRA on the
    language model only; the registered model scores clip bytes + prompts per head. The
    worker fails at the start of the second epoch: Ray Train restarts it from the first
    epoch's checkpoint (LoRA factors, heads, optimiser), which it continues, not repeats."""
    from components.sample.videos import write_prompted_video_pairs
    from components.tracking.models import load_scorer
    from tests.tiny_checkpoints import write_qwen2_vl_base

    data = tmp_path / "clips"
    write_prompted_video_pairs(str(data), pairs=16, size=56, frames=8, shards=1, seed=0)
    directory = write_qwen2_vl_base(tmp_path / "qwen2-vl", seed=4)
    summary = tmp_path / "summary.json"
    failed = fail_training_once(epoch=1)
    rc = main(["run", "video", "--train", str(data / "train"), "--eval", str(data / "eval"),
               "--epochs", "2", "--tracking-uri", tracking_uri,
               "--output-dir", str(tmp_path / "out"), "--run-name", "vlm-video",
               "model.name=vlm-video", f"model.pretrained={directory}", "data.image_size=56",
               "data.video.frames=4", "data.video.fps=4", "model.head=named",
               "model.head_names=VQ,MQ,TA", "loss.type=btt", "model.lora.r=4",
               "model.lora.target_modules=q_proj,k_proj,v_proj,o_proj",
               "model.lora.trainable=head,net.visual", "train.batch_size=4",
               "train.cpus_per_worker=1", "gate.min_accuracy=0",
               "tracking.model_name=vlm-video", "--summary", str(summary)])
    capsys.readouterr()
    s = json.loads(summary.read_text())
    assert rc == 0, s
    assert failed.exists(), "the failure was not injected"  # so the run really restarted
    history = mlflow.MlflowClient(tracking_uri).get_metric_history(s["run_id"], "epoch")
    assert [m.value for m in history] == [1.0, 2.0]  # resumed from epoch 1's checkpoint
    uri = f"models:/vlm-video/{s['model_version']}"
    scorer = load_scorer(uri)
    assert scorer.spec.frames == 4 and scorer.spec.fps == 4 and "<|video_pad|>" in \
        scorer.spec.chat_template
    assert not any("lora_" in k for k in scorer.state_dict)  # merged before registering
    model = mlflow.pyfunc.load_model(uri)
    rows = pq.read_table(data / "eval").to_pylist()[:2]
    out = model.predict(pd.DataFrame({"video": [r["chosen"] for r in rows],
                                      "prompt": [r["prompt"] for r in rows]}))
    assert len(out) == 2
    frame = out if isinstance(out, pd.DataFrame) else pd.DataFrame(out)
    assert np.isfinite(frame.select_dtypes("number").to_numpy()).all()
