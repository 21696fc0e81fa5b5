"""Pretrained backbones through the workflow, from local files only: a CLIP-style scorer
(open_clip architecture from a model-config JSON, ``model.pretrained`` checkpoint) and a
torchvision backbone (``model.weights`` state dict), each built tiny and random here and saved,
then loaded through exactly the code path real weights take. With the backbone frozen for the
whole run, the registered backbone equals the file; the head trained."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from components.tracking.models import load_scorer
from pipelines.__main__ import main

pytestmark = pytest.mark.slow

TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                            "head_width": 32},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2,
                          "layers": 2}}


def _train(args, tmp_path, capsys, tracking_uri, name):
    summary = tmp_path / f"{name}.json"
    rc = main(["run", "image", *args, "--epochs", "1", "--tracking-uri", tracking_uri,
               "--output-dir", str(tmp_path / "out"), "--run-name", name,
               "train.batch_size=16", "train.freeze_backbone_steps=100000",
               "tracking.model_name=" + name, "--summary", str(summary)])
    capsys.readouterr()
    s = json.loads(summary.read_text())
    assert rc == 0, s
    return load_scorer(f"models:/{name}/{s['model_version']}"), s


def _assert_backbone_from_file(registered, saved, head_prefixes, model):
    params = {n for n, _ in model.named_parameters()}
    backbone = [k for k in params if not k.startswith(head_prefixes)]
    assert backbone
    for k in backbone:  # frozen all run: exactly the file's tensors
        assert torch.equal(registered.state_dict[k], saved[k]), k


def test_clip_scorer_from_a_local_open_clip_checkpoint(ray_cluster, tmp_path, capsys,
                                                       tracking_uri):
    from components.sample.images import write_prompted_image_pairs
    from components.training.clip import ClipScorer

    data = tmp_path / "data"
    write_prompted_image_pairs(str(data), pairs=96, size=32, shards=1, seed=3)
    arch = tmp_path / "tiny-clip.json"
    arch.write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(123)  # not the run's seed: the file's weights must win over the init
    source = ClipScorer(TINY_CLIP)
    ckpt = tmp_path / "tiny-clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, ckpt)

    scorer, s = _train(["--train", str(data / "train"), "--eval", str(data / "eval"),
                        "model.name=clip", f"model.arch={arch}", f"model.pretrained={ckpt}",
                        "data.image_size=32", "gate.min_accuracy=0"],
                       tmp_path, capsys, tracking_uri, "clip-scorer")
    assert scorer.options == {"clip_config": {**TINY_CLIP, **{k: v for k, v in
                                              scorer.options["clip_config"].items()
                                              if k not in TINY_CLIP}}}
    assert scorer.spec.text == "clip" and scorer.spec.context_length == 16
    _assert_backbone_from_file(scorer, source.state_dict(), ("logit_scale",), source)
    assert not torch.equal(scorer.state_dict["logit_scale"], source.state_dict()["logit_scale"])

    # The registered pyfunc scores (image, prompt) with the CLIP tokenizer it shipped with.
    model = mlflow.pyfunc.load_model(f"models:/clip-scorer/{s['model_version']}")
    rows = pq.read_table(data / "eval").to_pylist()[:4]
    out = model.predict(pd.DataFrame({"image": [r["chosen"] for r in rows],
                                      "prompt": [r["prompt"] for r in rows]}))
    assert out.shape == (4,) and all(abs(v) < 1e3 for v in out)


def test_torchvision_backbone_from_a_local_state_dict(ray_cluster, sample_dir, tmp_path, capsys,
                                                      tracking_uri):
    import torchvision

    torch.manual_seed(7)
    imagenet_like = torchvision.models.resnet18(weights=None, num_classes=1000).state_dict()
    path = tmp_path / "resnet18.pt"
    torch.save(imagenet_like, path)
    scorer, _ = _train(["--train", str(sample_dir / "train"), "--eval", str(sample_dir / "eval"),
                        "model.name=resnet18", f"model.weights={path}", "data.image_size=32",
                        "gate.min_accuracy=0"],
                       tmp_path, capsys, tracking_uri, "resnet-scorer")
    from components.training.models import build_scorer

    model = build_scorer("resnet18")
    saved = {f"net.{k}": v for k, v in imagenet_like.items()}
    _assert_backbone_from_file(scorer, saved, ("net.fc",), model)
    assert scorer.state_dict["net.fc.weight"].shape == (1, 512)  # a new 1-output head
