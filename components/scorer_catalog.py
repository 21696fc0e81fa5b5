"""The scorer catalogue: every model name, its modality and what it takes, as plain data.

The configuration checks ``model.name`` against this list and the CLI help and the docs list
it, without importing torch or ``components/training``; ``training/models.py`` maps each name
to the module that builds it and checks at import time that both list the same names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ScorerEntry:
    name: str
    modality: Literal["image", "video"]
    summary: str
    takes_prompt: bool = False
    """Prompt-conditioned: scores (prompt, image) or (prompt, clip)."""
    torchvision_weights: bool = False
    """Takes a torchvision state dict through ``model.weights``."""
    pretrained: Literal["", "open_clip", "hf"] = ""
    """A CLIP-family scorer: what ``model.pretrained`` takes, an open_clip checkpoint file
    (``open_clip``) or a Hugging Face model directory (``hf``); it scores
    ``model.score_scale`` x cos(image, prompt)."""
    vision_language: bool = False
    """A vision-language scorer (``hf`` directory of a Qwen2-VL-family model): a reward head
    on a special token's hidden state, no cosine, no ``model.score_scale``."""


CATALOG: tuple[ScorerEntry, ...] = (
    ScorerEntry("bn-cnn", "image", "small BatchNorm CNN with global pooling (the default image scorer)"),
    ScorerEntry("seed-cnn", "image", "the seed post's ImageDPO: two 3x3 convs and a linear head (baseline)"),
    ScorerEntry("resnet18", "image", "torchvision ResNet-18 with a 1-output head",
                torchvision_weights=True),
    ScorerEntry("prompt-bn-cnn", "image", "bn-cnn features + prompt agreement (hashed-word embeddings)",
                takes_prompt=True),
    ScorerEntry("clip", "image", "open_clip CLIP: logit_scale * cos(image, prompt)",
                takes_prompt=True, pretrained="open_clip"),
    ScorerEntry("hf-clip", "image", "transformers CLIP/SigLIP directory (PickScore): "
                "logit_scale * cos(image, prompt)", takes_prompt=True, pretrained="hf"),
    ScorerEntry("vlm", "image", "Qwen2-VL-family directory (HPSv3): a reward head on the hidden "
                "state at a special token after an instruction", takes_prompt=True, pretrained="hf",
                vision_language=True),
    ScorerEntry("bn-c3d", "video", "small BatchNorm 3-D CNN with global pooling (the default video scorer)"),
    ScorerEntry("seed-c3d", "video", "the seed post's VideoDPO: two Conv3d blocks and an MLP head (baseline)"),
    ScorerEntry("r3d_18", "video", "torchvision R3D-18", torchvision_weights=True),
    ScorerEntry("mc3_18", "video", "torchvision MC3-18", torchvision_weights=True),
    ScorerEntry("r2plus1d_18", "video", "torchvision R(2+1)D-18", torchvision_weights=True),
    ScorerEntry("prompt-bn-c3d", "video", "bn-c3d features + prompt agreement (hashed-word embeddings)",
                takes_prompt=True),
    ScorerEntry("vlm-video", "video", "Qwen2-VL-family directory (VideoAlign): reward heads at "
                "special tokens over the clip's frames", takes_prompt=True, pretrained="hf",
                vision_language=True),
)
DEFAULT_SCORER = {"image": "bn-cnn", "video": "bn-c3d"}


def names(modality: str) -> tuple[str, ...]:
    """The scorers of one modality, in catalogue order."""
    return tuple(e.name for e in CATALOG if e.modality == modality)


def entry(name: str) -> ScorerEntry | None:
    return next((e for e in CATALOG if e.name == name), None)


def describe(modality: str) -> str:
    """One line per scorer of ``modality``, for ``--help``."""
    return "\n".join(f"  {e.name:<14}{e.summary}" for e in CATALOG if e.modality == modality)
