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


def test_an_enumeration_is_a_typed_field_that_loading_checks_with_the_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.train=x", "train.use_gpu=maybe", "data.cache=ram",
                           "preprocess.pin_cpus=on", "train.lr_schedule=linear"])
    text = "\n".join(e.value.problems)
    assert "train.use_gpu: 'maybe' is not one of auto, true, false" in text
    assert "data.cache: 'ram' is not one of auto, decoded, none" in text
    assert "preprocess.pin_cpus: True is not one of auto, off" in text  # YAML reads on as True
    assert "train.lr_schedule: 'linear' is not one of constant, cosine" in text
    # YAML reads true/false as booleans: an enumeration of strings still takes them.
    assert load_config(None, ["data.train=x", "train.use_gpu=false"]).train.use_gpu == "false"
    assert load_config(None, ["data.train=x", "preprocess.pin_cpus=off"]).preprocess.pin_cpus == "off"


def test_each_section_reports_its_own_problems():
    from components.config import DataConfig, LossConfig

    assert DataConfig().problems() == [] and LossConfig().problems() == []
    assert DataConfig(image_size=64, max_pixels=1000).problems() == [
        "data.max_pixels: 1000 is below image_size^2 = 4096"]
    assert LossConfig(reference="champion").problems()[0].startswith("loss.reference:")


def test_every_numeric_key_is_checked_against_its_declared_range():
    """Ranges are declared per section (``RANGES``), so a new numeric key without one fails
    here; out-of-range values, NaN and infinities name the key and its range."""
    from components.config import RunConfig, numeric_keys, range_of

    keys = numeric_keys()
    assert {"train.lr", "data.video.fps", "model.lora.alpha", "gate.bootstrap_samples",
            "model.head_weights", "data.max_prompt_chars"} <= set(keys)
    for key in keys:
        range_of(key)  # raises for a key without a Range
    for cls in {c for c, _, _ in keys.values()}:  # no stale entries either
        names = {n for c, _, n in keys.values() if c is cls}
        assert set(cls.RANGES) == names, cls.__name__
    load_config(None, ["data.train=x"])  # the defaults are in range
    assert RunConfig().train.lr > 0
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.train=x", "train.lr=nan", "loss.beta=inf",
                           "data.video.fps=nan", "train.weight_decay=-1", "train.grad_clip=nan",
                           "train.cpus_per_worker=0", "train.checkpoints_to_keep=-5",
                           "gate.min_delta=nan", "data.decode_timeout_s=inf",
                           "gate.bootstrap_samples=1000000000", "model.head_weights=1,nan"])
    problems = e.value.problems
    assert "train.lr=nan: must be a finite number in (0, 100]" in problems
    assert "gate.bootstrap_samples=1000000000: must be an integer in [100, 20_000]" in problems
    for key in ("loss.beta=inf", "data.video.fps=nan", "train.weight_decay=-1.0",
                "train.grad_clip=nan", "train.cpus_per_worker=0.0",
                "train.checkpoints_to_keep=-5", "gate.min_delta=nan",
                "data.decode_timeout_s=inf", "model.head_weights=1.0,nan"):
        assert any(p.startswith(key + ":") for p in problems), (key, problems)
    # The blame stays on the key that is wrong (loss.beta=inf used to fail in training,
    # blaming train.lr).
    assert not any(p.startswith("train.lr") for p in
                   _problems(["data.train=x", "loss.beta=inf"]))


