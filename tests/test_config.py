"""Typed config: YAML < CLI flags < key=value; every error reported at once."""

import pytest

from components.config import ConfigError, flatten, load_config, to_dict


def test_overrides_are_typed_and_layered(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.01\n  epochs: 7\ndata:\n  image_size: 32\n")
    cfg = load_config(str(f), ["train.lr=3e-4", "model.name=seed-cnn", "data.train=a,b"],
                      {"train": {"epochs": 2}})
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.epochs == 2  # CLI flag over YAML
    assert cfg.data.image_size == 32
    assert cfg.model.name == "seed-cnn"
    assert cfg.data.train == ["a", "b"]
    flat = flatten(to_dict(cfg))
    assert flat["train.lr"] == pytest.approx(3e-4) and flat["data.train"] == "a,b"


def test_all_errors_are_reported_together():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lr=fast", "train.epohcs=3", "model.name=vgg", "loss.beta=-1",
                           "data.layout=xml", "notakeyvalue"])
    problems = e.value.problems
    text = "\n".join(problems)
    for needle in ("train.lr: expected a number", "train.epohcs: unknown key",
                   "model.name: 'vgg' is not one of the image scorers", "loss.beta", "data.layout: 'xml'",
                   "expected key=value", "data.train: no training data"):
        assert needle in text, needle
    assert len(problems) >= 7


def test_soft_ties_need_a_logistic_loss():
    with pytest.raises(ConfigError, match="ties=soft needs a logistic loss"):
        load_config(None, ["data.train=x", "ties=soft", "loss.type=hinge"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_config(str(tmp_path / "nope.yaml"), ["data.train=x"])
