"""Property: every numeric config key, given NaN, an infinity, zero, a negative or a huge value,
is either refused at load time with a message naming that key (exit 2 from the command line,
before Ray or MLflow start), or accepted only when the value is inside the key's declared
``Range`` (#23). The keys are enumerated from the dataclass tree, never listed by hand."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.config import ConfigError, load_config, numeric_keys, range_of
from components.training.models import config_problems  # the check the CLI adds

ROOT = Path(__file__).resolve().parents[1]
KEYS = numeric_keys()

# The values an attacker or a typo produces, written as on the command line (YAML scalars).
HOSTILE = ["nan", ".nan", "inf", "-inf", ".inf", "-.inf", "0", "0.0", "-1", "-1e-300", "1e-300",
           "-0.5", "0.5", "1", "2", "1e300", "-1e300", "1e9", "1000000000", "4294967296",
           "9223372036854775808", "1" + "0" * 40, "1.5", "100", "20001"]


def _as_written(value: float) -> str:
    return repr(value) if not isinstance(value, float) or math.isfinite(value) else str(value)


def _values(key: str) -> st.SearchStrategy[str]:
    """Hostile constants, the declared ends and their neighbours, and any float."""
    r = range_of(key)
    ends = [r.low, r.high]
    near = [e + d for e in ends for d in (-1, -1e-9, 0, 1e-9, 1)]
    return st.one_of(st.sampled_from(HOSTILE), st.sampled_from([_as_written(v) for v in near]),
                     st.floats(allow_nan=True, allow_infinity=True).map(_as_written),
                     st.integers(min_value=-(2**70), max_value=2**70).map(str))


def _names(problem: str, key: str) -> bool:
    """``problem`` names ``key`` as a whole key (``data.video.frames``, not ``frames``)."""
    return re.search(rf"(^|[ ,]){re.escape(key)}([=:, ]|$)", problem) is not None


def _check(key: str, written: str, modality: str) -> None:
    try:
        cfg = load_config(None, ["data.train=x", f"{key}={written}"], modality=modality,
                          checks=[config_problems])
    except ConfigError as e:
        assert any(_names(p, key) for p in e.problems), (key, written, e.problems)
        return
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    kind = KEYS[key][1]
    for v in node if isinstance(node, list) else [node]:
        assert isinstance(v, kind) and not isinstance(v, bool), (key, written, v)
        assert range_of(key).admits(v), f"{key}={written} accepted as {v!r}, outside its range"


@pytest.mark.parametrize("modality", ["image", "video"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_numeric_key_is_refused_by_name_or_accepted_in_range(modality, data):
    key = data.draw(st.sampled_from(sorted(KEYS)), label="key")
    written = data.draw(_values(key), label="value")
    _check(key, written, modality)


def test_every_numeric_key_refuses_nan_and_infinities():
    """Exhaustive over the keys for the values no key may take."""
    for key in KEYS:
        for written in ("nan", "inf", "-inf", "1" + "0" * 40):
            with pytest.raises(ConfigError) as e:
                load_config(None, ["data.train=x", f"{key}={written}"])
            assert any(_names(p, key) for p in e.value.problems), (key, written)


def test_the_same_values_in_a_yaml_file_are_refused_by_name(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  lr: .nan\n  weight_decay: -1\ngate:\n  bootstrap_samples: 1000000000\n"
                 "data:\n  decode_timeout_s: .inf\n  video:\n    fps: .nan\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(f), ["data.train=x"])
    text = "\n".join(e.value.problems)
    for key in ("train.lr=nan", "train.weight_decay=-1.0", "gate.bootstrap_samples=1000000000",
                "data.decode_timeout_s=inf", "data.video.fps=nan"):
        assert key in text, key


def test_the_command_line_exits_2_naming_each_key_before_any_work(tmp_path):
    """The real entry point in a subprocess: every bad key named at once, exit 2, no
    traceback, and nothing started (no MLflow store, no output directory)."""
    overrides = ["train.lr=nan", "loss.beta=inf", "data.video.fps=nan",
                 "gate.bootstrap_samples=1000000000", "train.cpus_per_worker=0"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "run", "image", "--train", str(tmp_path / "none"),
         "--output-dir", str(tmp_path / "out"), "--summary", str(tmp_path / "s.json"),
         *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    summary = (tmp_path / "s.json").read_text()
    for override in overrides:
        key = override.split("=")[0]
        assert f"{key}=" in done.stderr and key in summary, key
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()
