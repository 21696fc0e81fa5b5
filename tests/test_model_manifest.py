"""The manifest of a registered scorer: every file's SHA-256, the manifest's own digest held in
the tracking store, and every loader refusing a model whose files differ, before it reads or
imports any of them. Each attack is played against a real sqlite store and a really
registered tiny model (no Ray): the store's files are edited in place, as someone with write
access to the artifact store (and not to the tracking database) would."""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml

from components.media.spec import MediaSpec
from components.registry.manifest import (
    MANIFEST,
    MANIFEST_TAG,
    ModelVerificationError,
    write_manifest,
)
from components.registry.scorer_files import TrainedScorer
from components.tracking import models, runs
from components.training.models import build_scorer
from pipelines.__main__ import EXIT_FAILED, EXIT_OK, EXIT_UNVERIFIED, main
from tests.media_bytes import photo_bytes

NAME = "manifest-scorer"
ROOT = Path(__file__).resolve().parents[1]


class Registered:
    def __init__(self, tracking: str, store: Path, model_id: str, run_id: str, pristine: Path):
        self.tracking, self.store, self.model_id, self.run_id = tracking, store, model_id, run_id
        self.pristine = pristine  # a copy of the store's files as registered
        self.uri = f"models:/{NAME}@champion"


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> Registered:
    """Version 1 of NAME, champion, its artifacts under a temporary directory; registered
    once for the module (logging takes seconds), restored before each test by ``registered``."""
    tmp = tmp_path_factory.mktemp("manifest")
    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(tracking)
    mlflow.create_experiment("manifest", artifact_location=str(tmp / "artifacts"))
    runs.setup(tracking, "manifest")
    torch.manual_seed(0)
    scorer = TrainedScorer("seed-cnn", build_scorer("seed-cnn").state_dict(),
                           MediaSpec("image", 32, 10**6))
    with mlflow.start_run() as run:
        info = models.log_scorer(scorer, photo_bytes(32), NAME)
    assert str(info.registered_model_version) == "1"
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", "1")
    location = mlflow.MlflowClient().get_logged_model(info.model_id).artifact_location
    store = Path(location.removeprefix("file://"))
    assert (store / "MLmodel").is_file()
    shutil.copytree(store, tmp / "pristine")
    return Registered(tracking, store, info.model_id, run.info.run_id, tmp / "pristine")


@pytest.fixture
def registered(logged) -> Registered:
    """The module's model with its files and tags as registered."""
    mlflow.set_tracking_uri(logged.tracking)
    mlflow.set_registry_uri(logged.tracking)
    shutil.rmtree(logged.store)
    shutil.copytree(logged.pristine, logged.store)
    digest = _sha256(logged.store / MANIFEST)
    client = mlflow.MlflowClient()
    client.set_model_version_tag(NAME, "1", MANIFEST_TAG, digest)
    client.set_logged_model_tags(logged.model_id, {MANIFEST_TAG: digest})
    yield logged
    # A pyfunc load imports the model's own copy of the package from a temporary directory.
    for mod in [m for m in sys.modules if m.split(".")[0] == models.SHIPPED_PACKAGE]:
        del sys.modules[mod]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_manifest_covers_every_file_and_its_digest_is_in_the_tracking_store(registered, tmp_path):
    client = mlflow.MlflowClient()
    manifest = json.loads((registered.store / MANIFEST).read_text())
    listed = set(manifest["files"])
    on_disk = {p.relative_to(registered.store).as_posix() for p in registered.store.rglob("*")
               if p.is_file()} - {MANIFEST, "registered_model_meta"}
    assert listed == on_disk
    assert {"MLmodel", "scorer_model.py", "artifacts/scorer/weights.pt",
            "artifacts/scorer/scorer.json", "requirements.txt", "python_env.yaml",
            "code/visual_dpo_components/registry/pyfunc.py",
            "code/visual_dpo_components/registry/manifest.py"} <= listed
    shipped = {p.relative_to(ROOT / "components").as_posix() for p in
               (ROOT / "components").rglob("*.py") if "__pycache__" not in p.parts}
    assert {f"code/visual_dpo_components/{p}" for p in shipped} <= listed
    for rel, digest in manifest["files"].items():
        assert _sha256(registered.store / rel) == digest, rel
    digest = _sha256(registered.store / MANIFEST)
    assert client.get_model_version(NAME, "1").tags[MANIFEST_TAG] == digest
    assert client.get_logged_model(registered.model_id).tags[MANIFEST_TAG] == digest
    # Every URI form resolves to the same record, and the verified copy is what was checked.
    for uri in (registered.uri, f"models:/{NAME}/1", f"models:/{registered.model_id}",
                f"runs:/{registered.run_id}/model"):
        verified = models.verify_model(uri)
        assert (verified.digest, verified.local_path) == (digest, None), uri
    kept = models.verify_model(registered.uri, dst_path=str(tmp_path / "copy"))
    assert (kept.version, kept.pinned_uri) == ("1", f"models:/{NAME}/1")
    assert _sha256(Path(kept.local_path) / MANIFEST) == digest
    loaded = mlflow.pyfunc.load_model(kept.local_path)  # the consumer's path: verify, then load
    assert loaded.predict(pd.DataFrame({"image": [photo_bytes(32)]})).shape == (1,)
    assert models.load_scorer(registered.uri).spec.size == 32


