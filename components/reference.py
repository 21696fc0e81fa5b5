"""The frozen reference scorer of reference-anchored DPO, precomputed once before training.

A Ray Data batch-inference pass adds ``ref_chosen``/``ref_rejected`` columns to the prepared
pairs and writes them next to them, so no reference model sits in training-worker memory
(TRL calls this precomputing reference log-probs).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import numpy as np
import torch

from components.models import build_scorer


@dataclass
class Reference:
    model_name: str  # scorer architecture in components.models.SCORERS
    state_dict: dict[str, torch.Tensor]
    image_size: int
    source: str  # "init" or the model URI
    temporal_weight: float = 0.0  # the model's temporal prior (video); 0 for images
    media: dict | None = None  # the model's MediaSpec (decode contract), for registered models


def pin_model_uri(uri: str) -> str:
    """``models:/NAME@ALIAS`` -> ``models:/NAME/VERSION``: what the alias points at now, so a
    resumed run uses the same model even if the alias has moved since."""
    if uri.startswith("models:/") and "@" in uri:
        from mlflow import MlflowClient

        name, alias = uri[len("models:/"):].split("@", 1)
        return f"models:/{name}/{MlflowClient().get_model_version_by_alias(name, alias).version}"
    return uri


def load_scorer_uri(uri: str) -> Reference:
    """A registered/logged scorer (pyfunc from this project) -> its architecture and weights."""
    import mlflow

    wrapper = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    return Reference(wrapper.meta["model"], wrapper.model.state_dict(), wrapper.image_size, uri,
                     float(wrapper.meta.get("temporal_weight", 0.0)), wrapper.spec.to_dict())


def resolve_reference(cfg, source: str | None = None) -> Reference:
    source = source or cfg.loss.reference
    if source == "init":
        torch.manual_seed(cfg.train.seed)
        state = build_scorer(cfg.model.name).state_dict()
        return Reference(cfg.model.name, state, cfg.data.image_size, "init")
    return load_scorer_uri(pin_model_uri(source))


class ReferenceScorer:
    """Ray Data actor: the batch with ``ref_chosen``/``ref_rejected`` added."""

    def __init__(self, ref: Reference):
        from components.evaluate import PairScorer

        self.scorer = PairScorer(ref.model_name, ref.state_dict, ref.image_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scored = self.scorer(batch)
        return {**batch, "ref_chosen": scored["s_chosen"], "ref_rejected": scored["s_rejected"]}


def add_reference_scores(ds, ref: Reference, out_dir: str, batch_size: int = 64) -> str:
    """Score every pair of ``ds`` with the reference; write the result to ``out_dir``."""
    from ray.data import ActorPoolStrategy

    scored = ds.map_batches(
        ReferenceScorer,
        fn_constructor_kwargs={"ref": ref},
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=1),
        num_cpus=1,
        batch_format="numpy",
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    scored.write_parquet(out_dir)
    return out_dir


def reference_scores_step(cfg, train_path: str, run_dir: str) -> dict:
    """For ``loss.type=dpo``: precompute reference scores for the training pairs (Ray Data).

    Returns a record ``{"path", "source"}``: where the scored pairs are and which reference
    (``init`` or a pinned model URI); both None for objectives without a reference.
    """
    import mlflow

    from components.ingest import usable_pairs

    if cfg.loss.type != "dpo":
        return {"path": None, "source": None}
    ref = resolve_reference(cfg)
    path = add_reference_scores(usable_pairs(train_path, "train", with_ids=True), ref,
                                os.path.join(run_dir, "prepared", "train_ref"))
    mlflow.set_tags({"loss.reference": ref.source, "loss.reference_model": ref.model_name})
    return {"path": path, "source": ref.source}


def training_inputs(cfg, train_path: str, record: dict, warm_start: str | None = None):
    """``(train_ds, reference, init_state)`` for the train step.

    The policy starts from the reference's weights when the architectures match (so DPO
    starts at log 2), else from ``warm_start`` (a model URI, e.g. the champion of an
    incremental run) when it matches, else from the seeded random init.
    """
    import ray

    from components.ingest import pair_columns, usable_pairs

    ref = resolve_reference(cfg, record["source"]) if record["source"] else None
    if record["path"]:
        ds = ray.data.read_parquet(record["path"]).select_columns(
            [*pair_columns(train_path), "ref_chosen", "ref_rejected"])
    else:
        ds = usable_pairs(train_path, "train")
    if ref is not None and ref.model_name == cfg.model.name:
        return ds, ref, ref.state_dict
    if warm_start:  # loaded only when the reference cannot serve as the start point
        warm = load_scorer_uri(pin_model_uri(warm_start))
        if warm.model_name == cfg.model.name:
            return ds, ref, warm.state_dict
    return ds, ref, None
