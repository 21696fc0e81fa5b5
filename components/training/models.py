"""Scorers behind one registry by name, output ``(N,)``.

Image scorers (``SCORERS``) take ``(N, 3, H, W)`` float; video scorers (``VIDEO_SCORERS``)
take ``(N, 3, T, H, W)``. Every scorer is resolution- and length-agnostic (adaptive pooling),
so a model trained at 64x64 (or 8 frames) also scores 224x224 inputs (or 16 frames).

The output layer is a ``RewardHead`` (``model.head``): one output (the score), two
(``mu``, ``log sigma``, HPSv3) or one per named head (VideoAlign). ``forward`` returns the score
``(N,)`` whatever the head, so serving, evaluation and the DPO reference read it unchanged;
``forward(..., outputs=True)`` returns all ``(N, width)`` outputs, which ``RewardHead.rewards``
names (``Rewards``) for the objectives that read more than the score.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import scorer_catalog


@dataclass(frozen=True)
class Rewards:
    """What a scorer's head says about N inputs."""

    score: Tensor
    """``(N,)``: the reward that is ranked, served and compared (``mu``; the weighted total)."""
    log_sigma: Tensor | None = None
    """``(N,)``, ``mu_sigma`` heads: log of the score's standard deviation."""
    heads: Tensor | None = None
    """``(N, K)``, ``named`` heads: each head's score, in ``names`` order."""
    names: tuple[str, ...] = ()

    def __getitem__(self, index: Any) -> Rewards:
        def take(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        return Rewards(self.score[index], take(self.log_sigma), take(self.heads), self.names)


@dataclass(frozen=True)
class RewardHead:
    """A scorer's output layer (``model.head``): its width and how its outputs make the score.

    ``score``: one output, the score. ``mu_sigma``: ``(mu, log sigma)``; the score is ``mu``
    (HPSv3's ``inference.py`` reads ``logits[:, 0]``). ``named``: one output per name; the
    score is ``sum_k weights[k] * s_k`` (VideoAlign's ``inference.py``: Overall = VQ + MQ + TA).
    Travels with a registered model in its options (``to_options``), so it rebuilds as trained.
    """

    kind: str = "score"
    names: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()

    @classmethod
    def from_config(cls, model: Any) -> RewardHead:
        """From a ``ModelConfig`` (``head``, ``head_names``, ``head_weights``; validated)."""
        if model.head != "named":
            return cls(model.head)
        names = tuple(model.head_names)
        return cls("named", names, tuple(model.head_weights) or (1.0,) * len(names))

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RewardHead:
        return cls(options["kind"], tuple(options.get("names", ())),
                   tuple(float(w) for w in options.get("weights", ())))

    def to_options(self) -> dict[str, Any]:
        return {"kind": self.kind, "names": list(self.names), "weights": list(self.weights)}

    @property
    def width(self) -> int:
        return len(self.names) if self.kind == "named" else 2 if self.kind == "mu_sigma" else 1

    @property
    def scores(self) -> int:
        """How many leading outputs are scores (all but ``log sigma``)."""
        return len(self.names) if self.kind == "named" else 1

    def score(self, out: Tensor) -> Tensor:
        """``(N, width)`` outputs -> the score ``(N,)``."""
        if self.kind == "named":
            return sum(w * out[:, k] for k, w in enumerate(self.weights))
        return out[:, 0]

    def rewards(self, out: Tensor) -> Rewards:
        """``(N, width)`` outputs, named."""
        return Rewards(self.score(out), out[:, 1] if self.kind == "mu_sigma" else None,
                       out if self.kind == "named" else None, self.names)


SCORE = RewardHead()


class SeedCNN(nn.Module):
    """The seed post's ``ImageDPO``: two 3x3 convs and a linear head.

    The seed flattened a fixed 32x32 feature map into ``Linear(64*32*32, 1)``, so it only ran
    on 32x32 inputs. An ``AdaptiveAvgPool2d(32)`` before the flatten keeps the same head and
    accepts any size. Kept as the baseline.
    """

    head_prefixes = ("backbone.6",)  # the Linear

    def __init__(self, head: RewardHead = SCORE) -> None:
        super().__init__()
        self.reward_head = head
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(32),
            nn.Flatten(),
            nn.Linear(64 * 32 * 32, head.width),
        )

    def forward(self, x: Tensor, *, outputs: bool = False) -> Tensor:
        out = self.backbone(x)
        return out if outputs else self.reward_head.score(out)


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

    def __init__(self, width: int = 16, head: RewardHead = SCORE) -> None:
        super().__init__()
        w = width
        self.reward_head = head
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
        self.head = nn.Linear(8 * w, head.width)

    def forward(self, x: Tensor, *, outputs: bool = False) -> Tensor:
        out = self.head(self.features(x))
        return out if outputs else self.reward_head.score(out)


