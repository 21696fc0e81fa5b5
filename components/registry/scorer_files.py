"""A trained scorer as plain files: ``weights.pt`` (a state dict) and ``scorer.json`` (the
architecture name and its construction options, the decode contract ``MediaSpec`` with the
prompt tokenizer, the temporal prior, the mean and standard deviation of its scores on the
eval data, and the SHA-256 of the weights). The registered MLflow model carries this directory
as its ``scorer`` artifact, covered with every other file of the model by the model's manifest
(registry/manifest.py), which every loader checks first; the pyfunc model, batch scoring,
evaluation and the DPO reference then read it through ``read_scorer``, which loads tensors only
(``weights_only=True``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..media.spec import MediaSpec
from .manifest import sha256_file

WEIGHTS, META = "weights.pt", "scorer.json"


@dataclass
class TrainedScorer:
    model_name: str  # architecture in components.training.models
    state_dict: dict[str, torch.Tensor]
    spec: MediaSpec  # how its inputs are decoded (the size it was trained at, frames, limits)
    temporal_weight: float = 0.0  # video: lambda of the prior; the score is s(x) + lambda c(x)
    source: str = ""  # "init", a model URI, or a run's checkpoint
    options: dict[str, Any] = field(default_factory=dict)  # models.model_options (e.g. CLIP config)
    score_stats: dict[str, float] | None = None
    """``{"mean", "std", "pairs"}`` of the scores on the eval pairs (both sides): consumers
    normalise with them to compare versions (pyfunc ``params={"normalize": True}``)."""


def write_scorer(directory: str, scorer: TrainedScorer) -> str:
    """Write the two files into ``directory``; returns the weights' SHA-256."""
    os.makedirs(directory, exist_ok=True)
    weights = os.path.join(directory, WEIGHTS)
    torch.save({k: v.detach().cpu().contiguous() for k, v in scorer.state_dict.items()}, weights)
    digest = sha256_file(weights)
    with open(os.path.join(directory, META), "w") as f:
        json.dump({"model": scorer.model_name, "options": scorer.options,
                   "media": scorer.spec.to_dict(), "temporal_weight": scorer.temporal_weight,
                   "score_stats": scorer.score_stats, "weights_sha256": digest}, f)
    return digest


def read_scorer(directory: str, source: str = "") -> TrainedScorer:
    """Read a directory ``write_scorer`` wrote; raises when the weights are not the ones whose
    hash ``scorer.json`` records (damage). What vouches for ``scorer.json`` itself is the
    model's manifest, checked by the caller before this (registry/manifest.py)."""
    with open(os.path.join(directory, META)) as f:
        meta = json.load(f)
    weights = os.path.join(directory, WEIGHTS)
    expected = meta.get("weights_sha256")
    if expected and sha256_file(weights) != expected:
        raise ValueError(f"{weights}: SHA-256 differs from the one recorded at training "
                         f"({expected}); the weights were replaced or damaged. Re-download "
                         "the model or re-register it.")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    return TrainedScorer(meta["model"], state, MediaSpec.from_dict(meta["media"]),
                         float(meta.get("temporal_weight", 0.0)), source,
                         meta.get("options") or {}, meta.get("score_stats"))

