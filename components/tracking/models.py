"""The MLflow model registry side: log and register a trained scorer, load one back, and move
the ``challenger``/``champion`` aliases.

What ships with a registered model: the ``scorer`` artifact (weights + spec, see
registry/scorer_files.py), the pyfunc class as MLflow "models from code", and a copy of the
``components`` package under the unique name ``visual_dpo_components`` (``code_paths``), so a
consumer whose own project has a ``components`` package loads the model without either one
shadowing the other. Every import inside ``components`` is relative, which is what lets the
copy work under another name.

Every model it logs gets a manifest (registry/manifest.py): the SHA-256 of each of its files,
written after MLflow has stored them, with the manifest's own SHA-256 recorded in the tracking
store (the ``manifest_sha256`` tag of the logged model and of the registered version, set
before the version exists for anyone to load). ``verify_model`` checks a model URI against
that record; ``load_scorer`` reads nothing that it has not verified.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from importlib import metadata

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..registry.gate import CHALLENGER, CHAMPION, PromotionDecision
from ..registry.manifest import (
    MANIFEST,
    MANIFEST_TAG,
    REREGISTER,
    ModelVerificationError,
    check_manifest,
    write_manifest,
)
from ..registry.pyfunc import output_columns
from ..registry.scorer_files import TrainedScorer, read_scorer, write_scorer
from ..training.models import stored_head

SHIPPED_PACKAGE = "visual_dpo_components"
COMPONENTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_CODE = f'''"""Built by visual-dpo at log time: MLflow runs this file to make the pyfunc model."""
from mlflow.models import set_model

from {SHIPPED_PACKAGE}.registry.pyfunc import ScorerModel

set_model(ScorerModel())
'''
# The project's runtime pins that a scorer needs, read from the one place they are declared.
RUNTIME_PACKAGES = ("torch", "torchvision", "pillow", "numpy", "pandas")
VIDEO_PACKAGES = ("av",)
CLIP_PACKAGES = ("open_clip_torch",)  # the clip scorer (pyproject's `clip` extra)
HF_PACKAGES = ("transformers", "tokenizers", "safetensors")  # hf-clip (the `hf` extra)
_EXTRAS = ("clip", "hf")  # the extras a registered scorer may need


def project_requirements() -> dict[str, str]:
    """``{package: requirement}`` as pyproject.toml declares them (installed metadata, else the
    pyproject.toml next to this checkout)."""
    try:
        reqs = metadata.requires("visual-dpo") or []
    except metadata.PackageNotFoundError:
        import tomllib

        with open(os.path.join(os.path.dirname(COMPONENTS_DIR), "pyproject.toml"), "rb") as f:
            project = tomllib.load(f)["project"]
        reqs = project["dependencies"] + [
            f'{r}; extra == "{extra}"' for extra in _EXTRAS
            for r in project["optional-dependencies"].get(extra, [])]
    out = {}
    for r in reqs:
        if ";" in r and not any(f'extra == "{e}"' in r for e in _EXTRAS):  # test tools, ...
            continue
        r = r.split(";", 1)[0].strip()
        name = re.split(r"[\[=<>~! ]", r, maxsplit=1)[0].lower().replace("_", "-")
        out[name] = re.sub(r"\[.*?\]", "", r).replace(" ", "")
    return out


def pip_requirements(video: bool, clip: bool = False, hf: bool = False) -> list[str]:
    declared = project_requirements()
    names = (RUNTIME_PACKAGES + (VIDEO_PACKAGES if video else ()) + (CLIP_PACKAGES if clip else ())
             + (HF_PACKAGES if hf else ()))
    return [declared.get(n.replace("_", "-"), n) for n in names] + [f"mlflow=={mlflow.__version__}"]


def log_scorer(scorer: TrainedScorer, example: bytes, registered_model_name: str | None,
               example_prompt: str = ""):
    """Log the pyfunc model in the active run, record its manifest, and register it; returns
    MLflow's ModelInfo (``registered_model_version`` set when registered). A
    prompt-conditioned scorer's input example and signature carry a ``prompt`` column; every
    model takes the ``normalize`` param (default False: raw scores)."""
    from mlflow.models import infer_signature

    spec = scorer.spec
    with tempfile.TemporaryDirectory() as d:
        package = os.path.join(d, SHIPPED_PACKAGE)
        shutil.copytree(COMPONENTS_DIR, package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        code = os.path.join(d, "scorer_model.py")
        with open(code, "w") as f:
            f.write(MODEL_CODE)
        files = os.path.join(d, "scorer")
        weights_sha256 = write_scorer(files, scorer)
        example_df = pd.DataFrame({spec.column: [example]})
        if spec.takes_prompt:
            example_df["prompt"] = [example_prompt]
        columns = output_columns(stored_head(scorer.options))  # None: an array of scores
        output = (np.zeros(1, dtype=np.float64) if columns is None
                  else pd.DataFrame({c: np.zeros(1, dtype=np.float64) for c in columns}))
        signature = infer_signature(example_df, output, params={"normalize": False})
        sys.path.insert(0, d)  # MLflow runs the model code once while logging
        # MLflow then loads the model to try the input example, before any manifest exists:
        # load_context refuses it and MLflow logs a warning. The example is tried below instead,
        # on the verified copy, and a failure there is an error.
        mlflow_log = logging.getLogger("mlflow.models.model")
        mlflow_log.addFilter(_unmanifested_example_warning)
        try:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=code,
                artifacts={"scorer": files},
                code_paths=[package],
                signature=signature,
                input_example=example_df,
                pip_requirements=pip_requirements(spec.video, scorer.model_name == "clip",
                                                  scorer.model_name in ("hf-clip", "vlm",
                                                                        "vlm-video")),
            )
        finally:
            mlflow_log.removeFilter(_unmanifested_example_warning)
            sys.path.remove(d)
            _forget_shipped_package()
    manifest_sha256 = _record_manifest(info.model_id)
    _score_example(info.model_id, example_df)
    if registered_model_name:
        # Registered only now, born with its digest: no version exists without one.
        version = mlflow.register_model(
            f"models:/{info.model_id}", registered_model_name,
            tags={MANIFEST_TAG: manifest_sha256, "weights_sha256": weights_sha256})
        info.registered_model_version = int(version.version)
    return info


def _unmanifested_example_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Failed to validate serving input example")


def _forget_shipped_package() -> None:
    """The copy of the package imported while logging or loading lives in a temporary
    directory: forget it, so a later import (another log, or loading a model) finds a
    directory that exists."""
    for mod in [m for m in sys.modules if m.split(".")[0] == SHIPPED_PACKAGE]:
        del sys.modules[mod]


def _score_example(model_id: str, example: pd.DataFrame) -> None:
    """Score the input example as a consumer would: verify, load the verified copy with
    ``mlflow.pyfunc.load_model``, predict. Raises when the logged model cannot."""
    with tempfile.TemporaryDirectory() as d:
        local = verify_model(f"models:/{model_id}", dst_path=d).local_path
        try:
            mlflow.pyfunc.load_model(local).predict(example)
        finally:
            _forget_shipped_package()


def _record_manifest(model_id: str) -> str:
    """Hash every file the artifact store holds for the logged model (MLflow writes
    ``MLmodel`` and the environment files itself, so the manifest is made from the stored
    copy), store ``manifest.json`` beside them and its SHA-256 on the logged model."""
    client = MlflowClient()
    with tempfile.TemporaryDirectory() as d:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}", dst_path=d)
        digest = write_manifest(local)
        client.log_model_artifact(model_id, os.path.join(local, MANIFEST))
    client.set_logged_model_tags(model_id, {MANIFEST_TAG: digest})
    return digest


@dataclass(frozen=True)
class VerifiedModel:
    """A model whose every file matched the manifest recorded in the tracking store."""

    uri: str  # as asked for
    pinned_uri: str  # models:/NAME/VERSION, or models:/MODEL_ID for an unregistered model
    version: str | None  # the registered version (None: a logged model, runs:/ or models:/m-...)
    digest: str  # the manifest's SHA-256, equal to the one in the tracking store
    local_path: str | None  # the verified copy, when dst_path was given: load this one


def verify_model(uri: str, dst_path: str | None = None) -> VerifiedModel:
    """Download the model at ``uri`` (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    ``models:/MODEL_ID`` or ``runs:/RUN_ID/model``) and check every file against the manifest
    whose SHA-256 the tracking store recorded; nothing in the model is imported or read before
    that. With ``dst_path`` (an existing directory) the verified copy stays there
    (``local_path``) for the caller to load, e.g. ``mlflow.pyfunc.load_model(local_path)``,
    so what is loaded is what was checked; without it the copy is deleted.

    Raises ``ModelVerificationError`` (``.path``: the offending file) when a file differs, is
    missing or was added, or nothing was recorded; registry errors (no such version, store
    unreachable) propagate as MLflow raised them. An alias is resolved once: the version it
    named is the one downloaded and checked (``version``, ``pinned_uri``)."""
    pinned, version, expected = _recorded_manifest(uri)
    if expected is None:
        raise ModelVerificationError(
            f"{uri} ({pinned}): no {MANIFEST_TAG} recorded in the tracking store; the model was "
            f"registered before model manifests (or not by visual-dpo) and cannot be verified. "
            f"{REREGISTER}")
    if dst_path is None:
        with tempfile.TemporaryDirectory() as d:
            return replace(verify_model(pinned, d), uri=uri, local_path=None)
    local = mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=dst_path)
    try:
        digest = check_manifest(local, expected)
    except ModelVerificationError as e:
        raise ModelVerificationError(f"{uri} ({pinned}): {e}", e.path) from None
    return VerifiedModel(uri, pinned, version, digest, local)


def _recorded_manifest(uri: str) -> tuple[str, str | None, str | None]:
    """``(pinned URI, version, manifest SHA-256 recorded in the tracking store)``."""
    client = MlflowClient()
    if uri.startswith("models:/"):
        ref = uri[len("models:/"):]
        if "@" in ref or "/" in ref:
            if "@" in ref:
                name, alias = ref.split("@", 1)
                mv = client.get_model_version_by_alias(name, alias)
            else:
                name, number = ref.split("/", 1)
                mv = client.get_model_version(name, number)
            expected = mv.tags.get(MANIFEST_TAG)
            if expected is None and mv.model_id:  # registered by hand from a logged model
                expected = client.get_logged_model(mv.model_id).tags.get(MANIFEST_TAG)
            return f"models:/{mv.name}/{mv.version}", str(mv.version), expected
        logged = client.get_logged_model(ref)
        return f"models:/{logged.model_id}", None, logged.tags.get(MANIFEST_TAG)
    if uri.startswith("runs:/"):
        run_id, _, name = uri[len("runs:/"):].partition("/")
        name = name.strip("/") or "model"
        if "'" in run_id + name:
            raise ModelVerificationError(f"{uri}: not a run model URI (runs:/RUN_ID/model)")
        run = client.get_run(run_id)
        found = client.search_logged_models(
            [run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
        if len(found) != 1:
            raise ModelVerificationError(
                f"{uri}: {len(found)} models named {name!r} in run {run_id}; give the model as "
                "models:/NAME/VERSION or models:/MODEL_ID")
        return f"models:/{found[0].model_id}", None, found[0].tags.get(MANIFEST_TAG)
    raise ModelVerificationError(
        f"{uri}: only registry and run URIs can be verified (models:/NAME@ALIAS, "
        "models:/NAME/VERSION, models:/MODEL_ID, runs:/RUN_ID/model): the digest a model's "
        "files must match is held in the tracking store, not beside the files")


def load_scorer(uri: str) -> TrainedScorer:
    """A registered scorer from its files only, once ``verify_model`` has checked every file
    of it against the tracking store's record: no pyfunc, no unpickling, the installed code
    builds the architecture (the model's own code is verified but not run)."""
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as d:
        local = verify_model(uri, dst_path=d).local_path
        conf = Model.load(local).flavors["python_function"].get("artifacts", {})
        return read_scorer(os.path.join(local, conf["scorer"]["path"]), source=uri)


def pin_model_uri(uri: str) -> str:
    """``models:/NAME@ALIAS`` -> ``models:/NAME/VERSION``: what the alias points at now, so a
    resumed run uses the same model even if the alias has moved since."""
    if uri.startswith("models:/") and "@" in uri:
        name, alias = uri[len("models:/"):].split("@", 1)
        return f"models:/{name}/{MlflowClient().get_model_version_by_alias(name, alias).version}"
    return uri


class RegistryError(RuntimeError):
    """The registry could not answer; never read as "no champion"."""


def current_champion(name: str) -> str | None:
    """The champion's version; None when the model or its alias does not exist yet. Any
    other registry error is raised: a 5xx must not promote a version without a gate."""
    try:
        return str(MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as e:
        missing_model = e.error_code == "RESOURCE_DOES_NOT_EXIST"
        missing_alias = (e.error_code == "INVALID_PARAMETER_VALUE"
                         and "alias" in str(e) and "not found" in str(e))
        if missing_model or missing_alias:
            return None
        raise RegistryError(f"cannot read the champion of {name!r} from the registry: {e}") from e


def version_of_run(name: str, run_id: str) -> str | None:
    """The version of ``name`` that run ``run_id`` registered, if any (register is idempotent
    per parent run: a resumed register step reuses it)."""
    versions = MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return str(min(int(v.version) for v in versions)) if versions else None


def apply_decision(name: str, decision: PromotionDecision) -> list[str]:
    """Set the aliases the decision calls for, record it on the version; returns its aliases."""
    client = MlflowClient()
    v = decision.challenger_version
    client.set_registered_model_alias(name, CHALLENGER, v)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, v)
    client.set_model_version_tag(name, v, "promotion", json.dumps(decision.as_dict()))
    return sorted(client.get_model_version(name, v).aliases)