def _resnet18(head: RewardHead = SCORE) -> nn.Module:
    import torchvision

    # weights=None: nothing downloads at run time; pretrained weights are a user option.
    net = torchvision.models.resnet18(weights=None, num_classes=head.width)
    return _Squeeze(net, head)


class _Squeeze(nn.Module):
    head_prefixes = ("net.fc",)  # torchvision's classifier, replaced by a 1-output head

    def __init__(self, net: nn.Module, head: RewardHead = SCORE) -> None:
        super().__init__()
        self.net = net
        self.reward_head = head

    def forward(self, x: Tensor, *, outputs: bool = False) -> Tensor:
        out = self.net(x)
        return out if outputs else self.reward_head.score(out)


class SeedC3D(nn.Module):
    """The seed post's ``VideoDPO``: two Conv3d + MaxPool3d blocks and an MLP head.

    The seed flattened a fixed ``128 x 4 x 4 x 4`` feature map, so it only ran on 16x16x16
    clips; an ``AdaptiveAvgPool3d(4)`` before the flatten keeps the head and accepts any
    length and size. Kept as the baseline.
    """

    head_prefixes = ("temporal_scorer",)

    def __init__(self, head: RewardHead = SCORE) -> None:
        super().__init__()
        self.reward_head = head
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
        self.temporal_scorer = nn.Sequential(nn.Linear(128 * 4 * 4 * 4, 512), nn.ReLU(),
                                             nn.Linear(512, head.width))

    def forward(self, x: Tensor, *, outputs: bool = False) -> Tensor:
        out = self.temporal_scorer(self.frame_encoder(x))
        return out if outputs else self.reward_head.score(out)


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

    def __init__(self, width: int = 16, head: RewardHead = SCORE) -> None:
        super().__init__()
        w = width
        self.reward_head = head
        self.features = nn.Sequential(
            _block3d(3, w, (1, 2, 2)),
            _block3d(w, 2 * w, (1, 2, 2)),
            _block3d(2 * w, 2 * w, (1, 1, 1)),
            _block3d(2 * w, 4 * w, (2, 2, 2)),
            _block3d(4 * w, 4 * w, (1, 1, 1)),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, head.width)

    def forward(self, x: Tensor, *, outputs: bool = False) -> Tensor:
        out = self.head(self.features(x))
        return out if outputs else self.reward_head.score(out)


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
                 vocab: int = WORD_VOCAB, head: RewardHead = SCORE) -> None:
        super().__init__()
        self.features = encoder
        self.reward_head = head
        self.head = nn.Linear(feature_dim, head.width)
        self.proj = nn.Linear(feature_dim, dim)
        self.text = nn.EmbeddingBag(vocab, dim, mode="mean", padding_idx=0)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, x: Tensor, tokens: Tensor, *, outputs: bool = False) -> Tensor:
        f = self.features(x)
        t = self.text(tokens.long())  # (N, dim); an empty prompt (all padding) gives zeros
        agreement = ((self.proj(f) * t).sum(-1) * self.scale)[:, None]
        out = self.head(f)
        k = self.reward_head.scores  # the agreement joins every score output, not log sigma
        out = torch.cat([out[:, :k] + agreement, out[:, k:]], dim=1)
        return out if outputs else self.reward_head.score(out)


def _prompt_bn_cnn(width: int = 16, head: RewardHead = SCORE) -> nn.Module:
    return PromptConditioned(BNCNN(width).features, 8 * width, head=head)


def _prompt_bn_c3d(width: int = 16, head: RewardHead = SCORE) -> nn.Module:
    return PromptConditioned(BNC3D(width).features, 4 * width, head=head)


def _clip(clip_config: dict, score_scale: str = "logit_scale") -> nn.Module:
    from .clip import ClipScorer

    return ClipScorer(clip_config, score_scale)


def _hf_clip(**options: Any) -> nn.Module:
    from .hf_clip import HfClipScorer

    return HfClipScorer(**options)


def _vlm(head: RewardHead = SCORE, **options: Any) -> nn.Module:
    from .vlm import VlmScorer

    return VlmScorer(head=head, **options)


def _torchvision_video(name: str) -> Callable[[], nn.Module]:
    def build(head: RewardHead = SCORE) -> nn.Module:
        from torchvision.models import video

        # weights=None: nothing downloads at run time (Kinetics weights are a user option).
        return _Squeeze(getattr(video, name)(weights=None, num_classes=head.width), head)

    build.__name__ = name
    return build


