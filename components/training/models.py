"""Scorers behind one registry by name, output ``(N,)``.

Image scorers (``SCORERS``) take ``(N, 3, H, W)`` float; video scorers (``VIDEO_SCORERS``)
take ``(N, 3, T, H, W)``. Every scorer is resolution- and length-agnostic (adaptive pooling),
so a model trained at 64x64 (or 8 frames) also scores 224x224 inputs (or 16 frames).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .. import scorer_catalog


class SeedCNN(nn.Module):
    """The seed post's ``ImageDPO``: two 3x3 convs and a linear head.

    The seed flattened a fixed 32x32 feature map into ``Linear(64*32*32, 1)``, so it only ran
    on 32x32 inputs. An ``AdaptiveAvgPool2d(32)`` before the flatten keeps the same head and
    accepts any size. Kept as the baseline.
    """

    head_prefixes = ("backbone.6",)  # the Linear

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(32),
            nn.Flatten(),
            nn.Linear(64 * 32 * 32, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x).squeeze(-1)


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class BNCNN(nn.Module):
    """Default scorer: a small BatchNorm CNN with global average pooling.

    Quality cues in preference data (sharpness, noise, compression artefacts) are local, so a
    few conv blocks plus a global pool see them at any resolution, at a fraction of ResNet-18's
    cost: ~0.07 GFLOPs per 64x64 image here vs ~0.15 for ResNet-18.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(3, w, 1),  # full resolution: sees pixel-level noise and blur
            _block(w, 2 * w, 2),
            _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2),
            _block(4 * w, 4 * w, 1),
            _block(4 * w, 8 * w, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(8 * w, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).squeeze(-1)


def _resnet18() -> nn.Module:
    import torchvision

    # weights=None: nothing downloads at run time; pretrained weights are a user option.
    net = torchvision.models.resnet18(weights=None, num_classes=1)
    return _Squeeze(net)


class _Squeeze(nn.Module):
    head_prefixes = ("net.fc",)  # torchvision's classifier, replaced by a 1-output head

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class SeedC3D(nn.Module):
    """The seed post's ``VideoDPO``: two Conv3d + MaxPool3d blocks and an MLP head.

    The seed flattened a fixed ``128 x 4 x 4 x 4`` feature map, so it only ran on 16x16x16
    clips; an ``AdaptiveAvgPool3d(4)`` before the flatten keeps the head and accepts any
    length and size. Kept as the baseline.
    """

    head_prefixes = ("temporal_scorer",)

    def __init__(self) -> None:
        super().__init__()
        self.frame_encoder = nn.Sequential(
            nn.Conv3d(3, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool3d(2, ceil_mode=True),
            nn.Conv3d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool3d(2, ceil_mode=True),
            nn.AdaptiveAvgPool3d(4),
            nn.Flatten(),
        )
        self.temporal_scorer = nn.Sequential(nn.Linear(128 * 4 * 4 * 4, 512), nn.ReLU(), nn.Linear(512, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.temporal_scorer(self.frame_encoder(x)).squeeze(-1)


def _block3d(c_in: int, c_out: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class BNC3D(nn.Module):
    """A small BatchNorm 3-D CNN with global pooling: ``bn-cnn`` with time as a third axis.

    Temporal defects (stutter, flicker, jumps) are local in time, so 3x3x3 kernels at full
    frame rate see them; spatial strides come first because the frames are small.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block3d(3, w, (1, 2, 2)),
            _block3d(w, 2 * w, (1, 2, 2)),
            _block3d(2 * w, 2 * w, (1, 1, 1)),
            _block3d(2 * w, 4 * w, (2, 2, 2)),
            _block3d(4 * w, 4 * w, (1, 1, 1)),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).squeeze(-1)


WORD_VOCAB = 8192  # hashed word buckets of the small prompt-conditioned scorers
WORD_CONTEXT = 32  # words per prompt they read


class PromptConditioned(nn.Module):
    """``(prompt, image)`` or ``(prompt, clip)`` -> one score: a quality term that ignores the
    prompt plus a prompt-image agreement term,

        s(x, p) = w . f(x) + <P f(x), E(p)> / sqrt(d)

    with ``f`` a visual encoder (``BNCNN`` or ``BNC3D`` features), ``E(p)`` the mean of the
    prompt's word embeddings (hashed words, media/text.py) and ``P`` a projection. The
    agreement term is what lets the preferred side depend on the caption (PickScore's
    text-image similarity, at CNN scale); the quality term keeps what the image-only scorer
    learns. Both sides of a pair share the pair's prompt.
    """

    takes_prompt = True
    head_prefixes = ("head", "proj", "text")

    def __init__(self, encoder: nn.Module, feature_dim: int, dim: int = 64,
                 vocab: int = WORD_VOCAB) -> None:
        super().__init__()
        self.features = encoder
        self.head = nn.Linear(feature_dim, 1)
        self.proj = nn.Linear(feature_dim, dim)
        self.text = nn.EmbeddingBag(vocab, dim, mode="mean", padding_idx=0)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        f = self.features(x)
        t = self.text(tokens.long())  # (N, dim); an empty prompt (all padding) gives zeros
        return self.head(f).squeeze(-1) + (self.proj(f) * t).sum(-1) * self.scale


def _prompt_bn_cnn(width: int = 16) -> nn.Module:
    return PromptConditioned(BNCNN(width).features, 8 * width)


def _prompt_bn_c3d(width: int = 16) -> nn.Module:
    return PromptConditioned(BNC3D(width).features, 4 * width)


def _clip(clip_config: dict) -> nn.Module:
    from .clip import ClipScorer

    return ClipScorer(clip_config)


def _torchvision_video(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from torchvision.models import video

        # weights=None: nothing downloads at run time (Kinetics weights are a user option).
        return _Squeeze(getattr(video, name)(weights=None, num_classes=1))

    build.__name__ = name
    return build


SCORERS: dict[str, Callable[..., nn.Module]] = {
    "bn-cnn": BNCNN,
    "seed-cnn": SeedCNN,
    "resnet18": _resnet18,
    "prompt-bn-cnn": _prompt_bn_cnn,
    "clip": _clip,
}
VIDEO_SCORERS: dict[str, Callable[..., nn.Module]] = {
    "bn-c3d": BNC3D,
    "seed-c3d": SeedC3D,
    "r3d_18": _torchvision_video("r3d_18"),
    "mc3_18": _torchvision_video("mc3_18"),
    "r2plus1d_18": _torchvision_video("r2plus1d_18"),
    "prompt-bn-c3d": _prompt_bn_c3d,
}
DEFAULT_VIDEO_SCORER = scorer_catalog.DEFAULT_SCORER["video"]
PROMPT_SCORERS = tuple(e.name for e in scorer_catalog.CATALOG if e.takes_prompt)
TORCHVISION_SCORERS = tuple(e.name for e in scorer_catalog.CATALOG if e.torchvision_weights)
# The catalogue (plain data the config and the CLI read) and the builders list the same names.
assert tuple(SCORERS) == scorer_catalog.names("image"), "scorer_catalog.py and SCORERS differ"
assert tuple(VIDEO_SCORERS) == scorer_catalog.names("video"), "scorer_catalog.py and VIDEO_SCORERS differ"

# ImageNet statistics: the usual normalisation, applied on the training device.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def build_scorer(name: str, options: dict[str, Any] | None = None) -> nn.Module:
    """A scorer with random weights. ``options``: what ``model_options`` resolved for it
    (the open_clip model config of ``clip``), stored with the registered model."""
    if name in SCORERS:
        return SCORERS[name](**(options or {}))
    if name in VIDEO_SCORERS:
        return VIDEO_SCORERS[name](**(options or {}))
    raise ValueError(f"unknown scorer {name!r}; choose one of {', '.join([*SCORERS, *VIDEO_SCORERS])}")


def model_options(name: str, arch: str) -> dict[str, Any]:
    """The construction options of scorer ``name`` from the config (``model.arch``), in a form
    that travels with the weights (no file path: a consumer rebuilds it anywhere)."""
    if name == "clip":
        from .clip import clip_config

        return {"clip_config": clip_config(arch)}
    return {}


def text_contract(name: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """How a prompt-conditioned scorer's prompts are tokenised (``MediaSpec`` text fields);
    None for image-only scorers."""
    if name == "clip":
        ctx = options["clip_config"].get("text_cfg", {}).get("context_length", 77)
        return {"text": "clip", "context_length": int(ctx), "vocab_size": 0}
    if name in PROMPT_SCORERS:
        return {"text": "words", "context_length": WORD_CONTEXT, "vocab_size": WORD_VOCAB}
    return None


def initial_weights(name: str, options: dict[str, Any], seed: int, pretrained: str = "",
                    weights: str = "") -> dict[str, Tensor]:
    """The starting weights of a run: the seeded random init, with a CLIP checkpoint
    (``model.pretrained``) or a torchvision state dict (``model.weights``) loaded over it."""
    torch.manual_seed(seed)
    model = build_scorer(name, options)
    if pretrained:
        from .clip import load_pretrained

        load_pretrained(model, pretrained)
    if weights:
        from .clip import load_backbone_weights

        load_backbone_weights(model, weights, head_prefixes(model))
    return model.state_dict()


def takes_prompt(model: nn.Module) -> bool:
    return bool(getattr(_unwrap(model), "takes_prompt", False))


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(_unwrap(model), "head_prefixes", ("head",)))


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def to_model_input(images: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    """uint8 ``(N, C, H, W)`` or ``(N, C, T, H, W)`` on any device -> normalised float on
    ``device`` (channels_last / channels_last_3d when asked).

    The uint8 -> float conversion happens here, after the copy, so the object store and the
    host-to-device copy carry 1 byte per pixel instead of 4.
    """
    x = images.to(device, non_blocking=True).float().div_(255.0)
    shape = (1, 3) + (1,) * (x.dim() - 2)
    mean = torch.tensor(MEAN, device=device).view(shape)
    std = torch.tensor(STD, device=device).view(shape)
    x = (x - mean) / std
    if channels_last:
        fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
        x = x.contiguous(memory_format=fmt)
    return x


def config_problems(cfg: Any) -> list[str]:
    """The checks of a run config that need the models themselves (``load_config(checks=...)``):
    ``clip``'s architecture must exist and take ``data.image_size`` pixels."""
    m = cfg.model
    if m.name != "clip":
        return []
    try:
        from .clip import clip_config

        vision = clip_config(m.arch)["vision_cfg"]
    except (ImportError, ValueError) as e:
        return [f"model.arch: {e}"]
    size = vision.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    if cfg.data.image_size != size:
        return [f"data.image_size: {cfg.data.image_size}, but model.arch={m.arch} takes {size} "
                f"px images; set data.image_size={size}"]
    return []
