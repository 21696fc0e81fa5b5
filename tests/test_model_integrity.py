"""What a registry consumer can trust: weights load as tensors only and must match the SHA-256
recorded at training in scorer.json; the model's files must match the manifest whose digest the
registry recorded for the version."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch

from components.media.spec import MediaSpec
from components.registry.manifest import MANIFEST, MANIFEST_TAG, ModelVerificationError
from components.registry.scorer_files import META, WEIGHTS, TrainedScorer, read_scorer, write_scorer
from components.tracking import models, runs
from components.training.models import build_scorer
from tests.media_bytes import photo_bytes


def _scorer() -> TrainedScorer:
    torch.manual_seed(0)
    return TrainedScorer("seed-cnn", build_scorer("seed-cnn").state_dict(),
                         MediaSpec("image", 32, 10**6))


def test_replaced_weights_are_refused(tmp_path):
    digest = write_scorer(str(tmp_path), _scorer())
    assert json.loads((tmp_path / META).read_text())["weights_sha256"] == digest
    loaded = read_scorer(str(tmp_path))
    assert torch.equal(loaded.state_dict["backbone.0.weight"], _scorer().state_dict["backbone.0.weight"])
    other = {k: v + 1 for k, v in _scorer().state_dict.items()}
    torch.save(other, tmp_path / WEIGHTS)
    with pytest.raises(ValueError, match="SHA-256 differs"):
        read_scorer(str(tmp_path))


def test_weights_are_loaded_as_tensors_only(tmp_path):
    write_scorer(str(tmp_path), _scorer())
    meta = json.loads((tmp_path / META).read_text())

    class Payload:  # what an attacker would pickle to run code on load
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Payload()}, tmp_path / WEIGHTS)
    meta.pop("weights_sha256")  # even without a recorded hash, no object is unpickled
    (tmp_path / META).write_text(json.dumps(meta))
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        read_scorer(str(tmp_path))


def test_a_registered_version_is_checked_against_the_registry_record(tmp_path):
    """The digest in the tracking store decides: the files are intact, but the registry no
    longer records their manifest (tests/test_model_manifest.py plays the attacks)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("integrity", artifact_location=str(tmp_path / "artifacts"))
    runs.setup(uri, "integrity")
    with mlflow.start_run():
        info = models.log_scorer(_scorer(), photo_bytes(32), "integrity-scorer")
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    assert len(client.get_model_version("integrity-scorer", version).tags["weights_sha256"]) == 64
    assert len(client.get_model_version("integrity-scorer", version).tags[MANIFEST_TAG]) == 64
    assert models.load_scorer(f"models:/integrity-scorer/{version}").model_name == "seed-cnn"
    client.set_model_version_tag("integrity-scorer", version, MANIFEST_TAG, "0" * 64)
    with pytest.raises(ModelVerificationError, match="recorded in the tracking store") as e:
        models.load_scorer(f"models:/integrity-scorer/{version}")
    assert e.value.path == MANIFEST
