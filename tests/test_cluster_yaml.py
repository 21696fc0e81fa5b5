"""cluster.yaml passes Ray's own cluster-config schema validation, so a typo fails CI."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def _validate(cfg):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cfg))


def test_cluster_yaml_is_valid_and_keeps_training_off_the_head():
    cfg = yaml.safe_load(CLUSTER_YAML.read_text())
    _validate(cfg)
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert "GPU" in " ".join(types) or any("gpu" in t for t in types)
    # The image (./Dockerfile) has Ray, torch and the project: nodes install nothing at boot,
    # and the launcher runs that image, not a stock Ray one (tests/test_manifests.py checks the
    # tag is the Dockerfile's).
    boot = [c for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                          "worker_setup_commands") for c in cfg.get(key, [])]
    assert not [c for c in boot if "pip install" in c or "conda install" in c], boot
    assert not cfg["docker"]["image"].startswith("rayproject/"), cfg["docker"]["image"]


def test_a_misspelled_key_is_rejected():
    from jsonschema import ValidationError

    cfg = yaml.safe_load(CLUSTER_YAML.read_text())
    cfg["available_node_types"]["gpu_worker"]["max_wrokers"] = 4
    with pytest.raises(ValidationError):
        _validate(cfg)


# What a run on this cluster needs (README, "Run on a cluster"): decode actors placed on the CPU
# type by a custom resource, object storage for run state, S3 access on the worker nodes.

ROOT = CLUSTER_YAML.parent


def _cfg() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _run_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Run on a cluster\n", 1)[1].split("\n## ", 1)[0]


def test_the_node_types_declare_the_placement_resources_and_s3_access():
    from ray.autoscaler._private.util import prepare_config

    types = _cfg()["available_node_types"]
    head = types[_cfg()["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head runs no decoding or training"
    # A custom label only: CPU (and GPU) stay auto-detected from the instance type.
    assert types["cpu_worker"]["resources"] == {"cpu_node": 1}
    assert types["gpu_worker"]["resources"] == {"gpu_node": 1}
    prepared = prepare_config(_cfg())["available_node_types"]
    assert prepared["cpu_worker"]["resources"] == {"cpu_node": 1}, "prepare_config kept it"
    # Decode actors (cpu_worker) read s3:// shards, training workers (gpu_worker) write
    # checkpoints there: both need a role; the head keeps the launcher's default profile.
    for name in ("cpu_worker", "gpu_worker"):
        arn = types[name]["node_config"]["IamInstanceProfile"]["Arn"]
        assert arn.startswith("arn:aws:iam::") and ":instance-profile/" in arn, arn
    assert "IamInstanceProfile" not in head["node_config"]
    region = _cfg()["provider"]["region"]
    assert f"--env AWS_REGION={region}" in _cfg()["docker"]["run_options"]


def test_the_header_says_where_run_state_and_tracking_go():
    header = "\n".join(ln for ln in CLUSTER_YAML.read_text().splitlines() if ln.startswith("#"))
    storage = re.search(r"STORAGE=(\S+)", header)
    assert storage and storage.group(1).startswith("s3://"), header
    assert "MLFLOW_TRACKING_URI=http" in header
    assert re.search(r"--artifacts-destination\s+s3://", header), header
    assert "preprocess.node_resource=cpu_node" in header
    assert "IamInstanceProfile" in header


def test_the_readme_cluster_command_places_decoding_and_stores_run_state_in_s3():
    from components.config import load_config
    from pipelines.__main__ import _cli_overrides, _parser

    section = _run_section()
    line = next(ln for ln in section.splitlines()
                if "ray job submit" not in ln and "-- python -m pipelines run" in ln)
    argv = shlex.split(line.split(" -- ", 1)[1])
    assert argv[:3] == ["python", "-m", "pipelines"], argv
    args, unknown = _parser().parse_known_args(argv[3:])
    assert all("=" in u and not u.startswith("-") for u in unknown), unknown
    cfg = load_config(None, [*args.overrides, *unknown], _cli_overrides(args),
                      modality=args.modality)
    assert cfg.storage.uri.startswith("s3://") and not cfg.storage.shared
    assert all(u.startswith("s3://") for u in (*args.train, *args.eval))
    declared = _cfg()["available_node_types"]["cpu_worker"]["resources"]
    assert cfg.preprocess.node_resource in declared, cfg.preprocess.node_resource
    # The `make submit` form right above it passes the same storage.
    assert f"STORAGE={cfg.storage.uri}" in section


def _make(*args: str, dry_run: bool) -> subprocess.CompletedProcess:
    venv = Path(sys.prefix)
    if not shutil.which("make") or not (venv / "bin" / "ray").exists():
        pytest.skip("needs make and a venv with ray (run with .venv/bin/python -m pytest)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "TRAIN", "EVAL", "DATA", "CLUSTER", "ARGS",
                        "STORAGE", "RAY_ADDRESS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    cmd = ["make", "-s", *(["-n"] if dry_run else []), "-o", f"{venv}/.installed-stamp",
           "submit", f"VENV={venv}", "MLFLOW_TRACKING_URI=http://mlflow:5000",
           "TRAIN=s3://bucket/pairs/train/", "EVAL=s3://bucket/pairs/eval/", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_make_submit_passes_storage_to_the_run():
    p = _make("STORAGE=s3://bucket/visual-dpo/runs", "ARGS=preprocess.node_resource=cpu_node",
              dry_run=True)
    assert p.returncode == 0, p.stderr
    submit = next(ln for ln in p.stdout.splitlines() if "-- python -m pipelines run" in ln)
    assert "--storage s3://bucket/visual-dpo/runs preprocess.node_resource=cpu_node" in submit


@pytest.mark.parametrize("storage", ["", "outputs/runs"])
def test_make_submit_to_the_cluster_refuses_node_local_storage_before_anything(storage):
    p = _make("CLUSTER=1", *([f"STORAGE={storage}"] if storage else []), dry_run=False)
    assert p.returncode != 0
    assert "CLUSTER=1 needs STORAGE=s3://" in p.stderr, p.stderr
    assert "ray dashboard" not in p.stdout + p.stderr and "8265" not in p.stderr
