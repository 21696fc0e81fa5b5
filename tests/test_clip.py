"""components/training/clip.py: open_clip configs, the CLIP scorer, pretrained-weight loading
(open_clip checkpoints and torchvision backbones) from paths and URIs. Fast, no Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from components.training.clip import (
    ClipScorer,
    clip_config,
    load_backbone_weights,
    load_pretrained,
    tokenize,
)

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _write(path, cfg):
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture
def tiny_arch(tmp_path):
    return _write(tmp_path / "tiny-clip.json", TINY)


def _scorer(arch: str, seed: int) -> ClipScorer:
    torch.manual_seed(seed)
    return ClipScorer(clip_config(arch)).eval()


def _inputs(model: ClipScorer, n: int = 3):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 3, model.image_size, model.image_size, generator=g)
    prompts = ["a red cube", "a photo of a dog", None][:n]
    tokens = torch.from_numpy(tokenize(prompts, model.context_length))
    return x, tokens


def test_clip_config_built_in_and_json(tiny_arch, tmp_path):
    assert clip_config(tiny_arch) == TINY
    wrapped = _write(tmp_path / "open_clip_config.json", {"model_cfg": TINY})
    assert clip_config(wrapped) == TINY
    b32 = clip_config("ViT-B-32")
    assert b32["embed_dim"] == 512 and b32["vision_cfg"]["image_size"] == 224
    with pytest.raises(ValueError, match="ViT-B-32"):
        clip_config("no-such-arch")
    with pytest.raises(ValueError, match="embed_dim"):
        clip_config(_write(tmp_path / "bad.json", {"vision_cfg": {}}))
    hf = json.loads(json.dumps(TINY))
    hf["text_cfg"]["hf_tokenizer_name"] = "timm/ViT-B-16-SigLIP"
    with pytest.raises(ValueError, match="Hugging Face"):
        clip_config(_write(tmp_path / "hf.json", hf))
    with pytest.raises(ValueError, match="Hugging Face"):
        clip_config("ViT-B-16-SigLIP")


def test_scorer_shapes_and_attributes(tiny_arch):
    model = _scorer(tiny_arch, 0)
    assert model.takes_prompt and model.head_prefixes == ("logit_scale",)
    assert (model.image_size, model.context_length) == (32, 16)
    x, tokens = _inputs(model)
    with torch.no_grad():
        out = model(x, tokens)
        assert out.shape == (3,) and torch.isfinite(out).all()
        # PickScore scale: |score| <= logit_scale.exp() (cosine in [-1, 1])
        assert (out.abs() <= model.logit_scale.exp() + 1e-4).all()
        assert not torch.equal(out[0], model(x, tokens[[1, 1, 2]])[0])  # the prompt matters
        model(x, tokens.int())  # int32 tokens too
    with pytest.raises(ValueError, match="data.image_size=32"):
        model(torch.zeros(1, 3, 48, 48), tokens[:1])
    # Parameter names are open_clip's, so open_clip checkpoints load unchanged.
    assert "logit_scale" in model.state_dict() and "visual.conv1.weight" in model.state_dict()
    assert not any(k.startswith("_norm") for k in model.state_dict())


def test_tokenize():
    tokens = tokenize(["a red cube", "a blue sphere", None, ""], 16)
    assert tokens.shape == (4, 16) and tokens.dtype == np.int32
    assert not np.array_equal(tokens[0], tokens[1])
    np.testing.assert_array_equal(tokens[2], tokens[3])  # None is the empty prompt
    assert (tokens[2, 2:] == 0).all() and tokens[2, 0] != tokens[2, 1] != 0  # <start> <end>
    long = tokenize(["word " * 100], 8)
    assert long.shape == (1, 8) and (long != 0).all()  # truncated to fit


def test_load_pretrained_restores_the_saved_model(tiny_arch, tmp_path):
    from safetensors.torch import save_file

    source, target = _scorer(tiny_arch, 0), _scorer(tiny_arch, 1)
    x, tokens = _inputs(source)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    with torch.no_grad():
        expected = source(x, tokens)
        assert not torch.allclose(target(x, tokens), expected)
    sd = source.state_dict()
    plain, wrapped, safe = (tmp_path / n for n in ("clip.pt", "ddp.pt", "clip.safetensors"))
    torch.save(sd, plain)
    # as open_clip's training script saves (DDP): {"state_dict": {"module.": ...}}
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in sd.items()}}, wrapped)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(safe))
    for path in (str(plain), str(wrapped), str(safe), plain.as_uri(), safe.as_uri()):
        target.load_state_dict(fresh)
        load_pretrained(target, path)
        with torch.no_grad():
            torch.testing.assert_close(target(x, tokens), expected, rtol=0, atol=0, msg=path)


def test_load_pretrained_refuses_another_architecture(tiny_arch, tmp_path):
    other = json.loads(json.dumps(TINY))
    other["vision_cfg"]["layers"] = 1
    other["embed_dim"] = 16
    wrong = tmp_path / "other.pt"
    torch.save(_scorer(_write(tmp_path / "other.json", other), 0).state_dict(), wrong)
    model = _scorer(tiny_arch, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="model.arch") as e:
        load_pretrained(model, str(wrong))
    assert str(wrong) in str(e.value) and "visual.transformer.resblocks.1" in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    with pytest.raises(ValueError, match="missing.pt"):
        load_pretrained(model, str(tmp_path / "missing.pt"))


class _Wrapped(nn.Module):  # as models.py wraps torchvision scorers: parameters net.*
    head_prefixes = ("net.fc",)

    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(weights=None, num_classes=1)

    def forward(self, x):
        return self.net(x).squeeze(-1)


@pytest.fixture(scope="module")
def imagenet_like():
    torch.manual_seed(7)
    return torchvision.models.resnet18(weights=None, num_classes=1000).state_dict()


def test_load_backbone_weights_keeps_the_new_head(imagenet_like, tmp_path):
    bare, prefixed = tmp_path / "resnet18.pth", tmp_path / "net-resnet18.pth"
    torch.save(imagenet_like, bare)
    torch.save({"net." + k: v for k, v in imagenet_like.items()}, prefixed)
    torch.manual_seed(0)
    model = _Wrapped()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    for path in (str(bare), str(prefixed), bare.as_uri()):
        model.load_state_dict(fresh)
        load_backbone_weights(model, path, model.head_prefixes)
        own = model.state_dict()
        for k, v in imagenet_like.items():
            if not k.startswith("fc."):
                assert torch.equal(own["net." + k], v), (path, k)
        assert own["net.fc.weight"].shape == (1, 512)
        assert all(torch.equal(own[k], fresh[k]) for k in ("net.fc.weight", "net.fc.bias"))


def test_load_backbone_weights_refuses_a_mismatched_backbone(imagenet_like, tmp_path):
    sd = dict(imagenet_like)
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "corrupt.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="layer1.0.conv1.weight") as e:
        load_backbone_weights(_Wrapped(), str(path), ("net.fc",))
    assert str(path) in str(e.value)
    del sd["layer1.0.conv1.weight"]
    torch.save(sd, path)
    with pytest.raises(ValueError, match="missing keys: net.layer1.0.conv1.weight"):
        load_backbone_weights(_Wrapped(), str(path), ("net.fc",))


def test_s3_uris_honour_aws_endpoint_url(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)  # it would win (another test's S3)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    from components.runtime.storage import filesystem  # what clip.py reads weights through

    fs, path = filesystem("s3://bucket/weights/clip.pt")
    assert fs.type_name == "s3" and path == "bucket/weights/clip.pt"
    assert "127.0.0.1:9000" in repr(fs.endpoint_override if hasattr(fs, "endpoint_override")
                                    else fs.__reduce__())
