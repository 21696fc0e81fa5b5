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
    assert any("pip install" in c and "visual-dpo" in c for c in cfg["setup_commands"])


def test_a_misspelled_key_is_rejected():
    from jsonschema import ValidationError

    cfg = yaml.safe_load(CLUSTER_YAML.read_text())
    cfg["available_node_types"]["gpu_worker"]["max_wrokers"] = 4
    with pytest.raises(ValidationError):
        _validate(cfg)
