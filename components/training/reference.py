"""The frozen reference scorer of reference-anchored DPO: ``loss.reference=init`` means the
run's initial weights. The training workers score each batch with it (worker.py)."""

from __future__ import annotations

from ..media.spec import MediaSpec
from ..registry.scorer_files import TrainedScorer
from .models import initial_weights


def initial_scorer(model_name: str, options: dict, seed: int, spec: MediaSpec,
                   pretrained: str = "", weights: str = "") -> TrainedScorer:
    """The initial weights, what the reference ``loss.reference=init`` means: the seeded
    random init, with ``model.pretrained`` / ``model.weights`` loaded over it."""
    state = initial_weights(model_name, options, seed, pretrained, weights)
    return TrainedScorer(model_name, state, spec, 0.0, "init", options)
