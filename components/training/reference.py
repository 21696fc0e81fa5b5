"""The frozen reference scorer of reference-anchored DPO, precomputed once before training.

A Ray Data batch-inference pass adds ``ref_chosen``/``ref_rejected`` columns to the prepared
pairs and writes them next to them, so no reference model sits in training-worker memory
(TRL calls this precomputing reference log-probs).
"""

from __future__ import annotations

import numpy as np

from ..media.spec import MediaSpec
from ..registry.scorer_files import TrainedScorer
from ..runtime import storage
from ..runtime.resources import SCORING_ACTOR_CPUS
from .models import initial_weights


def initial_scorer(model_name: str, options: dict, seed: int, spec: MediaSpec,
                   pretrained: str = "", weights: str = "") -> TrainedScorer:
    """The initial weights, what the reference ``loss.reference=init`` means: the seeded
    random init, with ``model.pretrained`` / ``model.weights`` loaded over it."""
    state = initial_weights(model_name, options, seed, pretrained, weights)
    return TrainedScorer(model_name, state, spec, 0.0, "init", options)


class ReferenceScorer:
    """Ray Data actor: the batch with ``ref_chosen``/``ref_rejected`` added (raw scores: the
    temporal prior cancels in h)."""

    def __init__(self, ref: TrainedScorer):
        from ..evaluation.pair_scoring import PairScorer

        self.scorer = PairScorer(ref, with_prior=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scored = self.scorer(batch)
        return {**batch, "ref_chosen": scored["s_chosen"], "ref_rejected": scored["s_rejected"]}


def add_reference_scores(ds, ref: TrainedScorer, out_dir: str, batch_size: int = 64) -> str:
    """Score every pair of ``ds`` with the reference; write the result to ``out_dir``."""
    from ray.data import ActorPoolStrategy

    scored = ds.map_batches(
        ReferenceScorer,
        fn_constructor_kwargs={"ref": ref},
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=1),
        num_cpus=SCORING_ACTOR_CPUS,
        batch_format="numpy",
    )
    storage.remove(out_dir)
    storage.make_dirs(out_dir)
    fs, path = storage.filesystem(out_dir)
    scored.write_parquet(path, filesystem=fs)
    return out_dir


def reference_dataset(path: str, pair_columns: list[str]):
    """The prepared training pairs with the reference's scores, as written by
    ``add_reference_scores``."""
    import ray

    fs, fs_path = storage.filesystem(path)
    return ray.data.read_parquet(fs_path, filesystem=fs).select_columns([*pair_columns, "ref_chosen", "ref_rejected"])
