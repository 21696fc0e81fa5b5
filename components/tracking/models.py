"""The MLflow model registry side: log and register a trained scorer, load one back, and move
the ``challenger``/``champion`` aliases.

What ships with a registered model: the ``scorer`` artifact (weights + spec, see
registry/scorer_files.py), the pyfunc class as MLflow "models from code", and a copy of the
``components`` package under the unique name ``visual_dpo_components`` (``code_paths``), so a
consumer whose own project has a ``components`` package loads the model without either one
shadowing the other. Every import inside ``components`` is relative, which is what lets the
copy work under another name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from importlib import metadata

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..registry.gate import CHALLENGER, CHAMPION, PromotionDecision
from ..registry.pyfunc import output_columns
from ..registry.scorer_files import META, WEIGHTS, TrainedScorer, read_scorer, write_scorer
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
    """Log the pyfunc model in the active run (and register it); returns MLflow's ModelInfo.
    A prompt-conditioned scorer's input example and signature carry a ``prompt`` column; every
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
        digest = write_scorer(files, scorer)
        example_df = pd.DataFrame({spec.column: [example]})
        if spec.takes_prompt:
            example_df["prompt"] = [example_prompt]
        columns = output_columns(stored_head(scorer.options))  # None: an array of scores
        output = (np.zeros(1, dtype=np.float64) if columns is None
                  else pd.DataFrame({c: np.zeros(1, dtype=np.float64) for c in columns}))
        signature = infer_signature(example_df, output, params={"normalize": False})
        sys.path.insert(0, d)  # MLflow runs the model code once while logging
        try:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=code,
                artifacts={"scorer": files},
                code_paths=[package],
                signature=signature,
                input_example=example_df,
                pip_requirements=pip_requirements(spec.video, scorer.model_name == "clip",
                                                  scorer.model_name == "hf-clip"),
                registered_model_name=registered_model_name,
            )
        finally:
            sys.path.remove(d)
            # The copy imported while logging lives in this temporary directory: forget it, so
            # a later import (another log, or loading a model) finds a directory that exists.
            for mod in [m for m in sys.modules if m.split(".")[0] == SHIPPED_PACKAGE]:
                del sys.modules[mod]
    if registered_model_name and info.registered_model_version is not None:
        MlflowClient().set_model_version_tag(registered_model_name,
                                             str(info.registered_model_version),
                                             "weights_sha256", digest)
    return info


def load_scorer(uri: str) -> TrainedScorer:
    """A logged/registered scorer from its files only: no pyfunc, no unpickling, the installed
    code builds the architecture; the weights' hash is checked."""
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as d:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=d)
        conf = Model.load(local).flavors["python_function"].get("artifacts", {})
        path = os.path.join(local, conf["scorer"]["path"])
        if os.path.isfile(path):  # models logged before scorer/ was a directory
            return _read_legacy(path, os.path.join(local, conf["weights"]["path"]), uri)
        return read_scorer(path, source=uri, expected_sha256=_registered_sha256(uri))


def _registered_sha256(uri: str) -> str | None:
    """The weights hash the registry holds for ``models:/NAME/VERSION`` (None otherwise)."""
    if not uri.startswith("models:/") or "@" in uri:
        return None
    name, _, version = uri[len("models:/"):].partition("/")
    if not version.isdigit():
        return None
    return MlflowClient().get_model_version(name, version).tags.get("weights_sha256")


def _read_legacy(meta_path: str, weights_path: str, uri: str) -> TrainedScorer:
    with open(meta_path) as f:
        meta = json.load(f)
    meta.setdefault("media", {"modality": "image", "size": meta["image_size"],
                              "max_pixels": meta["max_pixels"]})
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(weights_path, os.path.join(tmp, WEIGHTS))
        with open(os.path.join(tmp, META), "w") as f:
            json.dump(meta, f)
        return read_scorer(tmp, source=uri)


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
