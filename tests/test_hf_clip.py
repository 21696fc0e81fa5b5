"""components/training/hf_clip.py and ``model.name=hf-clip`` / ``model.score_scale`` in the
config: nothing downloads (a Hub id fails in validation), the scorer rebuilds from what a
registered model stores (no model directory), a URI directory is copied first. Fast, no Ray.
Score parity with the publishers' code: tests/test_scorer_parity.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from components.config import ConfigError, load_config
from components.media.spec import MediaSpec
from components.registry.scorer_files import TrainedScorer, read_scorer, write_scorer
from components.training.models import (
    build_scorer,
    config_problems,
    initial_weights,
    model_options,
    text_contract,
)

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pickscore(tmp_path_factory):
    from tests.tiny_checkpoints import write_pickscore_layout

    return write_pickscore_layout(tmp_path_factory.mktemp("pickscore"))


def _problems(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.train=x", *overrides], checks=[config_problems])
    return e.value.problems


def test_a_hub_id_fails_in_validation_saying_nothing_downloads():
    (p,) = _problems("model.name=hf-clip", "model.pretrained=yuvalkirstain/PickScore_v1",
                     "data.image_size=224")
    assert p.startswith("model.pretrained: 'yuvalkirstain/PickScore_v1'")
    assert "Hugging Face Hub id, nothing downloads" in p
    assert "hf download yuvalkirstain/PickScore_v1 --local-dir DIR" in p
    (p,) = _problems("model.name=hf-clip", "model.pretrained=hf-hub:org/model",
                     "data.image_size=224")
    assert "hf download org/model" in p


def test_hf_clip_config_errors(tmp_path, pickscore):
    assert _problems("model.name=hf-clip") == [
        "model.pretrained: model.name=hf-clip needs a local Hugging Face model directory "
        "(config.json, model.safetensors, tokenizer and processor files) or a URI of one "
        "(s3://..., gs://...)"]
    (tmp_path / "empty").mkdir()
    (p,) = _problems("model.name=hf-clip", f"model.pretrained={tmp_path / 'empty'}")
    assert "has no config.json" in p
    (tmp_path / "file.pt").write_bytes(b"x")
    (p,) = _problems("model.name=hf-clip", f"model.pretrained={tmp_path / 'file.pt'}")
    assert "is not a directory here" in p
    # The directory's vision tower sets the image size, as model.arch does for clip.
    assert _problems("model.name=hf-clip", f"model.pretrained={pickscore}",
                     "data.image_size=64") == [
        f"data.image_size: 64, but model.pretrained={pickscore} takes 224 px images; set "
        "data.image_size=224"]
    cfg = load_config(None, ["data.train=x", "model.name=hf-clip", f"model.pretrained={pickscore}",
                             "data.image_size=224", "model.score_scale=none"],
                      checks=[config_problems])
    assert cfg.model.score_scale == "none"


def test_score_scale_is_typed_and_only_for_clip_scorers(tmp_path):
    assert _problems("model.score_scale=cosine") == [
        "model.score_scale: 'cosine' is not one of logit_scale, none"]
    assert _problems("model.score_scale=none") == [
        "model.score_scale: only for the CLIP-family scorers (clip, hf-clip), not 'bn-cnn'"]
    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(b"x")
    assert _problems(f"model.pretrained={ckpt}") == [
        "model.pretrained: only for the CLIP-family scorers (clip, hf-clip); torchvision "
        "scorers take model.weights=PATH"]


def _score(model, spec: MediaSpec, prompts: list[str]) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(len(prompts), 3, 224, 224)
    with torch.no_grad():
        return model(x, torch.from_numpy(spec.tokenize(prompts)))


def test_the_registered_files_rebuild_the_scorer_without_the_directory(tmp_path, pickscore):
    """What ``scorer.json`` stores (options: the config, the processor's normalisation, the
    score scale, the tokenizer; the spec with the tokenizer) rebuilds the same scorer after
    the model directory is gone: a consumer needs no download and no directory."""
    directory = shutil.copytree(pickscore, tmp_path / "pickscore")
    options = model_options("hf-clip", "", pretrained=str(directory))
    spec = MediaSpec("image", 224, 10**6, **text_contract("hf-clip", options))
    state = initial_weights("hf-clip", options, seed=1, pretrained=str(directory))
    write_scorer(str(tmp_path / "scorer"), TrainedScorer("hf-clip", state, spec,
                                                         options=options))
    shutil.rmtree(directory)

    loaded = read_scorer(str(tmp_path / "scorer"))
    assert json.loads(json.dumps(loaded.options)) == options  # plain JSON, no paths
    assert str(directory) not in json.dumps(loaded.options)
    assert loaded.spec == spec and loaded.spec.tokenizer == options["tokenizer"]
    model = build_scorer(loaded.model_name, loaded.options)
    model.load_state_dict(loaded.state_dict)
    original = build_scorer("hf-clip", options)
    original.load_state_dict(state)
    prompts = ["a photo of a cat", "a red apple"]
    assert torch.equal(_score(model.eval(), loaded.spec, prompts),
                       _score(original.eval(), spec, prompts))
    # The scorer tokenises as the spec does (decode actors, pyfunc).
    assert torch.equal(model.tokenize(prompts), torch.from_numpy(spec.tokenize(prompts)).long())
    assert spec.tokenize([]).shape == (0, 77)


def test_the_weights_are_the_directorys_and_a_uri_is_copied_first(pickscore):
    from safetensors.torch import load_file

    options = model_options("hf-clip", "", pretrained=str(pickscore))
    state = initial_weights("hf-clip", options, seed=5, pretrained=str(pickscore))
    saved = load_file(str(pickscore / "model.safetensors"))
    assert saved and all(torch.equal(state[f"net.{k}"], v) for k, v in saved.items())
    uri = f"file://{pickscore}"
    assert model_options("hf-clip", "", pretrained=uri) == options
    from_uri = initial_weights("hf-clip", options, seed=6, pretrained=uri)
    assert all(torch.equal(from_uri[k], v) for k, v in state.items())


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path, pickscore):
    from tests.tiny_checkpoints import write_pickscore_layout

    options = model_options("hf-clip", "", pretrained=str(pickscore))
    other = tmp_path / "other"
    write_pickscore_layout(other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "bert"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="bert"):
        initial_weights("hf-clip", options, seed=0, pretrained=str(other))


def test_siglip_adds_its_logit_bias_as_its_forward_does():
    """SiglipModel.forward: ``logits_per_text = cos * logit_scale.exp() + logit_bias``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import SiglipConfig, SiglipModel

    from components.training.hf_clip import HfClipScorer

    tok = Tokenizer(models.WordLevel({"</s>": 0, "<unk>": 1, "a": 2, "cat": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.enable_padding(length=8, pad_id=0, pad_token="</s>")
    tok.enable_truncation(8)
    config = SiglipConfig(text_config=dict(vocab_size=4, hidden_size=16, intermediate_size=20,
                                           num_hidden_layers=1, num_attention_heads=2,
                                           max_position_embeddings=8),
                          vision_config=dict(image_size=32, patch_size=16, hidden_size=16,
                                             intermediate_size=20, num_hidden_layers=1,
                                             num_attention_heads=2))
    torch.manual_seed(0)
    scorer = HfClipScorer(json.loads(config.to_json_string()), [0.5] * 3, [0.5] * 3,
                          tok.to_str()).eval()
    with torch.no_grad():
        scorer.net.logit_bias.fill_(-3.0)
    reference = SiglipModel(config).eval()
    reference.load_state_dict(scorer.net.state_dict())
    tokens = scorer.tokenize(["a cat", "cat"])
    pixels = torch.rand(2, 3, 32, 32)
    imagenet = (pixels - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = scorer(imagenet, tokens)
        logits = reference(input_ids=tokens, pixel_values=(pixels - 0.5) / 0.5).logits_per_text
    assert torch.allclose(ours, torch.diagonal(logits), atol=1e-5)
    assert np.isfinite(ours.numpy()).all()