# --- the attacks: each edits the artifact store only -------------------------------------


def _legacy_layout(store: Path) -> None:
    """The issue's bypass: MLmodel back to the single-file layout, pointing at zeroed weights
    and a scorer.json that records no hash (the old loader read these unchecked)."""
    mlmodel = yaml.safe_load((store / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["artifacts"] = {
        "scorer": {"path": "artifacts/legacy.json"}, "weights": {"path": "artifacts/zero.pt"}}
    (store / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    (store / "artifacts" / "legacy.json").write_text(json.dumps(
        {"model": "seed-cnn", "image_size": 32, "max_pixels": 10**6, "options": {}}))
    zero = {k: torch.zeros_like(v) for k, v in build_scorer("seed-cnn").state_dict().items()}
    torch.save(zero, store / "artifacts" / "zero.pt")


def _edit_scorer_json(store: Path) -> None:
    meta_path = store / "artifacts" / "scorer" / "scorer.json"
    meta = json.loads(meta_path.read_text())
    meta["media"]["size"] = 16  # changes every score
    meta["media"]["max_pixels"] = 10**12  # and disables a limit
    meta_path.write_text(json.dumps(meta))


def _edit_code(store: Path) -> None:
    path = store / "code" / "visual_dpo_components" / "registry" / "pyfunc.py"
    path.write_text(path.read_text().replace("batch_size = 64", "batch_size = 1"))


def _edit_model_code(store: Path) -> None:
    path = store / "scorer_model.py"
    path.write_text(path.read_text() + "\nimport os  # anything at all runs here\n")


def _replace_weights(store: Path) -> None:
    """New weights, and scorer.json's own record of them updated to match."""
    files = store / "artifacts" / "scorer"
    state = {k: v + 1 for k, v in build_scorer("seed-cnn").state_dict().items()}
    torch.save(state, files / "weights.pt")
    meta = json.loads((files / "scorer.json").read_text())
    meta["weights_sha256"] = _sha256(files / "weights.pt")
    (files / "scorer.json").write_text(json.dumps(meta))


def _add_module(store: Path) -> None:
    """A module beside the package on the import path, shadowing a library."""
    (store / "code" / "numpy.py").write_text("raise SystemExit('pwned')\n")


def _edit_files_and_manifest(store: Path) -> None:
    _edit_scorer_json(store)
    write_manifest(str(store))  # a consistent manifest for the edited files


def _drop_manifest(store: Path) -> None:
    (store / MANIFEST).unlink()


ATTACKS = {  # attack -> the file the refusal must name
    "legacy-mlmodel": (_legacy_layout, "MLmodel"),
    "scorer-json": (_edit_scorer_json, "artifacts/scorer/scorer.json"),
    "package-code": (_edit_code, "code/visual_dpo_components/registry/pyfunc.py"),
    "model-code": (_edit_model_code, "scorer_model.py"),
    "weights": (_replace_weights, "artifacts/scorer/scorer.json"),  # first of the two, sorted
    "added-module": (_add_module, "code/numpy.py"),
    "files-and-manifest": (_edit_files_and_manifest, MANIFEST),
    "no-manifest": (_drop_manifest, MANIFEST),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_every_loader_refuses_a_tampered_model(registered, attack, capsys):
    tamper, named = ATTACKS[attack]
    tamper(registered.store)
    with pytest.raises(ModelVerificationError) as e:
        models.load_scorer(registered.uri)  # score, evaluate, the gate's champion, warm start
    assert e.value.path == named and named in str(e.value)
    with pytest.raises(ModelVerificationError):
        from pipelines import stages

        stages.resolve_reference(registered.uri, None, {}, None)  # the DPO reference
    capsys.readouterr()
    assert main(["verify", registered.uri, "--tracking-uri", registered.tracking]) == EXIT_UNVERIFIED
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["status"], out["file"]) == ("unverified", named)
    # The consumer who skipped `verify`: load_context refuses too (the added module is the one
    # attack it cannot see: MLflow has imported the model's code before load_context runs).
    if attack != "added-module":
        _assert_pyfunc_refuses(registered.uri, named)


def _assert_pyfunc_refuses(uri: str, why: str) -> None:
    """``mlflow.pyfunc.load_model`` raises the model's own copy of ModelVerificationError
    (``visual_dpo_components....``): another class object than the one imported here."""
    with pytest.raises(Exception) as e:
        mlflow.pyfunc.load_model(uri)
    assert type(e.value).__name__ == "ModelVerificationError" and why in str(e.value)


def test_legacy_layout_no_longer_scores_zeros(registered, tmp_path, capsys):
    """The issue's reproduction: `score --model ...@champion` after the MLmodel rewrite scored
    every row 0.0 and exited 0; it now stops before Ray starts, naming MLmodel, exit 3."""
    _legacy_layout(registered.store)
    candidates = tmp_path / "candidates.parquet"
    pd.DataFrame({"id": [0], "image": [photo_bytes(32)]}).to_parquet(candidates)
    code = main(["score", "--model", registered.uri, "--input", str(candidates),
                 "--output", str(tmp_path / "scored"), "--tracking-uri", registered.tracking])
    assert code == EXIT_UNVERIFIED
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["file"] == "MLmodel"
    assert not (tmp_path / "scored").exists()


def test_a_version_without_a_recorded_digest_is_refused(registered, capsys):
    """Registered before manifests: nothing in the tracking store to check against, even
    though the files and the manifest beside them are intact."""
    client = mlflow.MlflowClient()
    client.delete_model_version_tag(NAME, "1", MANIFEST_TAG)
    client.delete_logged_model_tag(registered.model_id, MANIFEST_TAG)
    with pytest.raises(ModelVerificationError, match="no manifest_sha256 recorded"):
        models.load_scorer(f"models:/{NAME}/1")
    assert main(["verify", f"models:/{NAME}/1", "--tracking-uri", registered.tracking]) \
        == EXIT_UNVERIFIED
    _assert_pyfunc_refuses(f"models:/{NAME}/1", "no manifest_sha256 recorded")


def test_verify_command_exit_codes(registered, capsys, tmp_path):
    assert main(["verify", registered.uri, "--tracking-uri", registered.tracking]) == EXIT_OK
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out.pop("model_uri")  # as given
    assert out == {"status": "verified", "pinned_uri": f"models:/{NAME}/1", "version": "1",
                   "manifest_sha256": _sha256(registered.store / MANIFEST), "local_path": None}
    copy = tmp_path / "verified"
    assert main(["verify", registered.uri, "--tracking-uri", registered.tracking,
                 "--download", str(copy)]) == EXIT_OK
    local = Path(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["local_path"])
    assert copy in (local, *local.parents)
    assert _sha256(local / MANIFEST) == _sha256(registered.store / MANIFEST)
    # No such version: the registry's answer, not a verdict on files.
    assert main(["verify", f"models:/{NAME}/7", "--tracking-uri", registered.tracking]) == EXIT_FAILED
    # A bare path has no record in the tracking store to verify against.
    assert main(["verify", str(registered.store), "--tracking-uri", registered.tracking]) \
        == EXIT_UNVERIFIED


def test_no_loader_reads_scorer_files_without_verifying():
    """Source check: scorer files are read (``read_scorer``) and model artifacts downloaded
    only where the manifest has been checked first: ``load_scorer``/``verify_model`` and the
    pyfunc's ``load_context``. A new loader that skips the check fails here."""
    allowed = {("components/tracking/models.py", "load_scorer"),
               ("components/tracking/models.py", "verify_model"),
               ("components/tracking/models.py", "_record_manifest"),  # logging: writes it
               ("components/tracking/models.py", "_score_example"),  # the verified copy
               ("components/registry/pyfunc.py", "load_context")}
    calls = set()
    for path in [*ROOT.joinpath("components").rglob("*.py"), *ROOT.joinpath("pipelines").rglob("*.py")]:
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, ast.Call):
                    continue
                called = ast.unparse(node.func)
                # client.download_artifacts(run_id, path): a run's own files, not a model's.
                model_download = (called.endswith("artifacts.download_artifacts")
                                  or any(k.arg == "artifact_uri" for k in node.keywords))
                if called.endswith(("read_scorer", "load_model")) or model_download:
                    calls.add((rel, fn.name))
    assert calls - allowed == set()
    assert ("components/tracking/models.py", "load_scorer") in calls  # the check sees calls