def _problems(overrides: list[str]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    return e.value.problems


def test_pin_cpus_off_is_read_as_the_mode_on_the_command_line_and_in_yaml(tmp_path):
    """YAML 1.1 reads ``off`` as false; the enumeration takes it back as ``off`` (#23)."""
    assert load_config(None, ["data.train=x", "preprocess.pin_cpus=off"]
                       ).preprocess.pin_cpus == "off"
    f = tmp_path / "run.yaml"
    f.write_text("data:\n  train: [x]\npreprocess:\n  pin_cpus: off\n")
    assert load_config(str(f)).preprocess.pin_cpus == "off"
    f.write_text("preprocess:\n  pin_cpus: OFF\n")
    assert load_config(str(f), ["data.train=x"]).preprocess.pin_cpus == "off"


def test_checks_from_higher_layers_are_reported_with_the_rest():
    """``checks`` (the model registry's, handed in by the CLI) add to the same error."""
    def no_clips(cfg):
        return ["model.name: no clips today"] if cfg.modality == "video" else []

    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.train=x", "train.lr=0"], modality="video", checks=[no_clips])
    assert e.value.problems == ["train.lr=0.0: must be a finite number in (0, 100]",
                                "model.name: no clips today"]


def test_incremental_dpo_records_the_loss_it_really_uses():
    """An incremental DPO run anchored to the champion carries that reference in its config
    (what lineage logs), not a separate loss object beside an unchanged cfg."""
    from pipelines.stages import for_incremental

    cfg = load_config(None, ["data.train=x", "loss.type=dpo"])
    warm = "models:/image-scorer@champion"
    assert for_incremental(cfg, warm).loss.reference == warm
    assert cfg.loss.reference == "init"  # the validated config itself is never changed
    assert for_incremental(cfg, None) is cfg
    bt = load_config(None, ["data.train=x"])
    assert for_incremental(bt, warm).loss.reference == "init"  # bt has no reference


def test_reward_heads_and_their_objectives_are_checked_up_front():
    from components.training.models import config_problems

    ok = load_config(None, ["data.train=x", "model.head=mu_sigma", "loss.type=uncertainty"])
    assert ok.model.head == "mu_sigma"
    named = load_config(None, ["data.train=x", "model.head=named", "model.head_names=vq,mq,ta",
                               "model.head_weights=1,0.5,2", "loss.type=btt", "ties=soft"])
    assert named.model.head_names == ["vq", "mq", "ta"]
    assert named.model.head_weights == [1.0, 0.5, 2.0]
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.train=x", "model.head=sigma"])
    assert "model.head: 'sigma' is not one of score, mu_sigma, named" in e.value.problems
    cases = {
        ("loss.type=uncertainty",): "loss.type=uncertainty needs model.head=mu_sigma",
        ("model.head=mu_sigma",): "model.head=mu_sigma: only loss.type=uncertainty trains sigma",
        ("model.head=named",): "model.head=named needs model.head_names",
        ("model.head=named", "model.head_names=vq,score,2x"): "['score', '2x'] are not head names",
        ("model.head=named", "model.head_names=vq,vq"): "names a head twice",
        ("model.head=named", "model.head_names=vq,mq", "model.head_weights=1"):
            "model.head_weights: 1 weights for 2 heads",
        ("model.head=named", "model.head_names=vq,mq", "model.head_weights=1,-1"):
            "must be >= 0 with a positive sum",
        ("model.head_names=vq",): "only for model.head=named, not score",
        ("model.head=named", "model.head_names=vq", "loss.type=dpo"): "loss.type=dpo would need",
        ("loss.type=btt", "loss.tie_theta=1"): "loss.tie_theta=1.0: must be a finite number in (1",
        ("ties=soft", "loss.type=ipo"): "ties=soft needs a logistic loss (bt, dpo, btt",
    }
    for overrides, needle in cases.items():
        with pytest.raises(ConfigError) as e:
            load_config(None, ["data.train=x", *overrides])
        assert needle in "\n".join(e.value.problems), (overrides, e.value.problems)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.train=x", "model.name=clip", "data.image_size=224",
                           "model.head=mu_sigma", "loss.type=uncertainty"],
                    checks=[config_problems])
    assert "model.head=mu_sigma: clip scores with a cosine" in "\n".join(e.value.problems)
    with pytest.raises(ConfigError, match="not with model.head=named"):
        load_config(None, ["data.train=x", "model.head=named", "model.head_names=vq",
                           "loss.temporal_weight=0.5"], modality="video")
