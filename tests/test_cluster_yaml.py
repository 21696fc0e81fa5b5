"""cluster.yaml passes Ray's own cluster-config schema validation, so a typo fails CI."""

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
