"""The layering the README's architecture section describes, checked on the source: which
modules may import Ray and MLflow, relative imports inside ``components`` (so the copy that
ships with a registered model works under another name), no side effects at import time."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ROOT / "components"

# Pure: the decode contract, the model/loss/step code, the metrics and the gate can be reused
# and tested with neither Ray nor MLflow installed (benchmarks/gpu_step.py runs on a GPU box
# without Ray).
PURE = ["config.py", "media/", "training/models.py", "training/losses.py", "training/step.py",
        "training/optim.py", "training/clip.py",
        "evaluation/metrics.py", "evaluation/benchmarks.py", "registry/gate.py",
        "registry/scorer_files.py", "registry/manifest.py", "registry/published.py",
        "datasets/benchmark_formats.py", "serving/settings.py", "serving/payload.py",
        "datasets/contract.py", "datasets/reading.py", "datasets/policy.py",
        "scorer_catalog.py", "runtime/pinning/", "sample/"]
# MLflow lives in pipelines/ and the tracking layer; the pyfunc class subclasses PythonModel.
MLFLOW_ALLOWED = ["tracking/", "registry/pyfunc.py"]


def _modules() -> list[Path]:
    return sorted(p for p in COMPONENTS.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> set[str]:
    """Top-level names of every absolute import in the file, at any depth (function-level
    imports count too); ``ray.data`` -> ``ray``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _matches(path: Path, patterns: list[str]) -> bool:
    rel = path.relative_to(COMPONENTS).as_posix()
    return any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in patterns)


def test_pure_modules_import_neither_ray_nor_mlflow():
    offenders = {p.relative_to(ROOT).as_posix(): sorted(_imports(p) & {"ray", "mlflow"})
                 for p in _modules() if _matches(p, PURE)}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len(offenders) >= 12  # the patterns still name real files


def test_mlflow_only_in_the_tracking_layer():
    users = sorted(p.relative_to(COMPONENTS).as_posix() for p in _modules()
                   if "mlflow" in _imports(p))
    assert [u for u in users if not _matches(COMPONENTS / u, MLFLOW_ALLOWED)] == []
    assert "tracking/runs.py" in users  # the check sees real imports


def test_components_never_import_pipelines_or_themselves_absolutely():
    """Relative imports only: the registered model carries this package as
    ``visual_dpo_components``, where ``import components...`` would find the consumer's own."""
    bad = {p.relative_to(ROOT).as_posix(): sorted(_imports(p) & {"components", "pipelines"})
           for p in _modules()}
    assert {k: v for k, v in bad.items() if v} == {}


def test_importing_components_changes_no_process_wide_setting():
    code = """
import logging, os, sys
from PIL import Image
# Third-party libraries have import-time effects of their own (MLflow sets a telemetry
# variable): import them first, so what is compared is what components adds.
import av, mlflow.pyfunc, numpy, pandas, pyarrow, ray.data, torch, torchvision
state = lambda: (Image.MAX_IMAGE_PIXELS, dict(os.environ), list(logging.root.handlers),
                 logging.root.level, sorted(k for k in sys.modules if k.startswith("matplotlib")))
before = state()
import components.media.spec, components.media.video, components.registry.pyfunc
import components.evaluation.figures, components.datasets.prepare, components.training.worker
assert state() == before, (before, state())
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_media_spec_carries_every_decode_setting_of_the_config():
    """Adding a key to data.video without a MediaSpec field fails here, not as a silent
    difference between training and serving."""
    from components.config import DataConfig, VideoConfig
    from components.media.spec import MediaSpec

    spec_fields = {f.name for f in dataclasses.fields(MediaSpec)}
    assert {f.name for f in dataclasses.fields(VideoConfig)} <= spec_fields
    prompt_limits = {"max_prompt_chars": 500, "max_prompt_tokens": 40}  # served alike (#23)
    d = DataConfig(image_size=40, max_pixels=5000, decode_timeout_s=7.0, **prompt_limits,
                   video=VideoConfig(frames=5, fps=2.0, pad="loop", max_bytes=10,
                                     max_duration_s=3.0, max_frames=7, decoder_threads=2))
    spec = dataclasses.asdict(MediaSpec.from_config("video", d))
    expected = {"modality": "video", "size": 40, "max_pixels": 5000,
                "decode_timeout_s": d.decode_timeout_s, **dataclasses.asdict(d.video),
                **prompt_limits}
    assert {k: spec.get(k) for k in expected} == expected
    # The rest is the scorer's text contract (its tokenizer), not a config key: defaults here.
    rest = {f.name: f.default for f in dataclasses.fields(MediaSpec) if f.name not in expected}
    assert {k: spec[k] for k in rest} == rest
    assert MediaSpec.from_config("image", d) == MediaSpec(
        "image", 40, 5000, decode_timeout_s=d.decode_timeout_s, **prompt_limits)


def test_an_enumeration_is_defined_once():
    """Each enumeration has one owner, the config, except ``PIN_MODES``: the pinning planner
    owns it (a child process imports the planner before torch, so it cannot import the config
    and its yaml). A copy the config keeps for validation must stay equal to the owner's."""
    owners = {"PIN_MODES": "components/runtime/pinning/plan.py"}
    for name in ("PAD_POLICIES", "PIN_MODES", "LOSS_TYPES", "LAYOUTS", "LR_SCHEDULES",
                 "SELECT_BY", "SCORE_SCALES"):
        defining = [p.relative_to(ROOT).as_posix() for p in _modules()
                    if any(isinstance(n, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == name for t in n.targets)
                        for n in ast.parse(p.read_text()).body)]
        owner = owners.get(name, "components/config.py")
        assert owner in defining and set(defining) <= {owner, "components/config.py"}, (
            name, defining)
    from components import config
    from components.runtime.pinning import plan

    assert tuple(getattr(config, "PIN_MODES", plan.PIN_MODES)) == plan.PIN_MODES