SCORERS: dict[str, Callable[..., nn.Module]] = {
    "bn-cnn": BNCNN,
    "seed-cnn": SeedCNN,
    "resnet18": _resnet18,
    "prompt-bn-cnn": _prompt_bn_cnn,
    "clip": _clip,
    "hf-clip": _hf_clip,
    "vlm": _vlm,
}
VIDEO_SCORERS: dict[str, Callable[..., nn.Module]] = {
    "bn-c3d": BNC3D,
    "seed-c3d": SeedC3D,
    "r3d_18": _torchvision_video("r3d_18"),
    "mc3_18": _torchvision_video("mc3_18"),
    "r2plus1d_18": _torchvision_video("r2plus1d_18"),
    "prompt-bn-c3d": _prompt_bn_c3d,
    "vlm-video": _vlm,
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
        return SCORERS[name](**_built_options(options))
    if name in VIDEO_SCORERS:
        return VIDEO_SCORERS[name](**_built_options(options))
    raise ValueError(f"unknown scorer {name!r}; choose one of {', '.join([*SCORERS, *VIDEO_SCORERS])}")


def _built_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Stored options as the builders take them: the head (when not ``score``) a
    ``RewardHead``; a scorer without an output layer to widen takes none (``config_problems``)."""
    out = dict(options or {})
    if "head" in out:
        out["head"] = stored_head(out)
    return out


def stored_head(options: dict[str, Any]) -> RewardHead:
    """The head a scorer's stored options build (``score`` when they hold none)."""
    return RewardHead.from_options(options["head"]) if "head" in options else SCORE


def takes_head(name: str) -> bool:
    """Whether scorer ``name`` has an output layer ``model.head`` can widen (not a cosine)."""
    builder = SCORERS.get(name) or VIDEO_SCORERS.get(name)
    return builder is not None and "head" in inspect.signature(builder).parameters


def model_options(name: str, arch: str, head: RewardHead = SCORE, *, pretrained: str = "",
                  score_scale: str = "logit_scale",
                  clip: tuple[int, int, float] = (0, 0, 0.0)) -> dict[str, Any]:
    """The construction options of scorer ``name`` from the config (``model.arch``,
    ``model.head``; ``hf-clip``: the model directory ``model.pretrained``;
    ``model.score_scale``; ``vlm-video``: ``clip``, the (side, frames, fps) the data pipeline
    samples), in a form that travels with the weights (no file path: a consumer rebuilds it
    anywhere). A ``score`` head (a ``logit_scale`` score scale) is not stored: options from
    before they existed still match."""
    options = _architecture_options(name, arch, pretrained, score_scale, clip)
    return {**options, "head": head.to_options()} if head != SCORE else options


def clip_grid(cfg: Any) -> tuple[int, int, float]:
    """(side, frames, fps) of the clips a run's data pipeline makes (``model_options``'s
    ``clip``); zeros for images."""
    if cfg.modality != "video":
        return (0, 0, 0.0)
    return (cfg.data.image_size, cfg.data.video.frames, float(cfg.data.video.fps))


def _architecture_options(name: str, arch: str, pretrained: str, score_scale: str,
                          clip: tuple[int, int, float] = (0, 0, 0.0)) -> dict[str, Any]:
    if name == "clip":
        from .clip import clip_config

        scale = {"score_scale": score_scale} if score_scale != "logit_scale" else {}
        return {"clip_config": clip_config(arch), **scale}
    if name == "hf-clip":
        from .hf_clip import hf_clip_options

        return hf_clip_options(pretrained, score_scale)
    if name in ("vlm", "vlm-video"):
        from .vlm import vlm_options

        return vlm_options(pretrained, video=name == "vlm-video", clip=clip)
    return {}


def text_contract(name: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """How a prompt-conditioned scorer's prompts are tokenised (``MediaSpec`` text fields);
    None for image-only scorers."""
    if name == "clip":
        ctx = options["clip_config"].get("text_cfg", {}).get("context_length", 77)
        return {"text": "clip", "context_length": int(ctx), "vocab_size": 0}
    if name == "hf-clip":  # the checkpoint's own tokenizer travels in the contract
        ctx = options["hf_config"]["text_config"]["max_position_embeddings"]
        return {"text": "hf", "context_length": int(ctx), "vocab_size": 0,
                "tokenizer": options["tokenizer"]}
    if name in ("vlm", "vlm-video"):  # the whole conversation, with the checkpoint's tokenizer
        from .vlm import text_contract as vlm_text_contract

        return vlm_text_contract(options)
    if name in PROMPT_SCORERS:
        return {"text": "words", "context_length": WORD_CONTEXT, "vocab_size": WORD_VOCAB}
    return None


def initial_weights(name: str, options: dict[str, Any], seed: int, pretrained: str = "",
                    weights: str = "") -> dict[str, Tensor]:
    """The starting weights of a run: the seeded random init, with a CLIP checkpoint
    (``model.pretrained``: an open_clip file, or for ``hf-clip`` a Hugging Face model
    directory) or a torchvision state dict (``model.weights``) loaded over it."""
    torch.manual_seed(seed)
    model = build_scorer(name, options)
    if pretrained and name == "hf-clip":
        from .hf_clip import pretrained_state_dict

        model.load_state_dict(pretrained_state_dict(pretrained, options), strict=True)
    elif pretrained and name in ("vlm", "vlm-video"):
        from .vlm import pretrained_state_dict as vlm_state_dict

        model.load_state_dict(vlm_state_dict(pretrained, model), strict=True)
    elif pretrained:
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


def reward_head(model: nn.Module) -> RewardHead:
    return getattr(_unwrap(model), "reward_head", SCORE)


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


def to_memory_format(model: nn.Module, video: bool) -> nn.Module:
    """``model`` with its conv weights in channels_last (channels_last_3d for clips), the
    layout cuDNN's fastest convolution kernels read on a GPU; a model with conv weights of
    the other rank is left as it is (``Module.to`` would raise): an image vision-language
    scorer, whose patch embedding is Qwen2-VL's Conv3d. A transformer gains nothing from
    the layout anyway."""
    fmt, rank = (torch.channels_last_3d, 5) if video else (torch.channels_last, 4)
    if any(p.dim() >= 4 and p.dim() != rank for p in model.parameters()):
        return model
    return model.to(memory_format=fmt)


def config_problems(cfg: Any) -> list[str]:
    """The checks of a run config that need the models themselves (``load_config(checks=...)``):
    a ``model.head`` other than ``score`` needs an output layer to widen; ``clip``'s
    architecture must exist and take ``data.image_size`` pixels."""
    m = cfg.model
    if m.head != "score" and not takes_head(m.name):
        heads = [n for n in scorer_catalog.names(cfg.modality) if takes_head(n)]
        return [f"model.head={m.head}: {m.name} scores with a cosine, it has no output layer "
                f"to widen; use model.head=score, or one of {', '.join(heads)}"]
    if m.name == "hf-clip":
        return _hf_clip_problems(m.pretrained, cfg.data.image_size)
    if m.name in ("vlm", "vlm-video"):
        from .vlm import directory_problems

        video = m.name == "vlm-video"
        return directory_problems(m.pretrained, video, cfg.data.image_size,
                                  cfg.data.video.frames if video else 0,
                                  RewardHead.from_config(m), cfg.data.video.fps)
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


def _hf_clip_problems(pretrained: str, image_size: int) -> list[str]:
    """A local ``hf-clip`` directory's config must be a CLIP/SigLIP model taking
    ``data.image_size`` pixels (a URI is read when the run starts; config.py checked the rest)."""
    import importlib.util

    from .hf_clip import FAMILIES

    if importlib.util.find_spec("transformers") is None:
        return ["model.name=hf-clip needs transformers, tokenizers and safetensors "
                "(pip install 'visual-dpo[hf]')"]
    if not pretrained or "://" in pretrained or not os.path.isfile(
            os.path.join(pretrained, "config.json")):
        return []
    try:
        with open(os.path.join(pretrained, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        family = config.get("model_type")
        size = int(config["vision_config"]["image_size"]) if family in FAMILIES else 0
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return [f"model.pretrained: {pretrained}/config.json is not a CLIP-family model "
                f"config ({type(e).__name__}: {e})"]
    if family not in FAMILIES:
        return [f"model.pretrained: {pretrained}/config.json has model_type {family!r}; "
                f"hf-clip scores {', '.join(FAMILIES)} models"]
    if image_size != size:
        return [f"data.image_size: {image_size}, but model.pretrained={pretrained} takes "
                f"{size} px images; set data.image_size={size}"]
    return []


def check_image_text_inputs(x: Tensor, tokens: Tensor, image_size: int, model: str,
                            size_key: str) -> None:
    """The input contract of the CLIP-family scorers: ``x`` ``(N, 3, S, S)`` at the model's
    own ``S`` (its config's ``size_key``) and ``tokens`` ``(N, context_length)``."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{model} takes (N, 3, H, W) images, got {tuple(x.shape)}")
    if tuple(x.shape[-2:]) != (image_size, image_size):
        raise ValueError(f"this model takes {image_size}x{image_size} images ({size_key}), got "
                         f"{x.shape[-2]}x{x.shape[-1]}: set data.image_size={image_size}")
    if tokens.dim() != 2 or tokens.shape[0] != x.shape[0]:
        raise ValueError(f"tokens must be (N={x.shape[0]}, context_length), "
                         f"got {tuple(tokens.shape)}")
