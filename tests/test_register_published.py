"""``visual-dpo register-published``: a published checkpoint (tiny and random, in PickScore's
and HPSv2's exact file layouts, tests/tiny_checkpoints.py) registered without training in a
real sqlite MLflow store; the registered pyfunc scores raw PNG/JPEG bytes + prompts equal to
the publisher's own code on the checkpoint (the references of tests/test_scorer_parity.py),
and the version is what the gate, the DPO reference and a warm start load.

The checkpoint's provenance is checked against an independent hash of its files."""

from __future__ import annotations

import hashlib
import io
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipelines.__main__ import main

pytest.importorskip("transformers")
pytest.importorskip("open_clip")

# 1e-5 absolute, plus 1e-6 relative: PickScore's scores are 100 x a cosine (|s| ~ 50 here),
# where float32 resolves ~4e-6; the two code paths round differently (measured: ~1e-5).
TOL, RTOL = 1e-5, 1e-6
PROMPTS = ["a photo of a cat", "An astronaut riding a horse, 4k", "", "the quick brown fox " * 40]


def _images() -> list[bytes]:
    """224x224 (no resize on either side): two PNGs and two JPEGs of random pixels."""
    rng = np.random.default_rng(5)
    out = []
    for fmt in ("PNG", "JPEG", "PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(buf, fmt)
        out.append(buf.getvalue())
    return out


def _register(args: list[str], tmp_path, tracking_uri: str, capsys) -> dict:
    summary = tmp_path / "register.json"
    rc = main(["register-published", *args, "--tracking-uri", tracking_uri,
               "--summary", str(summary)])
    capsys.readouterr()
    s = json.loads(summary.read_text())
    assert rc == 0, s
    return s


@pytest.fixture(scope="module")
def pickscore(tmp_path_factory):
    from tests.tiny_checkpoints import write_pickscore_layout

    return write_pickscore_layout(tmp_path_factory.mktemp("pickscore"), seed=4)


@pytest.fixture(scope="module")
def hpsv2(tmp_path_factory):
    from tests.tiny_checkpoints import write_hpsv2_layout

    return write_hpsv2_layout(tmp_path_factory.mktemp("hpsv2"), seed=6)


def _directory_sha256(directory) -> str:
    lines = "".join(f"{p.relative_to(directory).as_posix()} "
                    f"{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
                    for p in sorted(directory.rglob("*")) if p.is_file())
    return hashlib.sha256(lines.encode()).hexdigest()


def test_pickscore_directory_registers_as_champion_and_scores_like_the_readme(
        pickscore, tmp_path, tracking_uri, capsys):
    from tests.test_scorer_parity import pickscore_reference

    s = _register(["--model-name", "pickscore", "--alias", "champion", "model.name=hf-clip",
                   f"model.pretrained={pickscore}", "data.image_size=224"],
                  tmp_path, tracking_uri, capsys)
    assert s["aliases"] == ["champion"] and s["model_version"] == "1"
    assert s["checkpoint_sha256"] == _directory_sha256(pickscore)

    mlflow.set_tracking_uri(tracking_uri)
    version = mlflow.MlflowClient().get_model_version("pickscore", "1")
    assert version.tags["published.checkpoint"] == str(pickscore)
    assert version.tags["published.sha256"] == _directory_sha256(pickscore)
    run = mlflow.get_run(s["run_id"])
    assert run.data.tags["workflow"] == "register-published"
    assert run.data.params["model.name"] == "hf-clip"

    model = mlflow.pyfunc.load_model("models:/pickscore@champion")
    images = _images()
    worst = 0.0
    for prompt in PROMPTS:
        ours = model.predict(pd.DataFrame({"image": images, "prompt": [prompt] * len(images)}))
        ref = pickscore_reference(str(pickscore), str(pickscore), prompt,
                                  [Image.open(io.BytesIO(b)) for b in images]).numpy()
        worst = max(worst, float(np.abs(ours - ref).max()))
        assert np.allclose(ours, ref, atol=TOL, rtol=RTOL), (prompt, ours, ref)
    assert np.abs(ours).max() > 1e-2  # not vacuous
    print(f"registered PickScore layout, PNG+JPEG: max |pyfunc - README| = {worst:.2e}")


def test_hpsv2_pt_registers_and_scores_like_img_score_py(hpsv2, tmp_path, tracking_uri,
                                                         capsys):
    from tests.test_scorer_parity import hpsv2_reference

    arch, ckpt = hpsv2
    s = _register(["--model-name", "hpsv2", "--alias", "champion", "model.name=clip",
                   f"model.arch={arch}", f"model.pretrained={ckpt}", "model.score_scale=none",
                   "data.image_size=224"], tmp_path, tracking_uri, capsys)
    assert s["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model("models:/hpsv2@champion")
    images = _images()
    for prompt in PROMPTS:
        ours = model.predict(pd.DataFrame({"image": images, "prompt": [prompt] * len(images)}))
        ref = hpsv2_reference(json.loads(arch.read_text()), str(ckpt),
                              [Image.open(io.BytesIO(b)) for b in images], prompt)
        assert np.allclose(ours, np.array(ref, dtype=np.float64), atol=TOL, rtol=RTOL), (
            prompt, ours, ref)


def test_registered_version_is_the_champion_reference_and_warm_start(
        pickscore, tmp_path, tracking_uri, capsys):
    """Without Ray: the loaders the gate (``current_champion`` + ``load_scorer``), the DPO
    reference (``stages.resolve_reference``, pinned) and a warm start use accept the version,
    and it is the architecture a run from the same directory builds, so DPO starts from it."""
    from components.config import load_config
    from components.media.spec import MediaSpec
    from components.tracking import models
    from components.training.models import (
        RewardHead,
        build_scorer,
        initial_weights,
        model_options,
        text_contract,
    )
    from pipelines import stages

    _register(["--model-name", "pickscore", "--alias", "champion", "model.name=hf-clip",
               f"model.pretrained={pickscore}", "data.image_size=224"],
              tmp_path, tracking_uri, capsys)
    mlflow.set_tracking_uri(tracking_uri)
    assert models.current_champion("pickscore") == "1"  # the gate's champion
    champion = models.load_scorer("models:/pickscore/1")  # hash checked against the registry

    cfg = load_config(None, ["model.name=hf-clip", f"model.pretrained={pickscore}",
                             "data.image_size=224", "loss.type=dpo",
                             "loss.reference=models:/pickscore@champion"],
                      {"data": {"train": ["unused"]}})
    m = cfg.model
    options = model_options(m.name, m.arch, RewardHead.from_config(m), pretrained=m.pretrained,
                            score_scale=m.score_scale)
    spec = MediaSpec.from_config("image", cfg.data, text_contract(m.name, options))
    ref = stages.resolve_reference(cfg.loss.reference, cfg, options, spec)
    assert ref.source == "models:/pickscore/1"  # pinned: a moved alias cannot change a resume
    assert ref.spec == spec  # the run decodes and tokenises as the reference expects
    # training_inputs starts the policy from the reference when these agree (_same_architecture)
    assert (ref.model_name, ref.options) == (m.name, options)
    start = initial_weights(m.name, options, cfg.train.seed, pretrained=m.pretrained)
    for k, v in start.items():
        assert torch.equal(ref.state_dict[k], v), k
        assert torch.equal(champion.state_dict[k], v), k
    build_scorer(ref.model_name, ref.options).load_state_dict(ref.state_dict)  # strict


def test_register_published_without_a_checkpoint_says_what_to_pass(tmp_path, tracking_uri,
                                                                   capsys):
    summary = tmp_path / "s.json"
    rc = main(["register-published", "--model-name", "x", "--tracking-uri", tracking_uri,
               "model.name=hf-clip", "--summary", str(summary)])
    capsys.readouterr()
    assert rc != 0
    assert "model.pretrained" in json.loads(summary.read_text())["reason"]


@pytest.mark.slow
def test_dpo_run_anchored_to_the_registered_pickscore_is_gated_against_it(
        ray_cluster, pickscore, tmp_path, tracking_uri, capsys):
    """One tiny DPO run on Ray Train with ``loss.reference=models:/pickscore@champion``: the
    reference is the published version, and the register step compares the challenger with
    it as the champion."""
    from components.sample.images import write_prompted_image_pairs

    _register(["--model-name", "pickscore", "--alias", "champion", "model.name=hf-clip",
               f"model.pretrained={pickscore}", "data.image_size=224"],
              tmp_path, tracking_uri, capsys)
    data = tmp_path / "data"
    write_prompted_image_pairs(str(data), pairs=32, size=224, shards=1, seed=2)
    summary = tmp_path / "run.json"
    rc = main(["run", "image", "--train", str(data / "train"), "--eval", str(data / "eval"),
               "--epochs", "1", "--tracking-uri", tracking_uri, "--model-name", "pickscore",
               "--output-dir", str(tmp_path / "out"), "--summary", str(summary),
               "model.name=hf-clip", f"model.pretrained={pickscore}", "data.image_size=224",
               "loss.type=dpo", "loss.reference=models:/pickscore@champion",
               "train.batch_size=8", "gate.min_accuracy=0"])
    capsys.readouterr()
    s = json.loads(summary.read_text())
    assert rc == 0, s
    assert s["champion_version_before"] == "1"
    assert s["promotion"]["champion_version"] == "1"
    mlflow.set_tracking_uri(tracking_uri)
    anchored = mlflow.search_runs(search_all_experiments=True,
                                  filter_string="tags.`loss.reference` = 'models:/pickscore/1'")
    assert len(anchored) >= 1  # the reference step pinned the published version
