"""The command line a user meets: the installed ``visual-dpo`` script, help on every option,
and usage errors caught before any work."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from components import scorer_catalog
from components.config import load_config
from pipelines.__main__ import _parser, _run_epilog, main

ROOT = Path(__file__).resolve().parents[1]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_command_has_help():
    missing = [f"{name} {a.option_strings or a.dest}" for name, sub in _subparsers().items()
               for a in sub._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == []
    assert set(_subparsers()) == {"run", "evaluate", "score", "sample-data",
                                  "register-published", "serve", "verify"}


def test_run_help_ends_with_config_keys_that_exist_and_an_example():
    help_text = _subparsers()["run"].format_help()
    assert help_text.rstrip().endswith("model.name=seed-cnn")
    keys = re.findall(r"\b([a-z_]+(?:\.[a-z_]+)+)=(\S+)", _run_epilog())
    assert len(keys) >= 10
    overrides = [f"{k}={v}" for k, v in keys if not k.startswith("data.video")]
    cfg = load_config(None, [*overrides, "data.train=x"], modality="image")  # all real keys
    assert cfg.data.image_size == 64 and cfg.preprocess.actors == 1
    load_config(None, ["data.video.frames=16", "data.train=x"], modality="video")


def test_the_console_script_is_declared_and_is_the_same_command():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"visual-dpo": "pipelines.__main__:cli"}
    exe = shutil.which("visual-dpo", path=str(Path(sys.executable).parent))
    assert exe, "visual-dpo is not installed in this environment (pip install -e .)"
    via_script = subprocess.run([exe, "score", "--help"], capture_output=True, text=True,
                                timeout=120)
    via_module = subprocess.run([sys.executable, "-m", "pipelines", "score", "--help"],
                                capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert via_script.returncode == via_module.returncode == 0
    assert via_script.stdout == via_module.stdout and "--group-by" in via_script.stdout


def test_top_k_without_group_by_is_a_usage_error_before_loading_anything(capsys, tmp_path):
    try:
        main(["score", "--model", "models:/nothing@champion", "--input", str(tmp_path),
              "--output", str(tmp_path / "o"), "--top-k", "3"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("expected a usage error")
    assert "--top-k needs --group-by" in capsys.readouterr().err


def test_run_help_lists_every_scorer_of_the_catalogue():
    """The model list comes from the catalogue, so a new scorer shows up without an edit
    here (the old hand-written list omitted prompt-bn-cnn and clip)."""
    help_text = _subparsers()["run"].format_help()
    for entry in scorer_catalog.CATALOG:
        assert re.search(rf"^  {re.escape(entry.name)}\s", help_text, re.M), entry.name


def test_shared_options_are_declared_once_for_every_command():
    subs = _subparsers()
    for name in ("run", "evaluate", "score"):
        options = {o for a in subs[name]._actions for o in a.option_strings}
        assert {"--tracking-uri", "--config", "--summary"} <= options, name
    source = (ROOT / "pipelines" / "__main__.py").read_text()
    assert source.count('"--tracking-uri"') == 1 and source.count('"--summary"') == 1
