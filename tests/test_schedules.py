"""The schedule definitions in the repo parse and call the real CLI."""

import re
import shlex
from pathlib import Path

import yaml

from components.config import load_config
from pipelines.__main__ import _cli_overrides, _parser

ROOT = Path(__file__).resolve().parents[1]


def _parses(entrypoint: str):
    """The CLI's own parse (pipelines.__main__.main): key=value overrides may follow the
    options; anything else unknown is an error."""
    argv = shlex.split(entrypoint)
    assert argv[:3] == ["python", "-m", "pipelines"], argv
    args, unknown = _parser().parse_known_args(argv[3:])
    assert not [u for u in unknown if u.startswith("-") or "=" not in u], unknown
    args.overrides = [*args.overrides, *unknown]
    return args


def test_raycronjob_manifest_is_valid_and_runs_the_incremental_workflow():
    doc = yaml.safe_load((ROOT / "deploy" / "raycronjob.yaml").read_text())
    assert doc["kind"] == "RayCronJob" and doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"]
    assert len(spec["schedule"].split()) == 5
    args = _parses(spec["jobTemplate"]["entrypoint"])
    assert args.command == "run" and args.modality == "image" and args.incremental
    assert args.train and args.eval
    env = yaml.safe_load(spec["jobTemplate"]["runtimeEnvYAML"])["env_vars"]
    assert env["MLFLOW_TRACKING_URI"].startswith("http")
    # The settings the job gets validate as the CLI would load them (flags + overrides), and
    # its run state goes to object storage: the cluster has a 0-CPU head and several pods, so
    # node-local storage would exit 2 before any work (runtime/cluster.check_storage).
    cfg = load_config(args.config, args.overrides, _cli_overrides(args), modality=args.modality)
    assert cfg.storage.uri.startswith("s3://"), cfg.storage.uri
    assert all(u.startswith("s3://") for u in (*args.train, *args.eval))


def test_the_readme_cron_line_runs_the_incremental_workflow():
    readme = (ROOT / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if re.match(r"^[0-9*/,\- ]+ .*ray job submit", ln))
    fields = line.split(None, 5)
    assert len(fields) == 6  # five schedule fields and the command
    args = _parses(line.split(" -- ", 1)[1])
    assert args.command == "run" and args.incremental