def test_importing_pinning_imports_only_the_standard_library():
    """A child process imports the pinning package to pin itself before torch is imported
    (docs/cpu-pinning.md), so nothing but the standard library may come with it."""
    code = """
import sys
before = set(sys.modules)
import components.runtime.pinning
new = {m.split(".")[0] for m in set(sys.modules) - before}
print(sorted(new - set(sys.stdlib_module_names) - {"components"}))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", (res.stdout, res.stderr[-2000:])


def test_failure_injection_is_not_a_user_setting():
    from components.config import TrainConfig
    from pipelines.__main__ import _parser

    assert not any("inject" in f.name for f in dataclasses.fields(TrainConfig))
    for text in ((ROOT / "README.md").read_text(), _parser().format_help()):
        assert "inject" not in text.lower() and "VISUAL_DPO_TEST" not in text


@pytest.mark.parametrize("requirement", ["torch", "torchvision", "av"])
def test_model_requirements_come_from_pyproject(requirement):
    import tomllib

    from components.tracking.models import pip_requirements

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in declared if d.split("=")[0] == requirement)
    assert pin in pip_requirements(video=True)


def test_no_source_file_is_left_out_of_git_or_a_job_upload():
    """A folder name that .gitignore or the job excludes match (``data/`` did) would drop
    code from a clone or from a Ray job's working dir without any error."""
    import json
    import re

    from ray._private.thirdparty.pathspec import PathSpec

    sources = [p.relative_to(ROOT).as_posix()
               for d in ("components", "pipelines") for p in (ROOT / d).rglob("*.py")
               if "__pycache__" not in p.parts]
    makefile = (ROOT / "Makefile").read_text()
    excludes = json.loads(re.search(r"^JOB_EXCLUDES = (\[.*\])$", makefile, re.M).group(1))
    patterns = excludes + (ROOT / ".gitignore").read_text().splitlines()
    spec = PathSpec.from_lines("gitwildmatch", patterns)
    assert [s for s in sources if spec.match_file(s)] == []
    assert len(sources) > 30


def _relative_imports(path: Path) -> set[str]:
    """Modules a file imports relatively, resolved to paths under components/ ("training")."""
    rel = path.relative_to(COMPONENTS).parent.parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(rel[: len(rel) - (node.level - 1)]) if node.level > 1 else list(rel)
            if node.module:
                out.add("/".join([*base, *node.module.split(".")]))
            else:  # from . import x
                out |= {"/".join([*base, a.name]) for a in node.names}
    return out


def test_the_config_layer_imports_nothing_above_it():
    """config.py is the bottom layer: model names come from the plain-data catalogue, and the
    checks that need the models are handed in by the CLI (``load_config(checks=...)``)."""
    imported = _relative_imports(COMPONENTS / "config.py")
    assert imported == {"scorer_catalog"}, imported
    assert "torch" not in _imports(COMPONENTS / "config.py")


def test_no_function_takes_a_keyword_list_nobody_can_hold():
    """One options object per stage instead of long parameter lists (the old decode_stage
    took 18): no function of components/ or pipelines/ takes more than 10 parameters.
    ``preference_loss`` is the exception: a formula whose keyword-only options (each with a
    default, as TRL's DPO losses) are its equation's symbols; ``configured_loss`` wraps it."""
    exempt = {"components/training/losses.py:preference_loss"}
    long = []
    for path in [*_modules(), *sorted((ROOT / "pipelines").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = len(node.args.args) + len(node.args.kwonlyargs) + len(node.args.posonlyargs)
                if n > 10 and f"{path.relative_to(ROOT)}:{node.name}" not in exempt:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({n})")
    assert long == []
